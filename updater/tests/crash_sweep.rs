//! Crash sweep of a whole update (check → download → apply): every write the engine makes —
//! slot data and verity, GPT tables, state files (journal, kept release), staged kernel and
//! initrd or the staged UKI, the release's system extension (its frames in the staging
//! folder, the renames that publish its set into the store), ESP files and entry renames,
//! and an adaptive install's copied blocks, fetched frames and binary delta — is
//! counted through a
//! fault-injecting `NodeIo`. For
//! each write point the update is run again from the same start and *killed* there (the
//! write does not happen, and nothing after it), and separately the write is *torn* (half of
//! it lands). Then:
//!
//! 1. power-loss check: on a copy of the disk and ESP, the boot loader's next choice
//!    (`BootControl::boot_attempt`) is a slot holding a named image whose bytes verify
//!    against its root hash (and, on BLS, whose entry's `usrhash=` is that hash and whose
//!    kernel — or unified kernel image, for a release that ships one — on the ESP is
//!    complete);
//! 2. restart: a fresh engine with real I/O runs the update again, and the disk image, the
//!    ESP and the journal end byte-identical to an uninterrupted run.
//!
//! `cargo test` runs a reduced sweep (every 4th point); `cargo xtask crash-sweep` sets
//! `BASALT_CRASH_SWEEP=full` for all of them (the report prints the count).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use basalt_disk::bls::entry::LoaderType;
use basalt_disk::esp::EspDirEntry;
use basalt_disk::gpt::{DiskIo, Guid};
use basalt_disk::{
    BlsBackend, BootControl, DirEsp, Esp, GptPrio, Inventory, LayoutSpec, Slot, SlotPart, SlotState,
};
use basalt_image::release::synthetic::SyntheticRelease;
use basalt_manifest::chrono::Utc;
use basalt_manifest::ArtifactKind;
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine};
use basalt_updater::pipeline::io::{BoxedEsp, Disk};
use basalt_updater::pipeline::{BackendKind, NodeEngine, NodeIo};
use common::{quiet, EspKind, Node, World, MIB};

/// What happens at the chosen write point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// The write does not happen; the process is gone.
    Kill,
    /// Half of the write lands; the process is gone.
    Tear,
}

#[derive(Debug, Default)]
struct Counter {
    n: AtomicUsize,
    at: Option<(usize, Crash)>,
    dead: AtomicBool,
    kinds: Mutex<Vec<&'static str>>,
}

enum Act {
    Go,
    Crash(Crash),
    Dead,
}

impl Counter {
    fn point(&self, what: &'static str) -> Act {
        if self.dead.load(Ordering::SeqCst) {
            return Act::Dead;
        }
        let i = self.n.fetch_add(1, Ordering::SeqCst);
        self.kinds.lock().unwrap().push(what);
        match self.at {
            Some((k, crash)) if k == i => {
                self.dead.store(true, Ordering::SeqCst);
                Act::Crash(crash)
            }
            _ => Act::Go,
        }
    }
}

fn killed() -> io::Error {
    io::Error::other("killed by the crash sweep")
}

#[derive(Debug)]
struct FaultIo(Arc<Counter>);

struct FaultDisk {
    inner: std::fs::File,
    c: Arc<Counter>,
}

impl Read for FaultDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Seek for FaultDisk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl Write for FaultDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.c.point("disk write") {
            Act::Go => self.inner.write(buf),
            Act::Crash(Crash::Kill) | Act::Dead => Err(killed()),
            Act::Crash(Crash::Tear) => {
                self.inner.write_all(&buf[..buf.len() / 2])?;
                Err(killed())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl DiskIo for FaultDisk {
    fn sync_data(&mut self) -> io::Result<()> {
        if self.c.dead.load(Ordering::SeqCst) {
            return Err(killed());
        }
        self.inner.sync_data()
    }
}

struct FaultEsp {
    inner: BoxedEsp,
    c: Arc<Counter>,
}

impl FaultEsp {
    fn gate(&self, what: &'static str) -> Result<(), basalt_disk::Error> {
        match self.c.point(what) {
            Act::Go => Ok(()),
            _ => Err(basalt_disk::Error::EspIo {
                op: what,
                path: String::new(),
                source: killed(),
            }),
        }
    }
}

impl Esp for FaultEsp {
    fn list(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>, basalt_disk::Error> {
        self.inner.list(dir)
    }
    fn read(&self, path: &str) -> Result<Vec<u8>, basalt_disk::Error> {
        self.inner.read(path)
    }
    fn exists(&self, path: &str) -> Result<bool, basalt_disk::Error> {
        self.inner.exists(path)
    }
    fn free_space(&self) -> Result<u64, basalt_disk::Error> {
        self.inner.free_space()
    }
    fn create_dir(&mut self, path: &str) -> Result<(), basalt_disk::Error> {
        if self.inner.exists(path)? {
            return Ok(());
        }
        self.gate("esp mkdir")?;
        self.inner.create_dir(path)
    }
    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), basalt_disk::Error> {
        match self.c.point("esp write") {
            Act::Go => self.inner.write_new(path, data),
            Act::Crash(Crash::Tear) => {
                self.inner.write_new(path, &data[..data.len() / 2])?;
                Err(basalt_disk::Error::EspIo {
                    op: "write",
                    path: path.into(),
                    source: killed(),
                })
            }
            _ => Err(basalt_disk::Error::EspIo {
                op: "write",
                path: path.into(),
                source: killed(),
            }),
        }
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), basalt_disk::Error> {
        self.gate("esp rename")?;
        self.inner.rename(from, to)
    }
    fn remove(&mut self, path: &str) -> Result<(), basalt_disk::Error> {
        if !self.inner.exists(path)? {
            return Ok(());
        }
        self.gate("esp remove")?;
        self.inner.remove(path)
    }
}

impl NodeIo for FaultIo {
    fn open_rw(&self, path: &Path, create: bool) -> io::Result<Box<dyn Disk>> {
        if self.0.dead.load(Ordering::SeqCst) {
            return Err(killed());
        }
        let inner = basalt_updater::pipeline::io::open_rw_file(path, create)?;
        Ok(Box::new(FaultDisk {
            inner,
            c: self.0.clone(),
        }))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), basalt_fsutil::Error> {
        let fail = |op| basalt_fsutil::Error {
            op,
            path: path.to_path_buf(),
            source: killed(),
        };
        match self.0.point("state file") {
            Act::Go => basalt_fsutil::write_atomic(path, bytes, 0o644),
            Act::Crash(Crash::Tear) => {
                // The temporary holds half the bytes; the rename never happened.
                std::fs::write(basalt_fsutil::temp_path(path), &bytes[..bytes.len() / 2]).unwrap();
                Err(fail("write"))
            }
            _ => Err(fail("create")),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        match self.0.point("remove") {
            Act::Go => std::fs::remove_file(path),
            _ => Err(killed()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self.0.point("rename") {
            Act::Go => std::fs::rename(from, to),
            _ => Err(killed()),
        }
    }

    fn wrap_esp(&self, esp: BoxedEsp) -> BoxedEsp {
        BoxedEsp(Box::new(FaultEsp {
            inner: esp,
            c: self.0.clone(),
        }))
    }
}

/// Deterministic scratch UUIDs, so every replay issues the same writes.
fn guids() -> impl FnMut() -> Result<[Guid; 2], basalt_updater::pipeline::Error> + Send {
    let mut n = 0u8;
    move || {
        n = n.wrapping_add(2);
        Ok([Guid([n; 16]), Guid([n.wrapping_add(1); 16])])
    }
}

/// The sweep's small disk: 12 MiB, usr 2 MiB, verity 256 KiB; ESP as a folder.
fn small_spec() -> LayoutSpec {
    LayoutSpec {
        disk_size: 12 * MIB,
        esp_size: 2 * MIB,
        usr_size: 2 * MIB,
        verity_size: 256 << 10,
        slot_reserve: 256 << 10,
        root_size: None,
        align: 256 << 10,
    }
}

/// One scenario: a node folder (disk, ESP folder, state), copied fresh for every point.
struct Scenario {
    name: &'static str,
    world: World,
    node: Node,
    /// The node folder as it is before the update.
    base: PathBuf,
    releases: Vec<SyntheticRelease>,
    booted: Slot,
}

fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_name() == "disk.img" {
            basalt_image::build::image::copy_sparse(&e.path(), &dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A temporary of `basalt_fsutil::write_atomic` (`.NAME.tmp-PID-SEQ`): a torn write leaves
/// one behind. Since temporaries are named per write (fsutil, main a404d64) a restart no
/// longer overwrites it; it never replaces anything, so the comparison skips it (the
/// leftover itself is reported to the lead: nothing removes it yet).
fn is_torn_temporary(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
}

/// Every file under `root` (except the disk image) with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            if is_torn_temporary(&e.file_name()) {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(root, &e.path(), out);
            } else if rel != Path::new("disk.img") && !rel.ends_with("cmdline") {
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A world on tmpfs when there is one: the sweep replays hundreds of updates, and their
/// fsyncs (which the kill model does not need) would dominate on a real disk.
fn world_in_shm() -> World {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        World::new_in(shm)
    } else {
        World::new()
    }
}

impl Scenario {
    fn new(name: &'static str, backend: BackendKind) -> Scenario {
        let mut world = world_in_shm();
        world.frame_len = 64 << 10;
        let mut node = Node::with_spec(&world, name, backend, EspKind::Dir, &small_spec());
        node.config.checkpoint_bytes = 128 << 10;
        let v2 = small_release(&world, "2.0.0");
        world.publish(&v2, None);
        let base = world.dir.join(format!("{name}-base"));
        copy_dir(&node.dir, &base);
        let v1 = node.v1.clone();
        Scenario {
            name,
            world,
            node,
            base,
            releases: vec![v1, v2],
            booted: Slot::A,
        }
    }

    /// The node runs 2.0.0 from B (blessed); 3.0.0 goes into A, whose blessed 1.0.0 entry
    /// must be withdrawn first.
    fn over_the_fallback(name: &'static str) -> Scenario {
        let mut s = Scenario::new(name, BackendKind::Bls);
        run_update(&s.node, Arc::new(basalt_updater::pipeline::RealIo)).unwrap();
        let v2 = s.releases[1].clone();
        s.node.boot_control().boot_attempt().unwrap();
        std::fs::write(&s.node.config.cmdline, format!("usrhash={}", v2.root_hash)).unwrap();
        s.engine(Arc::new(basalt_updater::pipeline::RealIo))
            .mark_good()
            .unwrap();
        let v3 = small_release(&s.world, "3.0.0");
        s.world.publish(&v3, None);
        s.releases.push(v3);
        s.booted = Slot::B;
        copy_dir(&s.node.dir, &s.base);
        s
    }

    /// As [`Scenario::new`] on BLS, 2.0.0 shipping a unified kernel image: the staged UKI
    /// and its `efi` entry are the new writes.
    fn uki(name: &'static str) -> Scenario {
        let mut s = Scenario::new(name, BackendKind::Bls);
        let mut v2 = small_release(&s.world, "2.1.0");
        with_uki(&s.world, &mut v2);
        s.world.publish(&v2, None);
        s.releases.push(v2);
        copy_dir(&s.node.dir, &s.base);
        s
    }

    /// 2.1.0 (UKI) blessed in B; 3.0.0 (UKI) goes into A over its blessed loose 1.0.0 entry.
    fn uki_over_the_fallback(name: &'static str) -> Scenario {
        let mut s = Scenario::uki(name);
        run_update(&s.node, Arc::new(basalt_updater::pipeline::RealIo)).unwrap();
        let v2 = s.releases.last().unwrap().clone();
        s.node.boot_control().boot_attempt().unwrap();
        std::fs::write(&s.node.config.cmdline, format!("usrhash={}", v2.root_hash)).unwrap();
        s.engine(Arc::new(basalt_updater::pipeline::RealIo))
            .mark_good()
            .unwrap();
        let mut v3 = small_release(&s.world, "3.0.0");
        with_uki(&s.world, &mut v3);
        s.world.publish(&v3, None);
        s.releases.push(v3);
        s.booted = Slot::B;
        copy_dir(&s.node.dir, &s.base);
        s
    }

    /// 1.0.0 and then 2.0.0 published: 2.0.0 is slot A's data with a "rebuilt binary"
    /// ([`common::rebuilt_release`]), so the update is an adaptive install that copies
    /// blocks, rebuilds the binary from a delta against slot A and fetches a few frames; its
    /// journal checkpoints are small so crashes land between them (issue 12: a kill at any
    /// point resumes).
    fn adaptive(name: &'static str) -> Scenario {
        let world = world_in_shm();
        let mut node = Node::with_spec(&world, name, BackendKind::Bls, EspKind::Dir, &small_spec());
        node.config.checkpoint_bytes = 96 << 10;
        world.publish(&node.v1, None);
        let v2 = common::rebuilt_release(&world, &node, "2.0.0");
        world.publish(&v2, None);
        let base = world.dir.join(format!("{name}-base"));
        copy_dir(&node.dir, &base);
        let v1 = node.v1.clone();
        let s = Scenario {
            name,
            world,
            node,
            base,
            releases: vec![v1, v2],
            booted: Slot::A,
        };
        // The sweep must exercise the adaptive path (a fallback writes the same bytes).
        let mut engine = s.engine(Arc::new(basalt_updater::pipeline::RealIo));
        let req = CheckRequest {
            now: Utc::now(),
            installed_version: None,
            last_seen: None,
            allow_downgrade: false,
        };
        let CheckOutcome::Available(c) = engine.check(&req).unwrap() else {
            panic!("no update")
        };
        engine
            .download(&c, &mut quiet(), &CancelFlag::new())
            .unwrap();
        assert_eq!(
            engine.adaptive_counts().installed,
            1,
            "not installed adaptively"
        );
        s.reset();
        s
    }

    /// The node as before the update, with a download of 2.0.0 interrupted half-way.
    fn half_downloaded(name: &'static str) -> Scenario {
        let s = Scenario::new(name, BackendKind::GptPrio);
        let c = Arc::new(Counter {
            at: Some((14, Crash::Kill)),
            ..Counter::default()
        });
        assert!(run_update(&s.node, Arc::new(FaultIo(c))).is_err());
        assert_eq!(
            s.node.inventory().slot(Slot::B).state,
            SlotState::Installing
        );
        copy_dir(&s.node.dir, &s.base);
        s
    }

    fn engine(&self, io: Arc<dyn NodeIo>) -> NodeEngine {
        self.node
            .engine(Box::new(self.world.source()))
            .with_io(io)
            .with_guids(guids())
    }

    fn reset(&self) {
        copy_dir(&self.base, &self.node.dir);
    }
}

/// A small system extension `tools` for `version` (so the sweep covers staging it into the
/// store: its frames, the publish renames).
fn small_extension(world: &World, version: &str) -> PathBuf {
    use basalt_image::sysext::{build, Source, SysextSpec};
    let src = world.dir.join(format!("tools-src-{version}"));
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(
        src.join("usr/bin/tools-version"),
        format!("tools {version}\n"),
    )
    .unwrap();
    build(
        &SysextSpec {
            name: "tools".into(),
            version: version.parse().unwrap(),
            os: "basalt".into(),
            sysext_level: Some("1".into()),
            version_id: None,
            architecture: None,
            source: Source::Tree(src),
        },
        &[&world.keys[0], &world.keys[1]],
        &world.dir.join(format!("tools-{version}")),
        &world.dir.join("debs"),
        None,
    )
    .unwrap()
    .path
}

fn small_release(world: &World, version: &str) -> SyntheticRelease {
    let mut spec =
        basalt_image::release::synthetic::SyntheticSpec::small(version, Utc::now()).unwrap();
    spec.usr_len = 512 << 10;
    spec.kernel_len = 48 << 10;
    spec.initrd_len = 40 << 10;
    spec.sysext_level = Some("1".into());
    spec.extensions = vec![small_extension(world, version)];
    basalt_image::release::synthetic::synthetic_release(
        &world.dir.join(format!("small-{version}")),
        &spec,
        &[&world.keys[0], &world.keys[1]],
    )
    .unwrap()
}

/// Give `rel` a unified kernel image (the real systemd-stub around its placeholder kernel).
fn with_uki(world: &World, rel: &mut SyntheticRelease) {
    basalt_image::release::synthetic::add_uki(
        rel,
        Path::new(basalt_image::build::uki::STUB),
        None,
        &[&world.keys[0], &world.keys[1]],
    )
    .unwrap();
}

/// check → download → apply (3 tries), all writes through `io`.
fn run_update(node: &Node, io: Arc<dyn NodeIo>) -> Result<(), basalt_updater::pipeline::Error> {
    let mut engine = node
        .engine(Box::new(FileSourceOf(node).source()))
        .with_io(io)
        .with_guids(guids());
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: None,
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(c) = engine.check(&req)? else {
        panic!("no update")
    };
    let d = engine.download(&c, &mut quiet(), &CancelFlag::new())?;
    engine.apply(&d, 3)
}

/// The repository of the world a node belongs to (its config's state dir is beside it).
struct FileSourceOf<'a>(&'a Node);

impl FileSourceOf<'_> {
    fn source(&self) -> basalt_updater::source::FileSource {
        // <world>/<node name>/ → <world>/repo
        basalt_updater::source::FileSource::new(self.0.dir.parent().unwrap().join("repo"))
    }
}

/// Power loss now: what boots, and does it verify?
fn check_boot(s: &Scenario, ctx: &str) {
    let scratch = s.world.dir.join(format!("{}-scratch", s.name));
    copy_dir(&s.node.dir, &scratch);
    let disk = scratch.join("disk.img");
    let inv = Inventory::read_path(&disk, None).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let chosen = match s.node.backend {
        BackendKind::GptPrio => {
            let mut g = GptPrio::new(basalt_disk::slots::open_rw(&disk).unwrap(), &disk);
            g.boot_attempt().unwrap()
        }
        BackendKind::Bls => {
            let mut b = BlsBackend::new(DirEsp::new(scratch.join("esp")));
            let first = b.boot_order().unwrap().into_iter().next();
            let entry = first.unwrap_or_else(|| panic!("{ctx}: no loadable entry"));
            let basalt = entry.basalt.clone().unwrap();
            let info = inv.slot(basalt.slot);
            let hash = info.root_hash.unwrap_or_else(|| {
                panic!(
                    "{ctx}: entry {} boots slot {} ({:?})",
                    entry.file, basalt.slot, info.state
                )
            });
            assert!(
                basalt
                    .options
                    .contains(&format!("usrhash={}", hash.to_hex())),
                "{ctx}: entry {} does not name the slot's root hash",
                entry.file
            );
            let rel = s
                .releases
                .iter()
                .find(|r| r.manifest.version.to_string() == basalt.version)
                .unwrap();
            let kernel = std::fs::read(
                scratch
                    .join("esp")
                    .join(basalt.linux.trim_start_matches('/')),
            )
            .unwrap();
            let want = match rel.manifest.artifacts_of(ArtifactKind::Uki).next() {
                Some(uki) if basalt.loader == LoaderType::Efi => rel.dir.join(&uki.name),
                _ => rel.dir.join("vmlinuz"),
            };
            assert!(
                kernel == std::fs::read(&want).unwrap(),
                "{ctx}: the kernel or UKI of {} on the ESP is not complete",
                entry.file
            );
            b.boot_attempt().unwrap()
        }
    };
    let slot = chosen.unwrap_or_else(|| panic!("{ctx}: nothing boots"));
    let info = inv.slot(slot);
    assert!(
        matches!(info.state, SlotState::Valid),
        "{ctx}: slot {slot} boots but is {:?}",
        info.state
    );
    let hash = info.root_hash.unwrap();
    let file = std::fs::File::open(&disk).unwrap();
    let dev = basalt_verity::Device::new(&file, &disk);
    let data = inv.slot_range(slot, SlotPart::Data);
    let verity = inv.slot_range(slot, SlotPart::Verity);
    basalt_verity::verify(
        dev,
        data.offset,
        data.len,
        dev,
        &hash.0,
        &basalt_verity::VerifyOptions {
            hash_offset: verity.offset,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{ctx}: slot {slot} boots but does not verify: {e}"));
}

/// Sweep one scenario; returns the crash points checked.
fn sweep(s: &Scenario, stride: usize) -> usize {
    // Reference: an uninterrupted run, counting the write points.
    s.reset();
    let counter = Arc::new(Counter::default());
    run_update(&s.node, Arc::new(FaultIo(counter.clone()))).unwrap();
    let writes = counter.n.load(Ordering::SeqCst);
    let kinds = counter.kinds.lock().unwrap().clone();
    let want_disk = std::fs::read(s.node.disk()).unwrap();
    let want_tree = tree(&s.node.dir);
    let mut points = 0;
    for k in (0..writes).step_by(stride) {
        for crash in [Crash::Kill, Crash::Tear] {
            if crash == Crash::Tear
                && !matches!(kinds[k], "disk write" | "esp write" | "state file")
            {
                continue;
            }
            let ctx = format!("{}: {crash:?} at write {k}/{writes} ({})", s.name, kinds[k]);
            s.reset();
            let c = Arc::new(Counter {
                at: Some((k, crash)),
                ..Counter::default()
            });
            let r = run_update(&s.node, Arc::new(FaultIo(c)));
            assert!(r.is_err(), "{ctx}: the update survived its crash");
            check_boot(s, &ctx);
            // Restart with real I/O: the same final bytes.
            run_update(&s.node, Arc::new(basalt_updater::pipeline::RealIo))
                .unwrap_or_else(|e| panic!("{ctx}: the restarted update failed: {e}"));
            let got_disk = std::fs::read(s.node.disk()).unwrap();
            if got_disk != want_disk {
                let diffs: Vec<usize> = (0..want_disk.len())
                    .filter(|&i| got_disk[i] != want_disk[i])
                    .take(8)
                    .collect();
                let inv = s.node.inventory();
                panic!(
                    "{ctx}: the disk differs from an uninterrupted run at {diffs:?} \
                     (slot A data at {}, verity at {}; slot B data at {}, verity at {})",
                    inv.slot(Slot::A).data.offset,
                    inv.slot(Slot::A).verity.offset,
                    inv.slot(Slot::B).data.offset,
                    inv.slot(Slot::B).verity.offset
                );
            }
            let got = tree(&s.node.dir);
            let diff: Vec<_> = want_tree
                .keys()
                .chain(got.keys())
                .filter(|p| want_tree.get(*p) != got.get(*p))
                .collect();
            assert!(diff.is_empty(), "{ctx}: files differ: {diff:?}");
            points += 1;
        }
    }
    eprintln!(
        "crash sweep {}: {writes} writes, {points} crash points",
        s.name
    );
    points
}

fn stride() -> usize {
    if std::env::var("BASALT_CRASH_SWEEP").as_deref() == Ok("full") {
        1
    } else {
        4
    }
}

#[test]
fn crash_sweep_of_a_whole_update() {
    let stride = stride();
    let mut total = 0;
    for s in [
        Scenario::new("bls", BackendKind::Bls),
        Scenario::new("gptprio", BackendKind::GptPrio),
        Scenario::over_the_fallback("bls-fallback"),
        Scenario::half_downloaded("gptprio-resume"),
        Scenario::uki("bls-uki"),
        Scenario::uki_over_the_fallback("bls-uki-fallback"),
        Scenario::adaptive("bls-adaptive"),
    ] {
        total += sweep(&s, stride);
    }
    eprintln!("crash sweep: {total} crash points (stride {stride})");
    if stride == 1 {
        assert!(total >= 250, "the full sweep covers {total} points");
    } else {
        assert!(total >= 60, "the reduced sweep covers {total} points");
    }
}
