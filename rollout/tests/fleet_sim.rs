//! Fleet simulation against the real server over 127.0.0.1 (SQLite): 1,000 simulated nodes.
//! A good release converges with the limits held, across a server restart mid-rollout; a bad
//! release halts itself having touched at most 1 % of the pool plus one batch.

mod support;

use basalt_manifest::chrono::Duration;
use basalt_manifest::semver::Version;
use basalt_rollout::sim::{Fleet, Outcome, RunConfig};
use hyper::Method;
use serde_json::{json, Value};
use support::{t0, Harness};

const NODES: usize = 1000;

fn v(s: &str) -> Version {
    Version::parse(s).expect("version")
}

fn config(h: &Harness, outcome: Outcome, unavailable: u64, in_flight: u64, soak: i64) -> RunConfig {
    RunConfig {
        servers: vec![h.url()],
        download_secs: 240,
        reboot_secs: 120,
        outcome,
        unavailable_limit: unavailable,
        in_flight_limit: in_flight,
        soak_secs: soak,
        concurrency: 32,
        max_rounds: 5000,
        until: t0() + Duration::days(2),
        tick_secs: 15,
    }
}

fn without_clock(mut status: Value) -> Value {
    status.as_object_mut().expect("object").remove("now");
    status
}

#[test]
fn a_good_release_converges_within_the_limits_across_a_restart() {
    let mut h = Harness::sqlite();
    let enroll = h.pool("web", 300);
    h.publish("2.0.0", 2);
    let mut fleet =
        h.rt.block_on(Fleet::enroll(
            &h.url(),
            &enroll,
            "node",
            NODES,
            &v("1.0.0"),
            t0(),
        ))
        .expect("enrol");
    let rollout = h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "max_unavailable": "5%", "max_surge": "5%", "soak_secs": 300,
                "waves": [{"after_secs":0,"percent":1},{"after_secs":1200,"percent":10},{"after_secs":2400,"percent":50},{"after_secs":3600,"percent":100}]}),
    );
    assert_eq!(rollout["target"]["version"], "2.0.0");
    let (unavailable, in_flight) = (50, 100);
    let target = v("2.0.0");

    // First part: until 40 % are at the target.
    let cfg = config(&h, Outcome::Healthy, unavailable, in_flight, 300);
    let first =
        h.rt.block_on(fleet.run(&h.clock, &cfg, |f| f.at_least(&target) >= NODES * 2 / 5))
            .expect("first part");
    assert!(first.violations.is_empty(), "{:?}", first.violations);
    assert!(fleet.at_least(&target) >= NODES * 2 / 5, "{first:?}");
    assert!(fleet.at_least(&target) < NODES, "stopped mid-rollout");

    // The server restarts (new process state, same database): nothing is lost.
    let before = without_clock(h.status("web"));
    h.stop();
    h.start();
    assert_eq!(
        without_clock(h.status("web")),
        before,
        "the status survives the restart"
    );

    let cfg = RunConfig {
        servers: vec![h.url()],
        ..cfg
    };
    let second =
        h.rt.block_on(fleet.run(&h.clock, &cfg, |f| {
            f.at_least(&target) == NODES && f.quiet()
        }))
        .expect("second part");
    assert!(second.violations.is_empty(), "{:?}", second.violations);
    assert_eq!(fleet.at_least(&target), NODES, "converged: {second:?}");
    assert_eq!(
        first.errors + second.errors,
        0,
        "{:?} {:?}",
        first.first_error,
        second.first_error
    );
    // The limits were reached (the test exercised them) and never exceeded.
    let max_unavailable = first.max_unavailable.max(second.max_unavailable);
    let max_in_flight = first.max_in_flight.max(second.max_in_flight);
    assert_eq!(
        max_unavailable, unavailable,
        "max-unavailable was reached, not exceeded"
    );
    assert_eq!(
        max_in_flight, in_flight,
        "the in-flight limit was reached, not exceeded"
    );

    h.clock.advance(Duration::seconds(301));
    let s = h.status("web");
    let r = &s["rollout"];
    assert_eq!(r["touched"], NODES, "each node touched once");
    assert_eq!(r["failed"], 0);
    assert_eq!(r["at_target"], NODES);
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["stages"], json!({"healthy": NODES}));
    assert_eq!(s["versions"], json!({"2.0.0": NODES}));
    assert_eq!(s["lock_holders"], json!([]));
    let waves: u64 = r["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| w["nodes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(waves, NODES as u64);
    let history = h.op(Method::GET, "api/v1/pools/web/history", &Value::Null);
    let last = history["points"]
        .as_array()
        .and_then(|p| p.last())
        .cloned()
        .expect("points");
    assert_eq!(
        (last["admitted"].clone(), last["healthy"].clone()),
        (json!(NODES), json!(NODES))
    );
    eprintln!(
        "good release: {} check-ins in {:.1} s wall ({:.0}/s), {} simulated minutes; max unavailable {max_unavailable}, max in flight {max_in_flight}",
        first.check_ins + second.check_ins,
        (first.wall + second.wall).as_secs_f64(),
        (first.check_ins + second.check_ins) as f64 / (first.wall + second.wall).as_secs_f64(),
        (first.sim_secs + second.sim_secs) / 60
    );
}

#[test]
fn a_bad_release_halts_itself_after_touching_one_percent_plus_one_batch() {
    let h = Harness::sqlite();
    let enroll = h.pool("web", 300);
    h.publish("2.0.0", 2);
    let mut fleet =
        h.rt.block_on(Fleet::enroll(
            &h.url(),
            &enroll,
            "node",
            NODES,
            &v("1.0.0"),
            t0(),
        ))
        .expect("enrol");
    // Default waves (1 % in the first hour), a batch of 10 in flight, halt at 5 %.
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "max_unavailable": "5", "max_surge": "5", "halt_at_percent": 5}),
    );
    let (unavailable, batch) = (5u64, 10u64);
    let cfg = config(&h, Outcome::RollBack, unavailable, batch, 0);
    // Run two simulated hours: long past the point where later waves would have opened.
    let cfg = RunConfig {
        until: t0() + Duration::hours(2),
        ..cfg
    };
    let report =
        h.rt.block_on(fleet.run(&h.clock, &cfg, |_| false))
            .expect("run");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let s = h.status("web");
    let r = &s["rollout"];
    assert_eq!(r["info"]["state"], "halted", "{r}");
    let why = r["info"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("auto-halt:") && why.contains("health check kubelet failed"),
        "{why}"
    );
    let touched = r["touched"].as_u64().unwrap_or(u64::MAX);
    let bound = (NODES as u64).div_ceil(100) + batch;
    assert!(
        touched >= 1 && touched <= bound,
        "touched {touched}, bound {bound}"
    );
    assert_eq!(
        fleet.touched() as u64,
        touched,
        "the nodes agree with the server"
    );
    assert_eq!(
        fleet.at_least(&v("2.0.0")),
        0,
        "no node runs the bad release"
    );
    let failures = r["failures"].as_array().expect("failures");
    assert!(
        !failures.is_empty()
            && failures
                .iter()
                .all(|f| f["reason"].as_str().is_some_and(|x| x.contains("kubelet")))
    );
    eprintln!(
        "bad release: halted after touching {touched} of {NODES} (bound {bound}), {} failed; {} check-ins in {:.1} s",
        r["failed"], report.check_ins, report.wall.as_secs_f64()
    );
}
