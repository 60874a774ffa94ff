//! The D-Bus API on a real private `dbus-daemon` loaded with the shipped bus policy
//! (`dist/dbus/org.basalt.Updater1.conf`), started by the test and killed by PID. The daemon
//! runs in-process with the in-memory engine (and once as the real `basalt-updated` binary);
//! `basaltctl` runs as the real binary, as root and as unprivileged users (`runuser`). A fake
//! `org.freedesktop.systemd1` on the same bus answers the health gate's unit queries and
//! records reboot requests.
//!
//! Needs the Debian packages `dbus` (dbus-daemon) and `util-linux` (runuser); fails, naming
//! them, when missing.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_updater::daemon::{Parts, SystemClock};
use basalt_updater::dbus::{self, Updater1Proxy};
use basalt_updater::memory::{Call, FakeRelease, MemoryEngine, MemoryError};
use basalt_updater::reboot::SystemdReboot;
use futures_util::StreamExt;
use support::bus::{
    basaltctl, code, need, repo_root, serve_systemd, text, wait_status, Bus, Systemd,
};
use support::{settings, Rig};
use zbus::zvariant::{OwnedValue, Value};

// ───────────────────────────── the daemon, in-process ─────────────────────────────

struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Run the service (with its own runtime on its own thread) until dropped.
    fn start(
        address: &str,
        build: impl FnOnce(&zbus::Connection) -> Parts<MemoryEngine> + Send + 'static,
    ) -> InProcess {
        let address = address.to_owned();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conn = zbus::connection::Builder::address(address.as_str())
                    .unwrap()
                    .build()
                    .await
                    .unwrap();
                let parts = build(&conn);
                let shutdown = async move {
                    let _ = rx.await;
                };
                let _ = ready_tx.send(());
                dbus::run_service(conn, parts, shutdown).await.unwrap();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        InProcess {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parts_for(rig: &Rig, conn: &zbus::Connection, toml: &str) -> Parts<MemoryEngine> {
    let s = settings(toml);
    let mut p = rig.parts(s.clone(), Arc::new(SystemClock), vec![]);
    p.reboot = Arc::new(SystemdReboot::new(conn.clone()));
    let http = basalt_updater::agent::health_client(&s).unwrap();
    p.probes = basalt_updater::health::probes(&s.health, conn, &http);
    p
}

const MANUAL: &str = "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 3600\njitter_secs = 0\n[update]\nauto_download = false\nauto_apply = false\n[reboot]\nstrategy = \"off\"\n";

fn golden(path: &Path, actual: &str) {
    if std::env::var_os("BASALT_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        actual,
        expected,
        "{} drifted from the code; if the change is intended, rerun with BASALT_UPDATE_GOLDEN=1 and commit the file",
        path.display()
    );
}

// ───────────────────────────── tests ─────────────────────────────

#[test]
fn basaltctl_drives_every_method_as_root() {
    let bus = Bus::start();
    let rig = Rig::new("1.0.0");
    let world = rig.world.clone();
    let rig = Arc::new(rig);
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, MANUAL));
    wait_status(&bus, "idle", |v| v["state"] == "idle");

    let o = basaltctl(&bus, None, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("State:     idle") && t.contains("Running:   1.0.0 (slot A)"),
        "{t}"
    );
    assert!(t.contains("Slot A:    1.0.0 (active, boot good)"), "{t}");

    let o = basaltctl(&bus, None, &["check"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("up to date"));

    world.publish(FakeRelease::new("2.0.0", 2));
    let o = basaltctl(&bus, None, &["check"]);
    assert!(text(&o).contains("available: 2.0.0"), "{}", text(&o));

    let o = basaltctl(&bus, None, &["update", "--download-only"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("downloaded and verified: 2.0.0"),
        "{}",
        text(&o)
    );

    let o = basaltctl(&bus, None, &["update"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("staged: 2.0.0"), "{}", text(&o));
    let v = wait_status(&bus, "staged", |v| v["state"] == "staged");
    assert_eq!(v["reboot_required"], true);
    assert_eq!(v["slots"][1]["boot"], "trying");
    assert_eq!(v["next_boot_slot"], "B");

    // Refusals with their exit codes.
    let o = basaltctl(&bus, None, &["mark-good"]);
    assert_eq!(code(&o), 14, "{}", text(&o));
    assert!(text(&o).contains("no new boot is awaiting"), "{}", text(&o));
    let o = basaltctl(&bus, None, &["check"]);
    assert_eq!(code(&o), 12, "{}", text(&o));
    let o = basaltctl(&bus, None, &["rollback"]);
    assert_eq!(code(&o), 12, "{}", text(&o));
    // Extension pins go through the state machine first: not while an update waits staged
    // (its set was made under the old pins).
    let o = basaltctl(&bus, None, &["extensions", "pin", "tools", "1.0.0"]);
    assert_eq!(code(&o), 12, "{}", text(&o));
    assert!(text(&o).contains("pin-extension refused"), "{}", text(&o));

    let o = basaltctl(&bus, None, &["cancel"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v = wait_status(&bus, "available after cancel", |v| {
        v["state"] == "available"
    });
    assert_eq!(v["slots"][0]["boot"], "good");
    assert_ne!(v["slots"][1]["boot"], "trying");
    let o = basaltctl(&bus, None, &["cancel"]);
    assert_eq!(code(&o), 11, "{}", text(&o));

    // Extensions over the bus (the in-memory engine's store: tools 1.0.0 staged for 1.0.0).
    {
        let mut w = world.lock();
        w.extensions
            .staged
            .push(basalt_updater::engine::StagedSetView {
                os_version: "1.0.0".parse().unwrap(),
                extensions: vec![("tools".into(), Some("1.0.0".parse().unwrap()))],
            });
        w.extensions.active.push("tools".into());
    }
    for (args, exit, needle) in [
        (&["extensions", "pin", "nope", "1.0.0"][..], 30, "nope"),
        (&["extensions", "pin", "tools", "9.0.0"], 31, "tools 9.0.0"),
        (
            &["extensions", "pin", "tools", "1.0"],
            17,
            "extension version",
        ),
        (
            &["extensions", "pin", "../x", "1.0.0"],
            17,
            "not an extension name",
        ),
        (
            &["extensions", "pin", "tools", "1.0.0"],
            0,
            "pinned tools 1.0.0",
        ),
        (&["extensions", "unpin", "tools"], 0, "unpinned tools"),
        (&["extensions", "unpin", "tools"], 0, "unpinned tools"),
        (
            &["extensions", "pin", "tools", "1.0.0"],
            0,
            "pinned tools 1.0.0",
        ),
    ] {
        let o = basaltctl(&bus, None, args);
        assert_eq!(code(&o), exit, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    let o = basaltctl(&bus, None, &["extensions", "list", "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "staged": [{"os_version": "1.0.0", "extensions": [{"name": "tools", "version": "1.0.0"}]}],
            "active": ["tools"],
            "pins": [{"name": "tools", "version": "1.0.0"}],
        })
    );

    let o = basaltctl(&bus, None, &["pin"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        wait_status(&bus, "pinned", |v| v["pinned"] == true)["pinned"],
        true
    );
    let o = basaltctl(&bus, None, &["update"]);
    assert_eq!(code(&o), 13, "{}", text(&o));
    assert!(text(&o).contains("pinned"), "{}", text(&o));
    let o = basaltctl(&bus, None, &["unpin"]);
    assert_eq!(code(&o), 0);

    // A failed download: the typed failure class is the exit code.
    world.fail_next(
        Call::Download,
        MemoryError::new(
            basalt_updater::engine::ErrorClass::Integrity,
            "FrameHashMismatch",
            "frame 3 of usr.img does not match its signed sha256",
        ),
    );
    let o = basaltctl(&bus, None, &["update"]);
    assert_eq!(code(&o), 21, "{}", text(&o));
    assert!(text(&o).contains("frame 3 of usr.img"), "{}", text(&o));
    let v = wait_status(&bus, "failed", |v| v["state"] == "failed");
    assert_eq!(
        v["last_error"]["name"],
        "org.basalt.Updater1.Error.Integrity"
    );

    let o = basaltctl(&bus, None, &["history"]);
    assert!(o.status.success());
    let t = text(&o);
    assert!(t.contains("cancelled") && t.contains("failed"), "{t}");
    let o = basaltctl(&bus, None, &["history", "--json"]);
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");

    // Operator rollback needs a good other slot: slot B holds no good image.
    let o = basaltctl(&bus, None, &["rollback"]);
    assert_eq!(code(&o), 0, "accepted; the engine decides: {}", text(&o));
    let v = wait_status(&bus, "rollback failed", |v| {
        v["state"] == "failed"
            && v["last_error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("rollback")
    });
    assert_eq!(
        v["last_error"]["name"],
        "org.basalt.Updater1.Error.BootControl"
    );

    let o = basaltctl(&bus, None, &["--bogus"]);
    assert_eq!(code(&o), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_and_property_change_signals() {
    let bus = Bus::start();
    let rig = Arc::new(Rig::new("1.0.0"));
    let world = rig.world.clone();
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, MANUAL));
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    // The name may take a moment after the thread started.
    let end = Instant::now() + Duration::from_secs(20);
    let p = loop {
        let p = Updater1Proxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        if p.state().await.is_ok() {
            break p;
        }
        assert!(Instant::now() < end, "daemon never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let name = |e: dbus::UpdaterError| -> String {
        use zbus::DBusError;
        match e {
            dbus::UpdaterError::ZBus(zbus::Error::MethodError(n, _, _)) => n.to_string(),
            other => other.name().to_string(),
        }
    };
    assert_eq!(
        name(p.cancel().await.unwrap_err()),
        "org.basalt.Updater1.Error.NothingToCancel"
    );
    assert_eq!(
        name(p.mark_bad().await.unwrap_err()),
        "org.basalt.Updater1.Error.NotPendingHealth"
    );
    let mut bad = HashMap::new();
    bad.insert(
        "reboot".to_owned(),
        OwnedValue::try_from(Value::from(true)).unwrap(),
    );
    assert_eq!(
        name(p.download(bad).await.unwrap_err()),
        "org.basalt.Updater1.Error.InvalidArgument"
    );
    let mut wrong_type = HashMap::new();
    wrong_type.insert(
        dbus::ALLOW_DOWNGRADE.to_owned(),
        OwnedValue::try_from(Value::from("yes")).unwrap(),
    );
    assert_eq!(
        name(p.apply(wrong_type).await.unwrap_err()),
        "org.basalt.Updater1.Error.InvalidArgument"
    );

    // Downgrades: refused by the check (Policy) unless allowed, then go through.
    world.publish(FakeRelease::new("0.9.0", 2));
    assert_eq!(
        name(p.check().await.unwrap_err()),
        "org.basalt.Updater1.Error.Policy"
    );
    let mut allow = HashMap::new();
    allow.insert(
        dbus::ALLOW_DOWNGRADE.to_owned(),
        OwnedValue::try_from(Value::from(true)).unwrap(),
    );

    // Property changes arrive as PropertiesChanged signals, every one, in order.
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(dbus::BUS_NAME)
        .unwrap()
        .path(dbus::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut changes = props.receive_properties_changed().await.unwrap();
    // Chunks that take a moment, as a real download's do (an instant one coalesces).
    world.lock().chunk_delay = Duration::from_millis(50);
    p.download(allow).await.unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut progress_seen = false;
    while seen.last().map(String::as_str) != Some("downloaded") {
        let sig = tokio::time::timeout(Duration::from_secs(20), changes.next())
            .await
            .expect("a PropertiesChanged signal")
            .unwrap();
        let args = sig.args().unwrap();
        assert_eq!(args.interface_name().as_str(), dbus::INTERFACE);
        if let Some(v) = args.changed_properties().get("State") {
            seen.push(String::try_from(v.try_clone().unwrap()).unwrap());
        }
        progress_seen |= args.changed_properties().contains_key("Progress");
    }
    assert!(progress_seen, "Progress changes are signalled too");
    // The view is a watch: states that pass within one scheduling step coalesce; what is
    // signalled keeps the machine's order and ends with the final state.
    let order = ["checking", "downloading", "verifying", "downloaded"];
    let mut at = 0;
    for s in &seen {
        let pos = order
            .iter()
            .position(|o| o == s)
            .unwrap_or_else(|| panic!("unexpected state {s} in {seen:?}"));
        assert!(pos >= at, "out of order: {seen:?}");
        at = pos;
    }
    assert!(seen.contains(&"downloading".to_owned()), "{seen:?}");
    assert_eq!(p.staged_version().await.unwrap(), "0.9.0");
    assert_eq!(p.slot_b().await.unwrap().0, "0.9.0");

    // Busy: a download that does not finish.
    p.cancel().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while p.state().await.unwrap() != "available" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    world.lock().hold_downloads = true;
    let mut allow = HashMap::new();
    allow.insert(
        dbus::ALLOW_DOWNGRADE.to_owned(),
        OwnedValue::try_from(Value::from(true)).unwrap(),
    );
    p.download(allow).await.unwrap();
    assert_eq!(
        name(p.check().await.unwrap_err()),
        "org.basalt.Updater1.Error.Busy"
    );
    assert_eq!(
        name(p.rollback().await.unwrap_err()),
        "org.basalt.Updater1.Error.Busy"
    );
    // The engine is held by the download: a listing still answers (it does not queue
    // behind the engine), a pin is refused as busy.
    let (staged, active, pins) = tokio::time::timeout(Duration::from_secs(10), p.list_extensions())
        .await
        .expect("ListExtensions answers during a download")
        .unwrap();
    assert!(staged.is_empty() && active.is_empty() && pins.is_empty());
    assert_eq!(
        name(
            p.pin_extension("tools".into(), "1.0.0".into())
                .await
                .unwrap_err()
        ),
        "org.basalt.Updater1.Error.Busy"
    );
    // Without allow-downgrade, the downgrade candidate is refused explicitly.
    p.cancel().await.unwrap();
    world.release_downloads();
    tokio::time::timeout(Duration::from_secs(20), async {
        while p.state().await.unwrap() != "available" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        name(p.apply(HashMap::new()).await.unwrap_err()),
        "org.basalt.Updater1.Error.DowngradeNotAllowed"
    );
    assert_eq!(
        name(p.download(HashMap::new()).await.unwrap_err()),
        "org.basalt.Updater1.Error.DowngradeNotAllowed"
    );

    // Network failures of a check are the Network class.
    world.fail_next(
        Call::Check,
        MemoryError::new(
            basalt_updater::engine::ErrorClass::Network,
            "Timeout",
            "timed out",
        ),
    );
    assert_eq!(
        name(p.check().await.unwrap_err()),
        "org.basalt.Updater1.Error.Network"
    );
    let (n, m) = p.last_error().await.unwrap();
    assert_eq!(n, "org.basalt.Updater1.Error.Network");
    assert!(m.contains("timed out"), "{m}");

    let h = p.get_history().await.unwrap();
    assert!(h.iter().any(|e| e.1 == "cancelled"), "{h:?}");
}

#[test]
fn the_bus_policy_lets_anyone_read_and_only_root_and_the_group_act() {
    need("runuser", "util-linux");
    need("useradd", "passwd");
    // A member of basalt-update (created once on this machine if missing).
    let _ = Proc::new("groupadd")
        .args(["--system", "basalt-update"])
        .output();
    if Proc::new("id")
        .arg("basalt-test")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        let o = Proc::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--groups",
                "basalt-update",
                "basalt-test",
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let bus = Bus::start();
    let rig = Arc::new(Rig::new("1.0.0"));
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, MANUAL));
    wait_status(&bus, "idle", |v| v["state"] == "idle");

    // Reading: anyone.
    let o = basaltctl(&bus, Some("nobody"), &["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["current_version"], "1.0.0");
    let o = basaltctl(&bus, Some("nobody"), &["history"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = basaltctl(&bus, Some("nobody"), &["extensions", "list"]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // Acting: refused for nobody, every mutating method.
    for args in [
        &["check"][..],
        &["update"],
        &["update", "--download-only"],
        &["cancel"],
        &["rollback"],
        &["mark-good"],
        &["mark-bad"],
        &["pin"],
        &["unpin"],
        &["extensions", "pin", "tools", "1.0.0"],
        &["extensions", "unpin", "tools"],
    ] {
        let o = basaltctl(&bus, Some("nobody"), args);
        assert_eq!(code(&o), 4, "{args:?}: {}", text(&o));
        assert!(text(&o).contains("not allowed"), "{args:?}: {}", text(&o));
    }
    assert_eq!(
        wait_status(&bus, "unchanged", |_| true)["pinned"],
        false,
        "nothing happened"
    );

    // A member of the group may act.
    let o = basaltctl(&bus, Some("basalt-test"), &["pin"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(
        wait_status(&bus, "pinned", |v| v["pinned"] == true)["pinned"],
        true
    );
    let o = basaltctl(&bus, Some("basalt-test"), &["unpin"]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // Nobody may not take the name either.
    let o = Proc::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            "dbus-send",
            &format!("--bus={}", bus.address),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            "string:org.basalt.Updater1",
            "uint32:4",
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("AccessDenied"),
        "{}",
        text(&o)
    );
}

#[test]
fn basaltctl_help_lists_the_exit_codes_the_code_uses() {
    let o = Proc::new(env!("CARGO_BIN_EXE_basaltctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for name in dbus::ERROR_NAMES {
        let code = dbus::exit_code_for_error(&format!("org.basalt.Updater1.Error.{name}"));
        assert!(
            help.contains(&format!("{code} {name}")),
            "--help lacks \"{code} {name}\": {help}"
        );
    }
    assert!(
        help.contains("3 basalt-updated not running") && help.contains("4 not allowed"),
        "{help}"
    );
}

#[test]
fn basaltctl_says_when_the_daemon_or_the_bus_is_missing() {
    let bus = Bus::start();
    let o = basaltctl(&bus, None, &["status"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("basalt-updated is not running"),
        "{}",
        text(&o)
    );
    let o = basaltctl(&bus, None, &["check"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let o = Proc::new(env!("CARGO_BIN_EXE_basaltctl"))
        .args([
            "--bus-address",
            &format!("unix:path={}/nothing-here", bus.dir.path().display()),
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 5, "{}", text(&o));
    assert!(text(&o).contains("cannot reach the D-Bus"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_introspection_and_status_json_match_the_code() {
    let bus = Bus::start();
    let rig = Arc::new(Rig::new("1.0.0"));
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, MANUAL));
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let intro = zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination(dbus::BUS_NAME)
        .unwrap()
        .path(dbus::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let xml = loop {
        if let Ok(x) = intro.introspect().await {
            break x;
        }
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let start = xml
        .find("<interface name=\"org.basalt.Updater1\">")
        .expect("our interface");
    let stop = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
    let doc = format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node name=\"/org/basalt/Updater1\">\n  {}\n</node>\n",
        &xml[start..stop]
    );
    golden(&repo_root().join("dist/dbus/org.basalt.Updater1.xml"), &doc);
    for m in [
        "Check",
        "Download",
        "Apply",
        "Cancel",
        "Rollback",
        "MarkGood",
        "MarkBad",
        "Pin",
        "Unpin",
        "GetHistory",
        "ListExtensions",
        "PinExtension",
        "UnpinExtension",
    ] {
        assert!(doc.contains(&format!("<method name=\"{m}\">")), "{m}");
    }

    // status --json: the committed format; times are normalised (they depend on the clock).
    let out = tokio::task::spawn_blocking({
        let address = bus.address.clone();
        move || {
            Proc::new(env!("CARGO_BIN_EXE_basaltctl"))
                .args(["--bus-address", &address, "status", "--json"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["last_check", "next_check"] {
        if !v[k].is_null() {
            assert!(
                basalt_manifest::chrono::DateTime::parse_from_rfc3339(v[k].as_str().unwrap())
                    .is_ok()
            );
            v[k] = "<RFC 3339 time or null>".into();
        }
    }
    golden(
        &repo_root().join("dist/basaltctl/status.json"),
        &(serde_json::to_string_pretty(&v).unwrap() + "\n"),
    );
}

/// The health gate over D-Bus: systemd (fake, on the bus) says boot-complete.target and the
/// configured unit are active → committed; a failed unit → marked bad and a reboot asked of
/// systemd (StartUnit reboot.target replace-irreversibly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gate_asks_systemd_and_reboots_through_it() {
    let bus = Bus::start();
    let sd = Systemd::default();
    let _systemd = serve_systemd(
        &bus.address,
        sd.clone(),
        &["boot-complete.target", "test.service"],
    )
    .await;
    let rig = Arc::new(Rig::new("1.0.0"));
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    let toml = "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n[health]\ndeadline_secs = 10\ninterval_secs = 1\nunits = [\"test.service\"]\n";
    {
        let r2 = rig.clone();
        let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, toml));
        let end = Instant::now() + Duration::from_secs(30);
        while sd.started.lock().unwrap().is_empty() {
            assert!(Instant::now() < end, "no reboot asked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            sd.started.lock().unwrap()[0],
            (
                "reboot.target".to_owned(),
                "replace-irreversibly".to_owned()
            )
        );
    }
    // Booted into B; systemd reached boot-complete but the unit failed.
    rig.reboot_node(2);
    sd.units
        .lock()
        .unwrap()
        .insert("boot-complete.target".into(), "active".into());
    sd.units
        .lock()
        .unwrap()
        .insert("test.service".into(), "failed".into());
    {
        let r2 = rig.clone();
        let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, toml));
        let end = Instant::now() + Duration::from_secs(40);
        while sd.started.lock().unwrap().len() < 2 {
            assert!(Instant::now() < end, "no rollback reboot asked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = support::read(&rig.status_path());
        assert!(
            status.contains("unit test.service") && status.contains("test.service is failed"),
            "{status}"
        );
        assert_eq!(
            rig.world.slot(basalt_disk::Slot::B).boot,
            basalt_disk::BootStatus::Bad
        );
    }
    // Back on A; try again with a healthy unit: committed.
    rig.reboot_node(3);
    sd.units
        .lock()
        .unwrap()
        .insert("test.service".into(), "active".into());
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, toml));
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let p = Updater1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    loop {
        if let Ok(s) = p.state().await {
            if s == "rolled-back" || s == "available" {
                break;
            }
        }
        assert!(Instant::now() < end, "never rolled back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = p.get_history().await.unwrap();
    let last = h
        .iter()
        .rev()
        .find(|e| e.1 == "rolled-back")
        .expect("a rollback in the history");
    assert!(last.4.contains("test.service"), "{last:?}");
    assert_eq!(p.current_version().await.unwrap(), "1.0.0");
}

/// The remaining error classes over the bus: every engine class the daemon can meet (injected
/// faults) and RebootPending; each with its basaltctl exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_failure_class_reaches_the_caller() {
    use basalt_updater::engine::ErrorClass;
    let bus = Bus::start();
    let rig = Arc::new(Rig::new("1.0.0"));
    let world = rig.world.clone();
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, MANUAL));
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let p = Updater1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while p.state().await.is_err() {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wait_state = |want: &'static str| {
        let p = p.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                let s = p.state().await.unwrap();
                if s == want {
                    return;
                }
                assert!(Instant::now() < end, "state {s}, wanted {want}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for class in ErrorClass::ALL {
        world.fail_next(
            Call::Check,
            MemoryError::new(class, "Injected", format!("injected {}", class.as_str())),
        );
        let e = p.check().await.unwrap_err();
        let name = match &e {
            dbus::UpdaterError::ZBus(zbus::Error::MethodError(n, _, _)) => n.to_string(),
            other => zbus::DBusError::name(other).to_string(),
        };
        let expected = format!("org.basalt.Updater1.Error.{}", class.as_str());
        assert_eq!(name, expected);
        let code = dbus::exit_code_for_error(&expected);
        assert!((20..=27).contains(&code), "{expected} → {code}");
        let (n, m) = p.last_error().await.unwrap();
        assert_eq!(n, expected);
        assert!(m.contains(&format!("injected {}", class.as_str())), "{m}");
    }
    // A failed apply: Disk, recorded, the booted slot untouched.
    world.publish(FakeRelease::new("2.0.0", 2));
    world.fail_next(
        Call::Apply,
        MemoryError::new(ErrorClass::Disk, "EspFull", "no space left on the ESP"),
    );
    p.apply(HashMap::new()).await.unwrap();
    wait_state("failed").await;
    let (n, m) = p.last_error().await.unwrap();
    assert_eq!(n, "org.basalt.Updater1.Error.Disk");
    assert!(m.contains("apply failed (EspFull)"), "{m}");
    assert_eq!(p.slot_a().await.unwrap().2, "good");
    // RebootPending: after a committed update, an operator rollback waits for the reboot.
    p.apply(HashMap::new()).await.unwrap();
    wait_state("staged").await;
    drop(_d);
    rig.reboot_node(2);
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| {
        parts_for(&r2, conn, "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 3600\n[reboot]\nstrategy = \"off\"\n[health]\nboot_complete = false\n")
    });
    let end = Instant::now() + Duration::from_secs(20);
    while p.state().await.map(|s| s != "committed").unwrap_or(true) {
        assert!(Instant::now() < end, "not committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.rollback().await.unwrap();
    wait_state("reboot-pending").await;
    let e = p.check().await.unwrap_err();
    assert_eq!(
        zbus::DBusError::name(&e).as_str(),
        "org.basalt.Updater1.Error.RebootPending"
    );
    assert_eq!(p.next_boot_slot().await.unwrap(), "A");
    assert!(p.reboot_required().await.unwrap());
}

/// `basaltctl update --reboot` asks systemd (on the same bus) for the reboot once staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basaltctl_update_reboot_asks_systemd() {
    let bus = Bus::start();
    let sd = Systemd::default();
    let _systemd = serve_systemd(&bus.address, sd.clone(), &[]).await;
    let rig = Arc::new(Rig::new("1.0.0"));
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    // Chunks that take a moment, so progress is drawn (stderr is not a terminal: lines).
    rig.world.lock().chunk_delay = Duration::from_millis(150);
    let r2 = rig.clone();
    let _d = InProcess::start(&bus.address, move |conn| parts_for(&r2, conn, MANUAL));
    let address = bus.address.clone();
    let out = tokio::task::spawn_blocking(move || {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let o = Proc::new(env!("CARGO_BIN_EXE_basaltctl"))
                .args(["--bus-address", &address, "update", "--reboot"])
                .output()
                .unwrap();
            if o.status.code() != Some(3) || Instant::now() > end {
                return o;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("staged: 2.0.0") && text(&out).contains("rebooting"),
        "{}",
        text(&out)
    );
    assert_eq!(
        sd.started.lock().unwrap().as_slice(),
        [(
            "reboot.target".to_owned(),
            "replace-irreversibly".to_owned()
        )]
    );
}

/// The real binary: configuration check (settings and what they resolve to on this node),
/// owning the name, READY=1 only after that, a check refused without a repository.
#[test]
fn the_real_basalt_updated_binary_serves_the_api() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_basalt-updated");
    let node = |cmd: &mut Proc| {
        cmd.arg("--config-root")
            .arg(dir.path())
            .arg("--boot-env")
            .arg(dir.path().join("boot.env"))
            .arg("--os-release")
            .arg(dir.path().join("os-release"))
            .arg("--cmdline")
            .arg(dir.path().join("cmdline"))
            .arg("--efivars")
            .arg(dir.path().join("efivars"))
            .arg("--boot-id")
            .arg(dir.path().join("boot_id"));
    };
    let check_config = || {
        let mut c = Proc::new(exe);
        node(&mut c);
        c.arg("--check-config").output().unwrap()
    };
    // No boot.env and no boot.disk: the disk is unknown; the message says where it looked.
    let o = check_config();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("boot.disk") && text(&o).contains("boot.env"),
        "{}",
        text(&o)
    );
    std::fs::write(dir.path().join("boot.env"), "BASALT_DISK=/dev/vda\n").unwrap();
    // No os-release: the OS name is unknown.
    let o = check_config();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("repository.os") && text(&o).contains("os-release"),
        "{}",
        text(&o)
    );
    std::fs::write(
        dir.path().join("os-release"),
        "ID=basalt\nBASALT_CHANNEL=beta\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cmdline"),
        "console=ttyS0 usrhash=00 basalt.slot=a quiet\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
    let o = check_config();
    assert!(o.status.success(), "{}", text(&o));
    for resolved in [
        "disk: \"/dev/vda\"",
        "os: \"basalt\"",
        "channel: \"beta\"",
        "kernel_options: \"console=ttyS0 quiet\"",
    ] {
        assert!(text(&o).contains(resolved), "{resolved}: {}", text(&o));
    }
    let etc = dir.path().join("etc/basalt/updater.d");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("10-bad.toml"), "[update]\ntries = 0\n").unwrap();
    let o = check_config();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("update.tries") && text(&o).contains("10-bad.toml"),
        "{}",
        text(&o)
    );
    // A repository whose shipped trust root is missing: refused at start, naming key and file.
    std::fs::write(
        etc.join("10-bad.toml"),
        "[repository]\nurl = \"/srv/repo\"\ntrust_root = \"/nonexistent/root.json\"\n",
    )
    .unwrap();
    let o = check_config();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("repository.trust_root")
            && text(&o).contains("10-bad.toml")
            && text(&o).contains("/nonexistent/root.json"),
        "{}",
        text(&o)
    );
    std::fs::write(etc.join("10-bad.toml"), "[metrics]\nlisten = \"off\"\n").unwrap();

    let notify = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = Proc::new(exe);
    node(&mut cmd);
    let mut child = cmd
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--bus-address", &bus.address])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 from basalt-updated");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let ready = msg.starts_with("READY=1");
        got.push(msg);
        if ready || got.len() > 20 {
            break;
        }
    }
    assert!(got.last().unwrap().starts_with("READY=1"), "{got:?}");
    // Ready means the name is owned: a client finds it at once.
    let o = basaltctl(&bus, None, &["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "idle");
    // No repository: refused as a configuration error, the state unchanged.
    let o = basaltctl(&bus, None, &["check"]);
    assert_eq!(code(&o), 26, "{}", text(&o));
    assert!(
        text(&o).contains("no repository is configured"),
        "{}",
        text(&o)
    );
    let o = basaltctl(&bus, None, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "idle");
    // A second instance cannot take the name.
    let mut cmd = Proc::new(exe);
    node(&mut cmd);
    let o = cmd
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .args(["--bus-address", &bus.address])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("already owned") || text(&o).contains("another basalt-updated"),
        "{}",
        text(&o)
    );
    // SIGTERM: a clean stop, by PID.
    unsafe_kill_term(child.id());
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "basalt-updated did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join("state/updater/status.json").exists());
}

fn unsafe_kill_term(pid: u32) {
    let o = Proc::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success());
}
