//! The same server against a real PostgreSQL (started by the test: its own data folder and
//! port) with two server replicas sharing it: migrations run once, the last free slot is
//! granted exactly once however the replicas race, and the 1,000-node simulation spread over
//! both replicas holds the limits and converges.

mod support;

use std::sync::Arc;

use basalt_manifest::chrono::Duration;
use basalt_manifest::semver::Version;
use basalt_rollout::auth::SystemRandom;
use basalt_rollout::clock::Clock;
use basalt_rollout::server::{Running, Server};
use basalt_rollout::service::{Config, Service};
use basalt_rollout::sim::{Fleet, Outcome, RunConfig};
use basalt_rollout::store::{self, postgres::Postgres, Backend};
use basalt_rollout_wire::{Action, Directive};
use hyper::Method;
use serde_json::json;
use support::pg::Pg;
use support::{t0, Harness};

fn v(s: &str) -> Version {
    Version::parse(s).expect("version")
}

/// A harness whose first replica uses its own connection pool, plus a second replica with
/// another pool (as a second process would have).
fn two_replicas(pg: &Pg) -> (Harness, Running) {
    let first: Arc<dyn Backend> = Arc::new(Postgres::connect(&pg.conninfo()).expect("connect"));
    let h = Harness::with(first, tempfile::tempdir().expect("tempdir"), None);
    let second: Arc<dyn Backend> = Arc::new(Postgres::connect(&pg.conninfo()).expect("connect"));
    let service = Service::new(
        second,
        h.clock.clone(),
        Arc::new(SystemRandom::default()),
        Config {
            repository_url: "http://127.0.0.1:1/repo/".into(),
            repository_dir: None,
            trust_root: h.keys.root(),
        },
    );
    let replica =
        h.rt.block_on(Running::start(Server::new(service, None), "127.0.0.1:0"))
            .expect("second replica");
    (h, replica)
}

#[test]
fn migrations_run_once_when_replicas_start_together() {
    let pg = Pg::start();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let conninfo = pg.conninfo();
            std::thread::spawn(move || {
                let backend = Postgres::connect(&conninfo).expect("connect");
                store::migrations::migrate(&backend, t0()).expect("migrate")
            })
        })
        .collect();
    let mut before: Vec<i64> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    before.sort();
    assert_eq!(
        before,
        vec![0, 1, 1, 1],
        "exactly one replica migrated from 0"
    );
    // A database migrated by a newer build is refused.
    let mut client =
        ::postgres::Client::connect(&pg.conninfo(), ::postgres::NoTls).expect("client");
    client
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)",
            &[],
        )
        .expect("insert");
    let backend = Postgres::connect(&pg.conninfo()).expect("connect");
    let e = store::migrations::migrate(&backend, t0()).expect_err("too new");
    assert!(e.to_string().contains("version 99"), "{e}");
}

#[test]
fn the_last_free_slot_is_granted_once_across_replicas() {
    let pg = Pg::start();
    let (h, replica) = two_replicas(&pg);
    let enroll = h.pool("web", 60);
    h.publish("2.0.0", 2);
    const N: usize = 40;
    let mut fleet =
        h.rt.block_on(Fleet::enroll(&h.url(), &enroll, "n", N, &v("1.0.0"), t0()))
            .expect("enrol");
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "max_unavailable": "1", "max_surge": "100%", "waves": [{"after_secs":0,"percent":100}]}),
    );
    // Every node is admitted and stages; then all staged nodes race for the one slot, half
    // through each replica, round after round.
    let cfg = RunConfig {
        servers: vec![h.url(), replica.url()],
        download_secs: 60,
        reboot_secs: 60,
        outcome: Outcome::Healthy,
        unavailable_limit: 1,
        in_flight_limit: N as u64 + 1,
        soak_secs: 0,
        concurrency: 40,
        max_rounds: 2000,
        until: t0() + Duration::days(1),
        tick_secs: 1,
    };
    let report =
        h.rt.block_on(fleet.run(&h.clock, &cfg, |f| {
            f.at_least(&v("2.0.0")) == N && f.quiet()
        }))
        .expect("run");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.max_unavailable, 1);
    assert_eq!(fleet.at_least(&v("2.0.0")), N, "{report:?}");
    assert_eq!(report.errors, 0, "{:?}", report.first_error);

    // And directly: many staged nodes ask for the slot at the same instant through both
    // replicas; exactly one is told to reboot.
    let (h2, replica2) = (h, replica);
    let enroll = h2.pool("db", 60);
    h2.op(
        Method::POST,
        "api/v1/pools/db/upgrade",
        &json!({"node_image_only": true, "max_unavailable": "1", "max_surge": "100%", "waves": [{"after_secs":0,"percent":100}]}),
    );
    let racers = h2
        .rt
        .block_on(Fleet::enroll(
            &h2.url(),
            &enroll,
            "r",
            24,
            &v("1.0.0"),
            h2.clock.now(),
        ))
        .expect("enrol");
    let urls = [h2.url(), replica2.url()];
    // Admit every racer, pause, let them all report staged, resume; then race.
    let send = |node: &basalt_rollout::sim::SimNode, events: &[(u64, &str)]| {
        let body = racer_check_in(&node.id.to_string(), events);
        let (status, answer) = h2.rt.block_on(support::raw(
            Method::POST,
            &format!("{}v1/check-in", urls[0]),
            Some(node.token()),
            body,
            &[],
        ));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        Directive::from_json(&answer).expect("directive")
    };
    for node in &racers.nodes {
        assert_eq!(send(node, &[]).action, Action::Update);
    }
    h2.op(
        Method::POST,
        "api/v1/pools/db/pause",
        &serde_json::Value::Null,
    );
    for node in &racers.nodes {
        assert_eq!(send(node, &[(1, "staged")]).action, Action::Wait);
    }
    h2.op(
        Method::POST,
        "api/v1/pools/db/resume",
        &serde_json::Value::Null,
    );
    assert_eq!(h2.status("db")["rollout"]["stages"]["staged"], 24);
    let granted = h2.rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, node) in racers.nodes.iter().enumerate() {
            let url = format!("{}v1/check-in", urls[i % 2]);
            let token = node.token().to_owned();
            let body = racer_check_in(&node.id.to_string(), &[]);
            set.spawn(
                async move { support::raw(Method::POST, &url, Some(&token), body, &[]).await },
            );
        }
        let mut granted = 0;
        while let Some(joined) = set.join_next().await {
            let (status, body) = joined.expect("task");
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            if Directive::from_json(&body).expect("directive").action == Action::Reboot {
                granted += 1;
            }
        }
        granted
    });
    assert_eq!(
        granted, 1,
        "exactly one of 24 racing nodes got the last slot"
    );
    h2.rt.block_on(replica2.stop());
}

fn racer_check_in(id: &str, events: &[(u64, &str)]) -> Vec<u8> {
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|(seq, kind)| json!({"seq": seq, "at": "2026-12-02T08:00:00Z", "kind": kind, "version": "2.0.0"}))
        .collect();
    serde_json::to_vec(&json!({
        "protocol": 1, "node_id": id, "pool": "db",
        "booted": {"version": "1.0.0", "slot": "a"}, "state": "staged", "events": events
    }))
    .expect("json")
}

#[test]
fn a_thousand_nodes_over_two_replicas_hold_the_limits_and_converge() {
    let pg = Pg::start();
    let (h, replica) = two_replicas(&pg);
    // A longer interval and wider limits than the SQLite simulation: the same protocol and
    // races, fewer idle "not yet" check-ins (each is a dozen round trips to the database).
    let enroll = h.pool("web", 600);
    h.publish("2.0.0", 2);
    const N: usize = 1000;
    let mut fleet =
        h.rt.block_on(Fleet::enroll(
            &h.url(),
            &enroll,
            "node",
            N,
            &v("1.0.0"),
            t0(),
        ))
        .expect("enrol");
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "max_unavailable": "10%", "max_surge": "10%", "soak_secs": 300,
                "waves": [{"after_secs":0,"percent":1},{"after_secs":1200,"percent":10},{"after_secs":2400,"percent":50},{"after_secs":3600,"percent":100}]}),
    );
    let cfg = RunConfig {
        servers: vec![h.url(), replica.url()],
        download_secs: 240,
        reboot_secs: 120,
        outcome: Outcome::Healthy,
        unavailable_limit: 100,
        in_flight_limit: 200,
        soak_secs: 300,
        concurrency: 32,
        max_rounds: 5000,
        until: t0() + Duration::days(2),
        tick_secs: 15,
    };
    let target = v("2.0.0");
    let report =
        h.rt.block_on(fleet.run(&h.clock, &cfg, |f| f.at_least(&target) == N && f.quiet()))
            .expect("run");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(fleet.at_least(&target), N, "{report:?}");
    assert_eq!(
        (report.max_unavailable, report.max_in_flight),
        (cfg.unavailable_limit, cfg.in_flight_limit),
        "limits reached (10 % unavailable, 10 % surge of 1,000), never exceeded"
    );
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    let s = h.status("web");
    assert_eq!(s["rollout"]["touched"], N);
    assert_eq!(s["rollout"]["failed"], 0);
    assert_eq!(s["versions"], json!({"2.0.0": N}));
    eprintln!(
        "postgres, two replicas: {} check-ins in {:.1} s ({:.0}/s)",
        report.check_ins,
        report.wall.as_secs_f64(),
        report.check_ins as f64 / report.wall.as_secs_f64()
    );
    h.rt.block_on(replica.stop());
}
