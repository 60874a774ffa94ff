//! The update state machine driven against the in-memory engine: every transition, do / undo /
//! redo (cancel never touches the booted slot: Bottlerocket #949), restarts and reboots, and
//! a property test of random command/event sequences against a small model.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_manifest::chrono::{DateTime, TimeZone, Utc};
use basalt_manifest::Digest;
use basalt_updater::daemon::boot_facts;
use basalt_updater::engine::{
    CancelFlag, Candidate, CheckOutcome, CheckRequest, Downloaded, Engine, EngineError, Phase,
};
use basalt_updater::machine::{
    envelope_digest, BootFacts, CheckResult, Command, Effect, Event, InitFailure, InitFailures,
    Intent, Job, JobError, Machine, Origin, Refusal, Release, RollbackReason, State, HISTORY_LEN,
};
use basalt_updater::memory::{Call, FakeRelease, MemoryEngine, MemoryError, MemoryWorld};
use basalt_updater::status::StatusFile;
use proptest::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
}

fn job_error<E: EngineError>(e: E) -> JobError {
    JobError {
        class: e.class(),
        name: e.name().to_owned(),
        message: e.to_string(),
    }
}

/// The machine plus a synchronous in-memory engine that runs its effects on demand.
struct Harness {
    m: Machine,
    world: MemoryWorld,
    engine: MemoryEngine,
    pending: Option<Job>,
    health: bool,
    candidate: Option<Candidate>,
    cancel: CancelFlag,
    boot_id: u32,
    /// basalt-init's records the next start finds, and how often a start asked to clear them.
    init_failures: Option<InitFailures>,
    cleared: u32,
}

impl Harness {
    fn new() -> Self {
        let world = MemoryWorld::new("1.0.0");
        let engine = world.engine();
        let mut h = Harness {
            m: Machine::from_snapshot(Default::default()),
            world,
            engine,
            pending: None,
            health: false,
            candidate: None,
            cancel: CancelFlag::new(),
            boot_id: 0,
            init_failures: None,
            cleared: 0,
        };
        h.start(None, false);
        h
    }

    fn start(&mut self, snapshot: Option<basalt_updater::machine::Snapshot>, rebooted: bool) {
        let node = self.engine.node().unwrap();
        let mut facts = boot_facts(Some(&node), self.world.booted_hash(), rebooted);
        facts.init_failures = self.init_failures.clone();
        let (m, effects) = Machine::start(snapshot, &facts, now());
        self.m = m;
        self.pending = None;
        self.health = false;
        self.effects(effects);
    }

    fn effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Run(job) => {
                    assert!(
                        self.pending.is_none(),
                        "two jobs at once: {:?} and {job:?}",
                        self.pending
                    );
                    if matches!(job, Job::Download { .. }) {
                        self.cancel = CancelFlag::new();
                    }
                    self.pending = Some(job);
                }
                Effect::CancelRunning => self.cancel.cancel(),
                Effect::StartHealthGate => self.health = true,
                Effect::StopHealthGate => self.health = false,
                Effect::ClearInitFailures => self.cleared += 1,
            }
        }
    }

    fn cmd(&mut self, c: Command) -> Result<(), Refusal> {
        let before = self.m.clone();
        match self.m.command(c) {
            Ok(e) => {
                self.effects(e);
                Ok(())
            }
            Err(r) => {
                assert_eq!(self.m, before, "a refusal changed the machine");
                Err(r)
            }
        }
    }

    fn event(&mut self, ev: Event) {
        let e = self.m.event(ev, now());
        self.effects(e);
    }

    fn request(&self, allow: bool) -> CheckRequest {
        CheckRequest {
            now: now(),
            installed_version: self.m.current().cloned(),
            last_seen: self.m.known().map(|k| (k.sequence, k.envelope_sha256)),
            allow_downgrade: allow,
        }
    }

    /// Run the pending job to its end and deliver its result.
    fn complete(&mut self) -> bool {
        let Some(job) = self.pending.take() else {
            return false;
        };
        let ev = match job {
            Job::Check { allow_downgrade } => {
                let r = self
                    .engine
                    .check(&self.request(allow_downgrade))
                    .map_err(job_error);
                Event::CheckDone(r.map(|o| match o {
                    CheckOutcome::UpToDate { sequence, version } => {
                        CheckResult::UpToDate { sequence, version }
                    }
                    CheckOutcome::Available(c) => {
                        let rel = Release {
                            version: c.release.manifest.version.clone(),
                            sequence: c.release.manifest.sequence,
                            envelope_sha256: envelope_digest(&c.envelope),
                            downgrade: c.release.downgrade_override,
                            node_image_only: None,
                        };
                        self.candidate = Some(c);
                        CheckResult::Available(rel)
                    }
                }))
            }
            Job::Download { release } => {
                let c = self.candidate.clone().expect("a candidate");
                assert_eq!(envelope_digest(&c.envelope), release.envelope_sha256);
                let mut phases = Vec::new();
                let r =
                    self.engine
                        .download(&c, &mut |p| phases.push(p.phase), &self.cancel.clone());
                if phases.contains(&Phase::Verifying) {
                    let e = self.m.event(Event::Phase(Phase::Verifying), now());
                    assert!(e.is_empty());
                }
                Event::DownloadDone(r.map_err(job_error).map(|d: Downloaded| {
                    basalt_updater::machine::Target {
                        release: release.clone(),
                        slot: d.slot,
                        usr_hash: d.usr_hash,
                    }
                }))
            }
            Job::Apply { target } => {
                let d = Downloaded {
                    slot: target.slot,
                    version: target.release.version.clone(),
                    sequence: target.release.sequence,
                    usr_hash: target.usr_hash,
                    fetched: 0,
                    reused: 0,
                };
                Event::ApplyDone(self.engine.apply(&d, 3).map_err(job_error))
            }
            Job::Cancel => Event::CancelDone(self.engine.cancel().map_err(job_error)),
            Job::Rollback => Event::RollbackDone(self.engine.rollback().map_err(job_error)),
            Job::MarkGood => Event::MarkGoodDone(self.engine.mark_good().map_err(job_error)),
            Job::MarkBad { slot } => {
                Event::MarkBadDone(self.engine.mark_bad(slot).map_err(job_error))
            }
        };
        self.event(ev);
        true
    }

    fn settle(&mut self) {
        for _ in 0..10 {
            if !self.complete() {
                return;
            }
        }
        panic!("jobs do not settle");
    }

    /// Reboot the simulated machine and restart the daemon from the persisted snapshot
    /// (through the status file format).
    fn reboot(&mut self) -> Slot {
        let file = StatusFile::new(
            self.m.snapshot().clone(),
            &format!("boot-{}", self.boot_id),
            None,
            now(),
        );
        let bytes = file.to_bytes().unwrap();
        let back = StatusFile::parse(&bytes, std::path::Path::new("status.json")).unwrap();
        assert_eq!(back, file);
        let slot = self.world.reboot();
        self.boot_id += 1;
        self.start(Some(back.machine), true);
        slot
    }

    fn booted_boot(&self) -> BootStatus {
        let w = self.world.lock();
        w.slots[usize::from(w.booted == Slot::B)].boot
    }

    fn state(&self) -> &'static str {
        self.m.state().name()
    }

    /// Publish `version` and have an operator apply it: the slot is staged.
    fn stage(&mut self, version: &str, sequence: u64) {
        self.world.publish(FakeRelease::new(version, sequence));
        self.cmd(Command::Apply {
            origin: op(),
            allow_downgrade: false,
        })
        .unwrap();
        self.settle();
        assert_eq!(self.state(), "staged");
    }
}

fn op() -> Origin {
    Origin::Operator
}

#[test]
fn happy_path_check_download_apply_reboot_commit() {
    let mut h = Harness::new();
    assert_eq!(h.state(), "idle");
    assert_eq!(h.m.current().unwrap().to_string(), "1.0.0");
    h.world.publish(FakeRelease::new("2.0.0", 2));
    h.cmd(Command::Check { origin: op() }).unwrap();
    assert_eq!(h.state(), "checking");
    h.complete();
    assert_eq!(h.state(), "available");
    h.cmd(Command::Download {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    assert_eq!(h.state(), "downloading");
    h.complete();
    assert_eq!(h.state(), "downloaded");
    assert_eq!(h.world.slot(Slot::B).state, SlotState::Valid);
    assert_eq!(
        h.world.slot(Slot::B).boot,
        BootStatus::Absent,
        "downloaded is not bootable"
    );
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    assert_eq!(h.state(), "staging");
    h.complete();
    assert_eq!(h.state(), "staged");
    assert!(h.m.state().needs_reboot());
    assert_eq!(h.booted_boot(), BootStatus::Good);
    assert_eq!(h.reboot(), Slot::B);
    assert_eq!(h.state(), "pending-health");
    assert!(h.health, "the gate starts after the reboot");
    h.event(Event::HealthPassed);
    assert_eq!(h.state(), "committing");
    h.complete();
    assert_eq!(h.state(), "committed");
    assert_eq!(h.m.current().unwrap().to_string(), "2.0.0");
    assert_eq!(h.world.slot(Slot::B).boot, BootStatus::Good);
    let last = h.m.snapshot().history.back().unwrap();
    assert_eq!(last.kind, "committed");
    assert_eq!(h.m.snapshot().recorded, 1);
    // The same head again: up to date.
    h.cmd(Command::Check { origin: op() }).unwrap();
    h.complete();
    assert_eq!(h.state(), "idle");
}

#[test]
fn apply_from_idle_chains_check_download_stage() {
    let mut h = Harness::new();
    h.world.publish(FakeRelease::new("2.0.0", 2));
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    assert_eq!(
        h.m.state(),
        &State::Checking {
            intent: Intent::Apply,
            origin: op(),
            allow_downgrade: false
        }
    );
    h.settle();
    assert_eq!(h.state(), "staged");
}

#[test]
fn up_to_date_is_idle_and_a_failed_check_is_typed() {
    let mut h = Harness::new();
    h.cmd(Command::Check { origin: op() }).unwrap();
    h.complete();
    assert_eq!(h.state(), "idle");
    h.world.fail_next(
        Call::Check,
        MemoryError::new(
            basalt_updater::engine::ErrorClass::Network,
            "Timeout",
            "timed out",
        ),
    );
    h.cmd(Command::Check { origin: op() }).unwrap();
    h.complete();
    match h.m.state() {
        State::Failed { failure } => {
            assert_eq!(failure.error.name, "Timeout");
            assert_eq!(failure.operation.as_str(), "check");
        }
        s => panic!("{s:?}"),
    }
    assert!(h.m.snapshot().last_error.is_some());
    // From failed, a check runs again.
    h.cmd(Command::Check { origin: op() }).unwrap();
}

/// Bottlerocket #949: cancelling (at every point) never touches the booted slot, and redo
/// works.
#[test]
fn do_undo_redo_every_cancellable_state() {
    let mut h = Harness::new();
    h.world.publish(FakeRelease::new("2.0.0", 2));
    let booted_before = h.booted_boot();

    // downloading → cancel → available → download again
    h.cmd(Command::Check { origin: op() }).unwrap();
    h.complete();
    h.cmd(Command::Download {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    h.cmd(Command::Cancel).unwrap();
    assert_eq!(h.state(), "cancelling");
    h.settle();
    assert_eq!(h.state(), "available");
    assert_eq!(h.booted_boot(), booted_before);
    assert_ne!(h.world.slot(Slot::B).boot, BootStatus::Good);
    assert!(!matches!(
        h.world.slot(Slot::B).boot,
        BootStatus::Trying { .. }
    ));
    assert_eq!(h.m.snapshot().history.back().unwrap().kind, "cancelled");

    // downloaded → cancel → redo
    h.cmd(Command::Download {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    h.complete();
    assert_eq!(h.state(), "downloaded");
    h.cmd(Command::Cancel).unwrap();
    h.settle();
    assert_eq!(h.state(), "available");
    assert_eq!(h.booted_boot(), booted_before);

    // staged → cancel (tries withdrawn) → redo → staged
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    h.settle();
    assert_eq!(h.state(), "staged");
    assert!(matches!(
        h.world.slot(Slot::B).boot,
        BootStatus::Trying { tries_left: 3, .. }
    ));
    h.cmd(Command::Cancel).unwrap();
    h.settle();
    assert_eq!(h.state(), "available");
    assert_eq!(h.world.slot(Slot::B).boot, BootStatus::Absent);
    assert_eq!(
        h.booted_boot(),
        booted_before,
        "cancel touched the booted slot"
    );
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    h.settle();
    assert_eq!(h.state(), "staged");
    // Cancel after staging, then reboot: the old slot boots, nothing pending.
    h.cmd(Command::Cancel).unwrap();
    h.settle();
    assert_eq!(h.reboot(), Slot::A);
    assert_eq!(h.state(), "available");
}

#[test]
fn health_failure_marks_bad_reboots_and_records_rollback_then_no_auto_reinstall() {
    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    assert_eq!(h.reboot(), Slot::B);
    h.event(Event::HealthFailed {
        check: "unit containerd.service".into(),
        detail: "failed".into(),
    });
    assert_eq!(h.state(), "marking-bad");
    h.complete();
    match h.m.state() {
        State::RebootPending {
            to,
            reason: RollbackReason::HealthCheckFailed { check, .. },
            ..
        } => {
            assert_eq!(*to, Slot::A);
            assert_eq!(check, "unit containerd.service");
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(h.world.slot(Slot::B).boot, BootStatus::Bad);
    assert_eq!(h.reboot(), Slot::A);
    assert_eq!(h.state(), "rolled-back");
    let last = h.m.snapshot().history.back().unwrap();
    assert_eq!(last.kind, "rolled-back");
    assert!(last.detail.contains("containerd"), "{}", last.detail);
    assert_eq!(h.m.current().unwrap().to_string(), "1.0.0");
    // A timer run finds the same release and stops at available (denied).
    h.cmd(Command::Apply {
        origin: Origin::Timer,
        allow_downgrade: false,
    })
    .unwrap();
    h.settle();
    assert_eq!(h.state(), "available");
    // An operator may still install it.
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    h.settle();
    assert_eq!(h.state(), "staged");
}

#[test]
fn staged_slot_that_never_boots_is_recorded_as_rolled_back() {
    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    h.world.lock().slots[1].fails_to_boot = true;
    assert_eq!(h.reboot(), Slot::A);
    match h.m.state() {
        State::RolledBack {
            reason: RollbackReason::StagedDidNotBoot { init_failures },
            from,
            ..
        } => {
            assert_eq!(from.as_ref().unwrap().to_string(), "2.0.0");
            assert!(init_failures.is_empty());
        }
        s => panic!("{s:?}"),
    }
    assert!(!h.health);
    let last = h.m.snapshot().history.back().unwrap();
    assert!(last.detail.contains("no failure record"), "{}", last.detail);
    assert_eq!(h.cleared, 0, "no variable, nothing to clear");
}

fn init_failure(reason: &str, slot: Option<Slot>, usrhash: Option<Digest>) -> InitFailure {
    InitFailure {
        reason: reason.into(),
        slot,
        usrhash,
        detail: format!("{reason} detail"),
    }
}

/// basalt-init refused the staged slot three times and once refused something else: the three
/// explain the rollback, the fourth is reported on its own, each exactly once, and the
/// variable is cleared only by a start that could tell which slot booted.
#[test]
fn basalt_init_records_explain_the_rollback_once() {
    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    let staged = h.m.state().target().unwrap().clone();
    let records = InitFailures {
        records: vec![
            init_failure("usrhash-not-signed", Some(Slot::B), Some(staged.usr_hash)),
            init_failure("usrhash-not-signed", Some(Slot::B), Some(staged.usr_hash)),
            // No usrhash on the command line: matched by its slot.
            init_failure("mount-usr", Some(Slot::B), None),
            init_failure("no-boot-disk", None, None),
        ],
        digest: Digest([7; 32]),
    };
    h.init_failures = Some(records.clone());
    h.world.lock().slots[1].fails_to_boot = true;
    assert_eq!(h.reboot(), Slot::A);
    let State::RolledBack {
        reason: RollbackReason::StagedDidNotBoot { init_failures },
        ..
    } = h.m.state()
    else {
        panic!("{:?}", h.m.state())
    };
    assert_eq!(init_failures, &records.records[..3]);
    let history: Vec<_> = h.m.snapshot().history.iter().cloned().collect();
    let n = history.len();
    assert_eq!(history[n - 2].kind, "rolled-back");
    assert!(
        history[n - 2].detail.contains(
            "basalt-init refused 3 boots: usrhash-not-signed ×2, mount-usr ×1 (last: mount-usr detail)"
        ),
        "{}",
        history[n - 2].detail
    );
    assert_eq!(history[n - 1].kind, "boot-refused");
    assert!(
        history[n - 1]
            .detail
            .contains("an unnamed slot: basalt-init refused 1 boot: no-boot-disk ×1"),
        "{}",
        history[n - 1].detail
    );
    assert_eq!(h.cleared, 1);
    assert_eq!(h.m.snapshot().init_failures_seen, Some(records.digest));
    // The variable could not be deleted: the next start clears again, reports nothing new.
    let recorded = h.m.snapshot().recorded;
    h.reboot();
    assert_eq!(h.m.snapshot().recorded, recorded);
    assert_eq!(h.cleared, 2);
    // A start that cannot tell which slot booted keeps the records for a later start.
    h.init_failures = Some(InitFailures {
        records: vec![init_failure("dm-setup", Some(Slot::B), None)],
        digest: Digest([8; 32]),
    });
    let snapshot = h.m.snapshot().clone();
    let facts = BootFacts {
        booted: None,
        ..boot_facts(None, None, true)
    };
    let facts = BootFacts {
        init_failures: h.init_failures.clone(),
        ..facts
    };
    let (m, effects) = Machine::start(Some(snapshot.clone()), &facts, now());
    assert!(!effects.contains(&Effect::ClearInitFailures));
    assert_eq!(m.snapshot().recorded, snapshot.recorded);
    // And one that can, reports them.
    h.reboot();
    assert_eq!(h.cleared, 3);
    let last = h.m.snapshot().history.back().unwrap();
    assert_eq!(last.kind, "boot-refused");
    assert!(last.detail.starts_with("slot B: "), "{}", last.detail);
}

#[test]
fn operator_mark_bad_and_mark_good() {
    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    for c in [Command::MarkGood, Command::MarkBad] {
        assert!(matches!(h.cmd(c), Err(Refusal::NotPendingHealth { .. })));
    }
    h.reboot();
    h.cmd(Command::MarkGood).unwrap();
    assert!(!h.health, "the gate stops");
    h.settle();
    assert_eq!(h.state(), "committed");

    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    h.reboot();
    h.cmd(Command::MarkBad).unwrap();
    h.settle();
    assert!(matches!(
        h.m.state(),
        State::RebootPending {
            reason: RollbackReason::MarkedBad,
            ..
        }
    ));
    assert!(matches!(
        h.cmd(Command::Check { origin: op() }),
        Err(Refusal::RebootPending { .. })
    ));
    h.reboot();
    assert_eq!(h.state(), "rolled-back");
}

#[test]
fn operator_rollback_needs_a_good_other_slot() {
    let mut h = Harness::new();
    h.cmd(Command::Rollback).unwrap();
    h.complete();
    match h.m.state() {
        State::Failed { failure } => assert_eq!(failure.error.name, "NothingToRollBackTo"),
        s => panic!("{s:?}"),
    }
    // After an update is committed, rollback to the old slot works across a reboot.
    h.stage("2.0.0", 2);
    h.reboot();
    h.event(Event::HealthPassed);
    h.settle();
    h.cmd(Command::Rollback).unwrap();
    h.complete();
    assert!(matches!(
        h.m.state(),
        State::RebootPending {
            to: Slot::A,
            reason: RollbackReason::Operator,
            ..
        }
    ));
    assert_eq!(h.reboot(), Slot::A);
    assert_eq!(h.state(), "rolled-back");
    assert_eq!(h.m.current().unwrap().to_string(), "1.0.0");
}

#[test]
fn pin_blocks_download_and_apply_not_check() {
    let mut h = Harness::new();
    h.world.publish(FakeRelease::new("2.0.0", 2));
    h.cmd(Command::Pin).unwrap();
    for c in [
        Command::Download {
            origin: op(),
            allow_downgrade: false,
        },
        Command::Apply {
            origin: op(),
            allow_downgrade: false,
        },
    ] {
        assert!(matches!(h.cmd(c), Err(Refusal::Pinned { .. })));
    }
    h.cmd(Command::Check { origin: op() }).unwrap();
    h.complete();
    assert_eq!(h.state(), "available");
    h.cmd(Command::Unpin).unwrap();
    h.cmd(Command::Download {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
}

#[test]
fn downgrade_only_with_the_explicit_override() {
    let mut h = Harness::new();
    h.world.publish(FakeRelease::new("0.9.0", 2));
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    h.complete();
    match h.m.state() {
        State::Failed { failure } => assert_eq!(failure.error.name, "DowngradeRefused"),
        s => panic!("{s:?}"),
    }
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: true,
    })
    .unwrap();
    h.complete();
    assert_eq!(h.state(), "downloading");
    assert!(h.m.state().release().unwrap().downgrade);
    h.settle();
    assert_eq!(h.state(), "staged");
}

#[test]
fn a_downgrade_candidate_is_refused_without_the_override() {
    let mut m = Machine::from_snapshot(Default::default());
    m.command(Command::Check { origin: op() }).unwrap();
    let rel = Release {
        version: "0.1.0".parse().unwrap(),
        sequence: 9,
        envelope_sha256: envelope_digest(b"x"),
        downgrade: true,
        node_image_only: None,
    };
    m.event(Event::CheckDone(Ok(CheckResult::Available(rel))), now());
    let r = m.command(Command::Download {
        origin: op(),
        allow_downgrade: false,
    });
    assert!(
        matches!(r, Err(Refusal::DowngradeNotAllowed { .. })),
        "{r:?}"
    );
}

#[test]
fn restart_mid_download_resumes_and_mid_check_drops() {
    let mut h = Harness::new();
    h.world.publish(FakeRelease::new("2.0.0", 2));
    h.cmd(Command::Check { origin: op() }).unwrap();
    h.complete();
    h.cmd(Command::Apply {
        origin: op(),
        allow_downgrade: false,
    })
    .unwrap();
    assert_eq!(h.state(), "downloading");
    // The daemon restarts (same boot).
    let snap = h.m.snapshot().clone();
    h.start(Some(snap), false);
    assert_eq!(h.state(), "downloading");
    assert!(matches!(h.pending, Some(Job::Download { .. })));
    h.settle();
    assert_eq!(h.state(), "staged", "the apply intent survived the restart");
    // Restart while staged, same boot: still staged, nothing runs.
    let snap = h.m.snapshot().clone();
    h.start(Some(snap), false);
    assert_eq!(h.state(), "staged");
    assert!(h.pending.is_none());

    let mut h = Harness::new();
    h.cmd(Command::Check { origin: op() }).unwrap();
    let snap = h.m.snapshot().clone();
    h.start(Some(snap), false);
    assert_eq!(h.state(), "idle");
}

#[test]
fn start_without_status_follows_the_disk() {
    // A slot staged on disk, status lost: staged.
    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    h.start(None, false);
    assert_eq!(h.state(), "staged");
    // Booted into it, status lost: the gate runs.
    h.world.reboot();
    h.start(None, true);
    assert_eq!(h.state(), "pending-health");
    assert!(h.health);
    h.event(Event::HealthPassed);
    h.settle();
    assert_eq!(h.state(), "committed");
}

#[test]
fn unknown_boot_facts_keep_the_persisted_state() {
    let mut h = Harness::new();
    h.stage("2.0.0", 2);
    let snap = h.m.snapshot().clone();
    // Rebooted, but neither the engine nor boot.env can say what booted.
    let facts = boot_facts(None, None, true);
    let (m, effects) = Machine::start(Some(snap.clone()), &facts, now());
    assert_eq!(
        m.snapshot(),
        &snap,
        "no rollback concluded from missing facts"
    );
    assert!(effects.is_empty());
}

/// The status file lives on the writable root: a forged "marking-bad" of the booted, blessed
/// slot must not make the daemon condemn it.
#[test]
fn a_forged_mark_bad_of_the_blessed_booted_slot_is_refused() {
    let mut h = Harness::new();
    let booted_hash = h.world.booted_hash().unwrap();
    let mut snap = h.m.snapshot().clone();
    snap.state = State::MarkingBad {
        target: basalt_updater::machine::Target {
            release: Release {
                version: "1.0.0".parse().unwrap(),
                sequence: 1,
                envelope_sha256: envelope_digest(b"forged"),
                downgrade: false,
                node_image_only: None,
            },
            slot: Slot::A,
            usr_hash: booted_hash,
        },
        reason: RollbackReason::MarkedBad,
    };
    h.start(Some(snap), true);
    assert!(h.pending.is_none(), "no mark-bad job: {:?}", h.pending);
    match h.m.state() {
        State::Failed { failure } => assert_eq!(failure.error.name, "StatusInconsistent"),
        s => panic!("{s:?}"),
    }
    assert_eq!(h.world.slot(Slot::A).boot, BootStatus::Good);
}

#[test]
fn oversized_lists_in_a_status_file_are_bounded_at_start() {
    let mut snap = basalt_updater::machine::Snapshot::default();
    for i in 0..(HISTORY_LEN as u64 + 50) {
        snap.history.push_back(basalt_updater::machine::Outcome {
            at: now(),
            kind: "failed".into(),
            from: None,
            to: None,
            detail: i.to_string(),
        });
        snap.denied.push_back(Release {
            version: "9.9.9".parse().unwrap(),
            sequence: i,
            envelope_sha256: envelope_digest(&i.to_le_bytes()),
            downgrade: false,
            node_image_only: None,
        });
    }
    let world = MemoryWorld::new("1.0.0");
    let node = world.engine().node().unwrap();
    let (m, _) = Machine::start(Some(snap), &boot_facts(Some(&node), None, false), now());
    assert_eq!(m.snapshot().history.len(), HISTORY_LEN);
    assert_eq!(
        m.snapshot().history.back().unwrap().detail,
        (HISTORY_LEN as u64 + 49).to_string(),
        "the newest are kept"
    );
    assert_eq!(
        m.snapshot().denied.len(),
        basalt_updater::machine::DENIED_LEN
    );
}

#[test]
fn late_events_are_ignored() {
    let mut m = Machine::from_snapshot(Default::default());
    let before = m.clone();
    assert!(m.event(Event::HealthPassed, now()).is_empty());
    assert!(m.event(Event::CancelDone(Ok(())), now()).is_empty());
    assert!(m.event(Event::Phase(Phase::Verifying), now()).is_empty());
    assert_eq!(m, before);
}

#[test]
fn every_state_name_is_listed_once() {
    let mut names = State::NAMES.to_vec();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), State::NAMES.len());
}

// ───────────────────────────── property test ─────────────────────────────

/// The state an accepted command leads to (before any job finishes).
fn model_next(cmd: &Command, state: &'static str, timer_denied: bool) -> &'static str {
    const REST: [&str; 4] = ["idle", "committed", "rolled-back", "failed"];
    match cmd {
        Command::Pin | Command::Unpin | Command::PinExtension | Command::UnpinExtension => state,
        Command::Check { .. } => "checking",
        Command::Download { .. } | Command::Apply { .. } => match state {
            s if REST.contains(&s) => "checking",
            "available" if timer_denied => "available",
            "available" => "downloading",
            "downloaded" if matches!(cmd, Command::Apply { .. }) => "staging",
            s => s,
        },
        Command::Cancel => "cancelling",
        Command::Rollback => "rolling-back",
        Command::MarkGood => "committing",
        Command::MarkBad => "marking-bad",
    }
}

/// The model: which commands each state accepts, written as the table an operator reads
/// (independently of the machine's match): `Ok(())` or the refusal's name. [`model_next`]
/// says where an accepted command leads.
fn model(cmd: &Command, state: &str, pinned: bool, downgrade: bool) -> Result<(), &'static str> {
    const BUSY: [&str; 7] = [
        "downloading",
        "verifying",
        "staging",
        "cancelling",
        "committing",
        "marking-bad",
        "rolling-back",
    ];
    const REST: [&str; 4] = ["idle", "committed", "rolled-back", "failed"];
    let busy = BUSY.contains(&state);
    let rest = REST.contains(&state);
    // Pinned refuses downloads and applies first, in every state.
    if pinned && matches!(cmd, Command::Download { .. } | Command::Apply { .. }) {
        return Err("Pinned");
    }
    if state == "reboot-pending"
        && !matches!(
            cmd,
            Command::Pin | Command::Unpin | Command::PinExtension | Command::UnpinExtension
        )
    {
        return Err("RebootPending");
    }
    match cmd {
        Command::Pin | Command::Unpin => Ok(()),
        // Extension pins: not while an update's set is being made, nor while one waits.
        Command::PinExtension | Command::UnpinExtension => match state {
            "downloading" | "verifying" | "staging" | "cancelling" => Err("Busy"),
            "downloaded" | "staged" => Err("UpdatePending"),
            _ => Ok(()),
        },
        Command::Check { .. } => match state {
            _ if rest || state == "available" || state == "checking" => Ok(()),
            "downloaded" | "staged" => Err("UpdatePending"),
            _ => Err("Busy"),
        },
        Command::Download {
            allow_downgrade, ..
        }
        | Command::Apply {
            allow_downgrade, ..
        } => {
            if pinned {
                return Err("Pinned");
            }
            match state {
                "available" if downgrade && !allow_downgrade => Err("DowngradeNotAllowed"),
                _ if rest || state == "available" || state == "downloaded" || state == "staged" => {
                    Ok(())
                }
                // Joining a running check: refused only when it would silently drop the override.
                "checking" => Ok(()),
                "downloading" | "verifying" | "staging" => Ok(()),
                _ => Err("Busy"),
            }
        }
        Command::Cancel => match state {
            "downloading" | "verifying" | "downloaded" | "staged" | "cancelling" => Ok(()),
            "checking" | "staging" | "committing" | "marking-bad" | "rolling-back" => Err("Busy"),
            _ => Err("NothingToCancel"),
        },
        Command::Rollback => match state {
            _ if rest || state == "available" || state == "pending-health" => Ok(()),
            "downloaded" | "staged" => Err("UpdatePending"),
            _ if busy || state == "checking" => Err("Busy"),
            _ => Err("Busy"),
        },
        Command::MarkGood | Command::MarkBad => match state {
            "pending-health" => Ok(()),
            _ => Err("NotPendingHealth"),
        },
    }
}

#[derive(Debug, Clone)]
enum Step {
    Cmd(Command),
    Complete,
    HealthPass,
    HealthFail,
    Reboot,
    Restart,
    Publish(u8),
    Fault(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let origin = prop_oneof![Just(Origin::Operator), Just(Origin::Timer)];
    let cmd = prop_oneof![
        origin.clone().prop_map(|origin| Command::Check { origin }),
        (origin.clone(), any::<bool>()).prop_map(|(origin, allow_downgrade)| Command::Download {
            origin,
            allow_downgrade
        }),
        (origin, any::<bool>()).prop_map(|(origin, allow_downgrade)| Command::Apply {
            origin,
            allow_downgrade
        }),
        Just(Command::Cancel),
        Just(Command::Rollback),
        Just(Command::MarkGood),
        Just(Command::MarkBad),
        Just(Command::Pin),
        Just(Command::Unpin),
        Just(Command::PinExtension),
        Just(Command::UnpinExtension),
    ];
    prop_oneof![
        6 => cmd.prop_map(Step::Cmd),
        6 => Just(Step::Complete),
        1 => Just(Step::HealthPass),
        1 => Just(Step::HealthFail),
        1 => Just(Step::Reboot),
        1 => Just(Step::Restart),
        1 => (0u8..4).prop_map(Step::Publish),
        1 => (0u8..6).prop_map(Step::Fault),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Invariants over random sequences:
    /// - at most one job at a time; a refusal changes nothing;
    /// - the booted slot's boot state changes only through mark-good (to good), rollback and
    ///   mark-bad of the booted slot — never through check, download, apply or cancel (#949);
    /// - after a finished cancel, the inactive slot is not bootable;
    /// - pinned ⇒ download/apply refused; the history stays bounded; the snapshot survives the
    ///   status file round trip; the state name is a listed one.
    #[test]
    fn random_sequences_keep_the_invariants(steps in proptest::collection::vec(step(), 1..60)) {
        let mut h = Harness::new();
        h.world.publish(FakeRelease::new("2.0.0", 2));
        let mut seq = 2u64;
        for s in steps {
            let booted = h.world.lock().booted;
            let booted_boot = h.booted_boot();
            let mut may_change_booted = false;
            match s {
                Step::Cmd(c) => {
                    let pinned = h.m.pinned();
                    let state = h.state();
                    let downgrade = h.m.state().release().is_some_and(|r| r.downgrade);
                    let joins_check_with_override = matches!(h.m.state(), State::Checking { allow_downgrade: false, .. })
                        && matches!(c, Command::Download { allow_downgrade: true, .. } | Command::Apply { allow_downgrade: true, .. });
                    let expected = if joins_check_with_override && !pinned { Err("Busy") } else { model(&c, state, pinned, downgrade) };
                    let timer_denied = matches!(c, Command::Download { origin: Origin::Timer, .. } | Command::Apply { origin: Origin::Timer, .. })
                        && h.m.state().release().is_some_and(|r| h.m.is_denied(r));
                    let r = h.cmd(c);
                    prop_assert_eq!(r.as_ref().map(|_| ()).map_err(|e| e.name()), expected, "{:?} in {}", c, state);
                    if r.is_ok() {
                        prop_assert_eq!(h.state(), model_next(&c, state, timer_denied), "{:?} from {}", c, state);
                    }
                    if pinned && matches!(c, Command::Download { .. } | Command::Apply { .. }) {
                        prop_assert!(matches!(r, Err(Refusal::Pinned { .. })), "{r:?}");
                    }
                }
                Step::Complete => {
                    let job = h.pending.clone();
                    may_change_booted = matches!(job, Some(Job::Rollback | Job::MarkGood | Job::MarkBad { .. }));
                    let was_cancel = matches!(job, Some(Job::Cancel));
                    h.complete();
                    if was_cancel && !matches!(h.m.state(), State::Failed { .. }) {
                        let inactive = h.world.slot(!booted);
                        prop_assert!(!matches!(inactive.boot, BootStatus::Trying { .. }), "{inactive:?}");
                    }
                }
                Step::HealthPass => h.event(Event::HealthPassed),
                Step::HealthFail => h.event(Event::HealthFailed { check: "x".into(), detail: "y".into() }),
                Step::Reboot => {
                    if h.pending.is_none() {
                        may_change_booted = true;
                        h.reboot();
                    }
                }
                Step::Restart => {
                    let snap = h.m.snapshot().clone();
                    h.start(Some(snap), false);
                }
                Step::Publish(n) => {
                    seq += 1;
                    let v = ["0.5.0", "2.0.0", "3.0.0", "4.1.0"][usize::from(n)];
                    h.world.publish(FakeRelease::new(v, seq));
                }
                Step::Fault(n) => {
                    let call = [Call::Check, Call::Download, Call::Apply, Call::Cancel, Call::MarkGood, Call::Rollback][usize::from(n)];
                    h.world.fail_next(call, MemoryError::new(basalt_updater::engine::ErrorClass::Disk, "Injected", "injected"));
                }
            }
            if !may_change_booted {
                prop_assert_eq!(h.world.lock().booted, booted);
                prop_assert_eq!(h.booted_boot(), booted_boot, "the booted slot's boot state changed");
            }
            prop_assert!(State::NAMES.contains(&h.state()));
            prop_assert!(h.m.snapshot().history.len() <= HISTORY_LEN);
            let hist_len = h.m.snapshot().history.len() as u64;
            prop_assert!(h.m.snapshot().recorded >= hist_len, "recorded counts every outcome");
            let file = StatusFile::new(h.m.snapshot().clone(), "b", None, now());
            let back = StatusFile::parse(&file.to_bytes().unwrap(), std::path::Path::new("s")).unwrap();
            prop_assert_eq!(back.machine, h.m.snapshot().clone());
        }
    }
}
