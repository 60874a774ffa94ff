//! The whole update over HTTP: a repository served by a real nginx on 127.0.0.1 (the HTTP
//! source the daemon uses), and by the misbehaving test server for what a network does
//! wrong. Each fault gives its typed error with the slot A safety checks, and the retry
//! resumes with a `Range` request from a frame boundary.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use basalt_disk::{Slot, SlotState};
use basalt_tests::faulty_http::{Fault, FaultyServer};
use basalt_tests::web::Nginx;
use basalt_updater::engine::{CancelFlag, CheckOutcome, Downloaded, Engine};
use basalt_updater::http::HttpConfig;
use basalt_updater::pipeline::{BackendKind, Error, ErrorKind};
use basalt_updater::source::http::HttpSource;
use common::{quiet, request, EspKind, Node, World, MIB};

fn update(node: &Node, base: &str, config: HttpConfig) -> Result<Downloaded, Error> {
    let source = HttpSource::new(base, config).unwrap();
    let mut engine = node.engine(Box::new(source));
    let CheckOutcome::Available(c) = engine.check(&request())? else {
        panic!("no update")
    };
    let d = engine.download(&c, &mut quiet(), &CancelFlag::new())?;
    engine.apply(&d, 3)?;
    Ok(d)
}

#[test]
fn update_from_nginx() {
    let world = World::new();
    let node = Node::new(&world, "nginx", BackendKind::Bls, EspKind::Fat);
    let v2 = world.release("2.0.0", 4 * MIB);
    let report = world.publish(&v2, None);
    let before = node.snapshot();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let d = update(&node, &nginx.url(), HttpConfig::default()).unwrap();
    assert_eq!((d.slot, d.reused), (Slot::B, 0));
    node.veritysetup_verify(Slot::B, &v2.root_hash);
    assert_eq!(node.snapshot(), before);
    assert_eq!(node.boot_control().status().unwrap().next, Some(Slot::B));
    // Every blob was fetched once, whole, with the agent's User-Agent.
    let log = nginx.access_log().unwrap();
    for a in &report.artifacts {
        let hits: Vec<_> = log
            .iter()
            .filter(|l| l.request.contains(&a.blob.to_hex()))
            .collect();
        assert_eq!(hits.len(), 1, "{}: {hits:?}", a.name);
        assert_eq!(
            (hits[0].status, hits[0].body_bytes),
            (200, a.compressed_size)
        );
        assert!(
            hits[0].user_agent.starts_with("basalt-updated/"),
            "{hits:?}"
        );
    }
}

#[test]
fn network_faults_are_typed_and_resume_with_a_range() {
    let world = World::new();
    let v2 = world.release("2.0.0", 4 * MIB);
    let report = world.publish(&v2, None);
    let blob = basalt_manifest::repo::blob_path(&report.artifacts[0].blob);
    let size = report.artifacts[0].compressed_size;
    let server = FaultyServer::start(&world.repo).unwrap();
    let short = HttpConfig {
        read_timeout: Duration::from_secs(2),
        ..HttpConfig::default()
    };
    let cases = [
        (
            "drop",
            Fault::DropAfter(size / 2),
            ErrorKind::LengthMismatch,
        ),
        (
            "flip",
            Fault::FlipByte(size * 3 / 4),
            ErrorKind::IntegrityMismatch,
        ),
        (
            "truncate",
            Fault::Truncate(size - 10),
            ErrorKind::LengthMismatch,
        ),
        ("stall", Fault::StallAfter(size / 3), ErrorKind::Network),
        ("missing", Fault::Status(404), ErrorKind::NotFound),
        ("overloaded", Fault::Status(503), ErrorKind::Network),
    ];
    for (name, fault, kind) in cases {
        let node = Node::new(&world, name, BackendKind::GptPrio, EspKind::Dir);
        let before = node.snapshot();
        server.clear_faults();
        server.on(&blob, fault.clone());
        let started = Instant::now();
        let e = update(&node, &server.url(), short.clone()).unwrap_err();
        assert_eq!(e.kind(), kind, "{name}: {e}");
        assert!(
            e.to_string().contains("127.0.0.1"),
            "{name}: the URL is named: {e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name}: unbounded"
        );
        node.assert_safe(&before, name);
        // The network recovers: the same update completes, from a frame boundary.
        server.clear_faults();
        let seen = server.requests_for(&blob).len();
        let d = update(&node, &server.url(), short.clone()).unwrap();
        node.veritysetup_verify(Slot::B, &v2.root_hash);
        assert_eq!(node.state(Slot::B), SlotState::Valid);
        let retry = &server.requests_for(&blob)[seen..];
        if d.reused > 0 {
            let range = retry[0].range.clone().unwrap_or_default();
            assert!(range.starts_with("bytes="), "{name}: {retry:?}");
            assert_eq!(retry[0].status, 206, "{name}");
        }
        if name == "drop" || name == "stall" {
            assert!(
                d.reused > 0,
                "{name}: nothing kept from the first attempt: {d:?}"
            );
        }
    }
}

/// Garbage after an honest `Content-Length` is not part of the body: the signed bytes arrive
/// and nothing else is read.
#[test]
fn bytes_after_the_body_are_not_read() {
    let world = World::new();
    let v2 = world.release("2.0.0", 2 * MIB);
    let report = world.publish(&v2, None);
    let server = FaultyServer::start(&world.repo).unwrap();
    for a in &report.artifacts {
        server.on(
            &basalt_manifest::repo::blob_path(&a.blob),
            Fault::ExtraBytes(4096),
        );
    }
    let node = Node::new(&world, "extra", BackendKind::Bls, EspKind::Dir);
    let d = update(&node, &server.url(), HttpConfig::default()).unwrap();
    assert_eq!(
        d.fetched,
        report
            .artifacts
            .iter()
            .map(|a| a.compressed_size + a.adaptive.as_ref().map_or(0, |x| x.block_index_size))
            .sum::<u64>()
    );
    node.veritysetup_verify(Slot::B, &v2.root_hash);
}

/// A server that ignores `Range` and answers 200 with the whole file: the resume still ends
/// with exactly the signed bytes.
#[test]
fn a_server_ignoring_range_still_gives_the_right_bytes() {
    let world = World::new();
    let v2 = world.release("2.0.0", 4 * MIB);
    let report = world.publish(&v2, None);
    let blob = basalt_manifest::repo::blob_path(&report.artifacts[0].blob);
    let server = FaultyServer::start(&world.repo).unwrap();
    let node = Node::new(&world, "norange", BackendKind::Bls, EspKind::Dir);
    server.on_nth(
        &blob,
        1,
        Fault::DropAfter(report.artifacts[0].compressed_size / 2),
    );
    server.on_nth(&blob, 2, Fault::IgnoreRange);
    update(&node, &server.url(), HttpConfig::default()).unwrap_err();
    let d = update(&node, &server.url(), HttpConfig::default()).unwrap();
    assert!(d.reused > 0);
    node.veritysetup_verify(Slot::B, &v2.root_hash);
}
