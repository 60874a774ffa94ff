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
use basalt_image::release::synthetic::SyntheticRelease;
use basalt_image::release::{publish_without_extension_checks, CompressOptions, PublishRequest};
use basalt_manifest::chrono::Utc;
use basalt_manifest::semver::Version;
use basalt_sysext::Store;
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Downloaded, Engine};
use basalt_updater::pipeline::{BackendKind, Error, ErrorKind};
use common::{build_ext, key, quiet, EspKind, Ext, Node, World};

/// A synthetic release `version` with `sysext_level` and the extension images `images`.
fn release(
    world: &World,
    version: &str,
    level: Option<&str>,
    images: Vec<PathBuf>,
) -> SyntheticRelease {
    world.release_with_extensions(version, level, images)
}

fn download(node: &Node, world: &World, installed: &str) -> Result<Downloaded, Error> {
    download_as(node, world, installed, None)
}

/// [`download`] with the fleet server's word on the extensions (`Candidate::node_image_only`,
/// which the daemon sets from the offer).
fn download_as(
    node: &Node,
    world: &World,
    installed: &str,
    node_image_only: Option<bool>,
) -> Result<Downloaded, Error> {
    let mut engine = node.engine(Box::new(world.source()));
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some(installed.parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(mut c) = engine.check(&req)? else {
        panic!("no update found");
    };
    assert_eq!(
        c.node_image_only, None,
        "an engine leaves the mode to the daemon"
    );
    c.node_image_only = node_image_only;
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

/// The fleet server's word (`pool upgrade --node-image-only` or not, carried by its offer)
/// decides over the node's own `update.node_image_only`, both ways, and `apply` checks the set
/// the way the download staged it.
#[test]
fn the_fleet_servers_word_on_the_extensions_beats_the_nodes_setting() {
    let world = World::new();
    let tools1 = build_ext(&world.dir, &Ext::tools("1.0.0"));
    let tools2 = build_ext(&world.dir, &Ext::tools("2.0.0"));
    let v2 = release(&world, "2.0.0", Some("1"), vec![tools2.clone()]);
    world.publish(&v2, None);
    for (name, own, server, expected) in [
        ("fleet-nio", false, true, &tools1),
        ("fleet-full", true, false, &tools2),
    ] {
        let mut node = Node::new(&world, name, BackendKind::Bls, EspKind::Fat);
        node.config.node_image_only = own;
        let set1 = store(&node).set_dir(&v("1.0.0"));
        std::fs::create_dir_all(&set1).unwrap();
        std::fs::copy(&tools1, set1.join("tools.raw")).unwrap();
        let d = download_as(&node, &world, "1.0.0", Some(server)).unwrap();
        let staged = store(&node).image_path(&v("2.0.0"), "tools");
        assert_eq!(
            std::fs::read(&staged).unwrap(),
            std::fs::read(expected).unwrap(),
            "{name}: node setting {own}, server says node-image-only = {server}"
        );
        node.engine(Box::new(world.source())).apply(&d, 3).unwrap();
    }
}

// ───────────────────────────── pins (issue 10, point 4) ─────────────────────────────

/// Puts the built `image` into the store as part of OS version `os`'s set.
fn put(node: &Node, os: &str, image: &Path) {
    let set = store(node).set_dir(&v(os));
    std::fs::create_dir_all(&set).unwrap();
    std::fs::copy(image, set.join(image.file_name().unwrap())).unwrap();
}

/// The booted OS says it is 1.0.0 of level 1 (what a pin must fit); this boot activated
/// `active`.
fn booted_os(node: &mut Node, active: &[&str]) {
    let os_release = node.dir.join("os-release");
    std::fs::write(&os_release, "ID=basalt\nVERSION_ID=1.0.0\nSYSEXT_LEVEL=1\n").unwrap();
    node.config.os_release = os_release;
    node.config.run_extensions = node.dir.join("run-extensions");
    for a in active {
        std::fs::create_dir_all(node.config.run_extensions.join(a)).unwrap();
    }
}

fn pin(node: &Node, world: &World, name: &str, version: &str) -> Result<(), Error> {
    node.engine(Box::new(world.source()))
        .pin_extension(name, &v(version))
}

/// Listing, pinning, unpinning through the engine, and each refusal with its own kind: a
/// name no set holds, a version no set holds (the staged ones listed), an image that no
/// longer verifies, one that does not fit the booted OS (both levels named). A refused pin
/// changes nothing; the pins file is what was accepted.
#[test]
fn pins_are_listed_and_each_refusal_is_typed() {
    let world = World::new();
    let mut node = Node::new(&world, "pins", BackendKind::Bls, EspKind::Fat);
    booted_os(&mut node, &["tools"]);
    let tools1 = build_ext(&world.dir, &Ext::tools("1.0.0"));
    put(&node, "1.0.0", &tools1);
    put(&node, "2.0.0", &build_ext(&world.dir, &Ext::tools("2.0.0")));
    let level2 = Ext {
        level: Some("2"),
        ..Ext::tools("3.0.0")
    };
    put(&node, "3.0.0", &build_ext(&world.dir, &level2));
    let mut engine = node.engine(Box::new(world.source()));
    let l = engine.extensions().unwrap();
    let sets: Vec<String> = l
        .staged
        .iter()
        .map(|s| {
            let exts: Vec<String> = s
                .extensions
                .iter()
                .map(|(n, v)| {
                    format!(
                        "{n} {}",
                        v.as_ref().map(ToString::to_string).unwrap_or_default()
                    )
                })
                .collect();
            format!("{}: {}", s.os_version, exts.join(", "))
        })
        .collect();
    assert_eq!(
        sets,
        [
            "1.0.0: tools 1.0.0",
            "2.0.0: tools 2.0.0",
            "3.0.0: tools 3.0.0"
        ]
    );
    assert_eq!(l.active, ["tools"]);
    assert!(l.pins.is_empty());

    // A torn earlier write of the pins left its temporary (its writer is gone).
    let torn = store(&node).root().join(".pins.tmp-999999999-1");
    std::fs::write(&torn, "tools 9").unwrap();
    engine.pin_extension("tools", &v("2.0.0")).unwrap();
    assert!(!torn.exists(), "the torn temporary is removed");
    let pins_file = store(&node).pins_path();
    assert!(std::fs::read_to_string(&pins_file)
        .unwrap()
        .ends_with("\ntools 2.0.0\n"));
    assert_eq!(
        engine.extensions().unwrap().pins,
        [("tools".to_owned(), v("2.0.0"))]
    );

    let set1_tools = store(&node).image_path(&v("1.0.0"), "tools");
    let good = std::fs::read(&set1_tools).unwrap();
    let mut bad = good.clone();
    bad[4096 + 9] ^= 0x04;
    std::fs::write(&set1_tools, &bad).unwrap();
    for (name, version, kind, needle) in [
        (
            "nope",
            "1.0.0",
            ErrorKind::UnknownExtension,
            "holds an extension named nope",
        ),
        (
            "tools",
            "9.9.9",
            ErrorKind::ExtensionNotStaged,
            "tools 9.9.9 is not staged (staged versions: 1.0.0, 2.0.0, 3.0.0)",
        ),
        (
            "tools",
            "3.0.0",
            ErrorKind::InvalidRelease,
            "SYSEXT_LEVEL=2, the booted OS has SYSEXT_LEVEL=1",
        ),
        (
            "tools",
            "1.0.0",
            ErrorKind::IntegrityMismatch,
            "altered extension image",
        ),
    ] {
        let e = engine.pin_extension(name, &v(version)).unwrap_err();
        assert_eq!(e.kind(), kind, "{name} {version}: {e}");
        let text = e.to_string();
        assert!(
            text.contains(needle) && text.starts_with(&format!("pin extension {name} {version}: ")),
            "{text}"
        );
    }
    std::fs::write(&set1_tools, &good).unwrap();
    assert_eq!(
        engine.extensions().unwrap().pins,
        [("tools".to_owned(), v("2.0.0"))],
        "a refused pin changes nothing"
    );
    pin(&node, &world, "tools", "1.0.0").unwrap();
    assert_eq!(
        engine.extensions().unwrap().pins,
        [("tools".to_owned(), v("1.0.0"))],
        "a pin replaces the name's earlier one"
    );

    engine.unpin_extension("tools").unwrap();
    assert!(engine.extensions().unwrap().pins.is_empty());
    engine.unpin_extension("tools").unwrap();

    // A damaged pins file is an error naming it, never "no pins".
    std::fs::write(&pins_file, "tools\n").unwrap();
    let e = engine.extensions().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State, "{e}");
    assert!(e.to_string().contains("pins: line 1"), "{e}");
}

/// Node-image-only with a pin: the pinned version (staged with another OS version) replaces
/// the booted one in the kept set; a new OS of another level refuses the update naming the
/// pinned extension and both levels, nothing staged.
#[test]
fn node_image_only_keeps_the_pinned_version_while_it_fits() {
    let world = World::new();
    let mut node = Node::new(&world, "nio-pin", BackendKind::Bls, EspKind::Fat);
    node.config.node_image_only = true;
    booted_os(&mut node, &[]);
    let tools1 = build_ext(&world.dir, &Ext::tools("1.0.0"));
    let tools2 = build_ext(&world.dir, &Ext::tools("2.0.0"));
    put(&node, "1.0.0", &tools1);
    put(&node, "1.5.0", &tools2);
    pin(&node, &world, "tools", "2.0.0").unwrap();

    let before = node.snapshot();
    let v2 = release(&world, "2.0.0", Some("2"), Vec::new());
    world.publish(&v2, None);
    let e = download(&node, &world, "1.0.0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRelease, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("node-image-only update to 2.0.0: extension tools of 1.0.0 cannot be kept")
            && text.contains("SYSEXT_LEVEL=1, the booted OS has SYSEXT_LEVEL=2"),
        "{text}"
    );
    assert_eq!(node.state(Slot::B), SlotState::Installing);
    node.assert_safe(&before, "pinned node-image-only refusal");
    assert!(!store(&node).set_dir(&v("2.0.0")).exists());

    // Level 1 again, shipping tools 3.0: the node keeps its pinned tools 2.0.
    let v201 = release(
        &world,
        "2.0.1",
        Some("1"),
        vec![build_ext(&world.dir, &Ext::tools("3.0.0"))],
    );
    world.publish(&v201, None);
    let d = download(&node, &world, "1.0.0").unwrap();
    let kept = store(&node).image_path(&v("2.0.1"), "tools");
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(&tools2).unwrap()
    );
    node.engine(Box::new(world.source())).apply(&d, 3).unwrap();
    // 1.5.0's set is in neither slot: collected; the pinned image lives on in 2.0.1's.
    assert_eq!(
        store(&node).entries().unwrap(),
        ["1.0.0", "2.0.1", basalt_sysext::pins::PINS_FILE]
    );
}

/// A full update moves OS and extensions together, so a pinned extension must come in its
/// pinned version: a release shipping another is refused naming both (slot B never named,
/// no set published); one shipping the pinned version goes through; a pin that changed
/// after the download is caught at apply, before the flip.
#[test]
fn a_full_update_must_ship_the_pinned_version() {
    let world = World::new();
    let mut node = Node::new(&world, "full-pin", BackendKind::Bls, EspKind::Fat);
    booted_os(&mut node, &[]);
    let tools1 = build_ext(&world.dir, &Ext::tools("1.0.0"));
    put(&node, "1.0.0", &tools1);
    pin(&node, &world, "tools", "1.0.0").unwrap();

    let before = node.snapshot();
    let v2 = release(
        &world,
        "2.0.0",
        Some("1"),
        vec![build_ext(&world.dir, &Ext::tools("2.0.0"))],
    );
    world.publish(&v2, None);
    let e = download(&node, &world, "1.0.0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExtensionPinned, "{e}");
    assert!(
        e.to_string().starts_with(
            "extension tools is pinned at 1.0.0, release 2.0.0 ships tools 2.0.0: unpin it"
        ),
        "{e}"
    );
    assert_eq!(node.state(Slot::B), SlotState::Installing);
    node.assert_safe(&before, "pinned full update");
    assert!(!store(&node).set_dir(&v("2.0.0")).exists());

    let debug = build_ext(
        &world.dir,
        &Ext {
            name: "debug",
            ..Ext::tools("0.3.0")
        },
    );
    let v201 = release(&world, "2.0.1", Some("1"), vec![tools1, debug]);
    world.publish(&v201, None);
    let d = download(&node, &world, "1.0.0").unwrap();
    assert_eq!(node.state(Slot::B), SlotState::Valid);
    // A pin written after the download (debug 0.4.0): apply refuses before the flip.
    std::fs::write(store(&node).pins_path(), "tools 1.0.0\ndebug 0.4.0\n").unwrap();
    let mut engine = node.engine(Box::new(world.source()));
    let e = engine.apply(&d, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExtensionPinned, "{e}");
    assert!(e.to_string().contains("ships debug 0.3.0"), "{e}");
    assert_eq!(node.boot_control().status().unwrap().next, Some(Slot::A));
    engine.unpin_extension("debug").unwrap();
    engine.apply(&d, 3).unwrap();
    assert_eq!(node.boot_control().status().unwrap().next, Some(Slot::B));
}

/// The download's progress total counts the extension images: every report of the
/// downloading phase has `done <= total`, the total is `/usr` + kernel + initrd + the
/// extensions, and the last report reaches it.
#[test]
fn download_progress_counts_the_extension_bytes() {
    let world = World::new();
    let node = Node::new(&world, "progress", BackendKind::Bls, EspKind::Fat);
    let debug = build_ext(
        &world.dir,
        &Ext {
            name: "debug",
            ..Ext::tools("0.3.0")
        },
    );
    let v2 = release(
        &world,
        "2.0.0",
        Some("1"),
        vec![build_ext(&world.dir, &Ext::tools("2.0.0")), debug],
    );
    world.publish(&v2, None);
    use basalt_manifest::ArtifactKind as K;
    let size = |kinds: &[K]| -> u64 {
        v2.manifest
            .artifacts
            .iter()
            .filter(|a| kinds.contains(&a.kind))
            .map(|a| a.size)
            .sum()
    };
    let extensions = size(&[K::Sysext]);
    assert!(extensions > 0, "{extensions}");
    let expected = size(&[K::Usr, K::Kernel, K::Initrd, K::Sysext]);

    let mut engine = node.engine(Box::new(world.source()));
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some(v("1.0.0")),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(c) = engine.check(&req).unwrap() else {
        panic!("no update found");
    };
    let mut reports = Vec::new();
    engine
        .download(&c, &mut |p| reports.push(p.clone()), &CancelFlag::new())
        .unwrap();
    let downloading: Vec<_> = reports
        .iter()
        .filter(|p| p.phase == basalt_updater::engine::Phase::Downloading)
        .collect();
    assert!(downloading.len() >= 2, "{reports:?}");
    for p in &downloading {
        assert_eq!(p.total, expected, "{p:?}");
        assert!(p.done <= p.total, "{p:?}");
    }
    assert_eq!(downloading.last().unwrap().done, expected, "{reports:?}");
}
