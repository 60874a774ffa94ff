//! Cross-module tests: one per refusal, rotation chains, and property tests.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use semver::Version;

use crate::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32]).unwrap()
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn root_doc(generation: u64, threshold: u64, keys: &[&SigningKey]) -> TrustRootDocument {
    let public: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
    TrustRootDocument::new(generation, threshold, &public, None)
}

/// An initial root of `keys` with `threshold`, self-signed by all of them.
fn root(threshold: u64, keys: &[&SigningKey]) -> TrustRoot {
    let bytes = sign_trust_root(&root_doc(1, threshold, keys), keys).unwrap();
    TrustRoot::from_initial_envelope(&bytes).unwrap()
}

fn digest(n: u8) -> Digest {
    Digest([n; 32])
}

fn manifest() -> Manifest {
    Manifest {
        schema_version: SCHEMA_VERSION,
        os: "basalt".into(),
        version: Version::new(1, 2, 0),
        channel: "stable".into(),
        arch: "x86_64".into(),
        sequence: 10,
        issued_at: now() - TimeDelta::hours(1),
        expires_at: now() + TimeDelta::days(7),
        artifacts: vec![
            Artifact {
                kind: ArtifactKind::Usr,
                name: "usr.img".into(),
                size: 1 << 20,
                sha256: digest(1),
                compression: Some(Compression {
                    algorithm: CompressionAlgorithm::Zstd,
                    compressed_size: 1000,
                    compressed_sha256: digest(2),
                    frame_index: None,
                    adaptive: None,
                }),
                verity: Some(Verity {
                    root_hash: digest(3),
                    salt: "00ff".into(),
                    data_blocks: 200,
                    hash_offset: 200 * 4096,
                    hash_algorithm: HashAlgorithm::Sha256,
                    data_block_size: 4096,
                    hash_block_size: 4096,
                }),
            },
            Artifact {
                kind: ArtifactKind::Kernel,
                name: "vmlinuz".into(),
                size: 5000,
                sha256: digest(4),
                compression: None,
                verity: None,
            },
        ],
        sysext_level: None,
    }
}

fn policy() -> Policy {
    Policy {
        now: now(),
        installed_version: Some(Version::new(1, 1, 0)),
        highest_sequence_seen: Some(9),
        os: Some("basalt".into()),
        arch: Some("x86_64".into()),
        channel: Some("stable".into()),
        max_clock_skew: Duration::from_secs(300),
        allow_downgrade: false,
    }
}

fn signed(m: &Manifest, keys: &[&SigningKey]) -> Vec<u8> {
    sign_release(m, keys).unwrap()
}

/// Signs raw manifest JSON without validating it (to reach the verifier's own checks).
fn signed_raw(json: &[u8], keys: &[&SigningKey]) -> Vec<u8> {
    sign_envelope(RELEASE_PAYLOAD_TYPE, json, keys).unwrap()
}

fn verify(bytes: &[u8], root: &TrustRoot, policy: &Policy) -> Result<VerifiedRelease> {
    verify_release(bytes, root, policy)
}

// ---- acceptance ----

#[test]
fn valid_release_verifies_and_reports_signers() {
    let (a, b, c) = (key(1), key(2), key(3));
    let root = root(2, &[&a, &b, &c]);
    let v = verify(&signed(&manifest(), &[&a, &c]), &root, &policy()).unwrap();
    assert_eq!(v.manifest, manifest());
    let mut want = vec![a.key_id(), c.key_id()];
    want.sort();
    assert_eq!(v.signed_by, want);
    assert_eq!(v.version_change, VersionChange::Upgrade);
    assert!(!v.downgrade_override);
    assert_eq!(v.trust_generation, 1);
}

#[test]
fn equal_version_with_higher_sequence_is_a_resigned_release() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut p = policy();
    p.installed_version = Some(Version::parse("1.2.0+build.7").unwrap());
    let v = verify(&signed(&manifest(), &[&a]), &root, &p).unwrap();
    assert_eq!(v.version_change, VersionChange::Same);
}

#[test]
fn issue_time_within_skew_is_accepted() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut m = manifest();
    m.issued_at = now() + TimeDelta::seconds(299);
    assert!(verify(&signed(&m, &[&a]), &root, &policy()).is_ok());
}

// ---- one test per refusal ----

#[test]
fn refuses_bad_signature() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut env = Envelope::from_json(
        &signed(&manifest(), &[&a]),
        MAX_RELEASE_BYTES,
        Document::Release,
    )
    .unwrap();
    env.signatures[0].sig[10] ^= 1;
    let bytes = env.to_json(Document::Release).unwrap();
    let err = verify(&bytes, &root, &policy()).unwrap_err();
    assert!(
        matches!(err, Error::BadSignature { ref keyid, .. } if *keyid == a.key_id().0),
        "{err}"
    );
}

#[test]
fn refuses_signature_over_a_different_payload() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut env = Envelope::from_json(
        &signed(&manifest(), &[&a]),
        MAX_RELEASE_BYTES,
        Document::Release,
    )
    .unwrap();
    let mut m = manifest();
    m.version = Version::new(9, 9, 9);
    env.payload = m.to_json().unwrap();
    let err = verify(&env.to_json(Document::Release).unwrap(), &root, &policy()).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn refuses_unknown_key() {
    let (a, stranger) = (key(1), key(9));
    let root = root(1, &[&a]);
    let err = verify(&signed(&manifest(), &[&stranger]), &root, &policy()).unwrap_err();
    assert!(
        matches!(err, Error::UnknownKey { ref keyid, .. } if *keyid == stranger.key_id().0),
        "{err}"
    );
    // Also when a threshold is otherwise met: every signature must be by a known key.
    let err = verify(&signed(&manifest(), &[&a, &stranger]), &root, &policy()).unwrap_err();
    assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
}

#[test]
fn refuses_below_threshold() {
    let (a, b, c) = (key(1), key(2), key(3));
    let root = root(2, &[&a, &b, &c]);
    let err = verify(&signed(&manifest(), &[&b]), &root, &policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                have: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("signed by 1 of the keys of trust root generation 1, 2 needed"));
    let err = verify(&signed(&manifest(), &[]), &root, &policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                have: 0,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_one_key_counted_twice() {
    let (a, b) = (key(1), key(2));
    let root = root(2, &[&a, &b]);
    let err = verify(&signed(&manifest(), &[&a, &a]), &root, &policy()).unwrap_err();
    assert!(
        matches!(err, Error::DuplicateSignature { ref keyid, have: 1, need: 2, .. } if *keyid == a.key_id().0),
        "{err}"
    );
    // A duplicate is harmless when the distinct signers still meet the threshold.
    assert!(verify(&signed(&manifest(), &[&a, &b, &a]), &root, &policy()).is_ok());
}

#[test]
fn refuses_duplicate_keys_in_a_trust_root() {
    let a = key(1);
    let doc = root_doc(1, 1, &[&a, &a]);
    assert!(matches!(
        doc.validate(),
        Err(Error::DuplicateTrustKey { generation: 1, .. })
    ));
    // Signed anyway (bypassing sign_trust_root's validation): still refused when loaded.
    let bytes = sign_envelope(TRUST_PAYLOAD_TYPE, &doc.to_json().unwrap(), &[&a]).unwrap();
    let err = TrustRoot::from_initial_envelope(&bytes).unwrap_err();
    assert!(matches!(err, Error::DuplicateTrustKey { .. }), "{err}");
}

#[test]
fn refuses_invalid_threshold() {
    let (a, b) = (key(1), key(2));
    for threshold in [0, 3] {
        let doc = root_doc(1, threshold, &[&a, &b]);
        let bytes = sign_envelope(TRUST_PAYLOAD_TYPE, &doc.to_json().unwrap(), &[&a, &b]).unwrap();
        let err = TrustRoot::from_initial_envelope(&bytes).unwrap_err();
        assert!(
            matches!(err, Error::InvalidThreshold { keys: 2, .. }),
            "{err}"
        );
    }
}

#[test]
fn refuses_initial_root_not_self_signed_to_threshold() {
    let (a, b) = (key(1), key(2));
    let bytes = sign_trust_root(&root_doc(1, 2, &[&a, &b]), &[&a]).unwrap();
    let err = TrustRoot::from_initial_envelope(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                have: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_expired_release() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut m = manifest();
    m.expires_at = now();
    let err = verify(&signed(&m, &[&a]), &root, &policy()).unwrap_err();
    assert!(matches!(err, Error::Expired { sequence: 10, .. }), "{err}");
}

#[test]
fn refuses_release_issued_in_the_future() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut m = manifest();
    m.issued_at = now() + TimeDelta::seconds(301);
    let err = verify(&signed(&m, &[&a]), &root, &policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IssuedInFuture {
                max_skew_secs: 300,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_replayed_or_older_sequence() {
    let a = key(1);
    let root = root(1, &[&a]);
    for highest in [10, 11] {
        let mut p = policy();
        p.highest_sequence_seen = Some(highest);
        let err = verify(&signed(&manifest(), &[&a]), &root, &p).unwrap_err();
        assert!(
            matches!(err, Error::SequenceNotNewer { sequence: 10, highest_seen, .. } if highest_seen == highest),
            "{err}"
        );
    }
}

#[test]
fn refuses_downgrade_unless_overridden() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut p = policy();
    p.installed_version = Some(Version::new(1, 3, 0));
    let bytes = signed(&manifest(), &[&a]);
    let err = verify(&bytes, &root, &p).unwrap_err();
    assert!(matches!(err, Error::Downgrade { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("1.2.0 is older than the installed 1.3.0"));
    p.allow_downgrade = true;
    let v = verify(&bytes, &root, &p).unwrap();
    assert!(v.downgrade_override);
    assert_eq!(v.version_change, VersionChange::Downgrade);
}

#[test]
fn prerelease_is_older_than_its_release() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut m = manifest();
    m.version = Version::parse("1.2.0-rc.1").unwrap();
    let mut p = policy();
    p.installed_version = Some(Version::new(1, 2, 0));
    let err = verify(&signed(&m, &[&a]), &root, &p).unwrap_err();
    assert!(matches!(err, Error::Downgrade { .. }), "{err}");
}

#[test]
fn refuses_wrong_os_arch_channel() {
    let a = key(1);
    let root = root(1, &[&a]);
    let bytes = signed(&manifest(), &[&a]);
    let mut p = policy();
    p.os = Some("flatcar".into());
    assert!(matches!(
        verify(&bytes, &root, &p),
        Err(Error::WrongOs { .. })
    ));
    let mut p = policy();
    p.arch = Some("aarch64".into());
    assert!(matches!(
        verify(&bytes, &root, &p),
        Err(Error::WrongArch { .. })
    ));
    let mut p = policy();
    p.channel = Some("beta".into());
    let err = verify(&bytes, &root, &p).unwrap_err();
    assert!(matches!(err, Error::WrongChannel { .. }), "{err}");
    assert!(err.to_string().contains("\"stable\"") && err.to_string().contains("\"beta\""));
}

#[test]
fn refuses_unknown_schema_version() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut json: serde_json::Value = serde_json::to_value(manifest()).unwrap();
    json["schema_version"] = 2.into();
    json["some_v2_field"] = true.into();
    let bytes = signed_raw(&serde_json::to_vec(&json).unwrap(), &[&a]);
    let err = verify(&bytes, &root, &policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedSchemaVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );

    let mut doc = serde_json::to_value(root_doc(1, 1, &[&a])).unwrap();
    doc["schema_version"] = 7.into();
    let bytes = sign_envelope(
        TRUST_PAYLOAD_TYPE,
        &serde_json::to_vec(&doc).unwrap(),
        &[&a],
    )
    .unwrap();
    let err = TrustRoot::from_initial_envelope(&bytes).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedSchemaVersion { found: 7, .. }),
        "{err}"
    );
}

#[test]
fn refuses_unknown_fields_at_v1() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut json: serde_json::Value = serde_json::to_value(manifest()).unwrap();
    json["artifacts"][0]["surprise"] = 1.into();
    let bytes = signed_raw(&serde_json::to_vec(&json).unwrap(), &[&a]);
    let err = verify(&bytes, &root, &policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MalformedJson {
                document: Document::Release,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("surprise"));
}

#[test]
fn refuses_wrong_payload_type() {
    let a = key(1);
    let trust_bytes = sign_trust_root(&root_doc(1, 1, &[&a]), &[&a]).unwrap();
    let root = TrustRoot::from_initial_envelope(&trust_bytes).unwrap();
    // A trust root envelope is never a release…
    let err = verify(&trust_bytes, &root, &policy()).unwrap_err();
    assert!(
        matches!(err, Error::WrongPayloadType { expected: RELEASE_PAYLOAD_TYPE, ref found, .. } if found == TRUST_PAYLOAD_TYPE),
        "{err}"
    );
    // …a release is never a trust root…
    let release = signed(&manifest(), &[&a]);
    assert!(matches!(
        TrustRoot::from_initial_envelope(&release),
        Err(Error::WrongPayloadType {
            expected: TRUST_PAYLOAD_TYPE,
            ..
        })
    ));
    assert!(matches!(
        root.rotate(&release),
        Err(Error::WrongPayloadType { .. })
    ));
    // …and neither is a usr-hash statement.
    assert!(matches!(
        verify_usr_hash(&release, &root, &digest(3).to_hex()),
        Err(Error::WrongPayloadType {
            expected: USR_HASH_PAYLOAD_TYPE,
            ..
        })
    ));
}

#[test]
fn refuses_malformed_json_and_base64() {
    let a = key(1);
    let root = root(1, &[&a]);
    for bad in [&b""[..], b"{", b"[]", b"{\"payloadType\":1}", b"null"] {
        assert!(matches!(
            verify(bad, &root, &policy()),
            Err(Error::MalformedJson { .. })
        ));
    }
    let env = format!(
        r#"{{"payloadType":"{RELEASE_PAYLOAD_TYPE}","payload":"not base64!","signatures":[]}}"#
    );
    assert!(matches!(
        verify(env.as_bytes(), &root, &policy()),
        Err(Error::MalformedBase64 {
            field: "payload",
            ..
        })
    ));
    let env = format!(
        r#"{{"payloadType":"{RELEASE_PAYLOAD_TYPE}","payload":"","signatures":[{{"keyid":"x","sig":"A"}}]}}"#
    );
    assert!(matches!(
        verify(env.as_bytes(), &root, &policy()),
        Err(Error::MalformedBase64 { field: "sig", .. })
    ));
    // Signed, but the payload is not a manifest.
    let bytes = signed_raw(b"{\"schema_version\":1,\"os\":", &[&a]);
    assert!(matches!(
        verify(&bytes, &root, &policy()),
        Err(Error::MalformedJson { .. })
    ));
}

#[test]
fn refuses_oversized_input_before_parsing() {
    let a = key(1);
    let root = root(1, &[&a]);
    let big = vec![b' '; MAX_RELEASE_BYTES + 1];
    let err = verify(&big, &root, &policy()).unwrap_err();
    assert!(matches!(
        err,
        Error::TooLarge {
            document: Document::Release,
            limit: MAX_RELEASE_BYTES,
            ..
        }
    ));
    // A valid release padded with JSON whitespace past the cap is refused too.
    let mut padded = signed(&manifest(), &[&a]);
    padded.resize(MAX_RELEASE_BYTES + 1, b' ');
    assert!(matches!(
        verify(&padded, &root, &policy()),
        Err(Error::TooLarge { .. })
    ));
    let big = vec![b' '; MAX_TRUST_ROOT_BYTES + 1];
    assert!(matches!(
        TrustRoot::from_initial_envelope(&big),
        Err(Error::TooLarge {
            document: Document::TrustRoot,
            ..
        })
    ));
    assert!(matches!(root.rotate(&big), Err(Error::TooLarge { .. })));
    let big = vec![b' '; MAX_USR_HASH_BYTES + 1];
    assert!(matches!(
        verify_usr_hash(&big, &root, &digest(3).to_hex()),
        Err(Error::TooLarge {
            document: Document::UsrHash,
            ..
        })
    ));
}

#[test]
fn refuses_too_many_signatures() {
    let a = key(1);
    let root = root(1, &[&a]);
    let keys: Vec<&SigningKey> = vec![&a; MAX_SIGNATURES + 1];
    let err = verify(&signed(&manifest(), &keys), &root, &policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManySignatures {
                count: 65,
                limit: 64,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_expired_trust_root() {
    let a = key(1);
    let doc = TrustRootDocument::new(1, 1, &[a.public_key()], Some(now()));
    let root = TrustRoot::from_initial_envelope(&sign_trust_root(&doc, &[&a]).unwrap()).unwrap();
    let err = verify(&signed(&manifest(), &[&a]), &root, &policy()).unwrap_err();
    assert!(
        matches!(err, Error::TrustRootExpired { generation: 1, .. }),
        "{err}"
    );
}

#[test]
fn refuses_invalid_manifest_content() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut cases = Vec::new();
    let mut m = manifest();
    m.artifacts[0].verity = None;
    cases.push((m, "no verity"));
    let mut m = manifest();
    m.artifacts[1].name = "usr.img".into();
    cases.push((m, "appears twice"));
    let mut m = manifest();
    m.artifacts[1].name = "../etc/passwd".into();
    cases.push((m, "artifact name"));
    let mut m = manifest();
    m.expires_at = m.issued_at;
    cases.push((m, "not after issued_at"));
    let mut m = manifest();
    if let Some(v) = &mut m.artifacts[0].verity {
        v.hash_offset = 4096;
    }
    cases.push((m, "hash_offset"));
    let mut m = manifest();
    m.artifacts[1].verity = m.artifacts[0].verity.clone();
    cases.push((m, "cannot carry verity"));
    for (m, reason) in cases {
        assert!(matches!(
            sign_release(&m, &[&a]),
            Err(Error::InvalidContent { .. })
        ));
        let bytes = signed_raw(&m.to_json().unwrap(), &[&a]);
        let err = verify(&bytes, &root, &policy()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidContent { .. }) && err.to_string().contains(reason),
            "{reason}: {err}"
        );
    }
}

#[test]
fn refuses_non_rfc3339_times() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut json: serde_json::Value = serde_json::to_value(manifest()).unwrap();
    json["expires_at"] = "2026-06-08 12:00:00".into();
    let bytes = signed_raw(&serde_json::to_vec(&json).unwrap(), &[&a]);
    assert!(matches!(
        verify(&bytes, &root, &policy()),
        Err(Error::MalformedJson { .. })
    ));
}

// ---- usr-hash statements ----

fn usr_statement() -> UsrHashStatement {
    UsrHashStatement {
        os: "basalt".into(),
        version: Version::new(1, 2, 0),
        verity: Verity {
            root_hash: digest(0xab),
            salt: "5a".repeat(32),
            data_blocks: 1000,
            hash_offset: 1000 * 4096,
            hash_algorithm: HashAlgorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
        },
    }
}

#[test]
fn usr_hash_verifies_and_binds_the_root_hash() {
    let (a, b) = (key(1), key(2));
    let root = root(2, &[&a, &b]);
    let bytes = sign_usr_hash(&usr_statement(), &[&a, &b]).unwrap();
    let ok = verify_usr_hash(&bytes, &root, &"AB".repeat(32)).unwrap();
    assert_eq!(ok, usr_statement());
    let err = verify_usr_hash(&bytes, &root, &"cd".repeat(32)).unwrap_err();
    assert!(matches!(err, Error::UsrHashMismatch { .. }), "{err}");
    let err = verify_usr_hash(
        &sign_usr_hash(&usr_statement(), &[&a]).unwrap(),
        &root,
        &"ab".repeat(32),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                document: Document::UsrHash,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn usr_hash_binds_the_whole_verity_set_and_refuses_v1() {
    let a = key(1);
    let root = root(1, &[&a]);
    let json = serde_json::to_value(usr_statement()).unwrap();
    assert_eq!(json["verity"]["data_blocks"], 1000);
    assert_eq!(json["verity"]["salt"], "5a".repeat(32));
    // Parameters the manifest would refuse are refused in a statement too.
    for (field, value) in [
        ("data_blocks", serde_json::json!(0)),
        ("salt", serde_json::json!("XY")),
        ("data_block_size", serde_json::json!(1000)),
        ("hash_offset", serde_json::json!(4095)),
        ("hash_algorithm", serde_json::json!("sha1")),
    ] {
        let mut bad = json.clone();
        bad["verity"][field] = value;
        let bytes = sign_envelope(
            USR_HASH_PAYLOAD_TYPE,
            &serde_json::to_vec(&bad).unwrap(),
            &[&a],
        )
        .unwrap();
        let err = verify_usr_hash(&bytes, &root, &"ab".repeat(32)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidContent {
                    document: Document::UsrHash,
                    ..
                } | Error::MalformedJson {
                    document: Document::UsrHash,
                    ..
                }
            ),
            "{field}: {err}"
        );
    }
    // A v1 statement (root hash only), even signed by the right key, is not accepted.
    let v1 = serde_json::json!({"os": "basalt", "version": "1.2.0", "root_hash": "ab".repeat(32)});
    for payload_type in [
        "application/vnd.basalt.usrhash.v1+json",
        USR_HASH_PAYLOAD_TYPE,
    ] {
        let bytes = sign_envelope(payload_type, &serde_json::to_vec(&v1).unwrap(), &[&a]).unwrap();
        assert!(verify_usr_hash(&bytes, &root, &"ab".repeat(32)).is_err());
    }
}

#[test]
fn usr_hash_refuses_unknown_fields() {
    let a = key(1);
    let root = root(1, &[&a]);
    let mut json = serde_json::to_value(usr_statement()).unwrap();
    json["cmdline"] = "init=/bin/sh".into();
    let bytes = sign_envelope(
        USR_HASH_PAYLOAD_TYPE,
        &serde_json::to_vec(&json).unwrap(),
        &[&a],
    )
    .unwrap();
    assert!(matches!(
        verify_usr_hash(&bytes, &root, &"ab".repeat(32)),
        Err(Error::MalformedJson {
            document: Document::UsrHash,
            ..
        })
    ));
}

// ---- rotation ----

#[test]
fn rotation_chain_of_three_generations() {
    let (a1, a2, b1, b2, c1, c2) = (key(11), key(12), key(21), key(22), key(31), key(32));
    let gen1 = sign_trust_root(&root_doc(1, 2, &[&a1, &a2]), &[&a1, &a2]).unwrap();
    let gen2 = sign_trust_root(&root_doc(2, 2, &[&b1, &b2]), &[&a1, &a2, &b1, &b2]).unwrap();
    // Generation 3 keeps one key of generation 2 and adds two; threshold 1 of 3.
    let gen3 = sign_trust_root(&root_doc(3, 1, &[&b2, &c1, &c2]), &[&b1, &b2, &c1]).unwrap();

    let r1 = TrustRoot::from_initial_envelope(&gen1).unwrap();
    let r2 = r1.rotate(&gen2).unwrap();
    let r3 = r2.rotate(&gen3).unwrap();
    assert_eq!(
        (r1.generation(), r2.generation(), r3.generation()),
        (1, 2, 3)
    );
    assert_eq!(r3.threshold(), 1);
    assert_eq!(
        TrustRoot::from_chain(&gen1, [&gen2[..], &gen3[..]]).unwrap(),
        r3
    );

    // Releases follow the keys: generation 1 keys no longer sign for generation 3.
    let release = signed(&manifest(), &[&c2]);
    let v = verify(&release, &r3, &policy()).unwrap();
    assert_eq!(v.trust_generation, 3);
    assert!(matches!(
        verify(&release, &r1, &policy()),
        Err(Error::UnknownKey { .. })
    ));
    let old = signed(&manifest(), &[&a1, &a2]);
    assert!(matches!(
        verify(&old, &r3, &policy()),
        Err(Error::UnknownKey { .. })
    ));
    // Rotations do not skip: generation 3 cannot be applied to generation 1.
    assert!(r1.rotate(&gen3).is_err());
}

#[test]
fn rotation_signed_only_by_new_keys_is_refused() {
    let (a1, a2, b1, b2) = (key(11), key(12), key(21), key(22));
    let r1 = root(2, &[&a1, &a2]);
    let gen2 = sign_trust_root(&root_doc(2, 2, &[&b1, &b2]), &[&b1, &b2]).unwrap();
    let err = r1.rotate(&gen2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                have: 0,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("generation 1 (the current root)"),
        "{err}"
    );
    // One old key is not enough either.
    let gen2 = sign_trust_root(&root_doc(2, 2, &[&b1, &b2]), &[&a1, &b1, &b2]).unwrap();
    assert!(matches!(
        r1.rotate(&gen2),
        Err(Error::BelowThreshold { have: 1, .. })
    ));
}

#[test]
fn rotation_signed_only_by_old_keys_is_refused() {
    let (a1, a2, b1, b2) = (key(11), key(12), key(21), key(22));
    let r1 = root(2, &[&a1, &a2]);
    let gen2 = sign_trust_root(&root_doc(2, 2, &[&b1, &b2]), &[&a1, &a2]).unwrap();
    let err = r1.rotate(&gen2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                have: 0,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("generation 2 (the new root)"),
        "{err}"
    );
}

#[test]
fn rotation_skipping_or_repeating_a_generation_is_refused() {
    let (a1, b1) = (key(11), key(21));
    let r1 = root(1, &[&a1]);
    for generation in [1, 3, 4] {
        let next = sign_trust_root(&root_doc(generation, 1, &[&b1]), &[&a1, &b1]).unwrap();
        let err = r1.rotate(&next).unwrap_err();
        assert!(
            matches!(err, Error::TrustGenerationNotNext { current: 1, offered } if offered == generation),
            "{err}"
        );
    }
}

#[test]
fn rotation_with_a_stranger_signature_is_refused() {
    let (a1, b1, stranger) = (key(11), key(21), key(99));
    let r1 = root(1, &[&a1]);
    let gen2 = sign_trust_root(&root_doc(2, 1, &[&b1]), &[&a1, &b1, &stranger]).unwrap();
    assert!(matches!(r1.rotate(&gen2), Err(Error::UnknownKey { .. })));
}

// ---- spec vectors ----

#[test]
fn rfc8032_seed_gives_rfc8032_public_key() {
    // RFC 8032 section 7.1, TEST 1.
    let seed =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
    let k = SigningKey::from_seed(&seed.try_into().unwrap()).unwrap();
    assert_eq!(
        k.public_key().to_hex(),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    // RFC 8032 TEST 1 signs the empty message.
    assert_eq!(
        hex::encode(k.sign(b"")),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
}

#[test]
fn key_pem_round_trips() {
    let k = SigningKey::generate().unwrap();
    let back = SigningKey::from_pem(&k.to_pem()).unwrap();
    assert_eq!(back.public_key(), k.public_key());
    assert!(format!("{k:?}").contains(&k.key_id().0));
    assert!(matches!(
        SigningKey::from_pem(&k.public_key().to_pem()),
        Err(Error::InvalidKeyFile { .. })
    ));
}

// ---- properties ----

fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        "[a-z][a-z0-9-]{0,15}",
        (0u64..100, 0u64..100, 0u64..100),
        prop_oneof![Just("stable"), Just("beta"), Just("alpha")],
        1u64..u64::MAX,
        (1i64..1000, 1i64..1000),
        proptest::collection::vec(
            (
                "[a-z][a-z0-9_-]{0,20}",
                8193u64..(1 << 40),
                any::<[u8; 32]>(),
            ),
            1..5,
        ),
    )
        .prop_map(
            |(os, (maj, min, pat), channel, sequence, (back, ahead), files)| {
                let mut m = manifest();
                m.os = os;
                m.version = Version::new(maj, min, pat);
                m.channel = channel.into();
                m.sequence = sequence;
                m.issued_at = now() - TimeDelta::minutes(back);
                m.expires_at = now() + TimeDelta::minutes(ahead);
                for (i, (name, size, sha)) in files.into_iter().enumerate() {
                    m.artifacts.push(Artifact {
                        kind: ArtifactKind::Sysext,
                        name: format!("{name}-{i}.raw"),
                        size,
                        sha256: Digest(sha),
                        compression: None,
                        // The data ends where the hash area starts, before the end.
                        verity: Some(Verity {
                            root_hash: Digest(sha),
                            salt: String::new(),
                            data_blocks: (size - 1) / 4096,
                            hash_offset: (size - 1) / 4096 * 4096,
                            hash_algorithm: HashAlgorithm::Sha256,
                            data_block_size: 4096,
                            hash_block_size: 4096,
                        }),
                    });
                }
                m
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sign_verify_round_trips(m in arb_manifest(), signers in 1usize..4) {
        let keys = [key(1), key(2), key(3)];
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let root = root(signers as u64, &refs);
        let bytes = signed(&m, &refs[..signers]);
        let mut p = Policy::new(now());
        p.os = Some(m.os.clone());
        let v = verify(&bytes, &root, &p).unwrap();
        prop_assert_eq!(v.manifest, m);
        prop_assert_eq!(v.signed_by.len(), signers);
    }

}

proptest! {
    // More cases here: this is the non-malleability claim, and each case is ~1 ms.
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_single_byte_change_is_refused(index in any::<proptest::sample::Index>(), value in any::<u8>(), two in any::<bool>()) {
        let (a, b) = (key(1), key(2));
        // Two keys, threshold 1, optionally both signing: a change to a signature that is
        // not needed for the threshold must still be refused.
        let root = root(1, &[&a, &b]);
        let bytes = if two { signed(&manifest(), &[&a, &b]) } else { signed(&manifest(), &[&a]) };
        let mut changed = bytes.clone();
        let i = index.index(changed.len());
        prop_assume!(changed[i] != value);
        changed[i] = value;
        let err = verify(&changed, &root, &policy()).unwrap_err();
        prop_assert!(
            matches!(
                err,
                Error::MalformedJson { .. }
                    | Error::MalformedBase64 { .. }
                    | Error::WrongPayloadType { .. }
                    | Error::UnknownKey { .. }
                    | Error::BadSignature { .. }
            ),
            "unexpected refusal {}", err
        );
    }
}

#[test]
fn every_position_flipped_is_refused_for_each_document_kind() {
    // Exhaustive over positions (one flipped bit each) for the smaller documents.
    let (a, b) = (key(1), key(2));
    let trust = sign_trust_root(&root_doc(1, 1, &[&a, &b]), &[&a, &b]).unwrap();
    let root = TrustRoot::from_initial_envelope(&trust).unwrap();
    let usr = sign_usr_hash(&usr_statement(), &[&a, &b]).unwrap();
    let release = signed(&manifest(), &[&a, &b]);
    assert!(verify(&release, &root, &policy()).is_ok());
    assert!(verify_usr_hash(&usr, &root, &"ab".repeat(32)).is_ok());
    for i in 0..release.len() {
        let mut r = release.clone();
        r[i] ^= 0x01;
        assert!(verify(&r, &root, &policy()).is_err(), "release byte {i}");
    }
    for i in 0..trust.len() {
        let mut t = trust.clone();
        t[i] ^= 0x01;
        assert!(
            TrustRoot::from_initial_envelope(&t).is_err(),
            "trust byte {i}"
        );
    }
    for i in 0..usr.len() {
        let mut u = usr.clone();
        u[i] ^= 0x20;
        assert!(
            verify_usr_hash(&u, &root, &"ab".repeat(32)).is_err(),
            "usr byte {i}"
        );
    }
}

#[test]
fn dsse_test_vectors_with_rfc8032_keys() {
    // secure-systems-lab/dsse testvectors/vectors.json: "single-signature" and
    // "non-ascii-payload-type", signed with RFC 8032 TEST 1 key "A". Ed25519 is
    // deterministic, so our PAE and signer must reproduce the vector's bytes exactly.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let seed =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
    let a = SigningKey::from_seed(&seed.try_into().unwrap()).unwrap();
    let payload = b64
        .decode("eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==")
        .unwrap();
    for (payload_type, pae_hex, sig) in [
        (
            "application/vnd.in-toto+json",
            "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e20343320\
             7b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d",
            "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA==",
        ),
        (
            "application/vnd.exämple+json",
            "445353457631203239206170706c69636174696f6e2f766e642e6578c3a46d706c652b6a736f6e20343320\
             7b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d",
            "xmSk/ug66ysT7ayhkCIjhAq42zgZXSsEWuzUaNL7w2eGAdF/NU6/fRXPtmfN+5DNSAs5/i2lUnHjbbjPsu0tAw==",
        ),
    ] {
        let message = pae(payload_type, &payload);
        assert_eq!(hex::encode(&message), pae_hex, "{payload_type}");
        assert_eq!(b64.encode(a.sign(&message)), sig, "{payload_type}");
        assert!(a.public_key().verify(&message, &b64.decode(sig).unwrap()));
    }
}

// ---- system extension statements and artifacts ----

fn sysext_statement() -> SysextStatement {
    SysextStatement {
        name: "tools".into(),
        version: Version::new(1, 0, 0),
        os: "basalt".into(),
        extension_release: "ID=basalt\nSYSEXT_LEVEL=1\n".into(),
        verity: Verity {
            root_hash: digest(7),
            salt: "00ff".into(),
            data_blocks: 10,
            hash_offset: 10 * 4096,
            hash_algorithm: HashAlgorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
        },
    }
}

#[test]
fn sysext_statement_round_trips_and_is_not_a_usr_hash_statement() {
    let (a, b, c) = (key(1), key(2), key(3));
    let root = root(2, &[&a, &b, &c]);
    let refs = [&a, &b];
    let signed = sign_sysext(&sysext_statement(), &refs).unwrap();
    let v = verify_sysext(&signed, &root).unwrap();
    assert_eq!(v.statement, sysext_statement());
    assert_eq!(v.signed_by.len(), 2);
    // Domain separation both ways: an extension statement is never a /usr statement.
    assert!(matches!(
        verify_usr_hash(&signed, &root, &"ab".repeat(32)),
        Err(Error::WrongPayloadType { .. })
    ));
    let usr = sign_usr_hash(&usr_statement(), &refs).unwrap();
    assert!(matches!(
        verify_sysext(&usr, &root),
        Err(Error::WrongPayloadType { .. })
    ));
    // Below the threshold.
    let one = sign_sysext(&sysext_statement(), &refs[..1]).unwrap();
    assert!(verify_sysext(&one, &root).is_err());
}

#[test]
fn sysext_statement_shape_is_checked() {
    let a = key(1);
    let refs = [&a];
    let mut bad_name = sysext_statement();
    bad_name.name = "../etc".into();
    let mut big = sysext_statement();
    big.extension_release = "X=y\n".repeat(2000);
    let mut empty = sysext_statement();
    empty.extension_release.clear();
    let mut no_blocks = sysext_statement();
    no_blocks.verity.data_blocks = 0;
    for s in [bad_name, big, empty, no_blocks] {
        assert!(
            matches!(sign_sysext(&s, &refs), Err(Error::InvalidContent { .. })),
            "{s:?}"
        );
    }
    let mut unknown = serde_json::to_value(sysext_statement()).unwrap();
    unknown["extra"] = serde_json::json!(1);
    assert!(SysextStatement::from_json(unknown.to_string().as_bytes()).is_err());
}

#[test]
fn sysext_artifacts_need_verity_and_a_name_raw() {
    let mut m = manifest();
    let verity = m.artifacts[0].verity.clone();
    m.artifacts.push(Artifact {
        kind: ArtifactKind::Sysext,
        name: "tools.raw".into(),
        size: 1 << 20,
        sha256: digest(9),
        compression: None,
        verity: verity.clone(),
    });
    m.validate().unwrap();
    let last = m.artifacts.len() - 1;
    m.artifacts[last].verity = None;
    assert!(m.validate().is_err(), "sysext without verity");
    m.artifacts[last].verity = verity;
    for name in ["tools.img", "Tools.raw", ".raw", "tools"] {
        m.artifacts[last].name = name.into();
        assert!(m.validate().is_err(), "{name}");
    }
}

fn uki_artifact(name: &str) -> Artifact {
    Artifact {
        kind: ArtifactKind::Uki,
        name: name.into(),
        size: 30 << 20,
        sha256: digest(7),
        compression: None,
        verity: None,
    }
}

#[test]
fn a_uki_artifact_is_one_named_efi_without_verity_beside_a_usr_image() {
    let mut m = manifest();
    m.artifacts.push(uki_artifact("basalt-1.2.0.efi"));
    m.validate().unwrap();
    let json = m.to_json().unwrap();
    assert!(
        String::from_utf8_lossy(&json).contains(r#""kind":"uki""#),
        "serialised as `uki`"
    );
    assert_eq!(Manifest::from_json(&json).unwrap(), m);
    let last = m.artifacts.len() - 1;
    for name in ["basalt-1.2.0.EFI", "basalt.img", ".efi", "basalt"] {
        m.artifacts[last].name = name.into();
        let err = m.validate().unwrap_err().to_string();
        assert!(
            err.contains("NAME.efi") || err.contains("1-255"),
            "{name}: {err}"
        );
    }
    m.artifacts[last].name = "basalt-1.2.0.efi".into();
    m.artifacts[last].verity = m.artifacts[0].verity.clone();
    assert!(
        m.validate()
            .unwrap_err()
            .to_string()
            .contains("cannot carry verity"),
        "uki with verity"
    );
    m.artifacts[last].verity = None;
    m.artifacts.push(uki_artifact("other.efi"));
    assert!(
        m.validate()
            .unwrap_err()
            .to_string()
            .contains("at most one uki"),
        "two ukis"
    );
    m.artifacts.pop();
    m.artifacts.retain(|a| a.kind != ArtifactKind::Usr);
    assert!(
        m.validate().unwrap_err().to_string().contains("has none"),
        "uki without usr"
    );
}

#[test]
fn adaptive_refs_are_checked() {
    use crate::{AdaptiveRef, BlobRef};
    let refs = |index: u64, store: u64| AdaptiveRef {
        block_index: BlobRef {
            sha256: digest(7),
            size: index,
        },
        frame_store: BlobRef {
            sha256: digest(8),
            size: store,
        },
    };
    let with = |i: usize, r: AdaptiveRef| {
        let mut m = manifest();
        let a = &mut m.artifacts[i];
        let c = a.compression.get_or_insert(Compression {
            algorithm: CompressionAlgorithm::Zstd,
            compressed_size: 10,
            compressed_sha256: digest(2),
            frame_index: None,
            adaptive: None,
        });
        c.adaptive = Some(r);
        m.validate()
    };
    // 256 blocks (1 MiB), 4 frames: fine; the JSON round trip keeps it.
    let good = crate::adaptive::index_len(256, 4, 0);
    assert!(with(0, refs(good, 100)).is_ok());
    let mut m = manifest();
    m.artifacts[0].compression.as_mut().unwrap().adaptive = Some(refs(good, 100));
    assert_eq!(Manifest::from_json(&m.to_json().unwrap()).unwrap(), m);
    for (i, r, needle) in [
        (1, refs(good, 100), "only a usr image"),
        (0, refs(3, 100), "adaptive block index of 3 bytes"),
        (0, refs(good, 0), "empty frame store"),
    ] {
        let e = with(i, r).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    // A hash offset that is not block aligned cannot carry an index.
    let mut m = manifest();
    m.artifacts[0].verity.as_mut().unwrap().hash_offset = 200 * 4096 + 512;
    m.artifacts[0].compression.as_mut().unwrap().adaptive = Some(refs(good, 100));
    assert!(m
        .validate()
        .unwrap_err()
        .to_string()
        .contains("multiples of 4096"));
}
