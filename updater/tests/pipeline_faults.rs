//! A download attacked or interrupted in every way a network, a disk or an operator can:
//! for each, the typed error (stable kind), the booted slot's bytes and boot state exactly
//! as before, the inactive slot unbootable — and the next download resumes from what
//! re-verifies (HTTP-style Range from a frame boundary) to the same verified result.

#![allow(clippy::unwrap_used)]

mod common;

use basalt_disk::{BootStatus, LayoutSpec, Slot, SlotState};
use basalt_image::release::synthetic::SyntheticRelease;
use basalt_image::release::PublishReport;
use basalt_manifest::chrono::Utc;
use basalt_manifest::repo;
use basalt_updater::engine::{
    CancelFlag, Candidate, CheckOutcome, CheckRequest, Downloaded, Engine,
};
use basalt_updater::pipeline::{BackendKind, Error, ErrorKind};
use basalt_updater::source::Source;
use common::faulty::{Fault, FaultySource};
use common::{quiet, EspKind, Node, World, MIB};

struct Case {
    world: World,
    node: Node,
    v2: SyntheticRelease,
    report: PublishReport,
}

fn case(name: &str, backend: BackendKind) -> Case {
    let world = World::new();
    let node = Node::new(&world, name, backend, EspKind::Fat);
    let v2 = world.release("2.0.0", 4 * MIB);
    let report = world.publish(&v2, None);
    Case {
        world,
        node,
        v2,
        report,
    }
}

fn candidate(engine: &mut dyn Engine<Error = Error>) -> Candidate {
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    };
    match engine.check(&req).unwrap() {
        CheckOutcome::Available(c) => c,
        other => panic!("{other:?}"),
    }
}

impl Case {
    fn usr_blob(&self) -> String {
        self.report.artifacts[0].blob.to_hex()
    }

    fn download_with(
        &self,
        source: Box<dyn Source>,
        cancel: &CancelFlag,
    ) -> Result<Downloaded, Error> {
        let mut engine = self.node.engine(source);
        let c = candidate(&mut engine);
        engine.download(&c, &mut quiet(), cancel)
    }

    /// Run a faulty download, check the failure, then resume cleanly and check the result.
    fn fails_then_resumes(&self, fault: Fault, path: &str, kind: ErrorKind) -> Downloaded {
        let before = self.node.snapshot();
        let src = FaultySource::new(self.world.source()).fault(path, fault, 1);
        let e = self
            .download_with(Box::new(src), &CancelFlag::new())
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{fault:?}: {e}");
        self.node.assert_safe(&before, &format!("{fault:?}"));
        assert_eq!(self.node.state(Slot::B), SlotState::Installing, "{fault:?}");
        let d = self.resume();
        self.node
            .assert_safe(&before, &format!("{fault:?}, after the resume"));
        d
    }

    fn resume(&self) -> Downloaded {
        let d = self
            .download_with(Box::new(self.world.source()), &CancelFlag::new())
            .unwrap();
        assert_eq!(d.usr_hash, self.v2.root_hash);
        assert_eq!(self.node.state(Slot::B), SlotState::Valid);
        self.node.veritysetup_verify(Slot::B, &self.v2.root_hash);
        d
    }
}

#[test]
fn a_flipped_byte_in_a_frame_is_caught_before_decoding_and_the_retry_resumes() {
    let c = case("flip", BackendKind::Bls);
    let at = c.report.artifacts[0].compressed_size * 3 / 4;
    let d = c.fails_then_resumes(
        Fault::FlipAt(at),
        &c.usr_blob(),
        ErrorKind::IntegrityMismatch,
    );
    assert!(
        d.reused > 0,
        "nothing was kept from the first attempt: {d:?}"
    );
    assert!(
        d.fetched
            < c.report
                .artifacts
                .iter()
                .map(|a| a.compressed_size)
                .sum::<u64>()
    );
}

#[test]
fn a_dropped_connection_resumes_with_a_range_from_a_frame_boundary() {
    let c = case("drop", BackendKind::GptPrio);
    let at = c.report.artifacts[0].compressed_size / 2;
    let before = c.node.snapshot();
    let src = FaultySource::new(c.world.source()).fault(&c.usr_blob(), Fault::DropAfter(at), 1);
    let e = c
        .download_with(Box::new(src), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert!(e.to_string().contains("connection reset"), "{e}");
    c.node.assert_safe(&before, "dropped");
    let src = FaultySource::new(c.world.source());
    let log = src.log.clone();
    let mut engine = c.node.engine(Box::new(src));
    let cand = candidate(&mut engine);
    let d = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap();
    let opens = log.lock().unwrap().clone();
    let usr = opens
        .iter()
        .find(|o| o.path.ends_with(&c.usr_blob()))
        .unwrap();
    let range = usr.range.expect("the resume used a range");
    assert!(range.offset > 0 && range.offset < at, "{range:?}");
    // The range starts exactly at a frame.
    let index = basalt_manifest::FrameIndex::parse(
        &std::fs::read(
            c.world
                .repo
                .join(repo::blob_path(&c.report.artifacts[0].frame_index)),
        )
        .unwrap(),
        &cand.release.manifest.artifacts[0],
    )
    .unwrap();
    assert!(index
        .frames()
        .iter()
        .any(|f| f.compressed_offset == range.offset));
    assert_eq!(
        d.reused,
        index
            .frames()
            .iter()
            .find(|f| f.compressed_offset == range.offset)
            .unwrap()
            .offset
    );
    c.node.assert_safe(&before, "resumed");
    c.node.veritysetup_verify(Slot::B, &c.v2.root_hash);
}

#[test]
fn truncated_and_overlong_bodies_are_refused() {
    let c = case("length", BackendKind::Bls);
    let len = c.report.artifacts[0].compressed_size;
    c.fails_then_resumes(
        Fault::TruncateAt(len - 100),
        &c.usr_blob(),
        ErrorKind::LengthMismatch,
    );
    let c = case("extra", BackendKind::Bls);
    let d = c.fails_then_resumes(Fault::Extra(4096), &c.usr_blob(), ErrorKind::LengthMismatch);
    // Every frame was good: the resume re-reads them all and fetches none of the usr blob.
    assert_eq!(d.reused, c.v2.manifest.artifacts[0].size);
    // Kernel and initrd too.
    let c = case("extra-kernel", BackendKind::GptPrio);
    let kernel = c.report.artifacts[1].blob.to_hex();
    c.fails_then_resumes(Fault::Extra(1), &kernel, ErrorKind::LengthMismatch);
}

#[test]
fn missing_blobs_and_a_damaged_frame_index() {
    let c = case("missing", BackendKind::Bls);
    let initrd = c.report.artifacts[2].blob.to_hex();
    c.fails_then_resumes(Fault::NotFound, &initrd, ErrorKind::NotFound);
    let c = case("index", BackendKind::Bls);
    let index = c.report.artifacts[0].frame_index.to_hex();
    c.fails_then_resumes(Fault::FlipAt(40), &index, ErrorKind::IntegrityMismatch);
}

#[test]
fn cancel_mid_download_leaves_the_slot_unbootable_and_resumes() {
    let c = case("cancel", BackendKind::Bls);
    let before = c.node.snapshot();
    let flag = CancelFlag::new();
    let src = FaultySource::new(c.world.source())
        .with_cancel(flag.clone())
        .fault(&c.usr_blob(), Fault::CancelAfter(MIB), 1);
    let e = c.download_with(Box::new(src), &flag).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    c.node.assert_safe(&before, "cancelled");
    assert_eq!(c.node.state(Slot::B), SlotState::Installing);
    // Engine::cancel after a partial download: nothing staged, nothing to undo, A untouched.
    let mut engine = c.node.engine(Box::new(c.world.source()));
    engine.cancel().unwrap();
    c.node.assert_safe(&before, "cancel()");
    let d = c.resume();
    assert!(d.reused > 0, "{d:?}");
    // Staged, then cancelled: B withdrawn, A's boot state exactly as before (#949).
    engine.apply(&d, 3).unwrap();
    assert!(matches!(
        c.node.boot_control().status().unwrap().slot(Slot::B).status,
        BootStatus::Trying { .. }
    ));
    engine.cancel().unwrap();
    c.node.assert_safe(&before, "staged then cancelled");
    // And staged again (redo).
    engine.apply(&d, 3).unwrap();
    assert_eq!(c.node.boot_control().status().unwrap().next, Some(Slot::B));
}

#[test]
fn a_tampered_candidate_is_refused_before_any_write() {
    let c = case("tampered", BackendKind::Bls);
    let before = std::fs::read(c.node.disk()).unwrap();
    let mut engine = c.node.engine(Box::new(c.world.source()));
    let mut cand = candidate(&mut engine);
    let n = cand.envelope.len() / 2;
    cand.envelope[n] ^= 1;
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureRefused, "{e}");
    assert!(
        std::fs::read(c.node.disk()).unwrap() == before,
        "the disk was written"
    );
}

#[test]
fn refusals_before_the_first_byte() {
    // Slot too small: a node whose usr partitions hold 2 MiB.
    let world = World::new();
    let small = LayoutSpec {
        usr_size: 2 * MIB,
        ..common::spec()
    };
    let node = Node::with_spec(&world, "small", BackendKind::Bls, EspKind::Fat, &small);
    let v2 = world.release("2.0.0", 3 * MIB);
    world.publish(&v2, None);
    let disk = std::fs::read(node.disk()).unwrap();
    let mut engine = node.engine(Box::new(world.source()));
    let cand = candidate(&mut engine);
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SlotTooSmall, "{e}");
    assert!(e.to_string().contains("slot B"), "{e}");
    assert!(std::fs::read(node.disk()).unwrap() == disk, "written");
    assert!(!node.config.journal_path().exists());

    // No booted slot: the command line names no slot of this disk.
    let c = case("nobooted", BackendKind::Bls);
    std::fs::write(&c.node.config.cmdline, "console=ttyS0 root=/dev/vda2").unwrap();
    let mut engine = c.node.engine(Box::new(c.world.source()));
    let cand = candidate(&mut engine);
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoBootedSlot, "{e}");
    // ... unless basalt-init's boot.env names it.
    std::fs::write(
        &c.node.config.boot_env,
        format!(
            "BASALT_USRHASH={}\nBASALT_DISK=/dev/vda\n",
            c.node.v1.root_hash
        ),
    )
    .unwrap();
    assert_eq!(engine.node().unwrap().booted, Some(Slot::A));

    // The booted slot already runs this release.
    let w = World::new();
    let n = Node::new(&w, "same", BackendKind::Bls, EspKind::Fat);
    w.publish(&n.v1, Some(5));
    let mut engine = n.engine(Box::new(w.source()));
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(cand) = engine.check(&req).unwrap() else {
        panic!()
    };
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyInstalled, "{e}");
}

/// After an update, the booted new slot is on trial: its fallback (the old slot) must not be
/// overwritten. Once blessed, the next update goes into the old slot — whose blessed boot
/// entry is withdrawn before its first byte changes.
#[test]
fn the_fallback_slot_is_protected_until_blessed_then_withdrawn_before_writing() {
    let c = case("fallback", BackendKind::Bls);
    let d = c.resume();
    let mut engine = c.node.engine(Box::new(c.world.source()));
    engine.apply(&d, 3).unwrap();
    assert_eq!(c.node.boot_control().boot_attempt().unwrap(), Some(Slot::B));
    std::fs::write(
        &c.node.config.cmdline,
        format!("usrhash={}", c.v2.root_hash),
    )
    .unwrap();
    let v3 = c.world.release("3.0.0", 2 * MIB);
    c.world.publish(&v3, None);
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some("2.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(cand) = engine.check(&req).unwrap() else {
        panic!()
    };
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BootedSlotPending, "{e}");
    assert_eq!(
        c.node.state(Slot::A),
        SlotState::Valid,
        "the fallback was touched"
    );
    engine.mark_good().unwrap();
    // Now A (1.0.0, blessed) is the target: interrupt its download.
    assert_eq!(
        c.node.boot_control().status().unwrap().slot(Slot::A).status,
        BootStatus::Good
    );
    let before = c.node.snapshot_of(Slot::B);
    let blob = repo::blob_path(
        &cand.release.manifest.artifacts[0]
            .compression
            .as_ref()
            .unwrap()
            .compressed_sha256,
    );
    let src = FaultySource::new(c.world.source()).fault(&blob, Fault::DropAfter(MIB), 1);
    let mut engine = c.node.engine(Box::new(src));
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    c.node.assert_safe_for(Slot::B, &before, "A half-written");
    let st = c.node.boot_control().status().unwrap();
    assert_eq!(
        st.slot(Slot::A).status,
        BootStatus::Absent,
        "A's old entry is still there"
    );
    assert_eq!(c.node.state(Slot::A), SlotState::Installing);
    // Its partitions no longer carry the 1.0.0 root hash: a stale usrhash= finds nothing.
    let inv = basalt_disk::Inventory::read_path(
        c.node.disk(),
        Some(&format!("usrhash={}", c.node.v1.root_hash)),
    )
    .unwrap();
    assert_eq!(inv.booted, None);
}

#[test]
fn a_journal_for_another_release_starts_over() {
    let c = case("other", BackendKind::Bls);
    let src =
        FaultySource::new(c.world.source()).fault(&c.usr_blob(), Fault::DropAfter(2 * MIB), 1);
    c.download_with(Box::new(src), &CancelFlag::new())
        .unwrap_err();
    let v3 = c.world.release("3.0.0", 4 * MIB);
    c.world.publish(&v3, None);
    let mut engine = c.node.engine(Box::new(c.world.source()));
    let cand = candidate(&mut engine);
    assert_eq!(cand.release.manifest.version.to_string(), "3.0.0");
    let d = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap();
    assert_eq!(d.reused, 0, "frames of another release were kept");
    c.node.veritysetup_verify(Slot::B, &v3.root_hash);
    // Downloading the same release again: nothing fetched, everything re-verified.
    let again = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap();
    assert_eq!((again.fetched, again.slot), (0, Slot::B));
}

/// A tmpfs mounted for one test (we are root, as CI is), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        common::peer(
            "mount",
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_typed_and_the_download_resumes_once_space_is_freed() {
    use std::io::Write;
    let c = case("full", BackendKind::Bls);
    let mnt = c.world.dir.join("tmpfs");
    let _fs = Tmpfs::mount(&mnt, "16m");
    // Move the node's disk and state onto the small file system.
    let disk = mnt.join("disk.img");
    basalt_image::build::image::copy_sparse(c.node.disk(), &disk).unwrap();
    let mut node_config = c.node.config.clone();
    node_config.disk = disk.clone();
    node_config.state_dir = mnt.join("state");
    let node = Node {
        dir: c.node.dir.clone(),
        config: node_config,
        backend: c.node.backend,
        esp_kind: c.node.esp_kind,
        v1: c.node.v1.clone(),
    };
    // Fill it up, then leave ≈1.5 MiB: less than the 4 MiB slot write.
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 256 << 10];
        while f.write_all(&chunk).is_ok() {}
    }
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(3 * MIB / 2))
        .unwrap();
    let before = node.snapshot();
    let mut engine = node.engine(Box::new(c.world.source()));
    let cand = candidate(&mut engine);
    let e = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DiskFull, "{e}");
    node.assert_safe(&before, "disk full");
    assert_eq!(node.state(Slot::B), SlotState::Installing);
    // Space comes back: the same download resumes and completes.
    std::fs::remove_file(&filler).unwrap();
    let d = engine
        .download(&cand, &mut quiet(), &CancelFlag::new())
        .unwrap();
    assert!(d.reused > 0, "{d:?}");
    node.assert_safe(&before, "after the resume");
    node.veritysetup_verify(Slot::B, &c.v2.root_hash);
}

/// The writable root and the disk are not trusted between calls: frames the journal claims
/// are re-hashed (a damaged one is fetched again), a swapped staged kernel or a tampered
/// kept release is refused at apply, a malformed `usrhash=` is an error, not a guess.
#[test]
fn nothing_written_earlier_is_trusted_later() {
    use std::os::unix::fs::FileExt;
    let c = case("distrust", BackendKind::Bls);
    let before = c.node.snapshot();
    let src =
        FaultySource::new(c.world.source()).fault(&c.usr_blob(), Fault::DropAfter(3 * MIB), 1);
    c.download_with(Box::new(src), &CancelFlag::new())
        .unwrap_err();
    // Damage one byte of slot B's first frame (written, checkpointed, claimed by the journal).
    let inv = c.node.inventory();
    let b = inv.slot_range(Slot::B, basalt_disk::SlotPart::Data);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.node.disk())
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, b.offset + 1000).unwrap();
    byte[0] ^= 0xff;
    f.write_all_at(&byte, b.offset + 1000).unwrap();
    drop(f);
    let d = c.resume();
    assert_eq!(d.reused, 0, "a damaged frame 0 was kept: {d:?}");
    c.node.assert_safe(&before, "resumed over a damaged frame");

    // A staged kernel swapped between download and apply.
    let mut engine = c.node.engine(Box::new(c.world.source()));
    let staging = c.node.config.staging_dir();
    let dir = std::fs::read_dir(&staging)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kernel = dir.join("vmlinuz");
    let good = std::fs::read(&kernel).unwrap();
    std::fs::write(&kernel, b"#!/bin/sh\necho owned\n").unwrap();
    let e = engine.apply(&d, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::IntegrityMismatch, "{e}");
    c.node.assert_safe(&before, "swapped kernel");
    std::fs::write(&kernel, &good).unwrap();
    // A tampered kept release.
    let kept = dir.join("release.signed");
    let good_release = std::fs::read(&kept).unwrap();
    let mut bad = good_release.clone();
    let n = bad.len() / 2;
    bad[n] ^= 1;
    std::fs::write(&kept, &bad).unwrap();
    let e = engine.apply(&d, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State, "{e}");
    std::fs::write(&kept, &good_release).unwrap();
    // A journal that lies about another slot.
    let journal = c.node.config.journal_path();
    let text = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, text.replace("\"slot\": \"B\"", "\"slot\": \"A\"")).unwrap();
    let e = engine.apply(&d, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotDownloaded, "{e}");
    std::fs::write(&journal, text).unwrap();
    engine.apply(&d, 3).unwrap();

    // A malformed usrhash= on the command line: refused, never guessed.
    std::fs::write(&c.node.config.cmdline, "usrhash=not-a-hash").unwrap();
    let e = engine.node().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disk, "{e}");
    assert!(e.to_string().contains("not-a-hash"), "{e}");
}

/// A disk that silently changes one byte of what it is asked to write (bit rot, a bad
/// controller): the write "succeeds", only reading back can tell.
#[derive(Debug)]
struct RottingIo {
    disk: std::path::PathBuf,
    /// Absolute byte offset in the disk whose written value is changed.
    at: u64,
}

struct RottingDisk {
    inner: std::fs::File,
    at: u64,
}

impl std::io::Read for RottingDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl std::io::Seek for RottingDisk {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl std::io::Write for RottingDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Seek;
        let pos = self.inner.stream_position()?;
        if (pos..pos + buf.len() as u64).contains(&self.at) {
            let mut bad = buf.to_vec();
            bad[(self.at - pos) as usize] ^= 0x10;
            return self.inner.write(&bad);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl basalt_disk::gpt::DiskIo for RottingDisk {
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
}

impl basalt_updater::pipeline::NodeIo for RottingIo {
    fn open_rw(
        &self,
        path: &std::path::Path,
        create: bool,
    ) -> std::io::Result<Box<dyn basalt_updater::pipeline::io::Disk>> {
        let inner = basalt_updater::pipeline::io::open_rw_file(path, create)?;
        if path != self.disk {
            return Ok(Box::new(inner));
        }
        Ok(Box::new(RottingDisk { inner, at: self.at }))
    }
    fn write_atomic(
        &self,
        path: &std::path::Path,
        bytes: &[u8],
    ) -> Result<(), basalt_fsutil::Error> {
        basalt_fsutil::write_atomic(path, bytes, 0o644)
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        basalt_updater::pipeline::RealIo.remove_file(path)
    }
}

/// What reaches the disk is read back from it: a byte the disk changed on its way (first
/// block, middle, last data block) fails the download as a failed verification — found by
/// the read-back that runs during the download (the data's level 0 against the tree's) —
/// with the booted slot untouched and the new one unbootable; a good disk then installs.
#[test]
fn a_byte_the_disk_changes_on_write_is_caught_by_reading_the_slot_back() {
    let c = case("rot", BackendKind::Bls);
    let before = c.node.snapshot();
    let data = c
        .node
        .inventory()
        .slot_range(Slot::B, basalt_disk::SlotPart::Data);
    let data_len = c.v2.hash_offset;
    for at in [100, data_len / 2 + 7, data_len - 1] {
        let mut engine = c
            .node
            .engine(Box::new(c.world.source()))
            .with_io(std::sync::Arc::new(RottingIo {
                disk: c.node.disk().to_path_buf(),
                at: data.offset + at,
            }));
        let cand = candidate(&mut engine);
        let e = engine
            .download(&cand, &mut quiet(), &CancelFlag::new())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::VerificationFailed, "byte {at}: {e}");
        let chain = {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(x) = src {
                s.push_str(&format!(": {x}"));
                src = x.source();
            }
            s
        };
        assert!(
            chain.contains("does not match the hash tree's level 0"),
            "byte {at}: the read-back during the download should find it: {chain}"
        );
        c.node.assert_safe(&before, "a rotten byte in slot B");
        assert_eq!(c.node.state(Slot::B), SlotState::Installing);
    }
    let d = c.resume();
    assert!(d.fetched > 0, "{d:?}");
    c.node.assert_safe(&before, "after the good download");
    c.node.veritysetup_verify(Slot::B, &c.v2.root_hash);
}
