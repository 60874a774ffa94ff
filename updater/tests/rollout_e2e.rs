//! Server mode end to end: the real `basalt-updated` binary (on a private `dbus-daemon`, with
//! a fake systemd that records the reboot) checks in with the real fleet server
//! (`basalt-rollout`'s library, in-process on 127.0.0.1, SQLite, serving the release
//! repository), is told to update by `pool upgrade --node-image-only`, writes the release into
//! slot B of its disk image, reboots when the server says so (after its drain command),
//! comes back on slot B, passes its health gate and reports healthy — and the server sees each
//! step. A server that offers a release the node's keys did not sign cannot install it: the
//! node refuses and says why, and its inactive slot stays empty.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_rollout::auth::SystemRandom;
use basalt_rollout::clock::SystemClock;
use basalt_rollout::server::{self, Server};
use basalt_rollout::service::{self, Config, Service};
use basalt_rollout::store::{self, Backend};
use basalt_updater::pipeline::BackendKind;
use common::{EspKind, Node, World, MIB};
use serde_json::{json, Value};
use support::bus::{serve_systemd, Bus, Systemd};

/// The fleet server on 127.0.0.1 with its own runtime; the repository is `repo`, the release
/// keys are those of `trust_root` (an initial trust-root envelope).
struct Fleet {
    rt: tokio::runtime::Runtime,
    url: String,
    operator: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _db: tempfile::TempDir,
}

impl Fleet {
    fn start(repo: &Path, trust_root: &[u8]) -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> =
            Arc::new(store::sqlite::Sqlite::open(&db.path().join("fleet.db")).unwrap());
        store::migrations::migrate(backend.as_ref(), basalt_manifest::chrono::Utc::now()).unwrap();
        let operator =
            service::create_operator_token(backend.as_ref(), &SystemRandom::default(), "alice")
                .unwrap()
                .token;
        let listener = rt.block_on(server::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let service = Service::new(
            backend,
            Arc::new(SystemClock),
            Arc::new(SystemRandom::default()),
            Config {
                repository_url: format!("{url}repo/"),
                repository_dir: Some(repo.to_owned()),
                trust_root: basalt_manifest::TrustRoot::from_initial_envelope(trust_root).unwrap(),
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Server::new(service, Some(repo.to_owned()));
        rt.spawn(app.serve(listener, async {
            let _ = rx.await;
        }));
        Fleet {
            rt,
            url,
            operator,
            stop: Some(tx),
            _db: db,
        }
    }

    fn call(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let token = self.operator.clone();
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        self.rt.block_on(async move {
            use http_body_util::BodyExt;
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let req = hyper::Request::builder()
                .method(method)
                .uri(url)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
                .await
                .unwrap()
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice(&bytes)
                    .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
            )
        })
    }

    fn op(&self, method: &str, path: &str, body: &Value) -> Value {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        let (status, answer) = self.call(method, path, bytes);
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    }

    fn status(&self, pool: &str) -> Value {
        self.op("GET", &format!("api/v1/pools/{pool}/status"), &Value::Null)
    }

    /// Waits (bounded) until the pool's status satisfies `f`.
    fn wait(&self, what: &str, node: &Agent, f: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(180);
        loop {
            let s = self.status("web");
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "never reached {what}: {s:#}\nbasalt-updated said:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The node's files and the running `basalt-updated`.
struct Agent {
    dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn new(dir: &Path) -> Agent {
        std::fs::create_dir_all(dir).unwrap();
        Agent {
            dir: dir.to_owned(),
            child: None,
            log: dir.join("basalt-updated.log"),
        }
    }

    /// What the kernel command line and basalt-init's boot.env say for a boot of `usrhash`.
    fn boot(&self, disk: &Path, usrhash: &str, slot: &str, boot_id: &str) {
        std::fs::write(
            self.dir.join("cmdline"),
            format!("console=ttyS0 usrhash={usrhash} basalt.slot={slot}\n"),
        )
        .unwrap();
        std::fs::write(
            self.dir.join("boot.env"),
            format!("BASALT_DISK={}\nBASALT_USRHASH={usrhash}\n", disk.display()),
        )
        .unwrap();
        std::fs::write(self.dir.join("boot_id"), format!("{boot_id}\n")).unwrap();
    }

    fn start(&mut self, bus: &Bus) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let d = &self.dir;
        let child = Proc::new(env!("CARGO_BIN_EXE_basalt-updated"))
            .arg("--config-root")
            .arg(d)
            .arg("--boot-env")
            .arg(d.join("boot.env"))
            .arg("--os-release")
            .arg(d.join("os-release"))
            .arg("--cmdline")
            .arg(d.join("cmdline"))
            .arg("--efivars")
            .arg(d.join("efivars"))
            .arg("--boot-id")
            .arg(d.join("boot_id"))
            .arg("--machine-id")
            .arg(d.join("machine-id"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--bus-address", &bus.address])
            .env("BASALT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGTERM by PID, bounded wait.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Proc::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("basalt-updated did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Only the process this test started, by its handle.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A world with 2.0.0 published, a node on 1.0.0 (BLS, ESP folder), a fleet server serving
/// the repository, pool `web` (check-ins every second) and the node's configuration, trusting
/// the keys of `node_trust` (the world's own when `None`).
struct Setup {
    _world: World,
    node: Node,
    fleet: Fleet,
    agent: Agent,
    v2_hash: String,
}

fn setup(name: &str, node_trust: Option<&Path>) -> Setup {
    let world = World::new();
    let node = Node::new(&world, name, BackendKind::Bls, EspKind::Dir);
    let v2 = world.release("2.0.0", 2 * MIB);
    world.publish(&v2, None);
    let anchor = std::fs::read(&world.anchor).unwrap();
    let fleet = Fleet::start(&world.repo, &anchor);
    fleet.op(
        "POST",
        "api/v1/pools",
        &json!({"name": "web", "channel": "stable", "arch": "x86_64", "check_in_interval_secs": 1}),
    );
    let enroll = fleet.op("POST", "api/v1/pools/web/enroll-tokens", &Value::Null)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = std::fs::read(
        world
            .repo
            .join(basalt_manifest::repo::head_path("stable", "x86_64").unwrap()),
    )
    .unwrap();
    let (status, answer) = fleet.call("POST", "api/v1/channels/stable/x86_64/releases", head);
    assert_eq!(status, 200, "publishing 2.0.0 into the server: {answer}");

    let agent = Agent::new(&node.dir.join("agent"));
    let d = &agent.dir;
    std::fs::write(d.join("enroll-token"), format!("{enroll}\n")).unwrap();
    std::fs::write(
        d.join("os-release"),
        "NAME=Basalt\nID=basalt\nVERSION_ID=1.0.0\nBASALT_CHANNEL=stable\n",
    )
    .unwrap();
    std::fs::write(d.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let etc = d.join("etc/basalt/updater.d");
    std::fs::create_dir_all(&etc).unwrap();
    let trust = node_trust.unwrap_or(&world.anchor);
    std::fs::write(
        etc.join("50-test.toml"),
        format!(
            r#"[server]
url = "{url}"
pool = "web"
node_id = "node-{name}"
enroll_token_file = "{dir}/enroll-token"
pre_reboot = ["/bin/sh", "-c", "echo drained > {dir}/drained"]

[repository]
trust_root = "{trust}"

[check]
initial_delay_secs = 0
jitter_secs = 0

[boot]
esp = "{esp}"

[health]
deadline_secs = 60
interval_secs = 1

[metrics]
listen = "off"
"#,
            url = fleet.url,
            dir = d.display(),
            trust = trust.display(),
            esp = node.dir.join("esp").display(),
        ),
    )
    .unwrap();
    agent.boot(node.disk(), &node.v1.root_hash.to_hex(), "a", "boot-1");
    Setup {
        v2_hash: v2.root_hash.to_hex(),
        _world: world,
        node,
        fleet,
        agent,
    }
}

fn started(sd: &Systemd) -> Vec<String> {
    sd.started
        .lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.clone())
        .collect()
}

#[test]
fn a_node_checks_in_is_upgraded_by_the_pool_rollout_and_reports_healthy() {
    let bus = Bus::start();
    let sd = Systemd::default();
    sd.units
        .lock()
        .unwrap()
        .insert("boot-complete.target".into(), "active".into());
    // The fake systemd answers from this runtime's worker while the test thread waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _systemd = rt.block_on(serve_systemd(
        &bus.address,
        sd.clone(),
        &["boot-complete.target"],
    ));
    let mut s = setup("e2e", None);
    let before = s.node.snapshot();
    s.agent.start(&bus);

    // Enrolled and checking in; no rollout: nothing moves.
    let st = s.fleet.wait("the node enrolled on 1.0.0", &s.agent, |v| {
        v["versions"] == json!({"1.0.0": 1})
    });
    assert_eq!(st["pool"]["nodes"], 1, "{st:#}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.node.state(Slot::B),
        SlotState::Empty,
        "no update without a rollout"
    );
    assert!(started(&sd).is_empty());
    // An operator's check on the node does not start an update behind the server's back.
    let o = support::bus::basaltctl(&bus, None, &["check"]);
    assert_ne!(support::bus::code(&o), 0);
    assert!(
        support::bus::text(&o).contains("server mode"),
        "{}",
        support::bus::text(&o)
    );
    let token = std::fs::metadata(s.agent.dir.join("state/fleet-token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(token.permissions().mode() & 0o777, 0o600);

    // The operator rolls 2.0.0 out (what `basalt-rollout pool upgrade web --node-image-only
    // --to 2.0.0` sends).
    let r = s.fleet.op(
        "POST",
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "to": "2.0.0", "waves": [{"after_secs": 0, "percent": 100}], "soak_secs": 1}),
    );
    assert_eq!(r["target"]["version"], "2.0.0", "{r:#}");
    // Told to update: downloads, verifies, stages; told to reboot: drains, then reboots.
    let end = Instant::now() + Duration::from_secs(180);
    while !started(&sd).iter().any(|u| u == "reboot.target") {
        assert!(Instant::now() < end, "no reboot asked:\n{}", s.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.agent.dir.join("drained").exists(),
        "the pre-reboot command ran first"
    );
    s.node.veritysetup_verify(Slot::B, &s.world_v2_root());
    assert_eq!(
        s.node.snapshot(),
        before,
        "slot A is untouched by the update"
    );
    // The rollout's --node-image-only came with the offer and is what the agent staged by
    // (its own update.node_image_only is unset here, i.e. false).
    let status: Value = serde_json::from_slice(
        &std::fs::read(s.agent.dir.join("state/updater/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        status["machine"]["state"]["target"]["release"]["node_image_only"],
        json!(true),
        "{status:#}"
    );
    let st = s.fleet.status("web");
    assert_eq!(st["lock_holders"], json!(["node-e2e"]), "{st:#}");
    assert_eq!(st["rollout"]["unavailable"], 1, "{st:#}");
    s.agent.stop();

    // The boot loader boots the staged entry (one try used); basalt-init records slot B.
    assert_eq!(s.node.boot_control().boot_attempt().unwrap(), Some(Slot::B));
    s.agent
        .boot(s.node.disk(), &s.v2_hash.clone(), "b", "boot-2");
    s.agent.start(&bus);
    let st = s.fleet.wait("the node healthy on 2.0.0", &s.agent, |v| {
        v["versions"] == json!({"2.0.0": 1}) && v["rollout"]["stages"]["healthy"] == 1
    });
    assert_eq!(st["lock_holders"], json!([]), "{st:#}");
    let kinds: Vec<String> = st["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    for k in ["downloaded", "staged", "rebooted", "healthy"] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            1,
            "{k} recorded once: {st:#}"
        );
    }
    let boot = s.node.boot_control().status().unwrap();
    assert_eq!(boot.next, Some(Slot::B));
    assert_eq!(
        boot.slot(Slot::B).status,
        BootStatus::Good,
        "the health gate blessed slot B"
    );
    s.fleet.wait("the rollout complete", &s.agent, |v| {
        v["rollout"]["complete"] == true
    });
    s.agent.stop();
}

#[test]
fn a_release_the_node_does_not_trust_is_refused_whatever_the_server_says() {
    let bus = Bus::start();
    let sd = Systemd::default();
    // The fake systemd answers from this runtime's worker while the test thread waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _systemd = rt.block_on(serve_systemd(&bus.address, sd.clone(), &[]));
    // The node trusts other keys than the ones the server (and the repository) use: to this
    // node, the server is offering bytes nobody it trusts signed.
    let other = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (7..=9).map(common::key).collect();
    let publics: Vec<_> = keys
        .iter()
        .map(basalt_manifest::SigningKey::public_key)
        .collect();
    let root = basalt_manifest::sign_trust_root(
        &basalt_manifest::TrustRootDocument::new(1, 2, &publics, None),
        &[&keys[0], &keys[1]],
    )
    .unwrap();
    let other_root = other.path().join("root.json");
    std::fs::write(&other_root, root).unwrap();
    let mut s = setup("refuse", Some(&other_root));
    let before = s.node.snapshot();
    s.agent.start(&bus);
    s.fleet
        .wait("the node enrolled", &s.agent, |v| v["pool"]["nodes"] == 1);
    s.fleet.op(
        "POST",
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "waves": [{"after_secs": 0, "percent": 100}], "halt_at_percent": 50}),
    );
    let st = s.fleet.wait("the node's refusal reported", &s.agent, |v| {
        v["rollout"]["stages"]["failed"] == 1
    });
    let reasons = st.to_string();
    assert!(
        reasons.contains("signature") || reasons.contains("Signature"),
        "the reason names the signature check: {st:#}"
    );
    assert_eq!(
        s.node.state(Slot::B),
        SlotState::Empty,
        "nothing was written"
    );
    s.node.assert_safe(&before, "slot A");
    assert!(started(&sd).is_empty(), "no reboot");
    s.agent.stop();
}

/// The staged release boots but its health gate fails: the node rolls back by itself, comes
/// back on slot A and reports `rolled-back` with the reason; with one node, that is the whole
/// rollout: it halts, saying why.
#[test]
fn a_failed_health_gate_rolls_back_and_halts_the_rollout() {
    let bus = Bus::start();
    let sd = Systemd::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _systemd = rt.block_on(serve_systemd(
        &bus.address,
        sd.clone(),
        &["boot-complete.target"],
    ));
    let mut s = setup("rollback", None);
    std::fs::write(
        s.agent.dir.join("etc/basalt/updater.d/60-health.toml"),
        "[health]\ndeadline_secs = 10\n",
    )
    .unwrap();
    let before = s.node.snapshot();
    s.agent.start(&bus);
    s.fleet
        .wait("the node enrolled", &s.agent, |v| v["pool"]["nodes"] == 1);
    s.fleet.op(
        "POST",
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "waves": [{"after_secs": 0, "percent": 100}], "halt_at_percent": 50}),
    );
    let log = s.agent.log.clone();
    let reboots = |n: usize| {
        let end = Instant::now() + Duration::from_secs(180);
        while started(&sd)
            .iter()
            .filter(|u| *u == "reboot.target")
            .count()
            < n
        {
            assert!(
                Instant::now() < end,
                "reboot {n} not asked:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    reboots(1);
    s.agent.stop();
    // Slot B boots, but boot-complete.target never becomes active: the gate fails.
    assert_eq!(s.node.boot_control().boot_attempt().unwrap(), Some(Slot::B));
    s.agent
        .boot(s.node.disk(), &s.v2_hash.clone(), "b", "boot-2");
    s.agent.start(&bus);
    reboots(2);
    s.agent.stop();
    assert_eq!(
        s.node.boot_control().status().unwrap().slot(Slot::B).status,
        BootStatus::Bad
    );
    // Back on A.
    assert_eq!(s.node.boot_control().boot_attempt().unwrap(), Some(Slot::A));
    s.agent
        .boot(s.node.disk(), &s.node.v1.root_hash.to_hex(), "a", "boot-3");
    s.agent.start(&bus);
    let st = s.fleet.wait("the rollout halted", &s.agent, |v| {
        v["rollout"]["info"]["state"] == "halted"
    });
    let why = st["rollout"]["info"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("boot-complete.target"),
        "the reason is the node's: {st:#}"
    );
    assert_eq!(st["versions"], json!({"1.0.0": 1}), "{st:#}");
    assert_eq!(s.node.snapshot().a_data, before.a_data, "slot A untouched");
    s.agent.stop();
}

impl Setup {
    fn world_v2_root(&self) -> basalt_manifest::Digest {
        basalt_manifest::Digest::from_hex(&self.v2_hash).unwrap()
    }
}
