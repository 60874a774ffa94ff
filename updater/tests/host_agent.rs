//! Host integration of the real `basalt-updated` binary: the daemon as a user meets it, with
//! every part real except the reboot.
//!
//! - the bus: a private `dbus-daemon` loaded with the shipped policy, and a fake
//!   `org.freedesktop.systemd1` on it (the health gate's unit states; reboot requests are
//!   recorded, not carried out);
//! - the repository: made by `basalt release publish` (the publisher's library), served by
//!   nginx on 127.0.0.1 with the test's own config, or by the misbehaving `faulty_http` server
//!   for what a network does wrong;
//! - the node: a GPT disk image file with slot A installed and blessed (BLS on the FAT inside
//!   the image, or GPT priority bits), drop-ins pointing `basalt-updated` at the image, its
//!   own state dir and the repository URL, and stand-ins for `/proc/cmdline`,
//!   `/run/basalt/boot.env`, `/usr/lib/os-release`, the boot id and efivarfs;
//! - the client: the real `basaltctl` binary.
//!
//! A reboot is simulated the way firmware and basalt-init would do it: `BootControl::
//! boot_attempt` on the image (the boot loader's choice, tries counted), a new command line,
//! boot.env and boot id for the slot it chose, and the daemon started again.
//!
//! Each failure case checks what a user sees (`basaltctl` exit code, `status --json`'s
//! `last_error`) and what must hold on the disk: slot A's bytes and boot state identical
//! (checksummed), slot B not bootable. The engine's own tests cover the fine-grained cases;
//! these cover the seam daemon + pipeline + real server + real bus.
//!
//! Needs the Debian packages `dbus`, `nginx`, `cryptsetup-bin`; fails naming them when missing.

#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::path::PathBuf;
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_image::release::synthetic::SyntheticRelease;
use basalt_tests::faulty_http::{Fault, FaultyServer};
use basalt_tests::web::Nginx;
use basalt_updater::pipeline::BackendKind;
use common::{EspKind, Node, World, MIB};
use serde_json::Value;
use support::bus::{basaltctl, code, serve_systemd, text, Bus, Systemd};

/// The fake systemd runs on its own runtime so the tests stay plain blocking code.
struct FakeSystemd {
    sd: Systemd,
    _conn: zbus::Connection,
    _rt: tokio::runtime::Runtime,
}

impl FakeSystemd {
    fn start(bus: &Bus, units: &[&str]) -> FakeSystemd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sd = Systemd::default();
        let conn = rt.block_on(serve_systemd(&bus.address, sd.clone(), units));
        FakeSystemd {
            sd,
            _conn: conn,
            _rt: rt,
        }
    }

    fn set(&self, unit: &str, state: &str) {
        self.sd
            .units
            .lock()
            .unwrap()
            .insert(unit.into(), state.into());
    }

    fn reboots(&self) -> usize {
        self.sd
            .started
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, _)| u == "reboot.target")
            .count()
    }
}

/// The stand-ins for the node's files and the daemon's configuration.
struct Host<'a> {
    node: &'a Node,
    dir: PathBuf,
    bus: &'a Bus,
}

/// A running `basalt-updated`, killed (SIGKILL, by PID) when dropped unless stopped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl<'a> Host<'a> {
    fn new(node: &'a Node, bus: &'a Bus) -> Host<'a> {
        let dir = node.dir.join("host");
        std::fs::create_dir_all(dir.join("etc/basalt/updater.d")).unwrap();
        std::fs::create_dir_all(dir.join("efivars")).unwrap();
        std::fs::write(
            dir.join("os-release"),
            "ID=basalt\nVERSION_ID=1.0.0\nBASALT_CHANNEL=stable\n",
        )
        .unwrap();
        let host = Host { node, dir, bus };
        host.booted(&node.v1.root_hash.to_hex(), Slot::A, 1);
        host
    }

    /// What basalt-init and the kernel say after booting `usrhash` from `slot`.
    fn booted(&self, usrhash: &str, slot: Slot, boot: u32) {
        let letter = slot.letter().to_ascii_lowercase();
        std::fs::write(
            self.dir.join("cmdline"),
            format!("console=ttyS0 usrhash={usrhash} basalt.slot={letter}\n"),
        )
        .unwrap();
        std::fs::write(
            self.dir.join("boot.env"),
            format!(
                "BASALT_DISK={}\nBASALT_USRHASH={usrhash}\n",
                self.node.disk().display()
            ),
        )
        .unwrap();
        std::fs::write(self.dir.join("boot_id"), format!("boot-{boot}\n")).unwrap();
    }

    /// The drop-in `50-test.toml`: the repository at `url`, the disk image, manual updates,
    /// no reboots by the daemon, plus `extra` TOML appended.
    fn configure(&self, url: &str, extra: &str) {
        let backend = match self.node.backend {
            BackendKind::Bls => "bls",
            BackendKind::GptPrio => "gptprio",
        };
        let esp = match self.node.esp_kind {
            EspKind::Dir => format!("esp = \"{}\"\n", self.node.dir.join("esp").display()),
            EspKind::Fat => String::new(),
        };
        let toml = format!(
            "[repository]\nurl = \"{url}\"\ntrust_root = \"{anchor}\"\n\
             [check]\ninitial_delay_secs = 3600\n\
             [update]\nauto_download = false\nauto_apply = false\n\
             [reboot]\nstrategy = \"off\"\n\
             [boot]\nbackend = \"{backend}\"\ndisk = \"{disk}\"\nkernel_options = \"console=ttyS0\"\n{esp}\
             [metrics]\nlisten = \"off\"\n\
             [http]\nread_timeout_secs = 3\nconnect_timeout_secs = 3\n{extra}",
            anchor = self.anchor().display(),
            disk = self.node.disk().display(),
        );
        std::fs::write(self.dir.join("etc/basalt/updater.d/50-test.toml"), toml).unwrap();
    }

    fn anchor(&self) -> PathBuf {
        self.node.dir.parent().unwrap().join("trust.json")
    }

    fn efivars(&self) -> PathBuf {
        self.dir.join("efivars")
    }

    /// Start `basalt-updated` and wait (bounded) until it answers on the bus.
    fn start(&self) -> Agent {
        let log = self.dir.join(format!(
            "agent-{}.log",
            std::fs::read_dir(&self.dir).unwrap().count()
        ));
        let child = Proc::new(env!("CARGO_BIN_EXE_basalt-updated"))
            .arg("--config-root")
            .arg(&self.dir)
            .arg("--state-dir")
            .arg(self.node.dir.join("state"))
            .arg("--boot-env")
            .arg(self.dir.join("boot.env"))
            .arg("--cmdline")
            .arg(self.dir.join("cmdline"))
            .arg("--os-release")
            .arg(self.dir.join("os-release"))
            .arg("--efivars")
            .arg(self.efivars())
            .arg("--boot-id")
            .arg(self.dir.join("boot_id"))
            .arg("--machine-id")
            .arg(self.dir.join("machine-id"))
            .args(["--bus-address", &self.bus.address])
            .env("BASALT_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start basalt-updated");
        let mut agent = Agent { child, log };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if basaltctl(self.bus, None, &["status", "--json"])
                .status
                .success()
            {
                return agent;
            }
            if let Some(st) = agent.child.try_wait().unwrap() {
                panic!("basalt-updated exited {st}: {}", agent.log_text());
            }
            assert!(
                Instant::now() < end,
                "basalt-updated never answered: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        basaltctl(self.bus, None, args)
    }

    fn status(&self) -> Value {
        let o = self.ctl(&["status", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn history(&self) -> Vec<Value> {
        let o = self.ctl(&["history", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Wait (bounded) for `status.state == want`.
    fn wait_state(&self, want: &str, secs: u64) -> Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.status();
            if v["state"] == want {
                return v;
            }
            assert!(Instant::now() < end, "never reached {want}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `basaltctl update` must fail with `exit` and the status must name `class` and `kind`.
    fn update_fails(&self, args: &[&str], exit: i32, class: &str, kind: &str, ctx: &str) -> Value {
        let mut all = vec!["update"];
        all.extend_from_slice(args);
        let o = self.ctl(&all);
        assert_eq!(code(&o), exit, "{ctx}: {}", text(&o));
        let v = self.status();
        assert_eq!(v["state"], "failed", "{ctx}: {v}");
        let name = v["last_error"]["name"].as_str().unwrap();
        let message = v["last_error"]["message"].as_str().unwrap();
        assert!(
            name.ends_with(&format!(".{class}")),
            "{ctx}: last_error {name}: {message}"
        );
        assert!(message.contains(kind), "{ctx}: {message}");
        v
    }
}

impl Agent {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, by PID; a clean stop within 30 s.
    fn stop(mut self) {
        let o = Proc::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output()
            .unwrap();
        assert!(o.status.success());
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "{st}: {}", self.log_text());
                return;
            }
            assert!(Instant::now() < end, "no stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (`kill -9`), by PID.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The boot loader's next choice on the node's disk (tries counted), then what basalt-init
/// says about it: a reboot.
fn reboot(host: &Host, boot: u32, releases: &[&SyntheticRelease]) -> Slot {
    let slot = host
        .node
        .boot_control()
        .boot_attempt()
        .unwrap()
        .expect("a bootable slot");
    let label = host.node.inventory().slot(slot).data.label.clone();
    let rel = releases
        .iter()
        .find(|r| label.contains(&r.manifest.version.to_string()))
        .unwrap_or_else(|| panic!("slot {slot} holds {label}"));
    host.booted(&rel.root_hash.to_hex(), slot, boot);
    slot
}

fn slot_json<'v>(status: &'v Value, slot: &str) -> &'v Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == slot)
        .unwrap()
}

/// The happy path on both boot-control backends: update over nginx, reboot into B, the health
/// gate passes (boot-complete.target and a unit), committed; B verified by `veritysetup`, A's
/// bytes unchanged until the commit.
#[test]
fn update_reboot_commit_on_both_backends() {
    let world = World::new();
    let v2 = world.release("2.0.0", 4 * MIB);
    world.publish(&v2, None);
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    for (name, backend, esp) in [
        ("bls", BackendKind::Bls, EspKind::Fat),
        ("gptprio", BackendKind::GptPrio, EspKind::Dir),
    ] {
        let bus = Bus::start();
        let systemd = FakeSystemd::start(&bus, &["boot-complete.target", "app.service"]);
        let node = Node::new(&world, name, backend, esp);
        let host = Host::new(&node, &bus);
        host.configure(
            &nginx.url(),
            "[health]\nunits = [\"app.service\"]\ndeadline_secs = 30\ninterval_secs = 1\n",
        );
        let before = node.snapshot();
        let agent = host.start();
        let v = host.status();
        assert_eq!(
            (v["state"].as_str(), v["current_version"].as_str()),
            (Some("idle"), Some("1.0.0")),
            "{name}: {v}"
        );
        let o = host.ctl(&["update"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let v = host.wait_state("staged", 30);
        assert_eq!(v["staged_version"], "2.0.0", "{name}: {v}");
        assert_eq!(v["next_boot_slot"], "B", "{name}: {v}");
        assert_eq!(node.snapshot(), before, "{name}: slot A changed");
        node.veritysetup_verify(Slot::B, &v2.root_hash);
        assert_eq!(node.state(Slot::B), SlotState::Valid, "{name}");
        agent.stop();

        assert_eq!(reboot(&host, 2, &[&node.v1, &v2]), Slot::B, "{name}");
        systemd.set("boot-complete.target", "active");
        systemd.set("app.service", "active");
        let agent = host.start();
        let v = host.wait_state("committed", 60);
        assert_eq!(
            (v["current_version"].as_str(), v["booted_slot"].as_str()),
            (Some("2.0.0"), Some("B")),
            "{name}: {v}"
        );
        assert_eq!(slot_json(&v, "B")["boot"], "good", "{name}: {v}");
        assert_eq!(
            node.boot_control().status().unwrap().slot(Slot::B).status,
            BootStatus::Good,
            "{name}"
        );
        assert_eq!(node.boot_control().status().unwrap().next, Some(Slot::B));
        assert!(
            host.history().iter().any(|h| h["kind"] == "committed"),
            "{name}: {:?}",
            host.history()
        );
        assert_eq!(systemd.reboots(), 0, "{name}: strategy off never reboots");
        agent.stop();
    }
}

/// Stage 2.0.0 on `host` (through the real daemon) and stop the daemon.
fn stage(host: &Host, ctx: &str) {
    let agent = host.start();
    let o = host.ctl(&["update"]);
    assert!(o.status.success(), "{ctx}: {}", text(&o));
    host.wait_state("staged", 30);
    agent.stop();
}

/// A failing health check after the reboot: the daemon marks B bad and asks systemd for the
/// reboot; the boot loader then picks A; the daemon reports the rollback with the failed
/// check's name, in `status` and `history`. A's bytes are the same as before the update.
#[test]
fn failing_health_marks_bad_and_rolls_back() {
    let world = World::new();
    let v2 = world.release("2.0.0", 4 * MIB);
    world.publish(&v2, None);
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let bus = Bus::start();
    let systemd = FakeSystemd::start(&bus, &["boot-complete.target", "app.service"]);
    let node = Node::new(&world, "health", BackendKind::Bls, EspKind::Fat);
    let host = Host::new(&node, &bus);
    host.configure(
        &nginx.url(),
        "[health]\nunits = [\"app.service\"]\ndeadline_secs = 10\ninterval_secs = 1\n",
    );
    let before = node.snapshot();
    stage(&host, "health");

    assert_eq!(reboot(&host, 2, &[&node.v1, &v2]), Slot::B);
    systemd.set("boot-complete.target", "active");
    systemd.set("app.service", "failed");
    let agent = host.start();
    let end = Instant::now() + Duration::from_secs(60);
    while systemd.reboots() == 0 {
        assert!(
            Instant::now() < end,
            "no reboot asked: {} {}",
            host.status(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The slots in the status are refreshed after the verdict (the reboot request may come
    // first): wait, bounded.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v = host.status();
        if v["next_boot_slot"] == "A" && slot_json(&v, "B")["boot"] == "bad" {
            break;
        }
        assert!(Instant::now() < end, "{v}\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        node.boot_control().status().unwrap().slot(Slot::B).status,
        BootStatus::Bad
    );
    agent.stop();

    assert_eq!(reboot(&host, 3, &[&node.v1, &v2]), Slot::A);
    let agent = host.start();
    let v = host.wait_state("rolled-back", 30);
    assert_eq!(
        (v["current_version"].as_str(), v["booted_slot"].as_str()),
        (Some("1.0.0"), Some("A")),
        "{v}"
    );
    let h = host.history();
    let rb = h
        .iter()
        .rev()
        .find(|e| e["kind"] == "rolled-back")
        .unwrap_or_else(|| panic!("no rollback in {h:?}"));
    assert!(
        rb["detail"].as_str().unwrap().contains("app.service"),
        "{rb}"
    );
    let o = host.ctl(&["history"]);
    assert!(text(&o).contains("app.service"), "{}", text(&o));
    // The booted slot's bytes and boot state are those of before the update.
    assert_eq!(node.snapshot(), before);
    agent.stop();
}

/// basalt-init refused the new slot (a failure record in efivarfs) and the boot loader fell
/// back after the only try: the daemon on A reports the rollback with basalt-init's reason,
/// in `status` and `history`, and clears the record.
#[test]
fn init_failure_record_explains_the_fallback() {
    use basalt_initramfs::failrec;
    let world = World::new();
    let v2 = world.release("2.0.0", 2 * MIB);
    world.publish(&v2, None);
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let bus = Bus::start();
    let _systemd = FakeSystemd::start(&bus, &["boot-complete.target"]);
    let node = Node::new(&world, "failrec", BackendKind::GptPrio, EspKind::Dir);
    let host = Host::new(&node, &bus);
    host.configure(&nginx.url(), "");
    // tries = 1 (a second drop-in overriding the first): one failed boot falls back.
    let conf = host.dir.join("etc/basalt/updater.d/60-tries.toml");
    std::fs::write(&conf, "[update]\ntries = 1\n").unwrap();
    stage(&host, "failrec");

    // The firmware boots B; basalt-init refuses it, leaves its record, reboots.
    assert_eq!(reboot(&host, 2, &[&node.v1, &v2]), Slot::B);
    let cmdline = std::fs::read_to_string(host.dir.join("cmdline")).unwrap();
    let record = failrec::Record::new(
        basalt_initramfs::reason::Reason::UsrhashNotSigned,
        &cmdline,
        Some(1.25),
        "usrhash is not signed by the initramfs trust root",
    );
    let var = host.efivars().join(failrec::var_file_name());
    std::fs::write(&var, failrec::efivarfs_content(None, &record)).unwrap();
    assert_eq!(reboot(&host, 3, &[&node.v1, &v2]), Slot::A);

    let agent = host.start();
    let v = host.wait_state("rolled-back", 30);
    assert_eq!(v["current_version"], "1.0.0", "{v}");
    let h = host.history();
    let rb = h
        .iter()
        .rev()
        .find(|e| e["kind"] == "rolled-back")
        .unwrap_or_else(|| panic!("no rollback in {h:?}"));
    let detail = rb["detail"].as_str().unwrap();
    assert!(
        detail.contains(basalt_initramfs::reason::Reason::UsrhashNotSigned.as_str()),
        "{rb}"
    );
    assert!(detail.contains("not signed"), "{rb}");
    assert!(!var.exists(), "the failure record was not cleared");
    agent.stop();
}

/// What a network does wrong, through the daemon: a 404, corrupted bytes, a truncated
/// artifact, a stalled server (read timeout), a connection dropped mid-body. Each failure is a
/// typed error in `basaltctl`'s exit code and `status` naming the URL, slot A unchanged, slot
/// B not bootable (each case on a fresh node, so the fault hits the same bytes). Then the
/// network behaves again and sends more bytes than declared: the daemon completes the update
/// of the node whose connection dropped, resuming with a `Range` request from what it had
/// verified, and ignores the extra bytes.
#[test]
fn network_faults_through_the_daemon() {
    let world = World::new();
    let v2 = world.release("2.0.0", 4 * MIB);
    let report = world.publish(&v2, None);
    let blob = basalt_manifest::repo::blob_path(&report.artifacts[0].blob);
    let size = report.artifacts[0].compressed_size;
    let server = FaultyServer::start(&world.repo).unwrap();
    let bus = Bus::start();
    // (case, fault, exit code, class, the engine's kind); the dropped connection last: its
    // node is the one the recovery below resumes.
    let cases = [
        ("missing", Fault::Status(404), 20, "Network", "NotFound"),
        (
            "corrupted",
            Fault::FlipByte(size * 3 / 4),
            21,
            "Integrity",
            "IntegrityMismatch",
        ),
        (
            "truncated",
            Fault::Truncate(size - 10),
            20,
            "Network",
            "LengthMismatch",
        ),
        (
            "stalled",
            Fault::StallAfter(size / 3),
            20,
            "Network",
            "Network",
        ),
        (
            "dropped",
            Fault::DropAfter(size / 2),
            20,
            "Network",
            "LengthMismatch",
        ),
    ];
    let mut last = None;
    for (name, fault, exit, class, kind) in cases {
        let node = Node::new(&world, name, BackendKind::Bls, EspKind::Fat);
        let host = Host::new(&node, &bus);
        host.configure(&server.url(), "");
        let before = node.snapshot();
        let agent = host.start();
        server.clear_faults();
        server.on(&blob, fault);
        let started = Instant::now();
        let v = host.update_fails(&[], exit, class, kind, name);
        assert!(
            v["last_error"]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "{name}: the URL is named: {v}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{name}");
        node.assert_safe(&before, name);
        assert_ne!(v["next_boot_slot"], "B", "{name}: {v}");
        agent.stop();
        last = Some((node, before));
    }
    let (node, before) = last.unwrap();
    let host = Host::new(&node, &bus);
    host.configure(&server.url(), "");
    let agent = host.start();
    server.clear_faults();
    server.on(&blob, Fault::ExtraBytes(64 << 10));
    let seen = server.requests_for(&blob).len();
    let o = host.ctl(&["update"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = host.wait_state("staged", 30);
    assert_eq!(v["staged_version"], "2.0.0");
    node.veritysetup_verify(Slot::B, &v2.root_hash);
    assert_eq!(node.snapshot(), before);
    let retry = &server.requests_for(&blob)[seen..];
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert!(
        retry[0]
            .range
            .as_deref()
            .unwrap_or("")
            .starts_with("bytes=")
            && retry[0].status == 206,
        "no resume with a range: {retry:?}"
    );
    agent.stop();
}

/// `kill -9` of the daemon at several points of an update: mid-body (the server stalls after
/// 90 % of the blob, past the first periodic checkpoint, 32 MiB of /usr: the payload is
/// 40 MiB), and after the download before the apply. Each time slot A is unchanged and B not bootable; the restarted daemon answers, and
/// `basaltctl update` finishes: mid-body with one `Range` request from a frame boundary,
/// after the download without fetching the blob again.
#[test]
fn kill_9_at_several_points_then_resume() {
    let world = World::new();
    let v2 = world.release("2.0.0", 40 * MIB);
    let report = world.publish(&v2, None);
    // The /usr image: the largest artifact.
    let usr = report
        .artifacts
        .iter()
        .max_by_key(|a| a.compressed_size)
        .unwrap();
    let blob = basalt_manifest::repo::blob_path(&usr.blob);
    let size = usr.compressed_size;
    let server = FaultyServer::start(&world.repo).unwrap();
    let bus = Bus::start();
    let spec = basalt_disk::LayoutSpec {
        disk_size: 128 * MIB,
        usr_size: 48 * MIB,
        verity_size: MIB,
        ..common::spec()
    };
    let node = Node::with_spec(&world, "kill", BackendKind::GptPrio, EspKind::Dir, &spec);
    let host = Host::new(&node, &bus);
    // A long read timeout: the stall must outlast the kill.
    host.configure(&server.url(), "");
    let conf = host.dir.join("etc/basalt/updater.d/60-slow.toml");
    std::fs::write(&conf, "[http]\nread_timeout_secs = 120\n").unwrap();
    let before = node.snapshot();
    let journal = node.dir.join("state/download.json");

    // 1. Mid-body: the server stalls after 90 % of the blob; once the journal records a
    // checkpoint, the daemon is killed.
    server.on(&blob, Fault::StallAfter(size / 10 * 9));
    let agent = host.start();
    let mut update = Proc::new(env!("CARGO_BIN_EXE_basaltctl"))
        .args(["--bus-address", &bus.address, "update"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let v = host.status();
        let checkpointed = std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|j| j["frames_done"].as_object().cloned())
            .is_some_and(|m| m.values().any(|n| n.as_u64().unwrap_or(0) > 0));
        if checkpointed {
            break;
        }
        assert!(Instant::now() < end, "no progress: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill9();
    let _ = update.wait();
    node.assert_safe(&before, "killed mid-body");
    server.clear_faults();
    let seen = server.requests_for(&blob).len();
    let agent = host.start();
    // The restarted daemon carries on with the operator's interrupted `update` by itself (or,
    // had it not, the same command would): it ends staged.
    let v = host.status();
    if ["idle", "available", "failed"].contains(&v["state"].as_str().unwrap()) {
        let o = host.ctl(&["update"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let v = host.wait_state("staged", 60);
    assert_eq!(v["staged_version"], "2.0.0");
    node.veritysetup_verify(Slot::B, &v2.root_hash);
    assert_eq!(node.snapshot(), before);
    let retry = &server.requests_for(&blob)[seen..];
    assert_eq!(retry.len(), 1, "{retry:?}");
    let range = retry[0].range.clone().unwrap_or_default();
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-" && retry[0].status == 206,
        "the resume did not start from a frame boundary: {retry:?}"
    );
    // Withdraw it (cancel never touches A), download again and stop before the apply.
    let o = host.ctl(&["cancel"]);
    assert!(o.status.success(), "{}", text(&o));
    let end = Instant::now() + Duration::from_secs(30);
    while !["idle", "available"].contains(&host.status()["state"].as_str().unwrap()) {
        assert!(Instant::now() < end, "{}", host.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    node.assert_safe(&before, "cancelled");
    let o = host.ctl(&["update", "--download-only"]);
    assert!(o.status.success(), "{}", text(&o));
    host.wait_state("downloaded", 60);
    // 2. After the download, before the apply.
    agent.kill9();
    node.assert_safe(&before, "killed after the download");
    let seen = server.requests_for(&blob).len();
    let agent = host.start();
    let o = host.ctl(&["update"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = host.wait_state("staged", 30);
    assert_eq!(v["staged_version"], "2.0.0");
    assert_eq!(
        server.requests_for(&blob).len(),
        seen,
        "the blob was fetched again"
    );
    node.veritysetup_verify(Slot::B, &v2.root_hash);
    assert_eq!(node.snapshot(), before);
    agent.stop();
}

/// SHA-256 of a whole file (the disk image: a refused check writes no byte of it).
fn file_sha(path: &std::path::Path) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &std::fs::read(path).unwrap())
        .as_ref()
        .to_vec()
}

/// A repository the attacker owns, through the daemon: a flipped byte, below threshold,
/// expired, wrong OS / architecture / channel, a replayed older head, a downgrade (refused
/// unless overridden; the override logged). Each refusal: `basaltctl check` exits with the
/// class's code, `status` names the class and the engine's kind, the disk image is not
/// written at all.
#[test]
fn repository_attacks_through_the_daemon() {
    use basalt_manifest::chrono::{TimeDelta, Utc};
    use basalt_manifest::{repo, sign_release, Manifest};
    let world = World::new();
    let v2 = world.release("2.0.0", 2 * MIB);
    world.publish(&v2, Some(10));
    let head_path = world
        .repo
        .join(repo::head_path("stable", "x86_64").unwrap());
    let head = std::fs::read(&head_path).unwrap();
    let manifest: Manifest = basalt_manifest::verify_release(
        &head,
        &basalt_manifest::TrustRoot::from_initial_envelope(&std::fs::read(&world.anchor).unwrap())
            .unwrap(),
        &basalt_manifest::Policy::new(Utc::now()),
    )
    .unwrap()
    .manifest;
    let (k1, k2) = (common::key(1), common::key(2));
    let signed =
        |m: &Manifest, keys: &[&basalt_manifest::SigningKey]| sign_release(m, keys).unwrap();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let bus = Bus::start();
    let node = Node::new(&world, "attacks", BackendKind::Bls, EspKind::Fat);
    let host = Host::new(&node, &bus);
    host.configure(&nginx.url(), "");
    let agent = host.start();
    let disk = file_sha(node.disk());
    let before = node.snapshot();
    let refused = |bytes: &[u8], exit: i32, class: &str, kind: &str, what: &str| {
        std::fs::write(&head_path, bytes).unwrap();
        let o = host.ctl(&["check"]);
        assert_eq!(code(&o), exit, "{what}: {}", text(&o));
        let v = host.status();
        assert_eq!(v["state"], "failed", "{what}: {v}");
        let name = v["last_error"]["name"].as_str().unwrap();
        let message = v["last_error"]["message"].as_str().unwrap();
        assert!(
            name.ends_with(&format!(".{class}")),
            "{what}: {name}: {message}"
        );
        assert!(message.contains(kind), "{what}: {message}");
        assert_eq!(file_sha(node.disk()), disk, "{what}: the disk was written");
        node.assert_safe(&before, what);
    };
    let mut flipped = head.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    refused(
        &flipped,
        21,
        "Integrity",
        "SignatureRefused",
        "flipped byte",
    );
    refused(
        &signed(&manifest, &[&k1]),
        21,
        "Integrity",
        "SignatureRefused",
        "below threshold",
    );
    let mut expired = manifest.clone();
    expired.issued_at = Utc::now() - TimeDelta::days(10);
    expired.expires_at = Utc::now() - TimeDelta::days(1);
    refused(
        &signed(&expired, &[&k1, &k2]),
        22,
        "Policy",
        "Expired",
        "expired",
    );
    for (what, edit) in [
        (
            "wrong os",
            (|m: &mut Manifest| m.os = "flatcar".into()) as fn(&mut Manifest),
        ),
        ("wrong arch", |m: &mut Manifest| m.arch = "aarch64".into()),
        ("wrong channel", |m: &mut Manifest| {
            m.channel = "beta".into()
        }),
    ] {
        let mut m = manifest.clone();
        edit(&mut m);
        refused(&signed(&m, &[&k1, &k2]), 22, "Policy", "WrongTarget", what);
    }
    // The real head (sequence 10): available. Then a replay of an older signed head.
    std::fs::write(&head_path, &head).unwrap();
    let o = host.ctl(&["check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(host.status()["available_version"], "2.0.0");
    let mut older = manifest.clone();
    older.sequence = 9;
    refused(
        &signed(&older, &[&k1, &k2]),
        22,
        "Policy",
        "Replay",
        "replayed older head",
    );
    // A downgrade (an older version, a newer sequence, published with the publisher's
    // override): refused, then installed with the operator's override.
    let v09 = world.release("0.9.0", 2 * MIB);
    world.publish_on(&v09, "stable", Some(11), true).unwrap();
    let down = std::fs::read(&head_path).unwrap();
    refused(&down, 22, "Policy", "Downgrade", "downgrade");
    let o = host.ctl(&["update"]);
    assert_ne!(
        code(&o),
        0,
        "a downgrade without the override: {}",
        text(&o)
    );
    assert_eq!(
        file_sha(node.disk()),
        disk,
        "downgrade: the disk was written"
    );
    let o = host.ctl(&["update", "--allow-downgrade"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = host.wait_state("staged", 30);
    assert_eq!(v["staged_version"], "0.9.0", "{v}");
    assert_eq!(node.snapshot(), before);
    let log = agent.log_text();
    assert!(
        log.contains("allow-downgrade"),
        "the override is not logged: {log}"
    );
    agent.stop();
}

/// The node's own limits, through the daemon: a release whose /usr does not fit the slot,
/// and one whose kernel does not fit the ESP (a full disk at staging). Both are `Disk`
/// failures naming the cause; A unchanged, B not bootable.
#[test]
fn slot_too_small_and_full_esp_through_the_daemon() {
    use basalt_image::release::synthetic::{synthetic_release, SyntheticSpec};
    use basalt_manifest::chrono::Utc;
    let world = World::new();
    let bus = Bus::start();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    // /usr of 10 MiB for an 8 MiB slot.
    let big = world.release("2.0.0", 10 * MIB);
    world.publish(&big, None);
    let node = Node::new(&world, "small", BackendKind::Bls, EspKind::Fat);
    let host = Host::new(&node, &bus);
    host.configure(&nginx.url(), "");
    let before = node.snapshot();
    let agent = host.start();
    host.update_fails(&[], 23, "Disk", "SlotTooSmall", "slot too small");
    node.assert_safe(&before, "slot too small");
    agent.stop();
    // A 9 MiB kernel for an 8 MiB ESP.
    let mut spec = SyntheticSpec::small("3.0.0", Utc::now()).unwrap();
    spec.usr_len = MIB;
    spec.kernel_len = 9 * MIB;
    spec.initrd_len = 200 << 10;
    let fat = synthetic_release(
        &world.dir.join("release-3.0.0"),
        &spec,
        &[&world.keys[0], &world.keys[1]],
    )
    .unwrap();
    world.publish(&fat, None);
    let node = Node::new(&world, "espfull", BackendKind::Bls, EspKind::Fat);
    let host = Host::new(&node, &bus);
    host.configure(&nginx.url(), "");
    let before = node.snapshot();
    let agent = host.start();
    let v = host.update_fails(&[], 23, "Disk", "", "full ESP");
    let message = v["last_error"]["message"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("space") || message.contains("full"),
        "{message}"
    );
    node.assert_safe(&before, "full ESP");
    agent.stop();
}

/// `basaltctl extensions list | pin | unpin` through the real `basalt-updated` and its real
/// engine, on a store holding real signed extension images (issue 10): the listing (sets per
/// OS version with each extension's version, the pins), a pin persisted across a daemon
/// restart, each refusal with its exit code (an unknown name 30, a version not staged 31, a
/// version that does not fit the booted OS 32 naming both levels, a bad version 17), and a
/// node-image-only update through the daemon that keeps the pinned version on a compatible
/// new OS — and refuses, naming the extension, one of another level.
#[test]
fn extensions_list_pin_unpin_and_node_image_only_through_the_daemon() {
    use common::{build_ext, Ext};
    let world = World::new();
    let bus = Bus::start();
    let _systemd = FakeSystemd::start(&bus, &["boot-complete.target"]);
    let node = Node::new(&world, "ext", BackendKind::Bls, EspKind::Fat);
    let host = Host::new(&node, &bus);
    std::fs::write(
        host.dir.join("os-release"),
        "ID=basalt\nVERSION_ID=1.0.0\nSYSEXT_LEVEL=1\nBASALT_CHANNEL=stable\n",
    )
    .unwrap();
    host.configure(&world.repo.display().to_string(), "");
    let store = basalt_sysext::Store::new(node.config.extensions_dir());
    let put = |os: &str, image: &std::path::Path| {
        let set = store.set_dir(&os.parse().unwrap());
        std::fs::create_dir_all(&set).unwrap();
        std::fs::copy(image, set.join(image.file_name().unwrap())).unwrap();
    };
    put("1.0.0", &build_ext(&world.dir, &Ext::tools("1.0.0")));
    let tools2 = build_ext(&world.dir, &Ext::tools("2.0.0"));
    put("1.5.0", &tools2);
    let level2 = Ext {
        level: Some("2"),
        ..Ext::tools("3.0.0")
    };
    put("1.6.0", &build_ext(&world.dir, &level2));

    let agent = host.start();
    let list = |host: &Host| -> Value {
        let o = host.ctl(&["extensions", "list", "--json"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let l = list(&host);
    assert_eq!(
        l["staged"],
        serde_json::json!([
            {"os_version": "1.0.0", "extensions": [{"name": "tools", "version": "1.0.0"}]},
            {"os_version": "1.5.0", "extensions": [{"name": "tools", "version": "2.0.0"}]},
            {"os_version": "1.6.0", "extensions": [{"name": "tools", "version": "3.0.0"}]},
        ]),
        "{l}"
    );
    assert_eq!(l["pins"], serde_json::json!([]), "{l}");
    for (args, exit, needle) in [
        (
            &["extensions", "pin", "nope", "1.0.0"][..],
            30,
            "named nope",
        ),
        (
            &["extensions", "pin", "tools", "9.0.0"],
            31,
            "staged versions: 1.0.0, 2.0.0, 3.0.0",
        ),
        (
            &["extensions", "pin", "tools", "3.0.0"],
            32,
            "SYSEXT_LEVEL=2, the booted OS has SYSEXT_LEVEL=1",
        ),
        (
            &["extensions", "pin", "tools", "two"],
            17,
            "extension version",
        ),
        (
            &["extensions", "pin", "tools", "2.0.0"],
            0,
            "pinned tools 2.0.0",
        ),
    ] {
        let o = host.ctl(args);
        assert_eq!(code(&o), exit, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    agent.stop();
    let agent = host.start();
    assert_eq!(
        list(&host)["pins"],
        serde_json::json!([{"name": "tools", "version": "2.0.0"}]),
        "the pin survives a restart"
    );
    let o = host.ctl(&["extensions", "unpin", "tools"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(list(&host)["pins"], serde_json::json!([]));
    let o = host.ctl(&["extensions", "pin", "tools", "2.0.0"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    agent.stop();

    // Node-image-only (a second drop-in): a release of level 2 cannot keep tools 2.0 —
    // refused naming it and both levels; one of level 1 keeps it (its own tools 3.0 unused).
    std::fs::write(
        host.dir
            .join("etc/basalt/updater.d/60-node-image-only.toml"),
        "[update]\nnode_image_only = true\n",
    )
    .unwrap();
    let v2 = world.release_with_extensions("2.0.0", Some("2"), Vec::new());
    world.publish(&v2, None);
    let agent = host.start();
    let v = host.update_fails(
        &["--download-only"],
        22,
        "Policy",
        "extension tools of 1.0.0 cannot be kept",
        "level 2",
    );
    let message = v["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("SYSEXT_LEVEL=1, the booted OS has SYSEXT_LEVEL=2"),
        "{message}"
    );
    assert_eq!(node.state(Slot::B), SlotState::Installing);
    let v3 = world.release_with_extensions(
        "2.0.1",
        Some("1"),
        vec![build_ext(&world.dir, &Ext::tools("3.0.1"))],
    );
    world.publish(&v3, None);
    let o = host.ctl(&["update", "--download-only"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    host.wait_state("downloaded", 30);
    let kept = store.image_path(&"2.0.1".parse().unwrap(), "tools");
    assert_eq!(
        std::fs::read(kept).unwrap(),
        std::fs::read(&tools2).unwrap()
    );
    let l = list(&host);
    assert!(
        l["staged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["os_version"] == "2.0.1"
                && s["extensions"] == serde_json::json!([{"name": "tools", "version": "2.0.0"}])),
        "{l}"
    );
    // The download waits: the pins may not change under it.
    let o = host.ctl(&["extensions", "unpin", "tools"]);
    assert_eq!(code(&o), 12, "{}", text(&o));
    agent.stop();
}
