//! Adaptive installs (block reuse) end to end on the host: releases published with the real
//! publisher (block index + frame store), served by a real nginx on 127.0.0.1, installed by
//! the real engine into a disk image whose booted slot A holds 1.0.0.
//!
//! A patch release must write a slot byte-identical to a full install (the release's
//! `usr.img`) that `veritysetup verify` accepts, fetching only the frames slot A lacks (ranged
//! requests, shown in nginx's log). Every bad input — a corrupted local block, a wrong index
//! entry, a missing or truncated frame store — either still installs correctly (by fetching
//! more, or by falling back to the full stream) with the booted slot untouched; a download
//! broken off resumes where it stopped.

#![allow(clippy::unwrap_used)]

mod common;

use basalt_disk::{Slot, SlotPart};
use basalt_image::release::synthetic::{
    synthetic_release_with_data, SyntheticRelease, SyntheticSpec,
};
use basalt_image::release::PublishReport;
use basalt_manifest::adaptive::BlockIndex;
use basalt_manifest::chrono::Utc;
use basalt_manifest::{repo, sign_release, ArtifactKind, Digest, Manifest};
use basalt_tests::web::{Access, Nginx};
use basalt_updater::engine::{AdaptiveCounts, CancelFlag, CheckOutcome, Downloaded, Engine};
use basalt_updater::http::HttpConfig;
use basalt_updater::pipeline::{BackendKind, Error};
use basalt_updater::source::http::HttpSource;
use basalt_updater::source::Source;
use common::faulty::{Fault, FaultySource};
use common::{quiet, rebuilt_release, request, EspKind, Node, World, REBUILT};

const BLOCK: usize = 4096;

/// 2.0.0: slot A's 1.0.0 data with three blocks rewritten, one block inserted (everything
/// after it moves by a block) and eight new blocks at the end.
fn patch_release(world: &World, node: &Node) -> SyntheticRelease {
    let v1 = std::fs::read(node.v1.dir.join("usr.img")).unwrap();
    let mut data = v1[..node.v1.hash_offset as usize].to_vec();
    // Incompressible new content (like rebuilt code), so the frame holding it is large.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut data[10 * BLOCK..13 * BLOCK] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let inserted: Vec<u8> = (0..BLOCK).map(|i| (i * 7 % 253) as u8).collect();
    data.splice(100 * BLOCK..100 * BLOCK, inserted);
    for k in 0..8u8 {
        data.extend((0..BLOCK).map(|i| (i as u8).wrapping_mul(k + 3) ^ 0x3c));
    }
    let mut spec = SyntheticSpec::small("2.0.0", Utc::now()).unwrap();
    spec.kernel_len = 300 << 10;
    spec.initrd_len = 200 << 10;
    synthetic_release_with_data(
        &world.dir.join("release-2.0.0"),
        &spec,
        &data,
        &[&world.keys[0], &world.keys[1]],
    )
    .unwrap()
}

/// Publish slot A's 1.0.0, then the patch 2.0.0 (its frames cut against 1.0.0).
fn world_with_patch() -> (World, Node, SyntheticRelease, PublishReport) {
    let world = World::new();
    let node = Node::new(&world, "node", BackendKind::Bls, EspKind::Fat);
    world.publish(&node.v1, None);
    let v2 = patch_release(&world, &node);
    let report = world.publish(&v2, None);
    (world, node, v2, report)
}

fn download(node: &Node, source: Box<dyn Source>) -> Result<Downloaded, Error> {
    download_counted(node, source).0
}

/// [`download`], with how the engine says it installed the usr image.
fn download_counted(
    node: &Node,
    source: Box<dyn Source>,
) -> (Result<Downloaded, Error>, AdaptiveCounts) {
    let mut engine = node.engine(source);
    let CheckOutcome::Available(c) = engine.check(&request()).unwrap() else {
        panic!("no update")
    };
    let d = engine.download(&c, &mut quiet(), &CancelFlag::new());
    (d, engine.adaptive_counts())
}

fn http(nginx: &Nginx) -> Box<dyn Source> {
    Box::new(HttpSource::new(&nginx.url(), HttpConfig::default()).unwrap())
}

/// Slot B holds exactly `rel`'s usr.img (what a full install writes) and veritysetup agrees.
fn assert_installed(node: &Node, rel: &SyntheticRelease) {
    let usr = std::fs::read(rel.dir.join("usr.img")).unwrap();
    let split = rel.hash_offset as usize;
    let inv = node.inventory();
    for (part, bytes) in [
        (SlotPart::Data, &usr[..split]),
        (SlotPart::Verity, &usr[split..]),
    ] {
        let range = inv.slot_range(Slot::B, part);
        let mut got = vec![0u8; bytes.len()];
        use std::os::unix::fs::FileExt;
        std::fs::File::open(node.disk())
            .unwrap()
            .read_exact_at(&mut got, range.offset)
            .unwrap();
        assert!(got == *bytes, "slot B {part:?} differs from usr.img");
    }
    node.veritysetup_verify(Slot::B, &rel.root_hash);
}

fn usr_report(report: &PublishReport) -> &basalt_image::release::PublishedArtifact {
    report
        .artifacts
        .iter()
        .find(|a| a.name == "usr.img")
        .unwrap()
}

fn hits<'a>(log: &'a [Access], digest: &Digest) -> Vec<&'a Access> {
    log.iter()
        .filter(|l| l.request.contains(&digest.to_hex()))
        .collect()
}

#[test]
fn patch_install_fetches_only_missing_frames_and_is_byte_identical() {
    let (world, node, v2, report) = world_with_patch();
    let before = node.snapshot();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let (d, counts) = download_counted(&node, http(&nginx));
    let d = d.unwrap();
    assert_eq!(
        counts,
        AdaptiveCounts {
            installed: 1,
            ..AdaptiveCounts::default()
        }
    );
    assert_installed(&node, &v2);
    node.assert_safe(&before, "after a successful download");
    let usr = usr_report(&report);
    let adaptive = usr.adaptive.as_ref().unwrap();
    assert_eq!(adaptive.history, 1, "frames cut against 1.0.0");
    let log = nginx.access_log().unwrap();
    // The full stream of usr.img was never asked for.
    assert!(hits(&log, &usr.blob).is_empty(), "{log:?}");
    // The frame store: ranged requests only, 206, together the frames with new blocks.
    let store = hits(&log, &adaptive.frame_store);
    assert!(!store.is_empty());
    assert!(
        store.iter().all(|a| a.status == 206 && a.range.is_some()),
        "{store:?}"
    );
    let served: u64 = store.iter().map(|a| a.body_bytes).sum();
    // Changed: 3 rewritten + 1 inserted + 8 appended data blocks, the superblock (salt) and
    // the statement block (signature): a handful of frames, a small part of the store.
    assert!(
        served * 5 < adaptive.frame_store_size,
        "served {served} of a {}-byte store",
        adaptive.frame_store_size
    );
    let index_hits = hits(&log, &adaptive.block_index);
    assert_eq!(index_hits.len(), 1);
    let usr_fetched = served + adaptive.block_index_size;
    let others: u64 = report
        .artifacts
        .iter()
        .filter(|a| a.name != "usr.img")
        .map(|a| a.compressed_size)
        .sum();
    assert_eq!(d.fetched, usr_fetched + others, "fetched bytes reported");
    // What `basalt release inspect --repo` predicts is what the node fetched.
    let expected = basalt_image::release::adaptive::expected_downloads(
        &basalt_image::release::Repo::read_only(&world.repo),
        "stable",
        "x86_64",
        &v2.manifest.version,
    )
    .unwrap()
    .unwrap();
    assert_eq!(expected.len(), 1);
    assert_eq!(expected[0].from_version.to_string(), "1.0.0");
    assert_eq!(expected[0].adaptive_bytes, usr_fetched);
    assert_eq!(expected[0].full_bytes, usr.compressed_size);
    // Everything not fetched was copied from slot A (the tree is computed, not counted).
    let data_blocks = v2.hash_offset / BLOCK as u64;
    assert!(d.reused >= (data_blocks - 12) * BLOCK as u64, "{d:?}");
    println!(
        "adaptive: fetched {usr_fetched} bytes for usr.img ({} compressed as a stream), reused {}",
        usr.compressed_size, d.reused
    );
    // And it stages like any download.
    let mut engine = node.engine(http(&nginx));
    engine.apply(&d, 3).unwrap();
    assert_eq!(node.boot_control().status().unwrap().next, Some(Slot::B));
}

#[test]
fn a_corrupted_local_block_is_never_copied() {
    let (world, node, v2, report) = world_with_patch();
    // Damage block 50 of slot A's data (a block 2.0.0 shares): it no longer matches A's tree.
    let inv = node.inventory();
    let a = inv.slot_range(Slot::A, SlotPart::Data);
    use std::os::unix::fs::FileExt;
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(node.disk())
        .unwrap();
    disk.write_all_at(b"corrupt", a.offset + 50 * BLOCK as u64 + 100)
        .unwrap();
    drop(disk);
    let before = node.snapshot();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    download(&node, http(&nginx)).unwrap();
    assert_installed(&node, &v2);
    node.assert_safe(&before, "after installing past a bad local block");
    // The frame holding block 50 came from the store, the full stream was not needed.
    let usr = usr_report(&report);
    let log = nginx.access_log().unwrap();
    assert!(hits(&log, &usr.blob).is_empty());
    let index_bytes = std::fs::read(
        world
            .repo
            .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().block_index)),
    )
    .unwrap();
    let manifest = head_manifest(&world);
    let artifact = manifest.artifacts_of(ArtifactKind::Usr).next().unwrap();
    let adaptive = artifact
        .compression
        .as_ref()
        .unwrap()
        .adaptive
        .as_ref()
        .unwrap();
    let index = BlockIndex::parse(&index_bytes, artifact, adaptive.frame_store.size).unwrap();
    let frame = index
        .frames()
        .iter()
        .find(|f| (f.first_block..f.end_block()).contains(&50))
        .unwrap();
    let covers = |r: &str| {
        let Some((a, b)) = r.strip_prefix("bytes=").and_then(|r| r.split_once('-')) else {
            return false;
        };
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        a <= frame.compressed_offset && b + 1 >= frame.compressed_end()
    };
    assert!(
        log.iter().any(|l| l.range.as_deref().is_some_and(covers)),
        "no ranged request for the frame of block 50: {log:?}"
    );
}

fn head_manifest(world: &World) -> Manifest {
    let bytes = std::fs::read(world.repo.join("channels/stable/x86_64/head.signed")).unwrap();
    let env = basalt_manifest::Envelope::from_json(
        &bytes,
        basalt_manifest::MAX_RELEASE_BYTES,
        basalt_manifest::Document::Release,
    )
    .unwrap();
    Manifest::from_json(&env.payload).unwrap()
}

/// Re-sign the head after `edit` changed its manifest (a publisher that got it wrong).
fn republish_head(world: &World, edit: impl FnOnce(&mut Manifest)) {
    let mut m = head_manifest(world);
    edit(&mut m);
    m.sequence += 1;
    let signed = sign_release(&m, &[&world.keys[0], &world.keys[1]]).unwrap();
    std::fs::write(
        world.repo.join("channels/stable/x86_64/head.signed"),
        signed,
    )
    .unwrap();
}

/// Store `index` as the head's block index and re-sign the head (a publisher that got the
/// index wrong).
fn republish_index(world: &World, index: &[u8]) {
    let digest = {
        let d = ring::digest::digest(&ring::digest::SHA256, index);
        Digest(d.as_ref().try_into().unwrap())
    };
    std::fs::write(world.repo.join(repo::blob_path(&digest)), index).unwrap();
    republish_head(world, |m| {
        let a = m
            .artifacts
            .iter_mut()
            .find(|a| a.name == "usr.img")
            .unwrap();
        a.compression
            .as_mut()
            .unwrap()
            .adaptive
            .as_mut()
            .unwrap()
            .block_index
            .sha256 = digest;
    });
}

/// The adaptive path fails, the full stream installs the release: checked by the bytes, the
/// booted slot and the log (the full usr stream was fetched).
fn assert_falls_back(world: &World, node: &Node, v2: &SyntheticRelease, usr_blob: &Digest) {
    let before = node.snapshot();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let (d, counts) = download_counted(node, http(&nginx));
    let d = d.unwrap();
    assert_installed(node, v2);
    node.assert_safe(&before, "after a fallback");
    // What the agent's metrics count (basalt_updater_adaptive_installs_total).
    assert_eq!(
        counts,
        AdaptiveCounts {
            fell_back: 1,
            ..AdaptiveCounts::default()
        }
    );
    let log = nginx.access_log().unwrap();
    let full = hits(&log, usr_blob);
    assert_eq!(full.len(), 1, "{log:?}");
    assert_eq!(full[0].status, 200);
    assert!(d.fetched >= full[0].body_bytes);
}

#[test]
fn a_wrong_index_entry_falls_back_to_the_full_stream() {
    let (world, node, v2, report) = world_with_patch();
    let usr = usr_report(&report);
    // Say block 20 holds what block 30 holds (both in slot A): the node copies the wrong
    // block, the written slot does not hash to the signed sha256 → the full stream.
    let mut bad = std::fs::read(
        world
            .repo
            .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().block_index)),
    )
    .unwrap();
    let (at20, at30) = (24 + 8 * 20, 24 + 8 * 30);
    let h30 = bad[at30..at30 + 8].to_vec();
    bad[at20..at20 + 8].copy_from_slice(&h30);
    republish_index(&world, &bad);
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_missing_frame_store_falls_back_to_the_full_stream() {
    let (world, node, v2, report) = world_with_patch();
    let usr = usr_report(&report);
    let store = world
        .repo
        .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().frame_store));
    std::fs::remove_file(store).unwrap();
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_truncated_frame_store_falls_back_to_the_full_stream() {
    let (world, node, v2, report) = world_with_patch();
    let usr = usr_report(&report);
    let store = world
        .repo
        .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().frame_store));
    let len = std::fs::metadata(&store).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_corrupt_frame_falls_back_to_the_full_stream() {
    let (world, node, v2, report) = world_with_patch();
    let usr = usr_report(&report);
    let store = world
        .repo
        .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().frame_store));
    // Flip a byte of the last frame (the statement block: always fetched).
    let len = std::fs::metadata(&store).unwrap().len();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&store)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len - 3).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], len - 3).unwrap();
    drop(f);
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_broken_off_download_resumes_after_the_frames_it_wrote() {
    let (world, node, v2, report) = world_with_patch();
    let usr = usr_report(&report);
    let adaptive = usr.adaptive.as_ref().unwrap();
    let store_rel = repo::blob_path(&adaptive.frame_store);
    let before = node.snapshot();
    // Small checkpoints so frames are recorded; the first ranged request of the frame store
    // breaks off after 100 bytes (inside the frame of the rewritten blocks 10..13).
    let mut node_small = node;
    node_small.config.checkpoint_bytes = 4096;
    let flaky = FaultySource::new(world.source()).fault(&store_rel, Fault::DropAfter(100), 1);
    let log = flaky.log.clone();
    let e = download(&node_small, Box::new(flaky)).unwrap_err();
    assert!(!matches!(e, Error::Cancelled { .. }), "{e}");
    node_small.assert_safe(&before, "after the broken-off download");
    let first: Vec<_> = log.lock().unwrap().clone();
    assert!(first.iter().any(|o| o.path == store_rel && o.faulted));
    // The journal holds the frames copied before the break (blocks 0..10 at least).
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node_small.config.journal_path()).unwrap()).unwrap();
    let done = journal["frames_done"]["usr.img+adaptive"]
        .as_u64()
        .unwrap_or(0);
    assert!(done >= 1, "{journal}");
    // The retry: no full stream, and the store is read from where the first attempt stopped
    // or later (never from a frame the journal already holds).
    let again = FaultySource::new(world.source());
    let log2 = again.log.clone();
    download(&node_small, Box::new(again)).unwrap();
    assert_installed(&node_small, &v2);
    let opens = log2.lock().unwrap().clone();
    assert!(
        !opens.iter().any(|o| o.path == repo::blob_path(&usr.blob)),
        "fell back to the full stream: {opens:?}"
    );
    let first_range = first
        .iter()
        .find(|o| o.path == store_rel)
        .and_then(|o| o.range)
        .unwrap();
    let retry_first = opens
        .iter()
        .find(|o| o.path == store_rel)
        .and_then(|o| o.range)
        .unwrap();
    assert!(
        retry_first.offset >= first_range.offset,
        "{first_range:?} {retry_first:?}"
    );
}

// ---- Binary deltas (issue 12: a rebuilt binary changes nearly every block) ----

/// Publish slot A's 1.0.0, then the rebuilt 2.0.0 (frames and deltas made against 1.0.0).
fn world_with_rebuilt() -> (World, Node, SyntheticRelease, PublishReport) {
    let world = World::new();
    let node = Node::new(&world, "node", BackendKind::Bls, EspKind::Fat);
    world.publish(&node.v1, None);
    let v2 = rebuilt_release(&world, &node, "2.0.0");
    let report = world.publish(&v2, None);
    (world, node, v2, report)
}

/// The published block index of the head release.
fn head_index(world: &World) -> BlockIndex {
    let manifest = head_manifest(world);
    let artifact = manifest.artifacts_of(ArtifactKind::Usr).next().unwrap();
    let refs = artifact
        .compression
        .as_ref()
        .unwrap()
        .adaptive
        .as_ref()
        .unwrap();
    let bytes = std::fs::read(world.repo.join(repo::blob_path(&refs.block_index.sha256))).unwrap();
    BlockIndex::parse(&bytes, artifact, refs.frame_store.size).unwrap()
}

fn range_of(a: &Access) -> Option<(u64, u64)> {
    let (x, y) = a
        .range
        .as_deref()?
        .strip_prefix("bytes=")?
        .split_once('-')?;
    Some((x.parse().ok()?, y.parse::<u64>().ok()? + 1))
}

#[test]
fn a_rebuilt_binary_comes_as_a_delta_and_installs_byte_identical() {
    let (world, node, v2, report) = world_with_rebuilt();
    let usr = usr_report(&report);
    let adaptive = usr.adaptive.as_ref().unwrap();
    assert!(adaptive.deltas >= 1, "{adaptive:?}");
    let index = head_index(&world);
    let d = index.deltas()[0];
    assert_eq!(d.from_root, node.v1.root_hash.0, "the delta is from 1.0.0");
    assert!(d.first_block <= REBUILT.start as u64 && d.end_block() >= REBUILT.end as u64);
    // What the frames of the rebuilt blocks would cost, against the delta.
    let frames_bytes: u64 = index
        .frames()
        .iter()
        .filter(|f| f.first_block >= d.first_block && f.end_block() <= d.end_block())
        .map(|f| u64::from(f.compressed_len))
        .sum();
    assert!(
        u64::from(d.compressed_len) * 20 < frames_bytes,
        "delta {} bytes for {frames_bytes} bytes of frames",
        d.compressed_len
    );
    let before = node.snapshot();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    let (got, counts) = download_counted(&node, http(&nginx));
    let got = got.unwrap();
    assert_eq!(
        counts,
        AdaptiveCounts {
            installed: 1,
            ..AdaptiveCounts::default()
        }
    );
    assert_installed(&node, &v2);
    node.assert_safe(&before, "after a delta install");
    let log = nginx.access_log().unwrap();
    assert!(hits(&log, &usr.blob).is_empty(), "{log:?}");
    let store = hits(&log, &adaptive.frame_store);
    // The delta came in one ranged request of exactly its bytes; no frame of the rebuilt
    // blocks was fetched.
    assert!(
        store
            .iter()
            .any(|a| range_of(a) == Some((d.compressed_offset, d.compressed_end()))),
        "{store:?}"
    );
    for a in &store {
        let (x, y) = range_of(a).unwrap();
        for f in index.frames() {
            if f.first_block >= d.first_block && f.end_block() <= d.end_block() {
                assert!(
                    y <= f.compressed_offset || x >= f.compressed_end(),
                    "frame at block {} fetched: {a:?}",
                    f.first_block
                );
            }
        }
    }
    let served: u64 = store.iter().map(|a| a.body_bytes).sum();
    let expected = basalt_image::release::adaptive::expected_downloads(
        &basalt_image::release::Repo::read_only(&world.repo),
        "stable",
        "x86_64",
        &v2.manifest.version,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        expected[0].adaptive_bytes,
        served + adaptive.block_index_size
    );
    let others: u64 = report
        .artifacts
        .iter()
        .filter(|a| a.name != "usr.img")
        .map(|a| a.compressed_size)
        .sum();
    assert_eq!(got.fetched, served + adaptive.block_index_size + others);
    println!(
        "delta: {} bytes instead of {frames_bytes} bytes of frames; usr.img fetched {} of {}",
        d.compressed_len,
        served + adaptive.block_index_size,
        usr.compressed_size
    );
}

#[test]
fn a_delta_whose_reference_the_booted_slot_lacks_fetches_its_frames() {
    let (world, node, v2, report) = world_with_rebuilt();
    let index = head_index(&world);
    let d = index.deltas()[0];
    // Damage a block of slot A inside the delta's reference: the reference no longer has
    // its digest (and the block no longer matches A's tree).
    let inv = node.inventory();
    let a = inv.slot_range(Slot::A, SlotPart::Data);
    use std::os::unix::fs::FileExt;
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(node.disk())
        .unwrap();
    disk.write_all_at(
        b"corrupt",
        a.offset + (d.ref_first_block + 7) * BLOCK as u64,
    )
    .unwrap();
    drop(disk);
    let before = node.snapshot();
    let nginx = Nginx::start(&world.dir.join("nginx"), &world.repo).unwrap();
    download(&node, http(&nginx)).unwrap();
    assert_installed(&node, &v2);
    node.assert_safe(&before, "after a delta whose reference was damaged");
    let usr = usr_report(&report);
    let log = nginx.access_log().unwrap();
    assert!(hits(&log, &usr.blob).is_empty(), "no full stream: {log:?}");
    let store = hits(&log, &usr.adaptive.as_ref().unwrap().frame_store);
    assert!(
        !store
            .iter()
            .any(|a| range_of(a).is_some_and(|(x, _)| x >= d.compressed_offset)),
        "the delta was fetched: {store:?}"
    );
    let first = index.frame_at(d.first_block).unwrap();
    let f = index.frames()[first];
    assert!(
        store.iter().any(|a| range_of(a)
            .is_some_and(|(x, y)| x <= f.compressed_offset && y >= f.compressed_end())),
        "the delta's frames were not fetched: {store:?}"
    );
}

#[test]
fn a_corrupt_delta_falls_back_to_the_full_stream() {
    let (world, node, v2, report) = world_with_rebuilt();
    let usr = usr_report(&report);
    let d = head_index(&world).deltas()[0];
    let store = world
        .repo
        .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().frame_store));
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&store)
        .unwrap();
    let at = d.compressed_offset + u64::from(d.compressed_len) / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_truncated_delta_falls_back_to_the_full_stream() {
    let (world, node, v2, report) = world_with_rebuilt();
    let usr = usr_report(&report);
    let index = head_index(&world);
    // The deltas are the store's last bytes: cut into the last one.
    let last = index.deltas().last().unwrap();
    assert_eq!(last.compressed_end(), index.store_size());
    let store = world
        .repo
        .join(repo::blob_path(&usr.adaptive.as_ref().unwrap().frame_store));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    f.set_len(last.compressed_offset + u64::from(last.compressed_len) / 2)
        .unwrap();
    drop(f);
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_delta_that_decodes_to_blocks_the_index_does_not_name_falls_back() {
    let (world, node, v2, report) = world_with_rebuilt();
    let usr = usr_report(&report);
    let refs = usr.adaptive.as_ref().unwrap();
    let d = head_index(&world).deltas()[0];
    // The index claims another hash for a block the delta rebuilds: the decoded block does
    // not match it, so the whole release comes from the full stream.
    let mut bad = std::fs::read(world.repo.join(repo::blob_path(&refs.block_index))).unwrap();
    let at = 24 + 8 * (d.first_block as usize + 5);
    bad[at] ^= 0xff;
    republish_index(&world, &bad);
    assert_falls_back(&world, &node, &v2, &usr.blob);
}

#[test]
fn a_delta_broken_off_resumes_and_is_used_again() {
    let (world, node, v2, report) = world_with_rebuilt();
    let usr = usr_report(&report);
    let store_rel = repo::blob_path(&usr.adaptive.as_ref().unwrap().frame_store);
    let d = head_index(&world).deltas()[0];
    let before = node.snapshot();
    let mut node_small = node;
    node_small.config.checkpoint_bytes = 4096;
    // The first request of the store is the delta's: it breaks off after 10 bytes.
    let flaky = FaultySource::new(world.source()).fault(&store_rel, Fault::DropAfter(10), 1);
    let log = flaky.log.clone();
    let e = download(&node_small, Box::new(flaky)).unwrap_err();
    assert!(matches!(e, Error::Fetch { .. }), "{e}");
    node_small.assert_safe(&before, "after the broken-off delta");
    let first = log.lock().unwrap().clone();
    let broken = first.iter().find(|o| o.path == store_rel).unwrap();
    assert!(broken.faulted);
    assert_eq!(broken.range.unwrap().offset, d.compressed_offset);
    // The blocks copied before the delta are journaled.
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node_small.config.journal_path()).unwrap()).unwrap();
    assert!(
        journal["frames_done"]["usr.img+adaptive"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    let again = FaultySource::new(world.source());
    let log2 = again.log.clone();
    download(&node_small, Box::new(again)).unwrap();
    assert_installed(&node_small, &v2);
    let opens = log2.lock().unwrap().clone();
    assert!(!opens.iter().any(|o| o.path == repo::blob_path(&usr.blob)));
    assert!(
        opens.iter().any(
            |o| o.path == store_rel && o.range.is_some_and(|r| r.offset == d.compressed_offset)
        ),
        "the retry did not use the delta: {opens:?}"
    );
}
