//! System extensions end to end on the host: built by `basalt_image::sysext` (and the
//! `basalt sysext` CLI), read back by the peers — `veritysetup verify` (hash tree),
//! `fsck.erofs`/`dump.erofs` (the filesystem), `systemd-dissect --json=short` (systemd's own
//! reading of the image and its extension-release) — and every refusal of
//! `basalt_sysext` with its own error. The DM part of activation needs a guest (no
//! device-mapper here); the real loop device + read-only erofs mount of `NodeOps` are
//! exercised here, the sequence and clean-up with a recording `NodeOps`.

// Test helpers outside #[test] functions panic on setup failures, like the tests do.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_image::sysext::{build, Built, Source, SysextError, SysextSpec};
use basalt_manifest::semver::Version;
use basalt_manifest::{sign_trust_root, SigningKey, TrustRoot, TrustRootDocument};
use basalt_sysext::activate::{self, NodeOps, Request};
use basalt_sysext::compat::HostOs;
use basalt_sysext::{Error, Store};
use basalt_verity::dm::VerityTable;

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32]).unwrap()
}

/// A 2-of-3 trust root of keys 1..=3, as an initial envelope and parsed.
fn trust() -> (Vec<u8>, TrustRoot) {
    let keys: Vec<SigningKey> = (1..=3).map(key).collect();
    let publics: Vec<_> = keys.iter().map(SigningKey::public_key).collect();
    let doc = TrustRootDocument::new(1, 2, &publics, None);
    let env = sign_trust_root(&doc, &[&keys[0], &keys[1]]).unwrap();
    let root = TrustRoot::from_initial_envelope(&env).unwrap();
    (env, root)
}

/// Runs a peer tool; fails (never skips) when it is missing, naming the Debian package.
fn peer(name: &str, package: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e} — install the Debian package `{package}`"))
}

fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("src");
    std::fs::create_dir_all(t.join("usr/bin")).unwrap();
    std::fs::create_dir_all(t.join("usr/share/tools")).unwrap();
    std::fs::write(t.join("usr/bin/tools-hello"), "#!/bin/sh\necho tools 1.0\n").unwrap();
    std::fs::write(t.join("usr/share/tools/data"), vec![0xa5u8; 300_000]).unwrap();
    t
}

fn spec(src: &Path) -> SysextSpec {
    SysextSpec {
        name: "tools".into(),
        version: Version::new(1, 0, 0),
        os: "basalt".into(),
        sysext_level: Some("1".into()),
        version_id: None,
        architecture: Some("x86-64".into()),
        source: Source::Tree(src.to_path_buf()),
    }
}

fn build_tools(dir: &Path, signers: &[u8]) -> Built {
    let keys: Vec<SigningKey> = signers.iter().copied().map(key).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let src = tree(dir);
    build(
        &spec(&src),
        &refs,
        &dir.join("out"),
        &dir.join("debs"),
        None,
    )
    .unwrap()
}

fn host(level: &str) -> HostOs {
    HostOs::from_os_release(
        &format!("ID=basalt\nVERSION_ID=2.0.0\nSYSEXT_LEVEL={level}\n"),
        Path::new("os-release"),
        "x86-64",
    )
    .unwrap()
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn build_verify_round_trip_and_peers_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let built = build_tools(tmp.path(), &[1, 2]);
    let (_, root) = trust();
    let ext = basalt_sysext::verify_image(&built.path, &root, None).unwrap();
    assert!(ext.tree_verified);
    assert_eq!(ext.statement, built.statement);
    assert_eq!(ext.signed_by.len(), 2);
    assert_eq!(
        ext.statement.extension_release,
        "ID=basalt\nSYSEXT_LEVEL=1\nARCHITECTURE=x86-64\nBASALT_SYSEXT_VERSION=1.0.0\n"
    );
    activate::check_extension(&ext.statement, &host("1")).unwrap();

    // Reproducible: the same definition gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    let second = build_tools(again.path(), &[1, 2]);
    assert_eq!(
        std::fs::read(&built.path).unwrap(),
        std::fs::read(&second.path).unwrap()
    );

    // veritysetup: the appended tree, with the signed root hash.
    let v = &built.statement.verity;
    let img = built.path.to_str().unwrap();
    let out = peer(
        "veritysetup",
        "cryptsetup-bin",
        &[
            "verify",
            img,
            img,
            &v.root_hash.to_hex(),
            &format!("--hash-offset={}", v.hash_offset),
        ],
    );
    assert!(
        out.status.success(),
        "veritysetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // fsck.erofs: the filesystem is sound; its extracted release file is the signed text.
    let x = tmp.path().join("x");
    let out = peer(
        "fsck.erofs",
        "erofs-utils",
        &[&format!("--extract={}", x.display()), img],
    );
    assert!(
        out.status.success(),
        "fsck.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(x.join("usr/lib/extension-release.d/extension-release.tools"))
            .unwrap(),
        built.statement.extension_release
    );
    assert!(x.join("usr/bin/tools-hello").is_file());
    let out = peer("dump.erofs", "erofs-utils", &["-s", img]);
    assert!(
        out.status.success(),
        "dump.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // systemd-dissect (systemd 252): an extension for the system, with our release file.
    let out = peer(
        "systemd-dissect",
        "systemd-container",
        &["--json=short", img],
    );
    assert!(
        out.status.success(),
        "systemd-dissect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["useSystemExtension"], true, "{json}");
    let rel: Vec<&str> = json["extensionRelease"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        rel.contains(&"ID=basalt") && rel.contains(&"SYSEXT_LEVEL=1"),
        "{json}"
    );
}

#[test]
fn every_refusal_has_its_own_error() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_tools(tmp.path(), &[1, 2]);
    let (_, root) = trust();
    let v = good.statement.verity.clone();
    let copy = |name: &str| {
        let dir = tmp.path().join(format!("case-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tools.raw");
        std::fs::copy(&good.path, &p).unwrap();
        p
    };

    // Altered bytes: first data block (erofs superblock), a data block in the middle, a hash
    // block, the verity superblock's salt.
    for (what, at) in [
        ("erofs superblock", 1024),
        ("data", v.hash_offset / 2),
        ("tree", v.hash_offset + 4096 + 7),
        ("verity superblock salt", v.hash_offset + 88),
    ] {
        let p = copy(&what.replace(' ', "-"));
        flip(&p, at);
        // The cheap checks pass (the bytes are covered by the tree, not the signature)...
        basalt_sysext::open_verified(&p, &root, None).unwrap();
        // ...the full check does not.
        let err = basalt_sysext::verify_image(&p, &root, None).unwrap_err();
        assert!(matches!(err, Error::Altered { .. }), "{what}: {err}");
        assert!(err.to_string().contains("tools.raw"), "{err}");
    }

    // A byte of the statement itself.
    let p = copy("statement");
    flip(
        &p,
        basalt_sysext::image::statement_offset(&good.statement) + 40,
    );
    let err = basalt_sysext::verify_image(&p, &root, None).unwrap_err();
    assert!(
        matches!(err, Error::BadSignature { .. } | Error::NoStatement { .. }),
        "{err}"
    );

    // Signed by one key of a 2-of-3 root; signed by a key the root does not know.
    for (case, signers) in [("one-signer", vec![1u8]), ("unknown-keys", vec![7, 8])] {
        let dir = tmp.path().join(case);
        let b = build_tools(&dir, &signers);
        let err = basalt_sysext::verify_image(&b.path, &root, None).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{case}: {err}");
    }

    // Stored under another name.
    let other = tmp.path().join("other.raw");
    std::fs::copy(&good.path, &other).unwrap();
    let err = basalt_sysext::verify_image(&other, &root, None).unwrap_err();
    assert!(
        matches!(&err, Error::WrongName { expected, signed, .. } if expected == "other" && signed == "tools"),
        "{err}"
    );

    // Bytes appended, the file truncated, no statement at all.
    let p = copy("appended");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&p, &bytes).unwrap();
    let err = basalt_sysext::verify_image(&p, &root, None).unwrap_err();
    assert!(
        matches!(err, Error::NoStatement { .. } | Error::Layout { .. }),
        "{err}"
    );
    let p = copy("truncated");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::write(&p, &std::fs::read(&p).unwrap()[..(len - 4096) as usize]).unwrap();
    let err = basalt_sysext::verify_image(&p, &root, None).unwrap_err();
    assert!(
        matches!(err, Error::NoStatement { .. } | Error::Layout { .. }),
        "{err}"
    );
    let p = copy("bare");
    std::fs::write(&p, &std::fs::read(&p).unwrap()[..v.hash_offset as usize]).unwrap();
    let err = basalt_sysext::verify_image(&p, &root, None).unwrap_err();
    assert!(matches!(err, Error::NoStatement { .. }), "{err}");

    // A /usr statement (same keys, same block codec) in place of the extension's.
    let p = copy("usr-statement");
    let keys = [key(1), key(2)];
    let usr = basalt_manifest::UsrHashStatement {
        os: "basalt".into(),
        version: Version::new(1, 0, 0),
        verity: v.clone(),
    };
    let env = basalt_manifest::sign_usr_hash(&usr, &[&keys[0], &keys[1]]).unwrap();
    basalt_image::build::image::append_statement_block(&p, &v, &env).unwrap();
    let err = basalt_sysext::verify_image(&p, &root, None).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");

    // Staging against a release manifest: its artifact's verity parameters must be the
    // signed ones; the target OS must fit.
    basalt_sysext::check_staged(&good.path, &root, "tools", &v, &host("1")).unwrap();
    let mut other_v = v.clone();
    other_v.root_hash.0[0] ^= 1;
    let err =
        basalt_sysext::check_staged(&good.path, &root, "tools", &other_v, &host("1")).unwrap_err();
    assert!(matches!(err, Error::ManifestMismatch { .. }), "{err}");
    let err = basalt_sysext::check_staged(&good.path, &root, "tools", &v, &host("2")).unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    let err = basalt_sysext::check_staged(&good.path, &root, "other", &v, &host("1")).unwrap_err();
    assert!(matches!(err, Error::WrongName { .. }), "{err}");

    // Incompatible with the booted OS: level, ID, architecture, OS of the statement.
    let s = &good.statement;
    let err = activate::check_extension(s, &host("2")).unwrap_err();
    assert!(
        matches!(&err, Error::Incompatible { reason, .. } if reason.contains("SYSEXT_LEVEL=1")),
        "{err}"
    );
    let mut other_os = host("1");
    other_os.id = "flatcar".into();
    let err = activate::check_extension(s, &other_os).unwrap_err();
    assert!(
        matches!(&err, Error::Incompatible { reason, .. } if reason.contains("flatcar")),
        "{err}"
    );
    let mut arm = host("1");
    arm.architecture = "arm64".into();
    let err = activate::check_extension(s, &arm).unwrap_err();
    assert!(
        matches!(&err, Error::Incompatible { reason, .. } if reason.contains("ARCHITECTURE")),
        "{err}"
    );
}

#[test]
fn build_refuses_bad_definitions_and_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tree(tmp.path());
    let k = key(1);
    let out = tmp.path().join("out");
    let debs = tmp.path().join("debs");
    let b = |s: &SysextSpec| build(s, &[&k], &out, &debs, None);

    let mut s = spec(&src);
    s.sysext_level = None;
    assert!(
        matches!(b(&s), Err(SysextError::Spec { .. })),
        "no level, no version"
    );
    let mut s = spec(&src);
    s.name = "Tools/..".into();
    assert!(matches!(b(&s), Err(SysextError::Spec { .. })));
    let mut s = spec(&src);
    s.sysext_level = Some("1\nID=other".into());
    assert!(
        matches!(b(&s), Err(SysextError::Spec { .. })),
        "no injected lines"
    );

    // A file outside usr/ and opt/.
    std::fs::create_dir_all(src.join("etc/tools")).unwrap();
    std::fs::write(src.join("etc/tools/conf"), "x").unwrap();
    match b(&spec(&src)) {
        Err(SysextError::OutsideUsr { path, .. }) => assert_eq!(path, "etc/tools/conf"),
        other => panic!("expected OutsideUsr, got {other:?}"),
    }
    std::fs::remove_dir_all(src.join("etc")).unwrap();

    // A release file in the tree that says something else.
    let rel = src.join("usr/lib/extension-release.d");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(rel.join("extension-release.tools"), "ID=_any\n").unwrap();
    assert!(matches!(
        b(&spec(&src)),
        Err(SysextError::ReleaseConflict { .. })
    ));

    // The trust root given at build time refuses a build signed below its threshold.
    std::fs::remove_dir_all(&rel).unwrap();
    let (_, root) = trust();
    assert!(matches!(
        build(&spec(&src), &[&k], &out, &debs, Some(&root)),
        Err(SysextError::Verify(_))
    ));
    assert!(
        !out.join("tools.raw").exists(),
        "a refused image is not left in OUT"
    );
}

/// Any flipped byte anywhere in the image is refused by the full check — deterministically,
/// every offset of the verity area and statement, a sample of every data block — except in the bytes no decision depends on: the verity
/// superblock's UUID, the padding after its algorithm name and after `salt_size`, the unused
/// salt bytes and the rest of its block (the dm-verity table is built from the signed
/// statement, never from the superblock), and the zero padding after the envelope in the
/// statement block.
#[test]
fn any_flipped_byte_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_tools(tmp.path(), &[1, 2]);
    let (_, root) = trust();
    let bytes = std::fs::read(&good.path).unwrap();
    let v = good.statement.verity.clone();
    let sb = v.hash_offset;
    let block = basalt_sysext::image::statement_offset(&good.statement);
    let at = block as usize + 8;
    let env_len = u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
    let ignorable = |at: u64| {
        (sb + 16..sb + 32).contains(&at)               // superblock UUID
            || (sb + 39..sb + 64).contains(&at)        // after "sha256\0"
            || (sb + 82..sb + 88).contains(&at)        // padding after salt_size
            || (sb + 88 + 32..sb + 4096).contains(&at) // unused salt bytes, reserved, block tail
            || at >= block + 12 + env_len // padding after the envelope
    };
    let path = tmp.path().join("flip").join("tools.raw");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut accepted = Vec::new();
    let mut checked = 0;
    // Every byte from the superblock on; every 17th of the erofs data (each data block is
    // hashed the same way, a sample of every block suffices).
    for at in (0..sb).step_by(17).chain(sb..bytes.len() as u64) {
        if ignorable(at) {
            continue;
        }
        // One byte changed in place, then restored: no rewrite of the whole file per case.
        file.write_all_at(&[bytes[at as usize] ^ (1 << (at % 8))], at)
            .unwrap();
        checked += 1;
        if basalt_sysext::verify_image(&path, &root, None).is_ok() {
            accepted.push(at);
        }
        file.write_all_at(&bytes[at as usize..=at as usize], at)
            .unwrap();
    }
    basalt_sysext::verify_image(&path, &root, None).expect("restored image verifies");
    assert!(
        accepted.is_empty(),
        "flips accepted at {accepted:?} (superblock at {sb}, statement at {block})"
    );
    // The tree block alone is 4096 offsets; the statement's envelope and the data sample add.
    assert!(checked > 4096 + 1000, "only {checked} offsets checked");
}

/// Records the calls; fails where told.
#[derive(Default)]
struct FakeNode {
    calls: Vec<String>,
    tables: Vec<VerityTable>,
    release_text: Option<String>,
    fail_mount_of: Option<String>,
}

impl NodeOps for FakeNode {
    type Loop = ();
    fn attach_loop(&mut self, image: &Path) -> std::io::Result<((), PathBuf)> {
        self.calls.push(format!(
            "loop {}",
            image.file_name().unwrap().to_string_lossy()
        ));
        Ok(((), PathBuf::from("/dev/loop9")))
    }
    fn create_verity(&mut self, dm_name: &str, table: &VerityTable) -> Result<PathBuf, String> {
        self.calls.push(format!("dm {dm_name}"));
        self.tables.push(table.clone());
        Ok(PathBuf::from("/dev/dm-3"))
    }
    fn remove_verity(&mut self, dm_name: &str) -> Result<(), String> {
        self.calls.push(format!("dm-remove {dm_name}"));
        Ok(())
    }
    fn mount_erofs(&mut self, _device: &Path, target: &Path) -> std::io::Result<()> {
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        self.calls.push(format!("mount {name}"));
        if self.fail_mount_of.as_deref() == Some(name.as_str()) {
            return Err(std::io::Error::other("EIO"));
        }
        Ok(())
    }
    fn unmount(&mut self, target: &Path) -> std::io::Result<()> {
        self.calls.push(format!(
            "umount {}",
            target.file_name().unwrap().to_string_lossy()
        ));
        Ok(())
    }
    fn read_file(&mut self, _path: &Path) -> std::io::Result<Option<String>> {
        Ok(self.release_text.clone())
    }
    fn refresh(&mut self) -> Result<(), String> {
        self.calls.push("refresh".into());
        Ok(())
    }
}

#[test]
fn activation_sequence_refusals_and_clean_up() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_tools(tmp.path(), &[1, 2]);
    let (_, root) = trust();
    let store = Store::new(tmp.path().join("store"));
    let v1 = Version::new(1, 0, 0);
    std::fs::create_dir_all(store.set_dir(&v1)).unwrap();
    std::fs::copy(&good.path, store.image_path(&v1, "tools")).unwrap();
    let h = host("1");
    let run = tmp.path().join("run-extensions");
    let req = Request {
        store: &store,
        os_version: &v1,
        root: &root,
        host: &h,
        run_dir: &run,
    };

    // The sequence, with the table from the signed parameters.
    let mut node = FakeNode {
        release_text: Some(good.statement.extension_release.clone()),
        ..FakeNode::default()
    };
    let done = activate::activate_set(&mut node, &req).unwrap();
    assert_eq!(
        node.calls,
        [
            "loop tools.raw",
            "dm basalt-sysext-tools",
            "mount tools",
            "refresh"
        ]
    );
    assert_eq!(done[0].mount_point, run.join("tools"));
    let t = &node.tables[0];
    let v = &good.statement.verity;
    assert_eq!(t.root_hash, v.root_hash.0.to_vec());
    assert_eq!(t.data_blocks, v.data_blocks);
    assert_eq!(t.hash_start_block, v.hash_offset / 4096 + 1);
    assert_eq!(basalt_identity::hex::encode(&t.salt), v.salt);
    assert_eq!(t.data_dev, "/dev/loop9");

    // The mounted release file missing, or not the signed one: taken down again.
    for (text, why) in [
        (None, "missing"),
        (Some("ID=basalt\nSYSEXT_LEVEL=1\n"), "differs"),
    ] {
        let mut node = FakeNode {
            release_text: text.map(String::from),
            ..FakeNode::default()
        };
        let err = activate::activate_set(&mut node, &req).unwrap_err();
        assert!(
            matches!(&err, Error::ReleaseFile { reason, .. } if reason.contains(why)),
            "{err}"
        );
        assert_eq!(
            node.calls,
            [
                "loop tools.raw",
                "dm basalt-sysext-tools",
                "mount tools",
                "umount tools",
                "dm-remove basalt-sysext-tools"
            ]
        );
    }

    // A second extension whose mount fails: the first one is taken down too, no refresh.
    let other_dir = tmp.path().join("zz");
    let zz = {
        let keys = [key(1), key(2)];
        let mut s = spec(&tree(&other_dir));
        s.name = "zz".into();
        build(
            &s,
            &[&keys[0], &keys[1]],
            &other_dir.join("out"),
            &other_dir.join("debs"),
            None,
        )
        .unwrap()
    };
    std::fs::copy(&zz.path, store.image_path(&v1, "zz")).unwrap();
    let mut node = FakeNode {
        release_text: Some(good.statement.extension_release.clone()),
        fail_mount_of: Some("zz".into()),
        ..FakeNode::default()
    };
    let err = activate::activate_set(&mut node, &req).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Activate {
                operation: "mount the erofs read-only",
                ..
            }
        ),
        "{err}"
    );
    assert!(!node.calls.contains(&"refresh".to_string()));
    assert!(
        node.calls.ends_with(&[
            "umount tools".into(),
            "dm-remove basalt-sysext-tools".into()
        ]),
        "{:?}",
        node.calls
    );
    std::fs::remove_file(store.image_path(&v1, "zz")).unwrap();

    // Refusals before anything is touched: incompatible host, tampered image, wrong name.
    let mut node = FakeNode::default();
    let h2 = host("2");
    let req2 = Request { host: &h2, ..req };
    assert!(matches!(
        activate::activate_set(&mut node, &req2),
        Err(Error::Incompatible { .. })
    ));
    std::fs::copy(&good.path, store.set_dir(&v1).join("renamed.raw")).unwrap();
    assert!(matches!(
        activate::activate_set(&mut node, &req),
        Err(Error::WrongName { .. })
    ));
    std::fs::remove_file(store.set_dir(&v1).join("renamed.raw")).unwrap();
    let stored = store.image_path(&v1, "tools");
    flip(
        &stored,
        basalt_sysext::image::statement_offset(&good.statement) + 40,
    );
    assert!(activate::activate_set(&mut node, &req).is_err());
    assert!(
        node.calls.is_empty(),
        "nothing set up after a refusal: {:?}",
        node.calls
    );

    // What a boot unit runs: the set is chosen by the booted os-release's VERSION_ID.
    std::fs::copy(&good.path, &stored).unwrap();
    let os_release = tmp.path().join("os-release");
    let arch = basalt_sysext::compat::native_architecture();
    std::fs::write(&os_release, "ID=basalt\nVERSION_ID=1.0.0\nSYSEXT_LEVEL=1\n").unwrap();
    let mut node = FakeNode {
        release_text: Some(good.statement.extension_release.clone()),
        ..FakeNode::default()
    };
    let booted = activate::activate_booted(&mut node, &store, &root, &os_release, &run);
    if arch == "x86-64" {
        assert_eq!(booted.unwrap().len(), 1);
    } else {
        assert!(matches!(booted, Err(Error::Incompatible { .. })));
    }
    std::fs::write(&os_release, "ID=basalt\nSYSEXT_LEVEL=1\n").unwrap();
    let err = activate::activate_booted(&mut node, &store, &root, &os_release, &run).unwrap_err();
    assert!(matches!(err, Error::HostRelease { .. }), "{err}");
    let mut node = FakeNode::default();

    // Another OS version's set is not this one: an empty set activates nothing.
    let v2 = Version::new(2, 0, 0);
    let req3 = Request {
        os_version: &v2,
        ..req
    };
    assert_eq!(activate::activate_set(&mut node, &req3).unwrap(), []);
    assert!(node.calls.is_empty());
}

/// The real loop device and read-only erofs mount of `activate::System` (everything but
/// dm-verity, which this host lacks): the image's data area mounts and shows the signed
/// release file.
#[test]
fn real_loop_device_and_erofs_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_tools(tmp.path(), &[1, 2]);
    let mut sys = activate::System;
    let (hold, dev) = sys
        .attach_loop(&good.path)
        .expect("attach a loop device (root, loop module)");
    let mnt = tmp.path().join("mnt");
    sys.mount_erofs(&dev, &mnt)
        .expect("mount erofs from the loop device");
    let rel = mnt.join("usr/lib/extension-release.d/extension-release.tools");
    let text = sys.read_file(&rel);
    let hello = std::fs::read_to_string(mnt.join("usr/bin/tools-hello"));
    let write = std::fs::write(mnt.join("usr/x"), "x");
    sys.unmount(&mnt).unwrap();
    drop(hold);
    assert_eq!(text.unwrap().unwrap(), good.statement.extension_release);
    assert!(hello.unwrap().contains("tools 1.0"));
    assert!(write.is_err(), "the mount is read-only");
}
