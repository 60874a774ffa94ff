//! A release's system extensions through the real pipeline (issue 10): built with the real
//! `basalt sysext build` code (erofs + verity + signed statement), listed in a synthetic
//! release, published with the real publisher, downloaded by the engine into the store
//! before the slot is named — and every refusal fails the download with its own typed kind,
//! leaves the new slot `_installing` (never bootable), the booted slot untouched and no set
//! for the new version in the store.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use basalt_disk::{Slot, SlotState};
use basalt_image::release::synthetic::{synthetic_release, SyntheticRelease, SyntheticSpec};
use basalt_image::release::{publish_without_extension_checks, CompressOptions, PublishRequest};
use basalt_image::sysext::{build, Source, SysextSpec};
use basalt_manifest::chrono::Utc;
use basalt_manifest::semver::Version;
use basalt_manifest::SigningKey;
use basalt_sysext::Store;
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Downloaded, Engine};
use basalt_updater::pipeline::{BackendKind, Error, ErrorKind};
use common::{key, quiet, EspKind, Node, World, MIB};

/// How the extension of a case is made.
#[derive(Debug, Clone)]
struct Ext {
    name: &'static str,
    version: &'static str,
    level: Option<&'static str>,
    version_id: Option<&'static str>,
    signers: Vec<u8>,
}

impl Ext {
    fn tools(version: &'static str) -> Ext {
        Ext {
            name: "tools",
            version,
            level: Some("1"),
            version_id: None,
            signers: vec![1, 2],
        }
    }
}

/// Builds `ext` into `dir/NAME.raw` from a small tree (a script naming its version).
fn build_ext(dir: &Path, ext: &Ext) -> PathBuf {
    let src = dir.join(format!("src-{}-{}", ext.name, ext.version));
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(
        src.join(format!("usr/bin/{}-version", ext.name)),
        format!("#!/bin/sh\necho {} {}\n", ext.name, ext.version),
    )
    .unwrap();
    std::fs::write(src.join("usr/bin/filler"), vec![0x5au8; 64 << 10]).unwrap();
    let keys: Vec<SigningKey> = ext.signers.iter().copied().map(key).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let out = dir.join(format!("out-{}-{}", ext.name, ext.version));
    let built = build(
        &SysextSpec {
            name: ext.name.into(),
            version: Version::parse(ext.version).unwrap(),
            os: "basalt".into(),
            sysext_level: ext.level.map(Into::into),
            version_id: ext.version_id.map(Into::into),
            architecture: Some("x86-64".into()),
            source: Source::Tree(src),
        },
        &refs,
        &out,
        &dir.join("debs"),
        None,
    )
    .unwrap();
    built.path
}

/// A synthetic release `version` with `sysext_level` and the extension images `images`.
fn release(
    world: &World,
    version: &str,
    level: Option<&str>,
    images: Vec<PathBuf>,
) -> SyntheticRelease {
    let mut spec = SyntheticSpec::small(version, Utc::now()).unwrap();
    spec.usr_len = MIB;
    spec.sysext_level = level.map(Into::into);
    spec.extensions = images;
    synthetic_release(
        &world.dir.join(format!("release-{version}")),
        &spec,
        &[&world.keys[0], &world.keys[1]],
    )
    .unwrap()
}

fn download(node: &Node, world: &World, installed: &str) -> Result<Downloaded, Error> {
    let mut engine = node.engine(Box::new(world.source()));
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some(installed.parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(c) = engine.check(&req)? else {
        panic!("no update found");
    };
    engine.download(&c, &mut quiet(), &CancelFlag::new())
}

fn store(node: &Node) -> Store {
    Store::new(node.config.extensions_dir())
}

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// The trust root of the world (what the node checks against).
fn trust(world: &World) -> basalt_manifest::TrustRoot {
    basalt_manifest::TrustRoot::from_initial_envelope(&std::fs::read(&world.anchor).unwrap())
        .unwrap()
}

#[test]
fn extensions_are_staged_before_the_slot_is_named_and_old_sets_are_collected() {
    let world = World::new();
    let node = Node::new(&world, "staged", BackendKind::Bls, EspKind::Fat);
    // The node runs 1.0.0 with tools 1.0 (as a node installed from an image with it would).
    let tools1 = build_ext(&world.dir, &Ext::tools("1.0.0"));
    let set1 = store(&node).set_dir(&v("1.0.0"));
    std::fs::create_dir_all(&set1).unwrap();
    std::fs::copy(&tools1, set1.join("tools.raw")).unwrap();

    let tools2 = build_ext(&world.dir, &Ext::tools("2.0.0"));
    let debug = build_ext(
        &world.dir,
        &Ext {
            name: "debug",
            ..Ext::tools("0.3.0")
        },
    );
    let v2 = release(&world, "2.0.0", Some("1"), vec![tools2.clone(), debug]);
    world.publish(&v2, None);
    let d = download(&node, &world, "1.0.0").unwrap();
    assert_eq!(d.slot, Slot::B);
    assert_eq!(node.state(Slot::B), SlotState::Valid);
    let root = trust(&world);
    let staged = store(&node).images(&v("2.0.0")).unwrap();
    let names: Vec<&str> = staged.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["debug", "tools"]);
    let ext = basalt_sysext::verify_image(&staged[1].path, &root, Some("tools")).unwrap();
    assert_eq!(ext.statement.version, v("2.0.0"));
    assert_eq!(
        std::fs::read(&staged[1].path).unwrap(),
        std::fs::read(&tools2).unwrap()
    );
    // The booted version's set is kept; nothing half-published is left.
    assert!(set1.join("tools.raw").is_file());
    assert_eq!(store(&node).entries().unwrap(), ["1.0.0", "2.0.0"]);
    let mut engine = node.engine(Box::new(world.source()));
    engine.apply(&d, 3).unwrap();

    // Apply re-checks the set: a byte changed on the root partition since is caught.
    let staged_tools = store(&node).image_path(&v("2.0.0"), "tools");
    let bytes = std::fs::read(&staged_tools).unwrap();
    let mut bad = bytes.clone();
    bad[100] ^= 1;
    // A new inode: the staging folder's hard link keeps the good bytes.
    std::fs::remove_file(&staged_tools).unwrap();
    std::fs::write(&staged_tools, &bad).unwrap();
    let e = engine.apply(&d, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::IntegrityMismatch, "{e}");
    assert!(
        e.to_string().contains("extension tools of release 2.0.0"),
        "{e}"
    );
    std::fs::write(&staged_tools, &bytes).unwrap();

    // Still booted from A (1.0.0): a 3.0.0 replaces 2.0.0 in slot B, and 2.0.0's set (in
    // neither slot any more) is collected; 1.0.0's stays.
    let v3 = release(&world, "3.0.0", Some("1"), vec![tools2]);
    world.publish(&v3, None);
    download(&node, &world, "1.0.0").unwrap();
    assert_eq!(store(&node).entries().unwrap(), ["1.0.0", "3.0.0"]);
}

#[test]
fn a_release_without_extensions_stages_an_empty_set() {
    let world = World::new();
    let node = Node::new(&world, "empty", BackendKind::GptPrio, EspKind::Fat);
    let v2 = release(&world, "2.0.0", Some("1"), Vec::new());
    world.publish(&v2, None);
    let d = download(&node, &world, "1.0.0").unwrap();
    assert_eq!(store(&node).images(&v("2.0.0")).unwrap(), []);
    node.engine(Box::new(world.source())).apply(&d, 3).unwrap();
}

/// One refusal: the download fails with `kind` naming the extension, slot B stays
/// `_installing`, slot A and its boot state are untouched, no set for 2.0.0 exists.
fn refused(
    case: &str,
    level: Option<&str>,
    images: impl FnOnce(&World) -> Vec<PathBuf>,
    kind: ErrorKind,
    needle: &str,
) {
    let world = World::new();
    let node = Node::new(&world, case, BackendKind::Bls, EspKind::Dir);
    let before = node.snapshot();
    let v2 = release(&world, "2.0.0", level, images(&world));
    // The publisher refuses each of these releases (image/tests/release_publish.rs): this is
    // the repository of one that did not check.
    let keys = [key(1), key(2)];
    publish_without_extension_checks(&PublishRequest {
        release_dir: &v2.dir,
        repo: &world.repo,
        channel: "stable",
        keys: &keys,
        sequence: None,
        allow_downgrade: false,
        now: Utc::now(),
        valid_for: Some(basalt_manifest::chrono::TimeDelta::days(30)),
        compress: CompressOptions {
            level: 3,
            frame_len: world.frame_len,
            threads: 2,
        },
    })
    .unwrap();
    let e = download(&node, &world, "1.0.0").unwrap_err();
    assert_eq!(e.kind(), kind, "{case}: {e}");
    assert!(e.to_string().contains(needle), "{case}: {e}");
    assert_eq!(node.state(Slot::B), SlotState::Installing, "{case}");
    node.assert_safe(&before, case);
    assert!(!store(&node).set_dir(&v("2.0.0")).exists(), "{case}");
    let st = node.boot_control().status().unwrap();
    assert_eq!(st.next, Some(Slot::A), "{case}");
}

#[test]
fn an_extension_signed_by_an_unknown_key_is_refused() {
    refused(
        "unknown-key",
        Some("1"),
        |w| {
            vec![build_ext(
                &w.dir,
                &Ext {
                    signers: vec![7, 8],
                    ..Ext::tools("2.0.0")
                },
            )]
        },
        ErrorKind::SignatureRefused,
        "not signed by the trust root",
    );
}

#[test]
fn an_extension_below_the_threshold_is_refused() {
    refused(
        "one-signer",
        Some("1"),
        |w| {
            vec![build_ext(
                &w.dir,
                &Ext {
                    signers: vec![1],
                    ..Ext::tools("2.0.0")
                },
            )]
        },
        ErrorKind::SignatureRefused,
        "extension tools of release 2.0.0",
    );
}

#[test]
fn an_altered_byte_of_an_extension_is_refused() {
    // The publisher lists the altered file's own sha256 (a compromised build host): only
    // the signed root hash catches it.
    refused(
        "altered",
        Some("1"),
        |w| {
            let p = build_ext(&w.dir, &Ext::tools("2.0.0"));
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[4096 + 7] ^= 0x10;
            let altered = w.dir.join("altered").join("tools.raw");
            std::fs::create_dir_all(altered.parent().unwrap()).unwrap();
            std::fs::write(&altered, bytes).unwrap();
            vec![altered]
        },
        ErrorKind::IntegrityMismatch,
        "altered extension image",
    );
}

#[test]
fn an_extension_of_another_level_is_refused() {
    refused(
        "level",
        Some("2"),
        |w| vec![build_ext(&w.dir, &Ext::tools("2.0.0"))],
        ErrorKind::InvalidRelease,
        "SYSEXT_LEVEL=1",
    );
}

#[test]
fn an_extension_tied_to_another_os_version_is_refused() {
    refused(
        "version-id",
        None,
        |w| {
            vec![build_ext(
                &w.dir,
                &Ext {
                    level: None,
                    version_id: Some("1.0.0"),
                    ..Ext::tools("2.0.0")
                },
            )]
        },
        ErrorKind::InvalidRelease,
        "VERSION_ID",
    );
}

#[test]
fn an_extension_listed_under_another_name_is_refused() {
    refused(
        "renamed",
        Some("1"),
        |w| {
            let p = build_ext(&w.dir, &Ext::tools("2.0.0"));
            let renamed = w.dir.join("renamed").join("other.raw");
            std::fs::create_dir_all(renamed.parent().unwrap()).unwrap();
            std::fs::copy(&p, &renamed).unwrap();
            vec![renamed]
        },
        ErrorKind::SignatureRefused,
        "expected \"other\"",
    );
}

#[test]
fn a_missing_extension_blob_fails_the_download_and_a_retry_succeeds() {
    let world = World::new();
    let node = Node::new(&world, "missing", BackendKind::Bls, EspKind::Fat);
    let before = node.snapshot();
    let v2 = release(
        &world,
        "2.0.0",
        Some("1"),
        vec![build_ext(&world.dir, &Ext::tools("2.0.0"))],
    );
    let report = world.publish(&v2, None);
    let blob = report
        .artifacts
        .iter()
        .find(|a| a.name == "tools.raw")
        .unwrap()
        .blob;
    let path = world.repo.join(basalt_manifest::repo::blob_path(&blob));
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let e = download(&node, &world, "1.0.0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(node.state(Slot::B), SlotState::Installing);
    node.assert_safe(&before, "missing blob");
    assert!(!store(&node).set_dir(&v("2.0.0")).exists());
    std::fs::write(&path, saved).unwrap();
    download(&node, &world, "1.0.0").unwrap();
    assert_eq!(node.state(Slot::B), SlotState::Valid);
    assert_eq!(store(&node).images(&v("2.0.0")).unwrap().len(), 1);
}

/// Node-image-only (`update.node_image_only`): the booted version's set (tools 1.0, level 1)
/// becomes 2.0.0's when 2.0.0 keeps level 1 — the release's own tools 2.0 is not taken —
/// and an update to a release of level 2 is refused naming the extension, nothing staged.
#[test]
fn node_image_only_keeps_the_booted_set_when_it_fits_and_refuses_when_not() {
    let world = World::new();
    let mut node = Node::new(&world, "nio", BackendKind::Bls, EspKind::Fat);
    node.config.node_image_only = true;
    let tools1 = build_ext(&world.dir, &Ext::tools("1.0.0"));
    let set1 = store(&node).set_dir(&v("1.0.0"));
    std::fs::create_dir_all(&set1).unwrap();
    std::fs::copy(&tools1, set1.join("tools.raw")).unwrap();

    // Level 2: tools 1.0 (level 1) does not fit; refused, not dropped.
    let before = node.snapshot();
    let v2 = release(&world, "2.0.0", Some("2"), Vec::new());
    world.publish(&v2, None);
    let e = download(&node, &world, "1.0.0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRelease, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("node-image-only update to 2.0.0: extension tools of 1.0.0 cannot be kept")
            && text.contains("SYSEXT_LEVEL=1"),
        "{text}"
    );
    assert_eq!(node.state(Slot::B), SlotState::Installing);
    node.assert_safe(&before, "node-image-only refusal");
    assert!(!store(&node).set_dir(&v("2.0.0")).exists());

    // 2.0.1 keeps level 1 and ships tools 2.0: the node keeps its tools 1.0.
    let tools2 = build_ext(&world.dir, &Ext::tools("2.0.0"));
    let v201 = release(&world, "2.0.1", Some("1"), vec![tools2]);
    world.publish(&v201, None);
    let d = download(&node, &world, "1.0.0").unwrap();
    assert_eq!(node.state(Slot::B), SlotState::Valid);
    let kept = store(&node).image_path(&v("2.0.1"), "tools");
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(&tools1).unwrap()
    );
    let ext = basalt_sysext::verify_image(&kept, &trust(&world), Some("tools")).unwrap();
    assert_eq!(ext.statement.version, v("1.0.0"));
    node.engine(Box::new(world.source())).apply(&d, 3).unwrap();
    assert_eq!(store(&node).entries().unwrap(), ["1.0.0", "2.0.1"]);
}
