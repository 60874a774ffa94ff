//! Releases that ship a signed unified kernel image, on host disk images: the BLS node
//! fetches the UKI instead of kernel + initrd, checks that its signed `.cmdline` names the
//! release's own `usrhash=`, stages it as a counted `efi` entry on the raw FAT ESP (read back
//! with mtools), blesses it, updates the other slot over it and rolls back to it — the
//! booted slot's files never touched. Refused, with the inactive slot left unbootable: a
//! release whose UKI boots another `/usr` (a real signed manifest naming another build's
//! UKI), a staged UKI whose bytes changed, a UKI release on the GPT-priority backend.
//!
//! The UKIs are real systemd-stub images (`basalt_image::build::uki`, the stub from
//! `systemd-boot-efi`) around the synthetic placeholder kernel and initramfs; nothing boots
//! them here (the QEMU scenario `tests/tests/vm_update_file.rs` does, under Secure Boot).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_image::build::uki::STUB;
use basalt_image::release::synthetic::{add_uki, SyntheticRelease};
use basalt_manifest::chrono::Utc;
use basalt_manifest::{repo, sign_release, verify_release, ArtifactKind, Policy, TrustRoot};
use basalt_updater::engine::{CancelFlag, CheckOutcome, Engine};
use basalt_updater::pipeline::{BackendKind, ErrorKind, NodeEngine};
use common::{key, peer, quiet, request, EspKind, Node, World, MIB};

fn uki_release(world: &World, version: &str) -> SyntheticRelease {
    let mut rel = world.release(version, 2 * MIB);
    add_uki(&mut rel, Path::new(STUB), None, &[&key(1), &key(2)]).unwrap();
    rel
}

fn uki_path(rel: &SyntheticRelease) -> PathBuf {
    let a = rel.manifest.artifacts_of(ArtifactKind::Uki).next().unwrap();
    rel.dir.join(&a.name)
}

fn candidate(engine: &mut NodeEngine, installed: &str) -> basalt_updater::engine::Candidate {
    let req = basalt_updater::engine::CheckRequest {
        installed_version: Some(installed.parse().unwrap()),
        ..request()
    };
    match engine.check(&req).unwrap() {
        CheckOutcome::Available(c) => c,
        other => panic!("no update found: {other:?}"),
    }
}

/// The file at `path` on the node's FAT ESP, read with mtools.
fn esp_file(node: &Node, path: &str) -> Vec<u8> {
    let img = format!("{}@@{}", node.disk().display(), node.inventory().esp.offset);
    peer("mtype", "mtools", &["-i", &img, &format!("::/{path}")]).stdout
}

fn esp_listing(node: &Node, dir: &str) -> String {
    let img = format!("{}@@{}", node.disk().display(), node.inventory().esp.offset);
    String::from_utf8_lossy(
        &peer("mdir", "mtools", &["-b", "-i", &img, &format!("::/{dir}")]).stdout,
    )
    .into_owned()
}

fn booted(node: &Node, rel: &SyntheticRelease) {
    std::fs::write(
        &node.config.cmdline,
        format!("console=ttyS0 usrhash={}", rel.root_hash),
    )
    .unwrap();
}

#[test]
fn a_uki_release_is_staged_counted_blessed_updated_over_and_rolled_back_to() {
    let world = World::new();
    let node = Node::new(&world, "uki", BackendKind::Bls, EspKind::Fat);
    let v2 = uki_release(&world, "2.0.0");
    let report = world.publish(&v2, None);
    let before = node.snapshot();
    let mut engine = node.engine(Box::new(world.source()));

    // Download: the usr image and the UKI, not the loose kernel and initrd.
    let c = candidate(&mut engine, "1.0.0");
    let downloaded = engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap();
    assert_eq!(downloaded.slot, Slot::B);
    let compressed = |kind: ArtifactKind| -> u64 {
        let name = &v2.manifest.artifacts_of(kind).next().unwrap().name;
        let a = report.artifacts.iter().find(|a| &a.name == name).unwrap();
        // An adaptive install reads the block index first; with no earlier release in the
        // slot to copy from it falls back to the stream.
        a.compressed_size + a.adaptive.as_ref().map_or(0, |x| x.block_index_size)
    };
    assert_eq!(
        downloaded.fetched,
        compressed(ArtifactKind::Usr) + compressed(ArtifactKind::Uki),
        "usr + UKI only: {report:?}"
    );
    assert_eq!(node.inventory().slot(Slot::B).state, SlotState::Valid);
    assert_eq!(node.snapshot(), before, "slot A changed");

    // Apply: a counted `efi` entry naming the UKI, byte for byte the release's.
    engine.apply(&downloaded, 3).unwrap();
    let st = node.boot_control().status().unwrap();
    assert_eq!(
        st.slot(Slot::B).status,
        BootStatus::Trying {
            tries_left: 3,
            tries_done: 0
        }
    );
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::A).status, before.a_boot);
    let listing = esp_listing(&node, "loader/entries");
    assert!(listing.contains("basalt-2.0.0+3.conf"), "{listing}");
    let entry = String::from_utf8(esp_file(&node, "loader/entries/basalt-2.0.0+3.conf")).unwrap();
    assert!(entry.contains("\nefi /basalt/2.0.0/uki.efi\n"), "{entry}");
    assert!(
        !entry.contains("linux ") && !entry.contains("initrd "),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("usrhash={} basalt.slot=b", v2.root_hash)),
        "{entry}"
    );
    let v2_uki = std::fs::read(uki_path(&v2)).unwrap();
    assert!(esp_file(&node, "basalt/2.0.0/uki.efi") == v2_uki);
    let files = esp_listing(&node, "basalt/2.0.0");
    assert!(!files.contains("vmlinuz"), "{files}");

    // The boot loader picks B; B is blessed.
    assert_eq!(node.boot_control().boot_attempt().unwrap(), Some(Slot::B));
    booted(&node, &v2);
    engine.mark_good().unwrap();
    assert_eq!(engine.node().unwrap().slots[1].boot, BootStatus::Good);

    // v3 into slot A, over A's loose kernel entry, from B booted on its UKI.
    let v3 = uki_release(&world, "3.0.0");
    world.publish(&v3, None);
    let before_b = node.snapshot_of(Slot::B);
    let c = candidate(&mut engine, "2.0.0");
    let downloaded = engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap();
    assert_eq!(downloaded.slot, Slot::A);
    assert_eq!(
        node.boot_control().status().unwrap().slot(Slot::A).status,
        BootStatus::Absent,
        "A's old entry withdrawn before its partitions were written"
    );
    engine.apply(&downloaded, 3).unwrap();
    assert!(
        esp_file(&node, "basalt/2.0.0/uki.efi") == v2_uki,
        "B's UKI touched"
    );
    let dirs = esp_listing(&node, "basalt");
    assert!(!dirs.contains("1.0.0"), "A's old kernel kept: {dirs}");
    assert_eq!(node.boot_control().boot_attempt().unwrap(), Some(Slot::A));
    booted(&node, &v3);

    // v3 is unhealthy: roll back to B, which boots next, its UKI and entry as they were.
    assert_eq!(engine.rollback().unwrap(), Slot::B);
    let st = node.boot_control().status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Bad);
    assert_eq!(st.slot(Slot::B).status, BootStatus::Good);
    assert!(esp_file(&node, "basalt/2.0.0/uki.efi") == v2_uki);
    booted(&node, &v2);
    assert_eq!(node.snapshot_of(Slot::B), before_b, "slot B changed");
    peer("sgdisk", "gdisk", &["-v", node.disk().to_str().unwrap()]);
}

/// A manifest signed by the release keys that lists another build's UKI (its cmdline names
/// v3's `/usr`) for v2's usr image: the signatures and every sha256 are right, the release
/// is not. The publisher refuses to make one; this one is assembled by hand from two
/// published releases.
#[test]
fn a_release_whose_uki_boots_another_usr_is_refused_before_the_slot_is_named() {
    let world = World::new();
    let node = Node::new(&world, "uki-lie", BackendKind::Bls, EspKind::Fat);
    let v2 = uki_release(&world, "2.0.0");
    let v3 = uki_release(&world, "3.0.0");

    // The publisher refuses a lying UKI outright.
    let mut liar = world.release("2.5.0", MIB);
    let lie = format!("console=ttyS0 usrhash={}", v3.root_hash);
    add_uki(&mut liar, Path::new(STUB), Some(&lie), &[&key(1), &key(2)]).unwrap();
    let err = world.publish_on(&liar, "stable", None, false).unwrap_err();
    assert!(err.to_string().contains("boots usrhash="), "{err}");

    world.publish_on(&v3, "other", None, false).unwrap();
    world.publish(&v2, Some(5));
    let anchor = std::fs::read(&world.anchor).unwrap();
    let root = TrustRoot::from_initial_envelope(&anchor).unwrap();
    let read_head = |channel: &str| {
        let path = world.repo.join(repo::head_path(channel, "x86_64").unwrap());
        verify_release(
            &std::fs::read(path).unwrap(),
            &root,
            &Policy::new(Utc::now()),
        )
        .unwrap()
        .manifest
    };
    let other = read_head("other");
    let mut forged = read_head("stable");
    let uki = other
        .artifacts_of(ArtifactKind::Uki)
        .next()
        .unwrap()
        .clone();
    for a in &mut forged.artifacts {
        if a.kind == ArtifactKind::Uki {
            *a = uki.clone();
        }
    }
    forged.sequence = 6;
    let signed = sign_release(&forged, &[&key(1), &key(2)]).unwrap();
    std::fs::write(
        world
            .repo
            .join(repo::head_path("stable", "x86_64").unwrap()),
        &signed,
    )
    .unwrap();

    let before = node.snapshot();
    let mut engine = node.engine(Box::new(world.source()));
    let c = candidate(&mut engine, "1.0.0");
    let err = engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRelease, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("boots usrhash={}", v3.root_hash))
            && text.contains(&v2.root_hash.to_hex())
            && text.contains("2.0.0")
            && text.contains(&uki.name),
        "{text}"
    );
    node.assert_safe(&before, "lying UKI");
    assert_eq!(
        node.inventory().slot(Slot::B).state,
        SlotState::Installing,
        "the slot is not named"
    );
}

#[test]
fn a_staged_uki_whose_bytes_changed_is_not_staged() {
    let world = World::new();
    let node = Node::new(&world, "uki-hash", BackendKind::Bls, EspKind::Fat);
    let v2 = uki_release(&world, "2.0.0");
    world.publish(&v2, None);
    let before = node.snapshot();
    let mut engine = node.engine(Box::new(world.source()));
    let c = candidate(&mut engine, "1.0.0");
    let downloaded = engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap();
    // Someone with write access to /var changes one byte of the staged UKI.
    let name = &v2
        .manifest
        .artifacts_of(ArtifactKind::Uki)
        .next()
        .unwrap()
        .name;
    let staged: Vec<PathBuf> = std::fs::read_dir(node.config.staging_dir())
        .unwrap()
        .map(|e| e.unwrap().path().join(name))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    let mut bytes = std::fs::read(&staged[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&staged[0], &bytes).unwrap();
    let err = engine.apply(&downloaded, 3).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IntegrityMismatch, "{err}");
    assert!(err.to_string().contains(name.as_str()), "{err}");
    node.assert_safe(&before, "changed UKI");
    assert_eq!(
        node.boot_control().status().unwrap().slot(Slot::B).status,
        BootStatus::Absent
    );
}

#[test]
fn the_gpt_priority_backend_refuses_a_uki_release_up_front() {
    let world = World::new();
    let node = Node::new(&world, "uki-gptprio", BackendKind::GptPrio, EspKind::Dir);
    let v2 = uki_release(&world, "2.0.0");
    world.publish(&v2, None);
    let before = node.snapshot();
    let mut engine = node.engine(Box::new(world.source()));
    let err = engine.check(&request()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRelease, "{err}");
    let text = err.to_string();
    assert!(text.contains("gptprio") && text.contains("2.0.0"), "{text}");
    node.assert_safe(&before, "gptprio");
    assert_eq!(node.inventory().slot(Slot::B).state, SlotState::Empty);
}
