//! The status page in a real headless browser (Debian's Chromium): a pool whose rollout of a
//! bad release halted itself; the page, given the operator token in its URL fragment (never
//! sent to the server), shows the pool, the halt and its reason, the progress by wave, the
//! failures and the chart. A missing browser is an error naming the package.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use basalt_manifest::chrono::Duration;
use basalt_manifest::semver::Version;
use basalt_rollout::sim::{Fleet, Outcome, RunConfig};
use hyper::Method;
use serde_json::json;
use support::{t0, Harness};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs Chromium headless with `args`, killed by PID after `limit`; returns stdout.
fn chromium(args: &[String], limit: StdDuration) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: apt-get install chromium"
    );
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(StdDuration::from_millis(100));
    }
    let output = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_status_page_shows_a_halted_rollout_and_its_reason() {
    let h = Harness::sqlite();
    let enroll = h.pool("web", 300);
    h.publish("2.0.0", 2);
    let mut fleet =
        h.rt.block_on(Fleet::enroll(
            &h.url(),
            &enroll,
            "node",
            200,
            &Version::new(1, 0, 0),
            t0(),
        ))
        .expect("enrol");
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "max_unavailable": "2", "max_surge": "2", "halt_at_percent": 20,
                "waves": [{"after_secs":0,"percent":5},{"after_secs":3600,"percent":100}]}),
    );
    let cfg = RunConfig {
        servers: vec![h.url()],
        download_secs: 240,
        reboot_secs: 120,
        outcome: Outcome::RollBack,
        unavailable_limit: 2,
        in_flight_limit: 4,
        soak_secs: 0,
        concurrency: 16,
        max_rounds: 1000,
        until: t0() + Duration::hours(2),
        tick_secs: 15,
    };
    h.rt.block_on(fleet.run(&h.clock, &cfg, |_| false))
        .expect("run");
    let status = h.status("web");
    assert_eq!(status["rollout"]["info"]["state"], "halted");
    let failed = status["rollout"]["failed"].as_u64().expect("failed");

    let url = format!("{}?pool=web#token={}", h.url(), h.operator);
    let dom = chromium(
        &[
            "--virtual-time-budget=8000".into(),
            "--dump-dom".into(),
            url.clone(),
        ],
        StdDuration::from_secs(90),
    );
    assert!(
        dom.contains(r#"data-loaded="yes""#),
        "the page loaded its data:\n{dom}"
    );
    for expected in [
        "Pool web",
        "state-halted",
        "auto-halt:",
        "health check kubelet failed",
        "Rollout 1 to 2.0.0 — halted.",
        r#"class="series series-admitted""#,
        r#"class="series series-failed""#,
        &format!(r#"data-last="{failed}""#),
        "1.0.0",
    ] {
        assert!(
            dom.contains(expected),
            "missing {expected:?} in the page:\n{dom}"
        );
    }
    assert!(
        !dom.contains(&h.operator),
        "the token is not left in the page"
    );
    // The waves table: the first wave's row shows its failed nodes.
    assert!(dom.contains("<td>5%</td>"), "{dom}");

    // A wrong token: the page says why instead of showing data.
    let dom = chromium(
        &[
            "--virtual-time-budget=5000".into(),
            "--dump-dom".into(),
            format!("{}#token=bro_{}", h.url(), "x".repeat(43)),
        ],
        StdDuration::from_secs(90),
    );
    assert!(
        dom.contains(r#"data-loaded="error""#) && dom.contains("unauthenticated"),
        "{dom}"
    );

    // A screenshot for people reading the test output.
    let shot = std::env::temp_dir().join("basalt-rollout-status.png");
    chromium(
        &[
            "--virtual-time-budget=8000".into(),
            "--window-size=1100,1500".into(),
            format!("--screenshot={}", shot.display()),
            url,
        ],
        StdDuration::from_secs(90),
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot at {}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
}
