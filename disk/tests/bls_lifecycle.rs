//! The BLS backend's life cycle on a directory ESP: every transition as do / undo / redo, bad
//! input, and a property test against an independent model of systemd-boot's choice.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod bls_common;

use std::path::Path;

use basalt_disk::bls::{self, BlsBackend, Unloadable, ENTRIES_DIR};
use basalt_disk::{BootControl, BootStatus, DirEsp, Error, Slot, SlotBoot};
use bls_common::*;
use proptest::prelude::*;

fn backend(root: &Path) -> BlsBackend<DirEsp> {
    BlsBackend::new(DirEsp::new(root))
}

fn entry_names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join(ENTRIES_DIR))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn slot_of(b: &BlsBackend<DirEsp>, s: Slot) -> SlotBoot {
    b.status().unwrap().slot(s).clone()
}

fn trying(left: u32, done: u32) -> BootStatus {
    BootStatus::Trying {
        tries_left: left,
        tries_done: done,
    }
}

/// A good slot A with 1.0, as an installed image has it.
fn installed(root: &Path, host: &Path) -> BlsBackend<DirEsp> {
    let mut b = backend(root);
    b.stage(Slot::A, &target(host, "1.0"), 3).unwrap();
    b.mark_good(Slot::A).unwrap();
    b
}

#[test]
fn empty_esp_and_missing_loader_dir() {
    let esp = tempfile::tempdir().unwrap();
    let b = backend(esp.path());
    let st = b.status().unwrap();
    assert_eq!(st.next, None);
    assert!(st.slots.iter().all(|s| s.status == BootStatus::Absent));
    std::fs::create_dir_all(esp.path().join("loader")).unwrap();
    assert_eq!(b.status().unwrap().next, None);
}

#[test]
fn install_writes_the_documented_layout() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = installed(esp.path(), host.path());
    assert_eq!(entry_names(esp.path()), ["basalt-1.0.conf"]);
    let text = std::fs::read_to_string(esp.path().join("loader/entries/basalt-1.0.conf")).unwrap();
    let t = target(host.path(), "1.0");
    assert_eq!(
        text,
        format!(
            "title Basalt 1.0 (slot A)\nsort-key basalt\nversion 1.0\nlinux /basalt/1.0/vmlinuz\n\
             initrd /basalt/1.0/initrd\noptions usrhash={} basalt.slot=a console=ttyS0\n",
            t.usr_hash
        )
    );
    assert_eq!(
        std::fs::read(esp.path().join("basalt/1.0/vmlinuz")).unwrap(),
        kernel_bytes("1.0")
    );
    assert_eq!(
        std::fs::read(esp.path().join("basalt/1.0/initrd")).unwrap(),
        initrd_bytes("1.0")
    );
    let conf = std::fs::read_to_string(esp.path().join("loader/loader.conf")).unwrap();
    assert!(conf.contains("timeout 0\n") && conf.contains("editor no\n"));
    assert!(!conf.lines().any(|l| l.starts_with("default")));
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A).version.as_deref(), Some("1.0"));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
}

#[test]
fn stage_cancel_restage() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let before = snapshot(esp.path());
    let a = slot_of(&b, Slot::A);

    // do
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::B).status, trying(3, 0));
    assert_eq!(st.slot(Slot::A), &a);
    let staged = snapshot(esp.path());
    // undo: exactly the state before, kernels of 1.1 gone
    b.cancel(Slot::B).unwrap();
    assert_eq!(snapshot(esp.path()), before);
    assert_eq!(slot_of(&b, Slot::B).status, BootStatus::Absent);
    b.cancel(Slot::B).unwrap(); // idempotent
    assert_eq!(snapshot(esp.path()), before);
    // redo
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(snapshot(esp.path()), staged);
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(
        snapshot(esp.path()),
        staged,
        "staging twice is the same as once"
    );
}

#[test]
fn boot_attempts_exhaust_and_fall_back() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let a = slot_of(&b, Slot::A);
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    let mut names = vec![];
    for _ in 0..3 {
        assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
        names.push(entry_names(esp.path()));
        assert_eq!(slot_of(&b, Slot::A), a);
    }
    assert_eq!(
        names,
        [
            ["basalt-1.0.conf", "basalt-1.1+2-1.conf"],
            ["basalt-1.0.conf", "basalt-1.1+1-2.conf"],
            ["basalt-1.0.conf", "basalt-1.1+0-3.conf"]
        ]
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    assert_eq!(
        slot_of(&b, Slot::A),
        a,
        "booting a good entry renames nothing"
    );
    // undo the failed update: cancel removes it, A untouched
    b.cancel(Slot::B).unwrap();
    assert_eq!(slot_of(&b, Slot::B).status, BootStatus::Absent);
    assert_eq!(slot_of(&b, Slot::A), a);
    // redo
    b.stage(Slot::B, &target(host.path(), "1.1"), 2).unwrap();
    assert_eq!(slot_of(&b, Slot::B).status, trying(2, 0));
}

#[test]
fn mark_good_then_mark_bad_then_restage() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let a = slot_of(&b, Slot::A);
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
    b.mark_good(Slot::B).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.conf", "basalt-1.1.conf"]
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Good);
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::A), &a);
    let good = snapshot(esp.path());
    b.mark_good(Slot::B).unwrap(); // redo is a no-op
    assert_eq!(snapshot(esp.path()), good);

    b.mark_bad(Slot::B).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.conf", "basalt-1.1+0.conf"]
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A), &a);
    b.mark_bad(Slot::B).unwrap(); // redo is a no-op
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.conf", "basalt-1.1+0.conf"]
    );
    assert!(matches!(
        b.mark_good(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    // undo of mark_bad: stage again
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.conf", "basalt-1.1+3.conf"]
    );
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

#[test]
fn mark_bad_keeps_tries_done() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_bad(Slot::B).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.conf", "basalt-1.1+0-1.conf"]
    );
}

#[test]
fn rollback_do_undo_redo() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_good(Slot::B).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    // do
    b.rollback(Slot::A).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    // redo: same state
    let rolled = snapshot(esp.path());
    b.rollback(Slot::A).unwrap();
    assert_eq!(snapshot(esp.path()), rolled);
    // rolling "back" to the bad slot is refused, nothing changes
    assert!(matches!(
        b.rollback(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    assert_eq!(snapshot(esp.path()), rolled);
    // undo: re-stage B and bless it
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_good(Slot::B).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

/// Bottlerocket #949: cancelling the staged slot must not touch the other slot's tries.
#[test]
fn cancel_never_touches_the_other_slots_tries() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = backend(esp.path());
    b.stage(Slot::A, &target(host.path(), "1.0"), 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    let a = slot_of(&b, Slot::A);
    assert_eq!(a.status, trying(2, 1));
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(slot_of(&b, Slot::A), a);
    b.cancel(Slot::B).unwrap();
    assert_eq!(slot_of(&b, Slot::A), a);
    assert_eq!(b.status().unwrap().next, Some(Slot::A));
    // and a bad slot stays bad when the other is cancelled
    b.mark_bad(Slot::A).unwrap();
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    b.cancel(Slot::B).unwrap();
    assert_eq!(slot_of(&b, Slot::A).status, BootStatus::Bad);
}

#[test]
fn refused_requests_change_nothing() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let before = snapshot(esp.path());
    let t = target(host.path(), "1.1");
    for tries in [0, 100] {
        assert!(matches!(
            b.stage(Slot::B, &t, tries),
            Err(Error::BlsTarget { .. })
        ));
    }
    let mut same = target(host.path(), "1.0");
    assert!(matches!(
        b.stage(Slot::B, &same, 3),
        Err(Error::BlsTarget { .. })
    ));
    same.version = "0.9".into();
    assert!(
        matches!(b.stage(Slot::B, &same, 3), Err(Error::BlsTarget { .. })),
        "an older version would never boot"
    );
    let mut pre = target(host.path(), "1.0-rc.1");
    assert!(
        b.stage(Slot::B, &pre, 3).is_ok(),
        "systemd orders 1.0-rc.1 after 1.0: allowed (and documented)"
    );
    b.cancel(Slot::B).unwrap();
    pre.version = "1.0~rc.1".into();
    assert!(matches!(
        b.stage(Slot::B, &pre, 3),
        Err(Error::BlsTarget { .. })
    ));
    for bad in ["1.1+x", "1.1/..", "UPPER", ""] {
        let mut t = target(host.path(), "1.1");
        t.version = bad.into();
        assert!(
            matches!(b.stage(Slot::B, &t, 3), Err(Error::BlsTarget { .. })),
            "{bad}"
        );
    }
    let mut t = target(host.path(), "1.1");
    t.usr_hash = "xyz".into();
    assert!(matches!(
        b.stage(Slot::B, &t, 3),
        Err(Error::BlsTarget { .. })
    ));
    let mut t = target(host.path(), "1.1");
    t.kernel = None;
    assert!(matches!(
        b.stage(Slot::B, &t, 3),
        Err(Error::BlsTarget { .. })
    ));
    let mut t = target(host.path(), "1.1");
    t.kernel = Some(host.path().join("does-not-exist"));
    assert!(matches!(b.stage(Slot::B, &t, 3), Err(Error::Io { .. })));
    assert!(matches!(
        b.mark_good(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        b.cancel(Slot::A),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        b.rollback(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    b.mark_bad(Slot::B).unwrap(); // Absent: nothing to do
    assert_eq!(snapshot(esp.path()), before);
}

#[test]
fn garbage_entries_are_ignored_like_systemd_boot_does() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let dir = esp.path().join(ENTRIES_DIR);
    std::fs::write(dir.join("basalt-9.9.conf"), b"\x00\xff\xfegarbage\nlinux").unwrap();
    std::fs::write(
        dir.join("basalt-9.8+x-1.conf"),
        b"version 9.8\nlinux /nope\n",
    )
    .unwrap();
    std::fs::write(dir.join(".basalt-9.7.conf.tmp"), b"half").unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    let ents = b.entries().unwrap();
    let g = ents.iter().find(|e| e.file == "basalt-9.9.conf").unwrap();
    assert_eq!(g.unloadable, Some(Unloadable::NoLoader));
    // Staging cleans them all up.
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.conf", "basalt-1.1+3.conf"]
    );
}

#[test]
fn loadable_but_invalid_basalt_entries_are_typed_errors() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = installed(esp.path(), host.path());
    let dir = esp.path().join(ENTRIES_DIR);
    let k = "linux /basalt/1.0/vmlinuz\nversion 9\n";
    std::fs::write(dir.join("basalt-9.conf"), k).unwrap();
    assert!(matches!(b.status(), Err(Error::BlsEntryParse { .. })));
    std::fs::remove_file(dir.join("basalt-9.conf")).unwrap();
    std::fs::write(
        dir.join("basalt-9+x-1.conf"),
        format!("{k}options basalt.slot=b\n"),
    )
    .unwrap();
    assert!(matches!(b.status(), Err(Error::BlsEntryName { .. })));
    std::fs::remove_file(dir.join("basalt-9+x-1.conf")).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::A));
}

#[test]
fn entry_with_missing_kernel_is_not_bootable() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    std::fs::remove_file(esp.path().join("basalt/1.1/vmlinuz")).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Absent);
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    let e = b
        .entries()
        .unwrap()
        .into_iter()
        .find(|e| e.file.contains("1.1"))
        .unwrap();
    assert!(matches!(e.unloadable, Some(Unloadable::LoaderMissing(_))));
    // Recovery: stage again.
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

#[test]
fn booted_slot_from_efivars() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1"), 3).unwrap();
    b.boot_attempt().unwrap();
    let var = |s: &str| {
        let mut v = vec![6, 0, 0, 0];
        v.extend(s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes));
        v
    };
    let path = var("\\loader\\entries\\basalt-1.1+2-1.conf");
    let file = bls::booted_entry_file(Some(&path), None).unwrap().unwrap();
    assert_eq!(b.slot_of_entry(&file).unwrap(), Some(Slot::B));
    let sel = var("basalt-1.1+3.conf"); // LoaderEntrySelected: the id before the rename
    let file = bls::booted_entry_file(None, Some(&sel)).unwrap().unwrap();
    assert_eq!(b.slot_of_entry(&file).unwrap(), Some(Slot::B));
    let file = bls::booted_entry_file(None, Some(&var("basalt-1.0.conf")))
        .unwrap()
        .unwrap();
    assert_eq!(b.slot_of_entry(&file).unwrap(), Some(Slot::A));
}

// ---- Property test ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Stage(Slot, usize, u32),
    Boot,
    Good(Slot),
    Bad(Slot),
    Cancel(Slot),
    Rollback(Slot),
}

const VERSIONS: [&str; 7] = ["1.0", "1.1", "1.2~rc1", "1.2", "1.2-1", "1.10", "2.0"];

fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![Just(Slot::A), Just(Slot::B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (slot(), 0..VERSIONS.len(), 1u32..4).prop_map(|(s, v, t)| Op::Stage(s, v, t)),
        3 => Just(Op::Boot),
        1 => slot().prop_map(Op::Good),
        1 => slot().prop_map(Op::Bad),
        1 => slot().prop_map(Op::Cancel),
        1 => slot().prop_map(Op::Rollback),
    ]
}

fn live(s: BootStatus) -> bool {
    matches!(s, BootStatus::Good | BootStatus::Trying { .. })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prediction_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut b = backend(esp.path());
        for op in ops {
            let before = b.status().unwrap();
            let files_before = snapshot(esp.path());
            let res = match &op {
                Op::Stage(s, v, t) => b.stage(*s, &target(host.path(), VERSIONS[*v]), *t),
                Op::Boot => {
                    let expect = model_choice(&model_entries(esp.path()));
                    let got = b.boot_attempt().unwrap();
                    let slot_of = |c: char| if c == 'a' { Slot::A } else { Slot::B };
                    prop_assert_eq!(got, expect.and_then(|e| e.slot).map(slot_of));
                    Ok(())
                }
                Op::Good(s) => b.mark_good(*s),
                Op::Bad(s) => b.mark_bad(*s),
                Op::Cancel(s) => b.cancel(*s),
                Op::Rollback(s) => b.rollback(*s),
            };
            let after = b.status().unwrap();
            if res.is_err() {
                prop_assert_eq!(&files_before, &snapshot(esp.path()), "a refused {:?} changed the ESP", op);
            }
            // The prediction equals the model's reading of the files.
            let expect = model_choice(&model_entries(esp.path()))
                .and_then(|e| e.slot)
                .map(|c| if c == 'a' { Slot::A } else { Slot::B });
            prop_assert_eq!(after.next, expect, "after {:?}", op);
            // The predicted boot is a live slot whenever there is one.
            if after.slots.iter().any(|s| live(s.status)) {
                let n = after.next.expect("a live slot exists");
                prop_assert!(live(after.slot(n).status), "next {:?} not live after {:?}: {:?}", n, op, after);
            }
            // An operation on one slot never changes the other (rollback(to) keeps `to`).
            let untouched: &[Slot] = match op {
                Op::Stage(s, ..) | Op::Good(s) | Op::Bad(s) | Op::Cancel(s) => &[!s][..],
                Op::Rollback(to) => &[to][..],
                Op::Boot => match before.next { Some(n) => &[!n][..], None => &[Slot::A, Slot::B][..] },
            };
            for s in untouched {
                prop_assert_eq!(before.slot(*s), after.slot(*s), "{:?} changed slot {:?}", op, s);
            }
            // A good slot stays good unless explicitly marked bad, rolled away from, or re-staged.
            for s in Slot::ALL {
                let explicit = matches!(op, Op::Bad(x) | Op::Stage(x, ..) if x == s)
                    || matches!(op, Op::Rollback(to) if to == !s && res.is_ok());
                if before.slot(s).status == BootStatus::Good && !explicit {
                    prop_assert_eq!(after.slot(s).status, BootStatus::Good, "{:?} lost good slot {:?}", op, s);
                }
            }
            // Kernels: at most the versions of the two slots' entries are kept.
            let dirs = std::fs::read_dir(esp.path().join("basalt")).map(|r| r.count()).unwrap_or(0);
            prop_assert!(dirs <= 2, "{} kernel dirs after {:?}", dirs, op);
        }
    }
}
