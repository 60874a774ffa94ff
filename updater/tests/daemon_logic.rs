//! The daemon's logic with the in-memory engine, a paused tokio clock (hours pass instantly)
//! and controlled randomness: periodic checks with jitter, automatic apply, reboot strategies
//! (immediate, off, maintenance window, fleet-lock against a lock server on 127.0.0.1), the
//! health gate across a simulated reboot, cancel mid-download, a corrupt status file,
//! sd_notify messages.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use basalt_disk::{BootStatus, Slot};
use basalt_manifest::chrono::{Duration as Cd, TimeZone, Utc};
use basalt_updater::daemon::{Accepted, ApiError, Daemon, Handle, TokioClock, View};
use basalt_updater::machine::{Command, Origin, Refusal};
use basalt_updater::memory::{Call, FakeRelease};
use basalt_updater::notify::Notifier;
use support::{settings, t0, LockServer, Rig};
use tokio::sync::oneshot;

struct Running {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }

    async fn wait(&self, what: &str, f: impl FnMut(&View) -> bool) -> View {
        let mut rx = self.handle.view();
        let got = tokio::time::timeout(Duration::from_secs(30 * 24 * 3600), async {
            rx.wait_for(f).await.map(|v| v.clone())
        })
        .await;
        match got {
            Ok(Ok(v)) => v,
            _ => panic!(
                "never reached: {what}; view {:?}",
                self.handle.view().borrow()
            ),
        }
    }
}

async fn run(
    parts: basalt_updater::daemon::Parts<basalt_updater::memory::MemoryEngine>,
) -> Running {
    let (d, handle) = Daemon::start(parts).await.unwrap();
    d.ready();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(d.run(async move {
        let _ = rx.await;
    }));
    Running {
        handle,
        stop: Some(stop),
        task,
    }
}

fn checks(rig: &Rig) -> usize {
    rig.world
        .lock()
        .calls
        .iter()
        .filter(|c| **c == Call::Check)
        .count()
}

const MANUAL: &str = "[repository]\nurl = \"/srv/repo\"\n[check]\ninterval_secs = 3600\njitter_secs = 600\ninitial_delay_secs = 60\n[update]\nauto_download = false\nauto_apply = false\n";

#[tokio::test(start_paused = true)]
async fn periodic_checks_follow_interval_plus_jitter() {
    let rig = Rig::new("1.0.0");
    let clock = Arc::new(TokioClock::starting_at(t0()));
    let r = run(rig.parts(settings(MANUAL), clock, vec![10, 100, 599])).await;
    let ts = |s: i64| (t0() + Cd::seconds(s)).timestamp();
    assert_eq!(
        r.handle.view().borrow().next_check,
        ts(70),
        "initial delay + jitter 10"
    );
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    tokio::time::sleep(Duration::from_secs(69)).await;
    assert_eq!(checks(&rig), 0, "no check before its time");
    let v = r.wait("first check", |v| v.state == "available").await;
    assert_eq!(v.last_check, ts(70));
    assert_eq!(v.next_check, ts(70 + 3600 + 100));
    assert_eq!(v.available_version, "2.0.0");
    assert_eq!(checks(&rig), 1);
    // Auto download is off: it stays available; the next check comes at its time.
    tokio::time::sleep(Duration::from_secs(3699)).await;
    assert_eq!(checks(&rig), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = r.wait("second check", |v| v.last_check == ts(3770)).await;
    assert_eq!(checks(&rig), 2);
    assert_eq!(
        v.next_check,
        ts(3770 + 3600 + 599),
        "jitter is drawn per wait"
    );
    assert_eq!(v.state, "available");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn automatic_apply_reboots_immediately_with_the_reason_on_disk() {
    let rig = Rig::new("1.0.0");
    let clock = Arc::new(TokioClock::starting_at(t0()));
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    let s = settings(
        "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 60\njitter_secs = 0\n[update]\ntries = 5\n",
    );
    let r = run(rig.parts(s, clock, vec![])).await;
    let v = r.wait("staged", |v| v.state == "staged").await;
    assert!(v.reboot_required);
    assert_eq!(v.staged_version, "2.0.0");
    assert_eq!(v.slots[1].boot, "trying");
    assert_eq!(v.slots[1].tries_left, 5, "update.tries reaches the engine");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let seen = rig.reboots.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].reason.contains("2.0.0"), "{}", seen[0].reason);
    assert_eq!(seen[0].at, t0() + Cd::seconds(60));
    assert!(
        seen[0].status.contains("\"state\": \"staged\""),
        "status on disk before the reboot: {}",
        seen[0].status
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn strategy_off_never_reboots_by_itself() {
    let rig = Rig::new("1.0.0");
    let clock = Arc::new(TokioClock::starting_at(t0()));
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    let s = settings("[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n[reboot]\nstrategy = \"off\"\n");
    let r = run(rig.parts(s, clock, vec![])).await;
    r.wait("staged", |v| v.state == "staged").await;
    tokio::time::sleep(Duration::from_secs(7 * 86400)).await;
    assert!(rig.reboots.lock().unwrap().is_empty());
    assert_eq!(
        r.handle.view().borrow().state,
        "staged",
        "timer checks do not disturb a staged update"
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn window_strategy_reboots_at_the_next_opening() {
    let rig = Rig::new("1.0.0");
    let clock = Arc::new(TokioClock::starting_at(t0()));
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    // t0 is Wednesday 12:00 UTC; the window is Saturdays 02:00-04:00 at +01:00 (01:00 UTC).
    let s = settings("[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"sat\"]\nstart = \"02:00\"\nlength_minutes = 120\ntime_zone = \"+01:00\"\n");
    let r = run(rig.parts(s, clock, vec![])).await;
    r.wait("staged", |v| v.state == "staged").await;
    let opening = Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0).unwrap();
    let until = (opening - t0()).to_std().unwrap();
    tokio::time::sleep(until - Duration::from_secs(1)).await;
    assert!(
        rig.reboots.lock().unwrap().is_empty(),
        "no reboot before the window"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = rig.reboots.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].at, opening);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn full_cycle_across_a_reboot_commits_and_counts() {
    let rig = Rig::new("1.0.0");
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    let s = settings(
        "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n",
    );
    let r = run(rig.parts(s.clone(), Arc::new(TokioClock::starting_at(t0())), vec![])).await;
    r.wait("staged", |v| v.state == "staged").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.reboots.lock().unwrap().len(), 1);
    r.stop().await;
    rig.reboot_node(2);
    // No periodic check right after the start: the final state stays visible.
    let s = settings(
        "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 600\njitter_secs = 0\n",
    );
    let r = run(rig.parts(
        s,
        Arc::new(TokioClock::starting_at(t0() + Cd::minutes(5))),
        vec![],
    ))
    .await;
    let v = r.wait("committed", |v| v.state == "committed").await;
    assert_eq!(v.current_version, "2.0.0");
    assert_eq!(v.booted_slot, "B");
    assert_eq!(v.slots[1].boot, "good");
    assert_eq!(rig.world.slot(Slot::B).boot, BootStatus::Good);
    let history = r.handle.history().await.unwrap();
    assert_eq!(history.last().unwrap().kind, "committed");
    let text = rig.metrics.encode();
    assert!(
        text.contains("basalt_updater_outcomes_total{result=\"committed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("basalt_updater_state{state=\"committed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("basalt_updater_checks_total{result=\"available\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("basalt_updater_bytes_fetched_total 4194304"),
        "{text}"
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_install_that_fell_back_is_counted_in_the_metrics() {
    let rig = Rig::new("1.0.0");
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    rig.world.lock().adaptive_fallback = true;
    let s = settings(
        "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n[reboot]\nstrategy = \"off\"\n",
    );
    let r = run(rig.parts(s, Arc::new(TokioClock::starting_at(t0())), vec![])).await;
    r.wait("staged", |v| v.state == "staged").await;
    let text = rig.metrics.encode();
    assert!(
        text.contains("basalt_updater_adaptive_installs_total{result=\"fell-back\"} 1"),
        "{text}"
    );
    // Nothing else was counted: no adaptive install succeeded or was skipped.
    assert!(
        !text.contains("basalt_updater_adaptive_installs_total{result=\"installed\"}"),
        "{text}"
    );
    assert!(
        text.contains("basalt_updater_bytes_fetched_total 4194304"),
        "{text}"
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_health_gate_marks_bad_and_reboots_even_with_strategy_off() {
    let rig = Rig::new("1.0.0");
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    let s = settings("[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n[reboot]\nstrategy = \"off\"\n[health]\ndeadline_secs = 120\ninterval_secs = 10\n");
    let r = run(rig.parts(s.clone(), Arc::new(TokioClock::starting_at(t0())), vec![])).await;
    r.wait("staged", |v| v.state == "staged").await;
    r.stop().await;
    rig.reboot_node(2);
    rig.health.store(false, Ordering::SeqCst);
    let start = t0() + Cd::minutes(5);
    let r = run(rig.parts(s.clone(), Arc::new(TokioClock::starting_at(start)), vec![])).await;
    assert_eq!(r.handle.view().borrow().state, "pending-health");
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        r.handle.view().borrow().state,
        "pending-health",
        "still within the deadline"
    );
    let v = r
        .wait("reboot-pending", |v| v.state == "reboot-pending")
        .await;
    assert_eq!(v.next_boot_slot, "A");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let seen = rig.reboots.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "rebooted although the strategy is off");
    assert!(
        seen[0].reason.contains("unit test.service"),
        "{}",
        seen[0].reason
    );
    assert!(
        seen[0].status.contains("reboot-pending") && seen[0].status.contains("health-check-failed"),
        "{}",
        seen[0].status
    );
    assert!((seen[0].at - start).num_seconds() <= 130);
    assert_eq!(rig.world.slot(Slot::B).boot, BootStatus::Bad);
    r.stop().await;
    // Back on A: a rollback is recorded with the reason.
    rig.reboot_node(3);
    let r = run(rig.parts(
        s,
        Arc::new(TokioClock::starting_at(start + Cd::minutes(5))),
        vec![],
    ))
    .await;
    let v = r.wait("rolled-back", |v| v.state == "rolled-back").await;
    assert_eq!(v.current_version, "1.0.0");
    let h = r.handle.history().await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(last.kind, "rolled-back");
    assert!(last.detail.contains("unit test.service"), "{}", last.detail);
    let text = rig.metrics.encode();
    assert!(text.contains("basalt_updater_rollbacks_total 1"), "{text}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_mid_download_withdraws_only_the_inactive_slot() {
    let rig = Rig::new("1.0.0");
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    rig.world.lock().hold_downloads = true;
    let r = run(rig.parts(
        settings(MANUAL),
        Arc::new(TokioClock::starting_at(t0())),
        vec![],
    ))
    .await;
    let a = r
        .handle
        .command(Command::Apply {
            origin: Origin::Operator,
            allow_downgrade: false,
        })
        .await
        .unwrap();
    assert_eq!(a, Accepted::Started);
    r.wait("downloading", |v| v.state == "downloading").await;
    let refused = r
        .handle
        .command(Command::Check {
            origin: Origin::Operator,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ApiError::Refused(Refusal::Busy { .. })),
        "{refused:?}"
    );
    r.handle.command(Command::Cancel).await.unwrap();
    let v = r.wait("available again", |v| v.state == "available").await;
    assert_eq!(v.slots[0].boot, "good", "booted slot untouched");
    assert_ne!(v.slots[1].boot, "trying");
    assert_eq!(rig.world.slot(Slot::A).boot, BootStatus::Good);
    let h = r.handle.history().await.unwrap();
    assert_eq!(h.last().unwrap().kind, "cancelled");
    // Redo.
    rig.world.release_downloads();
    r.handle
        .command(Command::Apply {
            origin: Origin::Operator,
            allow_downgrade: false,
        })
        .await
        .unwrap();
    r.wait("staged", |v| v.state == "staged").await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn operator_check_waits_for_the_result_and_failures_are_persisted() {
    let rig = Rig::new("1.0.0");
    let r = run(rig.parts(
        settings(MANUAL),
        Arc::new(TokioClock::starting_at(t0())),
        vec![],
    ))
    .await;
    assert_eq!(
        r.handle
            .command(Command::Check {
                origin: Origin::Operator
            })
            .await
            .unwrap(),
        Accepted::Checked(String::new())
    );
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    assert_eq!(
        r.handle
            .command(Command::Check {
                origin: Origin::Operator
            })
            .await
            .unwrap(),
        Accepted::Checked("2.0.0".into())
    );
    rig.world.fail_next(
        Call::Check,
        basalt_updater::memory::MemoryError::new(
            basalt_updater::engine::ErrorClass::Network,
            "Timeout",
            "repository timed out",
        ),
    );
    let e = r
        .handle
        .command(Command::Check {
            origin: Origin::Operator,
        })
        .await
        .unwrap_err();
    match &e {
        ApiError::Failed(f) => assert_eq!(f.error.name, "Timeout"),
        other => panic!("{other:?}"),
    }
    let v = r.wait("failed", |v| v.state == "failed").await;
    assert_eq!(v.last_error_name, "org.basalt.Updater1.Error.Network");
    assert!(v.last_error_message.contains("repository timed out"));
    let on_disk = support::read(&rig.status_path());
    assert!(
        on_disk.contains("\"state\": \"failed\"") && on_disk.contains("Timeout"),
        "{on_disk}"
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_status_file_is_kept_aside_and_the_daemon_starts_from_the_disk() {
    let rig = Rig::new("1.0.0");
    let state = rig.paths().state_dir;
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        rig.status_path(),
        b"{\"format\":1,\"machine\":{\"state\":{\"state\":\"stag",
    )
    .unwrap();
    let r = run(rig.parts(
        settings(MANUAL),
        Arc::new(TokioClock::starting_at(t0())),
        vec![],
    ))
    .await;
    let v = r.handle.view().borrow().clone();
    assert_eq!(v.state, "idle");
    assert_eq!(v.current_version, "1.0.0");
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("status.json.bad-")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "status.json"),
        "a fresh status is written: {names:?}"
    );
    // A status from a newer format: also set aside, not half-read.
    r.stop().await;
    std::fs::write(rig.status_path(), b"{\"format\": 7}").unwrap();
    let r = run(rig.parts(
        settings(MANUAL),
        Arc::new(TokioClock::starting_at(t0())),
        vec![],
    ))
    .await;
    assert_eq!(r.handle.view().borrow().state, "idle");
    let bad = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("status.json.bad-")
        })
        .count();
    assert_eq!(bad, 2);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sd_notify_ready_status_and_watchdog() {
    let rig = Rig::new("1.0.0");
    let sock_path = rig.dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_nonblocking(true).unwrap();
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    let parts = rig.parts_with(
        settings(MANUAL),
        Arc::new(TokioClock::starting_at(t0())),
        vec![],
        None,
        Notifier::to_socket(sock_path.display().to_string()),
        Some(Duration::from_secs(30)),
    );
    let r = run(parts).await;
    r.handle
        .command(Command::Check {
            origin: Origin::Operator,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        got.iter().any(|m| m.starts_with("READY=1\nSTATUS=idle")),
        "{got:?}"
    );
    assert!(got.iter().any(|m| m == "STATUS=checking"), "{got:?}");
    assert!(got.iter().any(|m| m == "STATUS=available 2.0.0"), "{got:?}");
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "{got:?}"
    );
    r.stop().await;
}

/// Real time: the lock server is a real TCP server on 127.0.0.1.
#[tokio::test]
async fn fleet_lock_takes_a_slot_before_rebooting_and_releases_it_after_commit() {
    let server = LockServer::start(vec![409]);
    let rig = Rig::new("1.0.0");
    rig.world.publish(FakeRelease::new("2.0.0", 2));
    std::fs::write(
        rig.dir.path().join("machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let s = settings(&format!(
        "[repository]\nurl = \"/srv/repo\"\n[check]\ninitial_delay_secs = 0\njitter_secs = 0\n[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"{}/\"\ngroup = \"workers\"\n",
        server.url
    ));
    let lock = basalt_updater::agent::fleet_lock(&s, &rig.dir.path().join("machine-id"))
        .unwrap()
        .expect("strategy fleet-lock");
    let id = lock.id().to_owned();
    let clock = Arc::new(basalt_updater::daemon::SystemClock);
    let r = run(rig.parts_with(
        s.clone(),
        clock.clone(),
        vec![],
        Some(lock.clone()),
        Notifier::default(),
        None,
    ))
    .await;
    r.wait("staged", |v| v.state == "staged").await;
    for _ in 0..200 {
        if !rig.reboots.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rig.reboots.lock().unwrap().len(),
        1,
        "rebooted once the lock was granted"
    );
    assert_eq!(
        server.paths(),
        ["/v1/steady-state", "/v1/pre-reboot", "/v1/pre-reboot"]
    );
    r.stop().await;
    rig.reboot_node(2);
    let r = run(rig.parts_with(s, clock, vec![], Some(lock), Notifier::default(), None)).await;
    r.wait("committed", |v| v.state == "committed").await;
    for _ in 0..200 {
        if server.paths().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.paths(),
        [
            "/v1/steady-state",
            "/v1/pre-reboot",
            "/v1/pre-reboot",
            "/v1/steady-state"
        ]
    );
    for req in server.seen.lock().unwrap().iter() {
        assert!(
            req.headers
                .contains(&("fleet-lock-protocol".into(), "true".into())),
            "{req:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"client_params": {"id": id, "group": "workers"}})
        );
    }
    r.stop().await;
}
