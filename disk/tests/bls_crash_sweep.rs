//! Crash sweep of the BLS backend on a directory ESP: record every file-system mutation of an
//! operation, then for every prefix of that sequence (and a torn last write: half its bytes)
//! rebuild the ESP and check that (1) the predicted next boot is a live slot whose entry
//! loads and whose kernel and initrd are complete, and (2) retrying the operation succeeds and
//! ends in the same state as an uninterrupted run.
//!
//! Each recorded primitive is durable when it returns (write_new fsyncs the file; rename and
//! remove fsync the directory), so a crash between primitives is modelled by replaying a
//! prefix; a crash inside a write by the torn variant.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod bls_common;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use basalt_disk::esp::{self, EspDirEntry};
use basalt_disk::{BlsBackend, BootControl, BootStatus, DirEsp, Error, Esp, Slot};
use bls_common::*;

#[derive(Debug, Clone)]
enum Mutation {
    CreateDir(String),
    WriteNew(String, Vec<u8>),
    Rename(String, String),
    Remove(String),
}

/// An ESP that forwards to a directory ESP and records every mutation.
struct Recording {
    inner: DirEsp,
    log: Rc<RefCell<Vec<Mutation>>>,
}

impl Esp for Recording {
    fn list(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>, Error> {
        self.inner.list(dir)
    }
    fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.inner.read(path)
    }
    fn exists(&self, path: &str) -> Result<bool, Error> {
        self.inner.exists(path)
    }
    fn free_space(&self) -> Result<u64, Error> {
        self.inner.free_space()
    }
    fn create_dir(&mut self, path: &str) -> Result<(), Error> {
        // Only record directories that do not exist yet (an existing one is no mutation).
        if !self.inner.exists(path)? {
            self.log.borrow_mut().push(Mutation::CreateDir(path.into()));
        }
        self.inner.create_dir(path)
    }
    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        self.log
            .borrow_mut()
            .push(Mutation::WriteNew(path.into(), data.to_vec()));
        self.inner.write_new(path, data)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        self.log
            .borrow_mut()
            .push(Mutation::Rename(from.into(), to.into()));
        self.inner.rename(from, to)
    }
    fn remove(&mut self, path: &str) -> Result<(), Error> {
        if self.inner.exists(path)? {
            self.log.borrow_mut().push(Mutation::Remove(path.into()));
        }
        self.inner.remove(path)
    }
}

fn apply(esp: &mut DirEsp, m: &Mutation) {
    match m {
        Mutation::CreateDir(p) => esp.create_dir(p).unwrap(),
        Mutation::WriteNew(p, d) => esp.write_new(p, d).unwrap(),
        Mutation::Rename(a, b) => esp.rename(a, b).unwrap(),
        Mutation::Remove(p) => esp.remove(p).unwrap(),
    }
}

/// The operations used to set up and to sweep.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Slot A staged with this version and blessed, as an installed image has it.
    InstallA(&'static str),
    /// Slot A holding a blessed entry written by older code (`sort-key basalt`).
    LegacyA(&'static str),
    Boot,
    StageA(&'static str),
    StageB(&'static str),
    /// Slot A or B staged with the unified kernel image of this version (an `efi` entry).
    UkiA(&'static str),
    UkiB(&'static str),
    MarkGoodB,
    MarkBadB,
    RollbackA,
    CancelB,
}

fn run_on<E: Esp>(b: &mut BlsBackend<E>, host: &Path, k: Kind) -> Result<(), Error> {
    match k {
        Kind::InstallA(v) => {
            b.stage(Slot::A, &target(host, v), 3)?;
            b.mark_good(Slot::A)
        }
        Kind::LegacyA(v) => {
            let t = target(host, v);
            let esp = b.esp_mut();
            esp::copy_in(
                esp,
                &format!("basalt/{v}/vmlinuz"),
                t.kernel.as_deref().unwrap(),
            )?;
            esp::copy_in(
                esp,
                &format!("basalt/{v}/initrd"),
                t.initrd.as_deref().unwrap(),
            )?;
            let text = format!(
                "title Basalt {v} (slot A)\nsort-key basalt\nversion {v}\n\
                 linux /basalt/{v}/vmlinuz\ninitrd /basalt/{v}/initrd\n\
                 options usrhash={} basalt.slot=a\n",
                t.usr_hash
            );
            esp.write_atomic(&format!("loader/entries/basalt-{v}.conf"), text.as_bytes())
        }
        Kind::Boot => b.boot_attempt().map(|_| ()),
        Kind::StageA(v) => b.stage(Slot::A, &target(host, v), 3),
        Kind::StageB(v) => b.stage(Slot::B, &target(host, v), 3),
        Kind::UkiA(v) => b.stage_uki(Slot::A, &uki_target(host, v), 3),
        Kind::UkiB(v) => b.stage_uki(Slot::B, &uki_target(host, v), 3),
        Kind::MarkGoodB => b.mark_good(Slot::B),
        Kind::MarkBadB => b.mark_bad(Slot::B),
        Kind::RollbackA => b.rollback(Slot::A),
        Kind::CancelB => b.cancel(Slot::B),
    }
}

/// The state after a crash must boot something complete.
fn check_bootable(root: &Path, what: &str) {
    let b = BlsBackend::new(DirEsp::new(root));
    let st = b
        .status()
        .unwrap_or_else(|e| panic!("{what}: status fails after crash: {e}"));
    let next = st
        .next
        .unwrap_or_else(|| panic!("{what}: nothing boots: {st:?}"));
    let s = st.slot(next);
    assert!(
        matches!(s.status, BootStatus::Good | BootStatus::Trying { .. }),
        "{what}: next slot {next} is {:?}",
        s.status
    );
    let first = b.boot_order().unwrap().into_iter().next().unwrap();
    let e = first.basalt.unwrap();
    let v = &e.version;
    let read = |p: &str| std::fs::read(root.join(p.trim_start_matches('/'))).unwrap();
    if e.loader == basalt_disk::bls::entry::LoaderType::Efi {
        assert_eq!(
            read(&e.linux),
            uki_bytes(v),
            "{what}: UKI of {v} incomplete"
        );
        assert!(e.initrd.is_empty(), "{what}: a UKI entry with an initrd");
        return;
    }
    assert_eq!(
        read(&e.linux),
        kernel_bytes(v),
        "{what}: kernel of {v} incomplete"
    );
    assert_eq!(
        read(&e.initrd[0]),
        initrd_bytes(v),
        "{what}: initrd of {v} incomplete"
    );
}

/// While `op` stages a slot, a crash leaves the old choice or the staged slot as the next boot,
/// never anything else.
fn check_next(root: &Path, op: Kind, old: Option<Slot>, what: &str) {
    let staged = match op {
        Kind::StageA(_) | Kind::UkiA(_) => Slot::A,
        Kind::StageB(_) | Kind::UkiB(_) => Slot::B,
        _ => return,
    };
    let next = BlsBackend::new(DirEsp::new(root)).status().unwrap().next;
    assert!(
        next == old || next == Some(staged),
        "{what}: next boot {next:?}, expected {old:?} or {staged:?}"
    );
}

/// Build an initial ESP with `setup`, then sweep `op` over it. Returns the crash points tested.
fn sweep(setup: &[Kind], op: Kind) -> usize {
    let name = format!("{op:?} after {setup:?}");
    let host = tempfile::tempdir().unwrap();
    let initial = tempfile::tempdir().unwrap();
    let mut b = BlsBackend::new(DirEsp::new(initial.path()));
    for k in setup {
        run_on(&mut b, host.path(), *k).unwrap();
    }
    check_bootable(initial.path(), &format!("{name}: initial state"));
    let old_next = b.status().unwrap().next;

    // The uninterrupted run, recorded.
    let work = tempfile::tempdir().unwrap();
    copy_tree(initial.path(), work.path());
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut rec = BlsBackend::new(Recording {
        inner: DirEsp::new(work.path()),
        log: log.clone(),
    });
    run_on(&mut rec, host.path(), op).unwrap();
    let muts = log.borrow().clone();
    let final_state = snapshot(work.path());
    // Uninterrupted, a stage makes its slot the next boot (whatever the versions).
    check_next(work.path(), op, None, &format!("{name}: uninterrupted"));
    assert!(!muts.is_empty(), "{name}: nothing recorded");

    let mut points = 0;
    for k in 0..=muts.len() {
        let mut variants = vec![None];
        if let Some(Mutation::WriteNew(p, d)) = muts.get(k) {
            variants.push(Some(Mutation::WriteNew(
                p.clone(),
                d[..d.len() / 2].to_vec(),
            )));
        }
        for torn in variants {
            let work = tempfile::tempdir().unwrap();
            copy_tree(initial.path(), work.path());
            let mut esp = DirEsp::new(work.path());
            for m in muts[..k].iter().chain(torn.iter()) {
                apply(&mut esp, m);
            }
            let what = format!(
                "{name}: crash after {k}/{} mutations{}",
                muts.len(),
                if torn.is_some() {
                    " + a torn write"
                } else {
                    ""
                }
            );
            check_bootable(work.path(), &what);
            check_next(work.path(), op, old_next, &what);
            let mut b = BlsBackend::new(DirEsp::new(work.path()));
            run_on(&mut b, host.path(), op).unwrap_or_else(|e| panic!("{what}: retry failed: {e}"));
            check_bootable(work.path(), &format!("{what}, retried"));
            assert_eq!(
                snapshot(work.path()),
                final_state,
                "{what}: retry ends elsewhere"
            );
            points += 1;
        }
    }
    points
}

#[test]
fn crash_sweep() {
    use Kind::*;
    let cases: &[(&[Kind], Kind)] = &[
        (&[InstallA("1.0.0")], StageB("1.1.0")),
        (&[InstallA("1.0.0")], StageA("1.2.0")),
        (
            &[InstallA("1.0.0"), StageB("1.1.0"), MarkBadB],
            StageB("1.2.0"),
        ),
        (
            &[InstallA("1.0.0"), StageB("1.1.0"), Boot, MarkGoodB],
            StageB("1.2.0"),
        ),
        (
            &[InstallA("1.0.0"), StageB("1.1.0"), Boot, MarkGoodB],
            StageA("1.2.0"),
        ),
        (&[InstallA("1.0.0"), StageB("1.1.0"), Boot], MarkGoodB),
        (&[InstallA("1.0.0"), StageB("1.1.0"), Boot], MarkBadB),
        (&[InstallA("1.0.0"), StageB("1.1.0"), Boot], CancelB),
        (
            &[InstallA("1.0.0"), StageB("1.1.0"), Boot, Boot, Boot],
            CancelB,
        ),
        (
            &[InstallA("1.0.0"), StageB("1.1.0"), Boot, MarkGoodB],
            RollbackA,
        ),
        // Versions and boot order: a downgrade, a pre-release after its final, another
        // build, a re-stage while counting, a rollback to the newer slot, and a stage over
        // an entry written by older code.
        (&[InstallA("2.0.0")], StageB("1.0.0")),
        (&[InstallA("1.2.0")], StageB("1.2.0-rc.1")),
        (&[InstallA("1.2.0+build.5")], StageB("1.2.0+build.6")),
        (
            &[InstallA("1.0.0"), StageB("2.0.0"), Boot],
            StageB("1.5.0-rc.2"),
        ),
        (
            &[InstallA("2.0.0"), StageB("1.0.0"), Boot, MarkGoodB],
            RollbackA,
        ),
        (
            &[InstallA("2.0.0"), StageB("1.0.0"), Boot, MarkGoodB],
            StageA("3.0.0-rc.1+b.1"),
        ),
        (&[LegacyA("1.0.0")], StageB("0.9.0")),
        (
            &[LegacyA("1.0.0"), StageB("0.9.0"), Boot, MarkGoodB],
            StageA("1.0.0"),
        ),
        // Unified kernel images: the first UKI over loose kernels, a UKI over a UKI slot,
        // the way back to loose kernels, and bless / rollback / cancel of a UKI entry.
        (&[InstallA("1.0.0")], UkiB("2.0.0")),
        (
            &[InstallA("1.0.0"), UkiB("2.0.0"), Boot, MarkGoodB],
            UkiA("3.0.0"),
        ),
        (
            &[InstallA("1.0.0"), UkiB("2.0.0"), Boot, MarkGoodB],
            StageA("3.0.0"),
        ),
        (&[InstallA("1.0.0"), UkiB("2.0.0"), Boot], MarkGoodB),
        (&[InstallA("1.0.0"), UkiB("2.0.0"), Boot], CancelB),
        (
            &[InstallA("1.0.0"), UkiB("2.0.0"), Boot, MarkGoodB],
            RollbackA,
        ),
    ];
    let mut total = 0;
    for (setup, op) in cases {
        let n = sweep(setup, *op);
        eprintln!("crash sweep: {op:?} after {setup:?}: {n} crash points");
        total += n;
    }
    eprintln!("crash sweep: {total} crash points tested");
    assert!(total > 50, "too few crash points: {total}");
}
