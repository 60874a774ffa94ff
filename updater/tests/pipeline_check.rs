//! `Engine::check` against a repository an attacker controls: every forged, stale, replayed
//! or misdirected channel head is refused with its typed error (stable kind), the disk is
//! not written, and the trust-root chain is walked (and persisted) generation by generation.

#![allow(clippy::unwrap_used)]

mod common;

use basalt_manifest::chrono::{Duration as ChronoDuration, Utc};
use basalt_manifest::{
    repo, sign_release, sign_trust_root, Digest, Manifest, SigningKey, TrustRootDocument,
};
use basalt_updater::engine::{CheckOutcome, CheckRequest, Engine};
use basalt_updater::pipeline::{BackendKind, Error, ErrorKind};
use common::{key, EspKind, Node, World, MIB};

fn request() -> CheckRequest {
    CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    }
}

fn sha(bytes: &[u8]) -> Digest {
    Digest(
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .try_into()
            .unwrap(),
    )
}

struct Setup {
    world: World,
    node: Node,
    head: Vec<u8>,
    manifest: Manifest,
}

fn setup() -> Setup {
    let world = World::new();
    let node = Node::new(&world, "n", BackendKind::Bls, EspKind::Dir);
    let v2 = world.release("2.0.0", MIB);
    world.publish(&v2, Some(10));
    let head = std::fs::read(
        world
            .repo
            .join(repo::head_path("stable", "x86_64").unwrap()),
    )
    .unwrap();
    let manifest = basalt_manifest::verify_release(
        &head,
        &basalt_manifest::TrustRoot::from_initial_envelope(&std::fs::read(&world.anchor).unwrap())
            .unwrap(),
        &basalt_manifest::Policy::new(Utc::now()),
    )
    .unwrap()
    .manifest;
    Setup {
        world,
        node,
        head,
        manifest,
    }
}

impl Setup {
    fn serve(&self, channel: &str, arch: &str, bytes: &[u8]) {
        let p = self
            .world
            .repo
            .join(repo::head_path(channel, arch).unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn check(&self, req: &CheckRequest) -> Result<CheckOutcome, Error> {
        self.node.engine(Box::new(self.world.source())).check(req)
    }

    fn refused(&self, req: &CheckRequest, kind: ErrorKind, what: &str) -> Error {
        let disk = std::fs::read(self.node.disk()).unwrap();
        let e = match self.check(req) {
            Ok(o) => panic!("{what}: accepted: {o:?}"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert!(
            std::fs::read(self.node.disk()).unwrap() == disk,
            "{what}: the disk was written"
        );
        assert!(!self.node.config.journal_path().exists(), "{what}");
        e
    }

    fn signed(&self, m: &Manifest, keys: &[&SigningKey]) -> Vec<u8> {
        sign_release(m, keys).unwrap()
    }
}

#[test]
fn forged_and_stale_heads_are_refused() {
    let s = setup();
    let ok = s.check(&request()).unwrap();
    assert!(matches!(ok, CheckOutcome::Available(_)));
    let (k1, k2, k9) = (key(1), key(2), key(9));

    // A flipped byte anywhere in the envelope.
    for at in [10, s.head.len() / 2, s.head.len() - 20] {
        let mut bad = s.head.clone();
        bad[at] ^= 0x01;
        s.serve("stable", "x86_64", &bad);
        s.refused(
            &request(),
            ErrorKind::SignatureRefused,
            &format!("flip at {at}"),
        );
    }
    // One key of a 2-of-3 root; an unknown key beside a known one.
    s.serve("stable", "x86_64", &s.signed(&s.manifest, &[&k1]));
    let e = s.refused(&request(), ErrorKind::SignatureRefused, "below threshold");
    assert!(e.to_string().contains("2 needed"), "{e}");
    s.serve("stable", "x86_64", &s.signed(&s.manifest, &[&k1, &k9]));
    s.refused(&request(), ErrorKind::SignatureRefused, "unknown key");
    // Not JSON, empty, oversized.
    s.serve("stable", "x86_64", b"<html>captive portal</html>");
    s.refused(&request(), ErrorKind::SignatureRefused, "not an envelope");
    s.serve("stable", "x86_64", &vec![b' '; 2 << 20]);
    s.refused(&request(), ErrorKind::LengthMismatch, "oversized head");
    s.serve("stable", "x86_64", &s.head);

    // Expired (the node's clock is past expires_at), issued in the future.
    let later = CheckRequest {
        now: Utc::now() + ChronoDuration::days(31),
        ..request()
    };
    s.refused(&later, ErrorKind::Expired, "expired");
    let earlier = CheckRequest {
        now: Utc::now() - ChronoDuration::hours(2),
        ..request()
    };
    s.refused(&earlier, ErrorKind::Expired, "issued in the future");

    // Replay: a head below the highest sequence seen; equivocation: same sequence, other bytes.
    let replay = CheckRequest {
        last_seen: Some((11, Digest([7; 32]))),
        ..request()
    };
    let e = s.refused(&replay, ErrorKind::Replay, "replay");
    assert!(e.to_string().contains("sequence 10"), "{e}");
    let equiv = CheckRequest {
        last_seen: Some((10, Digest([7; 32]))),
        ..request()
    };
    s.refused(&equiv, ErrorKind::Equivocation, "equivocation");
    // The same head again: up to date, not an error.
    let same = CheckRequest {
        last_seen: Some((10, sha(&s.head))),
        ..request()
    };
    assert!(matches!(
        s.check(&same).unwrap(),
        CheckOutcome::UpToDate { sequence: 10, .. }
    ));
    // Lower sequences: accepted only while above the last seen.
    let older_seen = CheckRequest {
        last_seen: Some((9, Digest([7; 32]))),
        ..request()
    };
    assert!(matches!(
        s.check(&older_seen).unwrap(),
        CheckOutcome::Available(_)
    ));

    // Downgrade: refused unless the operator allowed it (then reported).
    let newer_installed = CheckRequest {
        installed_version: Some("3.0.0".parse().unwrap()),
        ..request()
    };
    s.refused(&newer_installed, ErrorKind::Downgrade, "downgrade");
    let allowed = CheckRequest {
        allow_downgrade: true,
        ..newer_installed
    };
    match s.check(&allowed).unwrap() {
        CheckOutcome::Available(c) => assert!(c.release.downgrade_override),
        other => panic!("{other:?}"),
    }

    // Wrong OS, architecture, channel (a valid head served at this node's path).
    let mut other_os = s.manifest.clone();
    other_os.os = "flatcar".into();
    s.serve("stable", "x86_64", &s.signed(&other_os, &[&k1, &k2]));
    s.refused(&request(), ErrorKind::WrongTarget, "wrong os");
    let mut other_arch = s.manifest.clone();
    other_arch.arch = "aarch64".into();
    s.serve("stable", "x86_64", &s.signed(&other_arch, &[&k1, &k2]));
    s.refused(&request(), ErrorKind::WrongTarget, "wrong arch");
    s.serve("stable", "x86_64", &s.head);
    s.serve("beta", "x86_64", &s.head);
    let mut beta = setup_node_on(&s, "beta");
    let e = beta.check(&request()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongTarget, "{e}");

    // Valid signatures, but nothing this node can install.
    let mut raw = s.manifest.clone();
    for a in &mut raw.artifacts {
        a.compression = None;
    }
    s.serve("stable", "x86_64", &s.signed(&raw, &[&k1, &k2]));
    s.refused(&request(), ErrorKind::InvalidRelease, "no frame index");

    // No head at all.
    std::fs::remove_file(
        s.world
            .repo
            .join(repo::head_path("stable", "x86_64").unwrap()),
    )
    .unwrap();
    s.refused(&request(), ErrorKind::NotFound, "no head");
}

fn setup_node_on(s: &Setup, channel: &str) -> basalt_updater::pipeline::NodeEngine {
    let mut config = s.node.config.clone();
    config.channel = channel.into();
    basalt_updater::pipeline::NodeEngine::new(config, Box::new(s.world.source()))
}

#[test]
fn the_trust_root_chain_is_walked_and_persisted() {
    let s = setup();
    let new_keys: Vec<SigningKey> = (4..=6).map(key).collect();
    let publics: Vec<_> = new_keys.iter().map(SigningKey::public_key).collect();
    let g2 = sign_trust_root(
        &TrustRootDocument::new(2, 2, &publics, None),
        &[
            &s.world.keys[0],
            &s.world.keys[1],
            &new_keys[0],
            &new_keys[1],
        ],
    )
    .unwrap();
    let roots = s.world.repo.join("roots");
    std::fs::write(roots.join("2.root.json"), &g2).unwrap();
    // A head signed by the new keys only verifies after walking to generation 2.
    let mut m = s.manifest.clone();
    m.sequence = 11;
    s.serve(
        "stable",
        "x86_64",
        &sign_release(&m, &[&new_keys[0], &new_keys[1]]).unwrap(),
    );
    assert!(matches!(
        s.check(&request()).unwrap(),
        CheckOutcome::Available(_)
    ));
    let persisted = s.node.config.trust_dir().join("2.root.json");
    assert_eq!(std::fs::read(&persisted).unwrap(), g2);
    // Old keys no longer count.
    s.serve("stable", "x86_64", &s.head);
    s.refused(
        &request(),
        ErrorKind::SignatureRefused,
        "old keys after rotation",
    );

    // A generation 3 not signed by a threshold of generation 2: refused, nothing persisted.
    let g3_bad = sign_trust_root(
        &TrustRootDocument::new(3, 1, &[key(7).public_key()], None),
        &[&key(7), &new_keys[0]],
    )
    .unwrap();
    std::fs::write(roots.join("3.root.json"), &g3_bad).unwrap();
    s.refused(&request(), ErrorKind::TrustRootRefused, "bad rotation");
    assert!(!s.node.config.trust_dir().join("3.root.json").exists());
    std::fs::remove_file(roots.join("3.root.json")).unwrap();

    // A damaged persisted generation (the writable root is not trusted) is ignored and
    // fetched again; a forged one that does not rotate adds no trust.
    std::fs::write(&persisted, b"garbage").unwrap();
    s.serve(
        "stable",
        "x86_64",
        &sign_release(&m, &[&new_keys[0], &new_keys[1]]).unwrap(),
    );
    assert!(matches!(
        s.check(&request()).unwrap(),
        CheckOutcome::Available(_)
    ));
    assert_eq!(std::fs::read(&persisted).unwrap(), g2);
    std::fs::remove_file(roots.join("2.root.json")).unwrap();
    let forged = sign_trust_root(
        &TrustRootDocument::new(2, 1, &[key(8).public_key()], None),
        &[&key(8)],
    )
    .unwrap();
    std::fs::write(&persisted, &forged).unwrap();
    let mut evil = m.clone();
    evil.sequence = 12;
    s.serve(
        "stable",
        "x86_64",
        &sign_release(&evil, &[&key(8)]).unwrap(),
    );
    s.refused(
        &request(),
        ErrorKind::SignatureRefused,
        "forged persisted root",
    );
}

/// `verify_candidate`: a persisted envelope verified again without fetching (after a daemon
/// restart): accepted when it is exactly the one last seen, refused when replayed, swapped,
/// tampered with or expired.
#[test]
fn a_persisted_candidate_is_verified_again() {
    let s = setup();
    let mut engine = s.node.engine(Box::new(s.world.source()));
    let seen = CheckRequest {
        last_seen: Some((10, sha(&s.head))),
        ..request()
    };
    let c = engine.verify_candidate(&s.head, &seen).unwrap();
    assert_eq!(c.release.manifest.sequence, 10);
    assert_eq!(c.envelope, s.head);
    let kind = |r: Result<basalt_updater::engine::Candidate, Error>| r.unwrap_err().kind();
    let mut bad = s.head.clone();
    let n = bad.len() / 3;
    bad[n] ^= 1;
    assert_eq!(
        kind(engine.verify_candidate(&bad, &seen)),
        ErrorKind::SignatureRefused
    );
    let later = CheckRequest {
        last_seen: Some((12, Digest([1; 32]))),
        ..request()
    };
    assert_eq!(
        kind(engine.verify_candidate(&s.head, &later)),
        ErrorKind::Replay
    );
    let other = CheckRequest {
        last_seen: Some((10, Digest([1; 32]))),
        ..request()
    };
    assert_eq!(
        kind(engine.verify_candidate(&s.head, &other)),
        ErrorKind::Equivocation
    );
    let expired = CheckRequest {
        now: Utc::now() + ChronoDuration::days(40),
        ..seen.clone()
    };
    assert_eq!(
        kind(engine.verify_candidate(&s.head, &expired)),
        ErrorKind::Expired
    );
    let newer_installed = CheckRequest {
        installed_version: Some("9.0.0".parse().unwrap()),
        ..seen
    };
    assert_eq!(
        kind(engine.verify_candidate(&s.head, &newer_installed)),
        ErrorKind::Downgrade
    );
    // Every kind has a daemon class and the kind's name is the EngineError name.
    use basalt_updater::engine::EngineError;
    let e = engine.verify_candidate(&bad, &request()).unwrap_err();
    assert_eq!(e.name(), "SignatureRefused");
    assert_eq!(e.class(), basalt_updater::engine::ErrorClass::Integrity);
}
