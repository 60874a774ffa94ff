//! Server mode's source: whatever a fleet server offers goes through the engine's own check,
//! as a channel head read from a repository would. The server decides *when*; it cannot make
//! a node take a release its keys did not sign, an older sequence than it accepted, an older
//! version than it runs, or a release of another channel — each refused with its typed error,
//! nothing written. Artifacts come from the offered repository, served by a real nginx.

#![allow(clippy::unwrap_used)]

mod common;

use basalt_manifest::chrono::Utc;
use basalt_manifest::{repo, Digest};
use basalt_tests::web::Nginx;
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine};
use basalt_updater::http::HttpConfig;
use basalt_updater::pipeline::{BackendKind, ErrorKind};
use basalt_updater::source::offered::OfferedSource;
use common::{key, quiet, request, EspKind, Node, World, MIB};

fn sha(bytes: &[u8]) -> Digest {
    Digest(
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .try_into()
            .unwrap(),
    )
}

fn envelope(world: &World, channel: &str, sequence: u64) -> Vec<u8> {
    std::fs::read(
        world
            .repo
            .join(repo::release_path(channel, "x86_64", sequence).unwrap()),
    )
    .unwrap()
}

#[test]
fn the_server_decides_when_never_what() {
    let world = World::new();
    let node = Node::new(&world, "n", BackendKind::Bls, EspKind::Dir);
    let v2 = world.release("2.0.0", MIB);
    world.publish(&v2, Some(10));
    let v3 = world.release("3.0.0", MIB);
    world.publish(&v3, Some(11));
    world.publish_on(&v3, "beta", Some(12), false).unwrap();
    let (env2, env3, beta) = (
        envelope(&world, "stable", 10),
        envelope(&world, "stable", 11),
        envelope(&world, "beta", 12),
    );
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let offered = OfferedSource::new(
        repo::head_path("stable", "x86_64").unwrap(),
        HttpConfig::default(),
    );
    let mut engine = node.engine(Box::new(offered.clone()));
    let before = node.snapshot();

    // Nothing offered yet: nothing to check.
    let e = engine.check(&request()).unwrap_err();
    assert!(e.to_string().contains("no release offered"), "{e}");

    // Signed by keys the node does not trust (the server's own, say).
    let manifest = basalt_manifest::verify_release(
        &env3,
        &basalt_manifest::TrustRoot::from_initial_envelope(&std::fs::read(&world.anchor).unwrap())
            .unwrap(),
        &basalt_manifest::Policy::new(Utc::now()),
    )
    .unwrap()
    .manifest;
    let forged = basalt_manifest::sign_release(&manifest, &[&key(7), &key(8)]).unwrap();
    let seen3 = CheckRequest {
        last_seen: Some((11, sha(&env3))),
        ..request()
    };
    let on_three = CheckRequest {
        installed_version: Some("3.0.0".parse().unwrap()),
        ..request()
    };
    let cases: [(&str, &[u8], &CheckRequest, ErrorKind); 5] = [
        ("forged", &forged, &request(), ErrorKind::SignatureRefused),
        (
            "not an envelope",
            b"{\"payload\":1}",
            &request(),
            ErrorKind::SignatureRefused,
        ),
        ("replayed", &env2, &seen3, ErrorKind::Replay),
        ("downgrade", &env2, &on_three, ErrorKind::Downgrade),
        ("other channel", &beta, &request(), ErrorKind::WrongTarget),
    ];
    for (name, bytes, req, kind) in cases {
        offered.set_offer(bytes.to_vec(), &nginx.url()).unwrap();
        let e = engine.check(req).unwrap_err();
        assert_eq!(e.kind(), kind, "{name}: {e}");
        node.assert_safe(&before, name);
    }

    // The honest offer: verified, downloaded from the offered repository, staged.
    offered.set_offer(env3.clone(), &nginx.url()).unwrap();
    let CheckOutcome::Available(c) = engine.check(&request()).unwrap() else {
        panic!("3.0.0 not available")
    };
    assert_eq!(c.release.manifest.version.to_string(), "3.0.0");
    assert_eq!(c.envelope, env3, "exactly the offered bytes");
    let d = engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap();
    node.veritysetup_verify(d.slot, &v3.root_hash);
    let log = nginx.access_log().unwrap();
    assert!(
        !log.iter().any(|l| l.request.contains("head.signed")),
        "the head came from the offer, not the repository: {log:?}"
    );
}
