//! GPT-priority life cycle: every transition done, undone and redone, and the Bottlerocket
//! #949 invariant (an operation on one slot never changes the other slot's tries or
//! successful bit, except `rollback`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod gpt_util;

use std::io::Cursor;
use std::path::Path;

use basalt_disk::gptprio::Prio;
use basalt_disk::{BootControl, BootStatus, BootTarget, Error, GptPrio, Slot};
use gpt_util::{put_image, tiny_disk_mem};
use proptest::prelude::*;

/// A target that names no particular image (the backend then only checks the slot has one).
fn target() -> BootTarget {
    BootTarget {
        version: String::new(),
        usr_hash: String::new(),
        kernel: None,
        initrd: None,
        options: String::new(),
    }
}

/// A good (booted, blessed) 1.0.0 and a freshly written 2.0.0 in B.
fn base() -> GptPrio<Cursor<Vec<u8>>> {
    let mut dev = tiny_disk_mem();
    let p = Path::new("mem");
    put_image(&mut dev, p, Slot::A, "1.0.0", 1, None).unwrap();
    put_image(&mut dev, p, Slot::B, "2.0.0", 2, None).unwrap();
    let mut gp = GptPrio::new(dev, p);
    gp.mark_good(Slot::A).unwrap();
    gp
}

fn fields(gp: &GptPrio<Cursor<Vec<u8>>>) -> [Prio; 2] {
    gp.fields().unwrap()
}

fn prio(priority: u8, tries: u8, successful: bool) -> Prio {
    Prio {
        priority,
        tries,
        successful,
    }
}

#[test]
fn base_state_is_a_good_b_written_not_bootable() {
    let gp = base();
    let st = gp.status().unwrap();
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    assert_eq!(st.slot(Slot::B).version.as_deref(), Some("2.0.0"));
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(fields(&gp), [prio(1, 0, true), prio(0, 0, false)]);
}

#[test]
fn stage_cancel_restage() {
    let mut gp = base();
    let before = fields(&gp);
    gp.stage(Slot::B, &target(), 3).unwrap();
    let staged = fields(&gp);
    assert_eq!(staged[0], before[0], "A untouched by stage");
    assert_eq!(staged[1], prio(2, 3, false));
    let st = gp.status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(
        st.slot(Slot::B).status,
        BootStatus::Trying {
            tries_left: 3,
            tries_done: 0
        }
    );
    // undo
    gp.cancel(Slot::B).unwrap();
    assert_eq!(
        fields(&gp),
        before,
        "cancel restores exactly the pre-stage fields"
    );
    assert_eq!(gp.status().unwrap().next, Some(Slot::A));
    // redo
    gp.stage(Slot::B, &target(), 3).unwrap();
    assert_eq!(fields(&gp), staged);
}

#[test]
fn boot_attempts_count_down_then_fall_back() {
    let mut gp = base();
    gp.stage(Slot::B, &target(), 3).unwrap();
    let a_before = fields(&gp)[0];
    for left in [2u8, 1] {
        assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
        assert_eq!(fields(&gp)[1], prio(2, left, false));
        assert_eq!(fields(&gp)[0], a_before);
    }
    // Third attempt: last try, B boots once more and is bad afterwards unless blessed.
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
    assert_eq!(fields(&gp)[1], prio(0, 0, false));
    assert_eq!(gp.status().unwrap().slot(Slot::B).status, BootStatus::Bad);
    // Fourth: fallback to A, which is untouched.
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::A));
    assert_eq!(fields(&gp)[0], a_before);
    // redo: the exhausted slot can be staged again.
    gp.stage(Slot::B, &target(), 2).unwrap();
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
}

#[test]
fn mark_good_after_boot_then_redo() {
    let mut gp = base();
    gp.stage(Slot::B, &target(), 3).unwrap();
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
    let a_before = fields(&gp)[0];
    gp.mark_good(Slot::B).unwrap();
    let good = fields(&gp);
    assert_eq!(good[1], prio(2, 0, true));
    assert_eq!(good[0], a_before, "A keeps tries and successful bit");
    assert_eq!(gp.status().unwrap().slot(Slot::B).status, BootStatus::Good);
    // A good slot boots forever without counting.
    for _ in 0..20 {
        assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
    }
    assert_eq!(fields(&gp), good);
    // redo is idempotent
    gp.mark_good(Slot::B).unwrap();
    assert_eq!(fields(&gp), good);
}

#[test]
fn mark_good_on_the_last_try_rescues_the_slot() {
    let mut gp = base();
    gp.stage(Slot::B, &target(), 1).unwrap();
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
    assert_eq!(fields(&gp)[1], prio(0, 0, false));
    gp.mark_good(Slot::B).unwrap();
    assert_eq!(fields(&gp)[1], prio(2, 0, true));
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
}

#[test]
fn mark_bad_then_restage() {
    let mut gp = base();
    gp.stage(Slot::B, &target(), 3).unwrap();
    let a_before = fields(&gp)[0];
    gp.mark_bad(Slot::B).unwrap();
    assert_eq!(fields(&gp), [a_before, prio(0, 0, false)]);
    assert_eq!(gp.status().unwrap().next, Some(Slot::A));
    gp.mark_bad(Slot::B).unwrap(); // idempotent
    gp.stage(Slot::B, &target(), 3).unwrap();
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
}

#[test]
fn rollback_and_back() {
    let mut gp = base();
    gp.stage(Slot::B, &target(), 3).unwrap();
    gp.boot_attempt().unwrap();
    gp.mark_good(Slot::B).unwrap();
    let a_before = fields(&gp)[0];
    // Roll back to A: A (good) next, B bad.
    gp.rollback(Slot::A).unwrap();
    let f = fields(&gp);
    assert_eq!(f[0], a_before, "A was good with priority 1: left as is");
    assert_eq!(f[1], prio(0, 0, false));
    assert_eq!(gp.status().unwrap().next, Some(Slot::A));
    // Rolling back to B is refused now: B is no longer good.
    assert!(matches!(
        gp.rollback(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    // redo forward: stage B again.
    gp.stage(Slot::B, &target(), 3).unwrap();
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
}

#[test]
fn illegal_transitions_are_typed_and_write_nothing() {
    let gp = base();
    let before = gp.into_inner().into_inner();
    let mut gp = GptPrio::new(Cursor::new(before.clone()), Path::new("mem"));
    // Cancelling a slot that is not staged: a no-op (retry-safe); a good slot: refused.
    gp.cancel(Slot::B).unwrap();
    assert!(matches!(
        gp.cancel(Slot::A),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        gp.stage(Slot::B, &target(), 0),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        gp.stage(Slot::B, &target(), 16),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        gp.rollback(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    assert_eq!(gp.into_inner().into_inner(), before);

    // Staging or blessing an empty slot is refused.
    let mut dev = tiny_disk_mem();
    put_image(&mut dev, Path::new("mem"), Slot::A, "1.0.0", 1, None).unwrap();
    let mut gp = GptPrio::new(dev, Path::new("mem"));
    assert!(matches!(
        gp.stage(Slot::B, &target(), 3),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        gp.mark_good(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    assert_eq!(
        gp.status().unwrap().slot(Slot::B).status,
        BootStatus::Absent
    );
}

#[test]
fn staging_a_slot_with_someone_elses_image_is_refused() {
    let mut gp = base();
    let before = fields(&gp);
    let mut t = target();
    t.usr_hash = gpt_util::fake_hash(1).to_hex(); // A's image, not B's
    assert!(matches!(
        gp.stage(Slot::B, &t, 3),
        Err(Error::IllegalTransition { .. })
    ));
    t.usr_hash = gpt_util::fake_hash(2).to_hex();
    t.version = "9.9.9".into();
    assert!(matches!(
        gp.stage(Slot::B, &t, 3),
        Err(Error::IllegalTransition { .. })
    ));
    assert_eq!(fields(&gp), before);
    t.version = "2.0.0".into();
    gp.stage(Slot::B, &t, 3).unwrap();
}

#[test]
fn priority_fifteen_is_lowered_not_other_fields() {
    let mut gp = base();
    // Make A good at the ceiling, then stage B above it.
    for _ in 0..20 {
        gp.stage(Slot::B, &target(), 1).unwrap();
        gp.boot_attempt().unwrap();
        gp.mark_good(Slot::B).unwrap();
        gp.stage(Slot::A, &target(), 1).unwrap();
        gp.boot_attempt().unwrap();
        gp.mark_good(Slot::A).unwrap();
    }
    let f = fields(&gp);
    assert_eq!(f[0].priority, 15);
    gp.stage(Slot::B, &target(), 4).unwrap();
    let g = fields(&gp);
    assert_eq!(g[1], prio(15, 4, false));
    assert_eq!(g[0], prio(14, f[0].tries, f[0].successful));
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
}

/// Blessing a slot keeps the order: a slot staged after it stays the next boot, also when
/// the blessed slot had used its last try (cgpt cleared its priority) and must get one back.
#[test]
fn blessing_never_outranks_a_later_stage() {
    let mut gp = base();
    gp.stage(Slot::B, &target(), 3).unwrap();
    gp.mark_good(Slot::A).unwrap(); // A was good already: nothing moves
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
    assert_eq!(fields(&gp), [prio(1, 0, true), prio(2, 3, false)]);

    // A staged with one try and booted on it (priority cleared), then B staged, then A's
    // health checks pass: A is good again but B keeps its lead.
    let mut dev = tiny_disk_mem();
    let p = Path::new("mem");
    put_image(&mut dev, p, Slot::A, "2.0.0", 1, None).unwrap();
    put_image(&mut dev, p, Slot::B, "1.0.0", 2, None).unwrap();
    let mut gp = GptPrio::new(dev, p);
    gp.stage(Slot::A, &target(), 1).unwrap();
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::A));
    assert_eq!(fields(&gp)[0], prio(0, 0, false));
    gp.stage(Slot::B, &target(), 3).unwrap();
    assert_eq!(fields(&gp)[1], prio(1, 3, false));
    gp.mark_good(Slot::A).unwrap();
    assert_eq!(fields(&gp), [prio(1, 0, true), prio(2, 3, false)]);
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
    // B's tries run out: A, blessed, boots.
    for _ in 0..3 {
        assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::B));
    }
    assert_eq!(gp.boot_attempt().unwrap(), Some(Slot::A));
}

#[derive(Debug, Clone)]
enum Op {
    Stage(Slot, u32),
    Good(Slot),
    Bad(Slot),
    Cancel(Slot),
    Rollback(Slot),
    Boot,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = prop_oneof![Just(Slot::A), Just(Slot::B)];
    prop_oneof![
        (slot.clone(), 1u32..5).prop_map(|(s, t)| Op::Stage(s, t)),
        slot.clone().prop_map(Op::Good),
        slot.clone().prop_map(Op::Bad),
        slot.clone().prop_map(Op::Cancel),
        slot.prop_map(Op::Rollback),
        Just(Op::Boot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the sequence: every op except rollback and boot keeps the other slot's tries
    /// and successful bit; a refused op writes nothing; the prediction matches the rule.
    #[test]
    fn other_slot_is_never_touched(ops in proptest::collection::vec(op(), 1..24)) {
        let mut gp = base();
        for op in ops {
            let before = fields(&gp);
            let (r, subject) = match op {
                Op::Stage(s, t) => (gp.stage(s, &target(), t), Some(s)),
                Op::Good(s) => (gp.mark_good(s), Some(s)),
                Op::Bad(s) => (gp.mark_bad(s), Some(s)),
                Op::Cancel(s) => (gp.cancel(s), Some(s)),
                Op::Rollback(s) => (gp.rollback(s), None),
                Op::Boot => (gp.boot_attempt().map(|_| ()), None),
            };
            let after = fields(&gp);
            if r.is_err() {
                prop_assert_eq!(after, before);
            }
            if let Some(s) = subject {
                let o = usize::from(s == Slot::A);
                prop_assert_eq!(after[o].tries, before[o].tries);
                prop_assert_eq!(after[o].successful, before[o].successful);
                prop_assert_eq!(after[o].priority > 0, before[o].priority > 0);
            }
            prop_assert_eq!(gp.status().unwrap().next, basalt_disk::gptprio::next_boot(after));
            prop_assert!(gp.table_health().unwrap().is_clean());
        }
    }
}

// ---- Versions never decide: the slot staged last boots next --------------------------------

/// Random semver that fits a GPT label (`basalt_<v>_verity` ≤ 36 characters).
fn version() -> impl Strategy<Value = String> {
    let pre = prop::option::of(prop_oneof![
        Just("rc.1"),
        Just("rc.10"),
        Just("RC.2"),
        Just("0")
    ]);
    let build = prop::option::of(prop_oneof![Just("build.5"), Just("b.6"), Just("001")]);
    (0u64..3, 0u64..3, pre, build).prop_map(|(ma, mi, pre, build)| {
        let mut v = format!("{ma}.{mi}.0");
        if let Some(p) = pre {
            v = format!("{v}-{p}");
        }
        if let Some(b) = build {
            v = format!("{v}+{b}");
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the two slots' versions (upgrade, downgrade, pre-release, builds of one
    /// version, equal): after `stage(s)` the slot `s` is `status().next`, and stays so while it
    /// has tries left until it is marked bad, cancelled, rolled away from or the other slot is
    /// staged. `status()` reports each slot's version verbatim.
    #[test]
    fn staged_slot_boots_next_whatever_the_versions(
        va in version(),
        vb in version(),
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let mut dev = tiny_disk_mem();
        let p = Path::new("mem");
        put_image(&mut dev, p, Slot::A, &va, 1, None).unwrap();
        put_image(&mut dev, p, Slot::B, &vb, 2, None).unwrap();
        let mut gp = GptPrio::new(dev, p);
        gp.mark_good(Slot::A).unwrap();
        let version_of = |s: Slot| if s == Slot::A { va.clone() } else { vb.clone() };
        let mut pending: Option<Slot> = None;
        for op in ops {
            let before = gp.status().unwrap();
            let r = match &op {
                Op::Stage(s, t) => {
                    let mut tg = target();
                    tg.version = version_of(*s);
                    tg.usr_hash = gpt_util::fake_hash(if *s == Slot::A { 1 } else { 2 }).to_hex();
                    let r = gp.stage(*s, &tg, *t);
                    prop_assert!(r.is_ok(), "stage {:?}: {:?}", s, r);
                    r
                }
                Op::Good(s) => gp.mark_good(*s),
                Op::Bad(s) => gp.mark_bad(*s),
                Op::Cancel(s) => gp.cancel(*s),
                Op::Rollback(s) => gp.rollback(*s),
                Op::Boot => gp.boot_attempt().map(|_| ()),
            };
            match (&op, r.is_ok()) {
                (Op::Stage(s, _), true) => pending = Some(*s),
                (Op::Bad(s) | Op::Cancel(s), true) if pending == Some(*s) => pending = None,
                (Op::Rollback(to), true) if pending == Some(!*to) => pending = None,
                // GPT bits cannot tell a slot that used its last try from one marked bad or
                // rolled away from: blessing revives either, on top unless the other slot is
                // staged and waiting (documented in gptprio.rs; BLS refuses instead).
                (Op::Good(s), true)
                    if before.slot(*s).status == BootStatus::Bad
                        && !matches!(before.slot(!*s).status, BootStatus::Trying { .. }) =>
                {
                    pending = Some(*s)
                }
                _ => {}
            }
            let st = gp.status().unwrap();
            if let Some(s) = pending {
                if matches!(st.slot(s).status, BootStatus::Trying { .. } | BootStatus::Good) {
                    prop_assert_eq!(st.next, Some(s), "staged {:?} not next after {:?}: {:?}", s, op, st);
                } else {
                    prop_assert!(matches!(op, Op::Boot), "{:?} killed the staged slot", op);
                    pending = None;
                }
            }
            if let (Op::Rollback(to), true) = (&op, r.is_ok()) {
                prop_assert_eq!(st.next, Some(*to));
                prop_assert_eq!(st.slot(!*to).status, BootStatus::Bad);
            }
            if let (Op::Bad(s), true) = (&op, r.is_ok()) {
                prop_assert_eq!(st.slot(*s).status, BootStatus::Bad);
                // Priority 0: cgpt never picks it (unlike systemd-boot, which boots a bad entry
                // when every entry is bad).
                prop_assert_ne!(st.next, Some(*s));
            }
            prop_assert_eq!(st.slot(Slot::A).version.as_deref(), Some(va.as_str()));
            prop_assert_eq!(st.slot(Slot::B).version.as_deref(), Some(vb.as_str()));
        }
    }
}
