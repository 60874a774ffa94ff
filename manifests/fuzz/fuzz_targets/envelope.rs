//! Fuzzes every parser of `basalt-manifest` and release verification against a fixed trust
//! root. Never panics; round trips must be stable.
//!
//! Seeds (a manifest, a signed release, a trust root, a usr-hash statement; sysext
//! statements share the envelope parser) are committed in
//! `seeds/envelope/` (the corpus folder itself is git-ignored):
//! `cargo +nightly fuzz run envelope corpus/envelope seeds/envelope`.

#![no_main]

use std::sync::OnceLock;

use basalt_manifest::chrono::DateTime;
use basalt_manifest::{
    sign_trust_root, verify_release, verify_sysext, verify_usr_hash, Document, Envelope, Manifest,
    Policy, SigningKey, SysextStatement, TrustRoot, TrustRootDocument, UsrHashStatement,
    MAX_RELEASE_BYTES,
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    root: TrustRoot,
    policy: Policy,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Keys from fixed seeds, threshold 2 of 3; the policy is a plausible node's.
        let keys: Vec<SigningKey> = (1u8..=3)
            .map(|n| SigningKey::from_seed(&[n; 32]).expect("seeded key"))
            .collect();
        let public: Vec<_> = keys.iter().map(SigningKey::public_key).collect();
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let doc = TrustRootDocument::new(1, 2, &public, None);
        let bytes = sign_trust_root(&doc, &refs).expect("signing the fixture root");
        let root = TrustRoot::from_initial_envelope(&bytes).expect("the fixture root verifies");
        let now = DateTime::from_timestamp(1_780_000_000, 0).expect("fixed time");
        let mut policy = Policy::new(now);
        policy.os = Some("basalt".into());
        policy.highest_sequence_seen = Some(1);
        Fixture { root, policy }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let _ = verify_release(data, &f.root, &f.policy);
    let _ = TrustRoot::from_initial_envelope(data);
    let _ = f.root.rotate(data);
    let _ = verify_usr_hash(data, &f.root, &"ab".repeat(32));
    let _ = TrustRootDocument::from_json(data);
    let _ = UsrHashStatement::from_json(data);
    let _ = verify_sysext(data, &f.root);
    if let Ok(statement) = SysextStatement::from_json(data) {
        let json = statement.to_json().expect("encoding a parsed sysext statement");
        assert_eq!(SysextStatement::from_json(&json).expect("re-parsing"), statement);
    }

    if let Ok(envelope) = Envelope::from_json(data, MAX_RELEASE_BYTES, Document::Release) {
        let json = envelope.to_json(Document::Release).expect("encoding a parsed envelope");
        let again = Envelope::from_json(&json, usize::MAX, Document::Release)
            .expect("re-parsing an encoded envelope");
        assert_eq!(again, envelope);
    }
    if let Ok(manifest) = Manifest::from_json(data) {
        let json = manifest.to_json().expect("encoding a parsed manifest");
        let again = Manifest::from_json(&json).expect("re-parsing an encoded manifest");
        assert_eq!(again, manifest);
    }
});
