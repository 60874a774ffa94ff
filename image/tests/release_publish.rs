//! `basalt release publish` / `publish-root` / `list`: a release published into a folder
//! repository is checked with peers — `zstd -dc` gives back each artifact byte for byte, one
//! frame cut out by the index decodes alone with the `zstd` CLI, `sha256sum` names every
//! blob, `basalt manifest verify` accepts the channel head — and every bad input is refused
//! with the head left exactly as it was.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::PathBuf;
use std::process::{Command, Output};

use basalt_image::release::synthetic::{synthetic_release, SyntheticRelease, SyntheticSpec};
use basalt_image::release::{
    self, list, publish, publish_root, CompressOptions, PublishRequest, ReleaseError,
};
use basalt_manifest::chrono::{TimeDelta, Utc};
use basalt_manifest::{
    repo, sign_trust_root, verify_release, ArtifactKind, Digest, FrameIndex, Manifest, Policy,
    SigningKey, TrustRoot, TrustRootDocument,
};

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32]).unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    keys: Vec<SigningKey>,
    root1: Vec<u8>,
}

/// A repository with generation 1 of a `threshold`-of-3 root published.
fn fixture(threshold: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let keys: Vec<SigningKey> = (1..=3).map(key).collect();
    let publics: Vec<_> = keys.iter().map(SigningKey::public_key).collect();
    let doc = TrustRootDocument::new(1, threshold, &publics, None);
    let refs: Vec<&SigningKey> = keys.iter().take(threshold as usize).collect();
    let root1 = sign_trust_root(&doc, &refs).unwrap();
    let repo = dir.join("repo");
    let root_file = dir.join("root1.json");
    std::fs::write(&root_file, &root1).unwrap();
    assert_eq!(publish_root(&repo, &root_file, &root1).unwrap(), 1);
    Fixture {
        _tmp: tmp,
        dir,
        repo,
        keys,
        root1,
    }
}

fn opts() -> CompressOptions {
    CompressOptions {
        level: 3,
        frame_len: 256 << 10,
        threads: 2,
    }
}

impl Fixture {
    fn release(&self, version: &str, usr_len: u64, signers: &[usize]) -> SyntheticRelease {
        let mut spec = SyntheticSpec::small(version, Utc::now()).unwrap();
        spec.usr_len = usr_len;
        let refs: Vec<&SigningKey> = signers.iter().map(|&i| &self.keys[i]).collect();
        synthetic_release(&self.dir.join(format!("rel-{version}")), &spec, &refs).unwrap()
    }

    fn publish(
        &self,
        rel: &SyntheticRelease,
        channel: &str,
        signers: &[usize],
        sequence: Option<u64>,
        allow_downgrade: bool,
    ) -> Result<release::PublishReport, ReleaseError> {
        let keys: Vec<SigningKey> = signers.iter().map(|&i| key(i as u8 + 1)).collect();
        publish(&PublishRequest {
            release_dir: &rel.dir,
            repo: &self.repo,
            channel,
            keys: &keys,
            sequence,
            allow_downgrade,
            now: Utc::now(),
            valid_for: Some(TimeDelta::days(30)),
            compress: opts(),
        })
    }

    fn head(&self, channel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.repo.join(repo::head_path(channel, "x86_64").unwrap())).ok()
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.repo.join(repo::blob_path(d))
    }

    fn trust(&self) -> TrustRoot {
        TrustRoot::from_initial_envelope(&self.root1).unwrap()
    }
}

fn peer(tool: &str, package: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable ({e}): apt-get install {package}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn head_manifest(bytes: &[u8], trust: &TrustRoot) -> Manifest {
    verify_release(bytes, trust, &Policy::new(Utc::now()))
        .unwrap()
        .manifest
}

#[test]
fn published_release_checks_out_with_zstd_sha256sum_and_basalt_manifest_verify() {
    let fx = fixture(2);
    let rel = fx.release("1.0.0", 3 << 20, &[0, 1]);
    let report = fx.publish(&rel, "stable", &[0, 2], None, false).unwrap();
    assert_eq!(report.sequence, 1, "a new channel keeps the built sequence");
    assert_eq!(report.trust_generation, 1);
    let head = fx.head("stable").unwrap();
    let m = head_manifest(&head, &fx.trust());
    assert_eq!((m.channel.as_str(), m.sequence), ("stable", 1));
    assert_eq!(report.head_sha256.to_hex(), {
        let out = peer(
            "sha256sum",
            "coreutils",
            &[fx.head_path("stable").to_str().unwrap()],
        );
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    });
    // History copy, byte-identical to the head.
    let hist = fx
        .repo
        .join(repo::release_path("stable", "x86_64", 1).unwrap());
    assert_eq!(std::fs::read(hist).unwrap(), head);
    for artifact in &m.artifacts {
        let c = artifact.compression.as_ref().unwrap();
        let blob = fx.blob(&c.compressed_sha256);
        // The blob's name is its sha256 (coreutils), its size the manifest's.
        let out = peer("sha256sum", "coreutils", &[blob.to_str().unwrap()]);
        assert_eq!(
            &String::from_utf8_lossy(&out.stdout)[..64],
            c.compressed_sha256.to_hex()
        );
        assert_eq!(std::fs::metadata(&blob).unwrap().len(), c.compressed_size);
        // zstd gives the artifact back byte for byte.
        let out = peer("zstd", "zstd", &["-dc", blob.to_str().unwrap()]);
        let original = std::fs::read(rel.dir.join(&artifact.name)).unwrap();
        assert!(
            out.stdout == original,
            "{}: zstd -dc differs",
            artifact.name
        );
        // The frame index is a blob too and matches.
        let fi = c.frame_index.as_ref().unwrap();
        let index_bytes = std::fs::read(fx.blob(&fi.sha256)).unwrap();
        assert_eq!(index_bytes.len() as u64, fi.size);
        let index = FrameIndex::parse(&index_bytes, artifact).unwrap();
        let bytes = std::fs::read(&blob).unwrap();
        // One frame cut out by the index decodes on its own with the zstd CLI.
        let f = index.frames()[index.frames().len() / 2];
        let cut = fx.dir.join(format!("{}.frame", artifact.name));
        std::fs::write(
            &cut,
            &bytes[f.compressed_offset as usize..f.compressed_end() as usize],
        )
        .unwrap();
        let out = peer("zstd", "zstd", &["-dc", cut.to_str().unwrap()]);
        assert!(out.stdout == original[f.offset as usize..f.end() as usize]);
        if artifact.kind == ArtifactKind::Usr {
            assert!(index.frames().len() >= 12, "3 MiB in 256 KiB frames");
        }
    }
    // The real CLI accepts the head with the repository's root.
    let root_file = fx.repo.join(repo::root_path(1));
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["manifest", "verify"])
        .arg(fx.head_path("stable"))
        .arg("--trust")
        .arg(&root_file)
        .args(["--os", "basalt", "--arch", "x86_64", "--channel", "stable"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fixture {
    fn head_path(&self, channel: &str) -> PathBuf {
        self.repo.join(repo::head_path(channel, "x86_64").unwrap())
    }
}

#[test]
fn sequences_blobs_and_history() {
    let fx = fixture(1);
    let v1 = fx.release("1.0.0", 1 << 20, &[0]);
    let r1 = fx.publish(&v1, "stable", &[0], None, false).unwrap();
    assert!(r1.artifacts.iter().all(|a| a.blob_written));
    // The same release on another channel shares every blob.
    let r1b = fx.publish(&v1, "beta", &[0], Some(40), false).unwrap();
    assert_eq!(r1b.sequence, 40);
    assert!(r1b.artifacts.iter().all(|a| !a.blob_written), "{r1b:?}");
    // Next release: default sequence is head + 1.
    let v2 = fx.release("1.1.0", 1 << 20, &[0]);
    let r2 = fx.publish(&v2, "stable", &[0], None, false).unwrap();
    assert_eq!(r2.sequence, r1.sequence + 1);
    // A corrupted blob is re-hashed, not trusted by name, and replaced.
    let usr_blob = fx.blob(&r2.artifacts[0].blob);
    let mut bytes = std::fs::read(&usr_blob).unwrap();
    bytes[100] ^= 0x40;
    std::fs::remove_file(&usr_blob).unwrap();
    std::fs::write(&usr_blob, &bytes).unwrap();
    let r3 = fx.publish(&v2, "stable", &[0], None, false).unwrap();
    assert!(r3.artifacts[0].blob_written, "the corrupt blob was reused");
    let out = peer("sha256sum", "coreutils", &[usr_blob.to_str().unwrap()]);
    assert_eq!(
        &String::from_utf8_lossy(&out.stdout)[..64],
        r2.artifacts[0].blob.to_hex()
    );
    // Blobs are read-only; nothing is left in the incoming folder.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&usr_blob).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    let incoming = std::fs::read_dir(fx.repo.join(".incoming"))
        .unwrap()
        .count();
    assert_eq!(incoming, 0);
    // list: both channels, every release, the head marked.
    let listing = list(&fx.repo).unwrap();
    assert_eq!(listing.trust_generation, Some(1));
    let stable = listing
        .channels
        .iter()
        .find(|c| c.channel == "stable")
        .unwrap();
    let seqs: Vec<u64> = stable.releases.iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(stable.head_sequence, Some(3));
    assert!(stable.releases[2].head && !stable.releases[1].head);
    assert!(stable.releases.iter().all(|r| r.refused.is_none()));
    assert!(stable.releases[0].compressed_size > 0);
    assert_eq!(
        stable.releases[0].size,
        v1.manifest.artifacts.iter().map(|a| a.size).sum::<u64>()
    );
    let beta = listing
        .channels
        .iter()
        .find(|c| c.channel == "beta")
        .unwrap();
    assert_eq!(beta.head_sequence, Some(40));
    // The CLI prints the same as JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["release", "list", "--json", "--repo"])
        .arg(&fx.repo)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["channels"].as_array().unwrap().len(), 2);
}

/// Each bad input: the typed error, and the channel head byte-identical afterwards.
#[test]
fn refusals_leave_the_head_untouched() {
    let fx = fixture(2);
    let v2 = fx.release("2.0.0", 1 << 20, &[0, 1]);
    fx.publish(&v2, "stable", &[0, 1], None, false).unwrap();
    let head = fx.head("stable").unwrap();
    let check = |r: Result<release::PublishReport, ReleaseError>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(fx.head("stable").unwrap(), head, "{what}: head changed");
        e
    };
    // Below threshold.
    let e = check(fx.publish(&v2, "stable", &[0], None, false), "one key of 2");
    assert!(matches!(e, ReleaseError::KeysRefused { .. }), "{e}");
    assert!(e.to_string().contains("nothing was published"), "{e}");
    // An unknown key.
    let stranger = [key(9), key(1)];
    let e = check(
        publish(&PublishRequest {
            release_dir: &v2.dir,
            repo: &fx.repo,
            channel: "stable",
            keys: &stranger,
            sequence: None,
            allow_downgrade: false,
            now: Utc::now(),
            valid_for: None,
            compress: opts(),
        }),
        "unknown key",
    );
    assert!(matches!(e, ReleaseError::KeysRefused { .. }), "{e}");
    // A sequence not above the head.
    let e = check(fx.publish(&v2, "stable", &[0, 1], Some(2), false), "replay");
    assert!(
        matches!(e, ReleaseError::SequenceNotAbove { head: 2, .. }),
        "{e}"
    );
    // A lower version without the override; accepted with it.
    let v1 = fx.release("1.9.0", 1 << 20, &[0, 1]);
    let e = check(fx.publish(&v1, "stable", &[0, 1], None, false), "downgrade");
    assert!(matches!(e, ReleaseError::Downgrade { .. }), "{e}");
    // An artifact changed after the build (size or content).
    let v3 = fx.release("3.0.0", 1 << 20, &[0, 1]);
    let kernel = v3.dir.join("vmlinuz");
    let mut k = std::fs::read(&kernel).unwrap();
    k[10] ^= 1;
    std::fs::write(&kernel, &k).unwrap();
    let e = check(
        fx.publish(&v3, "stable", &[0, 1], None, false),
        "changed kernel",
    );
    assert!(
        matches!(
            e,
            ReleaseError::ArtifactMismatch {
                what: "SHA-256",
                ..
            }
        ),
        "{e}"
    );
    k.push(0);
    std::fs::write(&kernel, &k).unwrap();
    let e = check(
        fx.publish(&v3, "stable", &[0, 1], None, false),
        "longer kernel",
    );
    assert!(
        matches!(e, ReleaseError::ArtifactMismatch { what: "size", .. }),
        "{e}"
    );
    // A usr-hash statement signed by keys the repository does not trust.
    let v4 = fx.release("4.0.0", 1 << 20, &[0, 1]);
    let mut spec = SyntheticSpec::small("4.0.0", Utc::now()).unwrap();
    spec.usr_len = 1 << 20;
    let outsider = [key(7), key(8)];
    let outsiders: Vec<&SigningKey> = outsider.iter().collect();
    synthetic_release(&v4.dir, &spec, &outsiders).unwrap();
    let e = check(fx.publish(&v4, "stable", &[0, 1], None, false), "statement");
    assert!(matches!(e, ReleaseError::UsrStatement { .. }), "{e}");
    // A manifest whose usr verity parameters are not the ones its statement signs (the
    // salt, the data block count) or that names another OS: basalt-init would refuse it.
    let v6 = fx.release("6.0.0", 1 << 20, &[0, 1]);
    let json_path = v6.dir.join("release.json");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 3] = [
        ("salt", |v| {
            let usr = &mut v["artifacts"][0]["verity"];
            let salt = usr["salt"].as_str().unwrap();
            let flipped = if salt.starts_with('0') { "1" } else { "0" };
            usr["salt"] = format!("{flipped}{}", &salt[1..]).into();
        }),
        ("data_blocks", |v| {
            let usr = &mut v["artifacts"][0]["verity"];
            usr["data_blocks"] = (usr["data_blocks"].as_u64().unwrap() - 1).into();
        }),
        ("os", |v| v["os"] = "otheros".into()),
    ];
    for (what, edit) in edits {
        let mut m = original.clone();
        assert_eq!(m["artifacts"][0]["kind"], "usr");
        edit(&mut m);
        std::fs::write(&json_path, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = check(fx.publish(&v6, "stable", &[0, 1], None, false), what);
        assert!(
            matches!(e, ReleaseError::UsrStatement { .. }),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("the manifest says"), "{what}: {e}");
    }
    // A channel name that could leave the repository.
    let e = fx.publish(&v2, "../x", &[0, 1], None, false).unwrap_err();
    assert!(matches!(e, ReleaseError::Name { .. }), "{e}");
    // An invalid release.json.
    std::fs::write(v3.dir.join("release.json"), b"{\"schema_version\": 2}").unwrap();
    let e = check(
        fx.publish(&v3, "stable", &[0, 1], None, false),
        "bad manifest",
    );
    assert!(matches!(e, ReleaseError::ReleaseManifest { .. }), "{e}");
    // A missing artifact file.
    let v5 = fx.release("5.0.0", 1 << 20, &[0, 1]);
    std::fs::remove_file(v5.dir.join("initrd.img")).unwrap();
    let e = check(
        fx.publish(&v5, "stable", &[0, 1], None, false),
        "missing initrd",
    );
    assert!(matches!(e, ReleaseError::Io { .. }), "{e}");
    assert!(e.to_string().contains("initrd.img"), "{e}");
    // A channel head that is not a release envelope: the sequence cannot be known, refused.
    let head_path = fx.head_path("stable");
    std::fs::write(&head_path, b"not json").unwrap();
    let e = fx
        .publish(&v2, "stable", &[0, 1], Some(99), false)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::Head { .. }), "{e}");
    std::fs::write(&head_path, &head).unwrap();
    // A damaged trust root in the repository stops every publish.
    let root1 = fx.repo.join(repo::root_path(1));
    std::fs::write(&root1, b"{}").unwrap();
    let e = check(
        fx.publish(&v2, "stable", &[0, 1], Some(99), false),
        "damaged root",
    );
    assert!(matches!(e, ReleaseError::TrustRoot { .. }), "{e}");
    std::fs::write(&root1, &fx.root1).unwrap();
    // The downgrade with the override goes through and is reported.
    let r = fx.publish(&v1, "stable", &[0, 1], None, true).unwrap();
    assert!(r.downgrade);
    assert_eq!(r.sequence, 3);
}

#[test]
fn a_repository_without_trust_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let k = [key(1)];
    let spec = SyntheticSpec::small("1.0.0", Utc::now()).unwrap();
    let rel = synthetic_release(&tmp.path().join("rel"), &spec, &[&k[0]]).unwrap();
    let e = publish(&PublishRequest {
        release_dir: &rel.dir,
        repo: &tmp.path().join("repo"),
        channel: "stable",
        keys: &k,
        sequence: None,
        allow_downgrade: false,
        now: Utc::now(),
        valid_for: None,
        compress: opts(),
    })
    .unwrap_err();
    assert!(matches!(e, ReleaseError::NoTrustRoot { .. }), "{e}");
    assert!(e.to_string().contains("publish-root"), "{e}");
}

#[test]
fn trust_root_chain_is_served_generation_by_generation() {
    let fx = fixture(2);
    let new_keys: Vec<SigningKey> = (4..=5).map(key).collect();
    let publics: Vec<_> = new_keys.iter().map(SigningKey::public_key).collect();
    let path = fx.dir.join("root.json");
    let offer = |bytes: &[u8]| publish_root(&fx.repo, &path, bytes);
    // Generation 2 signed by 2 old keys and both new keys: accepted.
    let doc2 = TrustRootDocument::new(2, 2, &publics, None);
    let g2 = sign_trust_root(
        &doc2,
        &[&fx.keys[0], &fx.keys[1], &new_keys[0], &new_keys[1]],
    )
    .unwrap();
    // Not signed by a threshold of the old keys: refused before it is written.
    let bad = sign_trust_root(&doc2, &[&fx.keys[0], &new_keys[0], &new_keys[1]]).unwrap();
    let e = offer(&bad).unwrap_err();
    assert!(matches!(e, ReleaseError::TrustRoot { .. }), "{e}");
    assert!(!fx.repo.join(repo::root_path(2)).exists());
    // Skipping a generation: refused.
    let doc3 = TrustRootDocument::new(3, 2, &publics, None);
    let g3 = sign_trust_root(&doc3, &[&new_keys[0], &new_keys[1]]).unwrap();
    let e = offer(&g3).unwrap_err();
    assert!(
        matches!(
            e,
            ReleaseError::TrustRootNotNext {
                offered: 3,
                current: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(offer(&g2).unwrap(), 2);
    assert_eq!(offer(&g2).unwrap(), 2, "the same bytes again are a no-op");
    // Other bytes for an existing generation: refused.
    let other1 = sign_trust_root(
        &TrustRootDocument::new(1, 1, &[fx.keys[0].public_key()], None),
        &[&fx.keys[0]],
    )
    .unwrap();
    let e = offer(&other1).unwrap_err();
    assert!(
        matches!(e, ReleaseError::TrustRootChanged { generation: 1, .. }),
        "{e}"
    );
    assert_eq!(offer(&g3).unwrap(), 3);
    // Releases now need the generation-3 keys.
    let rel = fx.release("1.0.0", 1 << 20, &[0, 1]);
    let e = fx
        .publish(&rel, "stable", &[0, 1], None, false)
        .unwrap_err();
    assert!(
        matches!(e, ReleaseError::KeysRefused { generation: 3, .. }),
        "{e}"
    );
    // (the statement in usr.img is signed by the old keys too: re-sign it with the new ones)
    let mut spec = SyntheticSpec::small("1.0.0", Utc::now()).unwrap();
    spec.usr_len = 1 << 20;
    synthetic_release(&rel.dir, &spec, &[&new_keys[0], &new_keys[1]]).unwrap();
    let r = publish(&PublishRequest {
        release_dir: &rel.dir,
        repo: &fx.repo,
        channel: "stable",
        keys: &new_keys,
        sequence: None,
        allow_downgrade: false,
        now: Utc::now(),
        valid_for: None,
        compress: opts(),
    })
    .unwrap();
    assert_eq!(r.trust_generation, 3);
    // A fresh repository refuses a first root that is not generation 1.
    let fresh = fx.dir.join("fresh");
    let e = publish_root(&fresh, &path, &g3).unwrap_err();
    assert!(matches!(e, ReleaseError::TrustRootNotNext { .. }), "{e}");
}

/// Two publishers at once: the lock serialises them, both land with distinct sequences and
/// the head is one of the two, complete.
#[test]
fn concurrent_publishers_do_not_interleave() {
    let fx = fixture(1);
    let a = fx.release("1.0.0", 2 << 20, &[0]);
    let b = fx.release("1.0.1", 2 << 20, &[0]);
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| fx.publish(&a, "stable", &[0], None, true));
        let tb = s.spawn(|| fx.publish(&b, "stable", &[0], None, true));
        (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
    });
    let mut seqs = [ra.sequence, rb.sequence];
    seqs.sort_unstable();
    assert_eq!(seqs[1], seqs[0] + 1, "{seqs:?}");
    let head = head_manifest(&fx.head("stable").unwrap(), &fx.trust());
    assert_eq!(head.sequence, seqs[1]);
}

/// The CLI: exit 3 with the reason for a refusal, 0 and a report for a publish.
#[test]
fn cli_publish_and_refusal_exit_codes() {
    let fx = fixture(1);
    let rel = fx.release("1.0.0", 1 << 20, &[0]);
    let key_file = fx.dir.join("k1.key");
    std::fs::write(&key_file, fx.keys[0].to_pem()).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_basalt"))
            .args(["release", "publish"])
            .arg(&rel.dir)
            .arg("--repo")
            .arg(&fx.repo)
            .args(["--channel", "stable", "--key"])
            .arg(&key_file)
            .args(["--frame-size", "262144", "--level", "3"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sequence"], 1);
    let out = run(&["--sequence", "1"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not above the head"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["release", "publish-root", "--repo"])
        .arg(&fx.repo)
        .arg(fx.dir.join("root1.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds extension `tools` `version` (a small tree) signed by `signers` (key seeds), with
/// `SYSEXT_LEVEL=level`.
fn extension(dir: &std::path::Path, version: &str, level: &str, signers: &[u8]) -> PathBuf {
    use basalt_image::sysext::{build, Source, SysextSpec};
    let src = dir.join(format!("src-{version}-{level}"));
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(
        src.join("usr/bin/tools-version"),
        format!("tools {version}\n"),
    )
    .unwrap();
    let keys: Vec<SigningKey> = signers.iter().copied().map(key).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    build(
        &SysextSpec {
            name: "tools".into(),
            version: version.parse().unwrap(),
            os: "basalt".into(),
            sysext_level: Some(level.into()),
            version_id: None,
            architecture: None,
            source: Source::Tree(src),
        },
        &refs,
        &dir.join(format!("out-{version}-{level}-{signers:?}")),
        &dir.join("debs"),
        None,
    )
    .unwrap()
    .path
}

/// A release's extensions are shipped as `sysext` artifacts (frames, index) — and a
/// release whose extension a node would refuse is never published: unknown signer, level
/// other than the release's, altered byte. The head stays as it was.
#[test]
fn extensions_are_published_and_refused_as_a_node_would() {
    let f = fixture(2);
    let mk = |version: &str, images: Vec<PathBuf>| {
        let mut spec = SyntheticSpec::small(version, Utc::now()).unwrap();
        spec.sysext_level = Some("1".into());
        spec.extensions = images;
        synthetic_release(
            &f.dir.join(format!("rel-{version}")),
            &spec,
            &[&f.keys[0], &f.keys[1]],
        )
        .unwrap()
    };
    let good = mk("1.0.0", vec![extension(&f.dir, "1.0.0", "1", &[1, 2])]);
    let report = f.publish(&good, "stable", &[0, 1], None, false).unwrap();
    let tools = report
        .artifacts
        .iter()
        .find(|a| a.name == "tools.raw")
        .expect("tools.raw published");
    assert!(tools.frames >= 1);
    let head = std::fs::read(f.repo.join(repo::head_path("stable", "x86_64").unwrap())).unwrap();
    let root = TrustRoot::from_initial_envelope(&f.root1).unwrap();
    let m = verify_release(&head, &root, &Policy::new(Utc::now()))
        .unwrap()
        .manifest;
    assert_eq!(m.sysext_level.as_deref(), Some("1"));
    assert_eq!(m.artifacts_of(ArtifactKind::Sysext).count(), 1);

    let altered = {
        let p = extension(&f.dir, "2.0.0", "1", &[1, 2]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[4096 + 3] ^= 0x40;
        let q = f.dir.join("altered/tools.raw");
        std::fs::create_dir_all(q.parent().unwrap()).unwrap();
        std::fs::write(&q, bytes).unwrap();
        q
    };
    for (version, image, needle) in [
        (
            "2.0.0",
            extension(&f.dir, "2.0.0", "1", &[7, 8]),
            "not signed by the trust root",
        ),
        (
            "2.0.1",
            extension(&f.dir, "2.0.1", "2", &[1, 2]),
            "SYSEXT_LEVEL=2",
        ),
        ("2.0.2", altered, "altered extension image"),
    ] {
        let rel = mk(version, vec![image]);
        let e = f.publish(&rel, "stable", &[0, 1], None, false).unwrap_err();
        assert!(
            matches!(&e, ReleaseError::Unpublishable { reason, .. } if reason.contains(needle)),
            "{version}: {e}"
        );
        let now = std::fs::read(f.repo.join(repo::head_path("stable", "x86_64").unwrap())).unwrap();
        assert_eq!(now, head, "{version}: the head changed");
    }
}
