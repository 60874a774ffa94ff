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

use basalt_disk::esp::EspDirEntry;
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
    InstallA10,
    Boot,
    StageB11,
    StageB12,
    StageA12,
    MarkGoodB,
    MarkBadB,
    RollbackA,
    CancelB,
}

fn run_on<E: Esp>(b: &mut BlsBackend<E>, host: &Path, k: Kind) -> Result<(), Error> {
    match k {
        Kind::InstallA10 => {
            b.stage(Slot::A, &target(host, "1.0"), 3)?;
            b.mark_good(Slot::A)
        }
        Kind::Boot => b.boot_attempt().map(|_| ()),
        Kind::StageB11 => b.stage(Slot::B, &target(host, "1.1"), 3),
        Kind::StageB12 => b.stage(Slot::B, &target(host, "1.2"), 3),
        Kind::StageA12 => b.stage(Slot::A, &target(host, "1.2"), 3),
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
        (&[InstallA10], StageB11),
        (&[InstallA10], StageA12),
        (&[InstallA10, StageB11, MarkBadB], StageB12),
        (&[InstallA10, StageB11, Boot, MarkGoodB], StageB12),
        (&[InstallA10, StageB11, Boot, MarkGoodB], StageA12),
        (&[InstallA10, StageB11, Boot], MarkGoodB),
        (&[InstallA10, StageB11, Boot], MarkBadB),
        (&[InstallA10, StageB11, Boot], CancelB),
        (&[InstallA10, StageB11, Boot, Boot, Boot], CancelB),
        (&[InstallA10, StageB11, Boot, MarkGoodB], RollbackA),
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
