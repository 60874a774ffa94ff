//! The update state machine: pure (no I/O, no clock, no engine), so it is tested exhaustively
//! and property-tested against a small model. The daemon feeds it operator/timer
//! [`Command`]s and the results of the work it asked for ([`Event`]s); it answers with
//! [`Effect`]s for the daemon to carry out, or a typed [`Refusal`]. Every (command, state)
//! pair is one arm of [`Machine::command`]; the last arm is the refusal. Every change of state
//! goes through one function, [`Machine::go`], which logs `from → to`.
//!
//! ```text
//!  normal path                                              (operator or timer commands)
//!  ───────────
//!  Idle/Committed/RolledBack/Failed ──check──▶ Checking ──up to date──▶ Idle
//!                                                │ verified release
//!                                                ▼
//!                                            Available ──download/apply──▶ Downloading
//!                                                ▲                            │ phase
//!                    cancel done ────────────────┤                            ▼
//!                                                │                        Verifying
//!                                           Cancelling ◀──cancel──┐            │ re-verified
//!                                                ▲                │  download  ▼   apply
//!                                                ├────cancel──── Downloaded ──────▶ Staging
//!                                                │                                   │ staged
//!                                                └────cancel───────────────────── Staged
//!                                                                                    │ reboot
//!  after the reboot (Machine::start, from the persisted state and what booted)      ▼
//!     staged slot booted ──▶ PendingHealth ──gate passed / mark-good──▶ Committing ──▶ Committed
//!                                  │ gate failed / mark-bad
//!                                  ▼
//!                             MarkingBad ──▶ RebootPending ──reboot──▶ RolledBack
//!     previous slot booted (tries ran out, basalt-init refused) ─────▶ RolledBack
//!
//!  operator rollback: rest state ──rollback──▶ RollingBack ──▶ RebootPending ──reboot──▶ RolledBack
//!
//!  failure paths: any engine error ──▶ Failed{operation, class, name, message}
//!     (the engine left the inactive slot unbootable; the booted slot is never touched)
//!  final states (rest): Idle, Available, Downloaded, Staged, Committed, RolledBack, Failed
//! ```
//!
//! Decisions:
//! - **A release that was rolled back on this node is not installed again automatically**
//!   (timer-driven runs stop at `Available`); an operator's explicit download/apply does
//!   install it. Otherwise a bad release would loop: install, fail health, roll back, repeat.
//! - **Pin** holds the node at its version: download and apply are refused while pinned, checks
//!   still run (so the operator sees what is available). A staged update stays staged; cancel
//!   it to drop it.
//! - **Extension pins** (PinExtension / UnpinExtension) may change in every state except
//!   while an update is downloading, verifying, staging or cancelling (busy) and while one is
//!   downloaded or staged (its extension set was made under the old pins: cancel it first).
//!   The machine only decides *whether*; the daemon has the engine do it.
//! - **Cancel never touches the booted slot** (Bottlerocket #949): it only asks the engine to
//!   withdraw the inactive slot, whose contract says the other slot's boot state is untouched.
//!   A running download is stopped through its cancel flag first.
//! - A check is not cancellable (it is short and bounded by the source's timeouts): cancel
//!   during a check is refused as busy.
//! - Idempotent requests succeed without effect: a second check while checking joins the
//!   running one; download while downloading, apply while staged, pin while pinned.

use std::collections::VecDeque;
use std::fmt;

use basalt_disk::Slot;
use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::Digest;
use serde::{Deserialize, Serialize};

use crate::engine::{ErrorClass, Phase};

/// How many outcomes the history keeps (oldest dropped first).
pub const HISTORY_LEN: usize = 32;
/// How many rolled-back releases are remembered (not installed again automatically).
pub const DENIED_LEN: usize = 8;

/// A verified release the node knows of (the engine's `Candidate`, summarised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub version: Version,
    pub sequence: u64,
    /// SHA-256 of the signed envelope: identifies these exact bytes.
    pub envelope_sha256: Digest,
    /// Older than the booted version (accepted only with the operator's explicit override).
    pub downgrade: bool,
    /// The fleet server's word on how this release moves the extensions
    /// (`Candidate::node_image_only`); absent: the node's own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_image_only: Option<bool>,
}

/// A release written into a slot and re-verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub release: Release,
    #[serde(with = "slot_letter")]
    pub slot: Slot,
    /// The verity root hash recomputed from the written bytes (the `usrhash=` it boots with).
    pub usr_hash: Digest,
}

/// How far a started run goes without another command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intent {
    Check,
    Download,
    Apply,
}

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A person or tool over D-Bus.
    Operator,
    /// The daemon's own periodic check / automatic download and apply.
    Timer,
}

/// Which operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Check,
    Download,
    Apply,
    Cancel,
    Rollback,
    MarkGood,
    MarkBad,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Check => "check",
            Operation::Download => "download",
            Operation::Apply => "apply",
            Operation::Cancel => "cancel",
            Operation::Rollback => "rollback",
            Operation::MarkGood => "mark-good",
            Operation::MarkBad => "mark-bad",
        }
    }
}

/// An engine failure, as the machine keeps it (the engine's error is not `Clone`/serialisable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobError {
    #[serde(with = "class_name")]
    pub class: ErrorClass,
    /// The engine's stable name of the exact failure.
    pub name: String,
    pub message: String,
}

/// Why the machine is in `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub operation: Operation,
    pub error: JobError,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}",
            self.operation.as_str(),
            self.error.name,
            self.error.message
        )
    }
}

/// Why the node went (or is going) back to the previous slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum RollbackReason {
    /// A health check of the new boot failed within the deadline.
    HealthCheckFailed { check: String, detail: String },
    /// An operator marked the new boot bad.
    MarkedBad,
    /// An operator asked for a rollback.
    Operator,
    /// The staged slot never came up: its boot tries ran out (a kernel panic, basalt-init
    /// refusing the slot, dm-verity corruption …) and the boot loader fell back. When
    /// basalt-init refused it, its failure records for that slot say why.
    StagedDidNotBoot {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        init_failures: Vec<InitFailure>,
    },
}

/// One boot `basalt-init` refused, as it recorded it in its EFI variable
/// (`basalt_initramfs::failrec`). Diagnostic only: root on the node can forge one, so it is
/// reported, never a reason to change a boot decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitFailure {
    /// The stable reason token (`usrhash-not-signed`, `usr-partition-not-found`, …).
    pub reason: String,
    /// The slot of the refused boot (`basalt.slot=`), when the command line named one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_slot_letter"
    )]
    pub slot: Option<Slot>,
    /// The `usrhash=` of the refused boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usrhash: Option<Digest>,
    /// basalt-init's error chain (printable ASCII, bounded).
    pub detail: String,
}

impl InitFailure {
    /// Whether this refused boot was of `target` (its image, or its slot when the record
    /// names no image).
    pub fn is_of(&self, target: &Target) -> bool {
        match self.usrhash {
            Some(h) => h == target.usr_hash,
            None => self.slot == Some(target.slot),
        }
    }
}

/// The failure records found at start, and the digest of the variable that held them (a
/// variable already reported is not reported again, even if it could not be deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFailures {
    pub records: Vec<InitFailure>,
    pub digest: Digest,
}

/// `3 boots refused: usrhash-not-signed ×3 (last: <detail>)`.
fn describe_init_failures(records: &[InitFailure]) -> String {
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for r in records {
        match reasons.iter_mut().find(|(name, _)| *name == r.reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((&r.reason, 1)),
        }
    }
    let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
    let last = records.last().map_or("", |r| r.detail.as_str());
    format!(
        "basalt-init refused {} boot{}: {} (last: {last})",
        records.len(),
        if records.len() == 1 { "" } else { "s" },
        list.join(", ")
    )
}

impl fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackReason::HealthCheckFailed { check, detail } => {
                write!(f, "health check {check} failed: {detail}")
            }
            RollbackReason::MarkedBad => f.write_str("marked bad by an operator"),
            RollbackReason::Operator => f.write_str("rollback requested by an operator"),
            RollbackReason::StagedDidNotBoot { init_failures } if init_failures.is_empty() => {
                f.write_str(
                    "the staged slot did not boot (its tries ran out; basalt-init left no failure record)",
                )
            }
            RollbackReason::StagedDidNotBoot { init_failures } => write!(
                f,
                "the staged slot did not boot: {}",
                describe_init_failures(init_failures)
            ),
        }
    }
}

/// The machine's states. See the module docs for the diagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", deny_unknown_fields)]
pub enum State {
    Idle,
    Checking {
        intent: Intent,
        origin: Origin,
        allow_downgrade: bool,
    },
    Available {
        release: Release,
    },
    Downloading {
        release: Release,
        intent: Intent,
    },
    Verifying {
        release: Release,
        intent: Intent,
    },
    Downloaded {
        target: Target,
    },
    Staging {
        target: Target,
    },
    Staged {
        target: Target,
    },
    Cancelling {
        release: Release,
        /// The download is still running (its cancel flag is set); the engine's `cancel` runs
        /// once it returned.
        download_running: bool,
    },
    PendingHealth {
        target: Target,
    },
    Committing {
        target: Target,
    },
    MarkingBad {
        target: Target,
        reason: RollbackReason,
    },
    RollingBack,
    RebootPending {
        /// The slot that boots next.
        #[serde(with = "slot_letter")]
        to: Slot,
        /// The version being left, when known.
        from: Option<Version>,
        reason: RollbackReason,
    },
    Committed {
        version: Version,
    },
    RolledBack {
        from: Option<Version>,
        to: Option<Version>,
        reason: RollbackReason,
    },
    Failed {
        failure: Failure,
    },
}

impl State {
    /// The stable name (the D-Bus `State` property, `basaltctl status`).
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking { .. } => "checking",
            State::Available { .. } => "available",
            State::Downloading { .. } => "downloading",
            State::Verifying { .. } => "verifying",
            State::Downloaded { .. } => "downloaded",
            State::Staging { .. } => "staging",
            State::Staged { .. } => "staged",
            State::Cancelling { .. } => "cancelling",
            State::PendingHealth { .. } => "pending-health",
            State::Committing { .. } => "committing",
            State::MarkingBad { .. } => "marking-bad",
            State::RollingBack => "rolling-back",
            State::RebootPending { .. } => "reboot-pending",
            State::Committed { .. } => "committed",
            State::RolledBack { .. } => "rolled-back",
            State::Failed { .. } => "failed",
        }
    }

    /// Every state name, for docs and the committed schema.
    pub const NAMES: [&'static str; 17] = [
        "idle",
        "checking",
        "available",
        "downloading",
        "verifying",
        "downloaded",
        "staging",
        "staged",
        "cancelling",
        "pending-health",
        "committing",
        "marking-bad",
        "rolling-back",
        "reboot-pending",
        "committed",
        "rolled-back",
        "failed",
    ];

    /// A state where nothing runs and a new check may start.
    pub fn is_rest(&self) -> bool {
        matches!(
            self,
            State::Idle
                | State::Available { .. }
                | State::Committed { .. }
                | State::RolledBack { .. }
                | State::Failed { .. }
        )
    }

    /// The release this state is about, if any.
    pub fn release(&self) -> Option<&Release> {
        match self {
            State::Available { release }
            | State::Downloading { release, .. }
            | State::Verifying { release, .. }
            | State::Cancelling { release, .. } => Some(release),
            State::Downloaded { target }
            | State::Staging { target }
            | State::Staged { target }
            | State::PendingHealth { target }
            | State::Committing { target }
            | State::MarkingBad { target, .. } => Some(&target.release),
            _ => None,
        }
    }

    /// The written slot this state is about, if any.
    pub fn target(&self) -> Option<&Target> {
        match self {
            State::Downloaded { target }
            | State::Staging { target }
            | State::Staged { target }
            | State::PendingHealth { target }
            | State::Committing { target }
            | State::MarkingBad { target, .. } => Some(target),
            _ => None,
        }
    }

    /// The node must reboot to finish this state (a staged update or a rollback).
    pub fn needs_reboot(&self) -> bool {
        matches!(self, State::Staged { .. } | State::RebootPending { .. })
    }
}

/// What an operator or the timer asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Check {
        origin: Origin,
    },
    /// Check if needed, then download and verify (not staged).
    Download {
        origin: Origin,
        allow_downgrade: bool,
    },
    /// Check and download if needed, then stage for the next boot.
    Apply {
        origin: Origin,
        allow_downgrade: bool,
    },
    Cancel,
    Rollback,
    MarkGood,
    MarkBad,
    Pin,
    Unpin,
    /// Pin an extension version (the name and version travel with the daemon's request; the
    /// machine only decides whether the pins may change now).
    PinExtension,
    /// Remove an extension's pin.
    UnpinExtension,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Check { .. } => "check",
            Command::Download { .. } => "download",
            Command::Apply { .. } => "apply",
            Command::Cancel => "cancel",
            Command::Rollback => "rollback",
            Command::MarkGood => "mark-good",
            Command::MarkBad => "mark-bad",
            Command::Pin => "pin",
            Command::Unpin => "unpin",
            Command::PinExtension => "pin-extension",
            Command::UnpinExtension => "unpin-extension",
        }
    }
}

/// A refused command. Each variant is one D-Bus error (`org.basalt.Updater1.Error.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Work is running that this command cannot interrupt.
    #[error("busy: {command} is not possible while {state}")]
    Busy {
        command: &'static str,
        state: &'static str,
    },
    #[error("nothing to cancel while {state}")]
    NothingToCancel { state: &'static str },
    /// An update is downloaded or staged: apply it (reboot) or cancel it first.
    #[error("{command} refused: update {version} is {state}; cancel it first")]
    UpdatePending {
        command: &'static str,
        version: Version,
        state: &'static str,
    },
    #[error("{command} refused: the node is pinned to its version (unpin first)")]
    Pinned { command: &'static str },
    /// mark-good / mark-bad apply to a freshly booted update awaiting its health verdict.
    #[error("{command} refused: no new boot is awaiting a health verdict (state {state})")]
    NotPendingHealth {
        command: &'static str,
        state: &'static str,
    },
    #[error("{command} refused: a reboot into slot {to} is already due")]
    RebootPending { command: &'static str, to: Slot },
    #[error(
        "{command} refused: {version} is older than the booted version; pass allow-downgrade \
         to install it"
    )]
    DowngradeNotAllowed {
        command: &'static str,
        version: Version,
    },
}

impl Refusal {
    /// The stable name (suffix of the D-Bus error name).
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::Busy { .. } => "Busy",
            Refusal::NothingToCancel { .. } => "NothingToCancel",
            Refusal::UpdatePending { .. } => "UpdatePending",
            Refusal::Pinned { .. } => "Pinned",
            Refusal::NotPendingHealth { .. } => "NotPendingHealth",
            Refusal::RebootPending { .. } => "RebootPending",
            Refusal::DowngradeNotAllowed { .. } => "DowngradeNotAllowed",
        }
    }
}

/// Work the daemon runs on the engine's worker thread, one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Check { allow_downgrade: bool },
    Download { release: Release },
    Apply { target: Target },
    Cancel,
    Rollback,
    MarkGood,
    MarkBad { slot: Slot },
}

/// What the daemon must do after a command or event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Start this job (no other job is running: the machine never asks for two).
    Run(Job),
    /// Set the running download's cancel flag.
    CancelRunning,
    /// basalt-init's failure records were taken into the snapshot: delete the EFI variable
    /// once the snapshot is on disk (never before: a crash in between repeats a report, never
    /// loses one).
    ClearInitFailures,
    /// Start the health gate for the booted slot.
    StartHealthGate,
    /// Stop a running health gate (an operator decided).
    StopHealthGate,
}

/// The result of a check, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    UpToDate { sequence: u64, version: Version },
    Available(Release),
}

/// The results of jobs and of the health gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    CheckDone(Result<CheckResult, JobError>),
    /// The running download moved to a new phase.
    Phase(Phase),
    DownloadDone(Result<Target, JobError>),
    ApplyDone(Result<(), JobError>),
    CancelDone(Result<(), JobError>),
    /// Ok: the slot that boots next.
    RollbackDone(Result<Slot, JobError>),
    MarkGoodDone(Result<(), JobError>),
    MarkBadDone(Result<(), JobError>),
    HealthPassed,
    HealthFailed {
        check: String,
        detail: String,
    },
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::CheckDone(_) => "check-done",
            Event::Phase(_) => "phase",
            Event::DownloadDone(_) => "download-done",
            Event::ApplyDone(_) => "apply-done",
            Event::CancelDone(_) => "cancel-done",
            Event::RollbackDone(_) => "rollback-done",
            Event::MarkGoodDone(_) => "mark-good-done",
            Event::MarkBadDone(_) => "mark-bad-done",
            Event::HealthPassed => "health-passed",
            Event::HealthFailed { .. } => "health-failed",
        }
    }
}

/// One outcome in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub at: DateTime<Utc>,
    /// `committed`, `rolled-back`, `failed`, `cancelled`, `boot-refused` (basalt-init refused
    /// boots that were not of a staged update: the detail says which slot and why).
    pub kind: String,
    pub from: Option<Version>,
    pub to: Option<Version>,
    /// The failure or rollback reason, or empty.
    pub detail: String,
}

/// What the machine knows about the booted system when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFacts {
    /// The slot that booted and its `/usr` root hash (from `usrhash=` / `boot.env`).
    pub booted: Option<(Slot, Digest)>,
    /// The booted slot's version, when its image carries one.
    pub booted_version: Option<Version>,
    /// The persisted state was written during an earlier boot (the boot id changed).
    pub rebooted: bool,
    /// What the disk says about a slot staged but not booted yet (boot state "trying"), for
    /// a start without a usable status file.
    pub staged_on_disk: Option<Target>,
    /// The booted slot is still on trial (boot state "trying"): an update booted whose
    /// status was lost.
    pub booted_on_trial: Option<Target>,
    /// The booted slot's boot state is "good" (blessed).
    pub booted_blessed: bool,
    /// basalt-init's failure records (EFI variable), when there is a variable.
    pub init_failures: Option<InitFailures>,
}

/// The persistent part of the machine (what the status file holds besides daemon facts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub state: State,
    pub pinned: bool,
    pub current: Option<Version>,
    /// The newest verified release the node accepted (the anti-replay high-water mark).
    pub known: Option<Release>,
    pub last_error: Option<Failure>,
    pub last_check: Option<DateTime<Utc>>,
    pub history: VecDeque<Outcome>,
    /// Releases rolled back on this node (newest last).
    pub denied: VecDeque<Release>,
    /// Outcomes ever recorded (the history keeps the last [`HISTORY_LEN`]); lets a reader tell
    /// how many entries are new.
    #[serde(default)]
    pub recorded: u64,
    /// The digest of the last failure-record variable reported (see [`InitFailures`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_failures_seen: Option<Digest>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            state: State::Idle,
            pinned: false,
            current: None,
            known: None,
            last_error: None,
            last_check: None,
            history: VecDeque::new(),
            denied: VecDeque::new(),
            recorded: 0,
            init_failures_seen: None,
        }
    }
}

/// The state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    s: Snapshot,
}

impl Machine {
    /// A machine in a given persisted form (no reconciliation; see [`Machine::start`]).
    pub fn from_snapshot(s: Snapshot) -> Self {
        Self { s }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.s
    }

    pub fn state(&self) -> &State {
        &self.s.state
    }

    pub fn pinned(&self) -> bool {
        self.s.pinned
    }

    /// The version that booted (or was committed).
    pub fn current(&self) -> Option<&Version> {
        self.s.current.as_ref()
    }

    pub fn known(&self) -> Option<&Release> {
        self.s.known.as_ref()
    }

    /// Start after a daemon (re)start: reconcile the persisted snapshot (`None`: missing or
    /// unusable) with what booted. Returns the machine and the effects to run (the health gate,
    /// a job to resume).
    pub fn start(
        persisted: Option<Snapshot>,
        facts: &BootFacts,
        now: DateTime<Utc>,
    ) -> (Self, Vec<Effect>) {
        // Failure records are taken only when the booted slot is known (otherwise nothing is
        // concluded and they stay for a start that can tell), and only once per variable.
        let seen = persisted.as_ref().and_then(|s| s.init_failures_seen);
        let mut pending = match &facts.init_failures {
            Some(f) if facts.booted.is_some() && Some(f.digest) != seen => f.records.clone(),
            _ => Vec::new(),
        };
        let (mut m, mut effects) = Self::start_inner(persisted, facts, now, &mut pending);
        if let (Some(f), Some(_)) = (&facts.init_failures, facts.booted) {
            m.report_init_failures(pending, now);
            m.s.init_failures_seen = Some(f.digest);
            effects.push(Effect::ClearInitFailures);
        }
        (m, effects)
    }

    /// Records not explained by a rollback: one `boot-refused` outcome per refused image.
    fn report_init_failures(&mut self, mut rest: Vec<InitFailure>, now: DateTime<Utc>) {
        while let Some(first) = rest.first().cloned() {
            let (same, others): (Vec<_>, Vec<_>) = rest
                .into_iter()
                .partition(|r| r.usrhash == first.usrhash && r.slot == first.slot);
            rest = others;
            let slot = first
                .slot
                .map_or_else(|| "an unnamed slot".to_owned(), |s| format!("slot {s}"));
            let image = first
                .usrhash
                .map_or_else(String::new, |h| format!(" (usrhash {})", &h.to_hex()[..16]));
            let detail = format!("{slot}{image}: {}", describe_init_failures(&same));
            tracing::warn!("{detail}");
            self.record(now, "boot-refused", None, None, detail);
        }
    }

    fn start_inner(
        persisted: Option<Snapshot>,
        facts: &BootFacts,
        now: DateTime<Utc>,
        init_failures: &mut Vec<InitFailure>,
    ) -> (Self, Vec<Effect>) {
        let from_disk = persisted.is_none();
        let mut m = Machine {
            s: persisted.unwrap_or_default(),
        };
        // A status file is data from the writable root: keep its lists within their bounds
        // (newest entries kept) whatever it says.
        while m.s.history.len() > HISTORY_LEN {
            m.s.history.pop_front();
        }
        while m.s.denied.len() > DENIED_LEN {
            m.s.denied.pop_front();
        }
        m.s.current = facts.booted_version.clone().or(m.s.current.take());
        let booted_hash = facts.booted.map(|(_, h)| h);
        let booted_slot = facts.booted.map(|(s, _)| s);
        if from_disk {
            // Nothing persisted: the disk decides.
            if let Some(target) = &facts.booted_on_trial {
                m.go(
                    State::PendingHealth {
                        target: target.clone(),
                    },
                    "start: booted slot on trial",
                );
                return (m, vec![Effect::StartHealthGate]);
            }
            if let Some(target) = &facts.staged_on_disk {
                m.go(
                    State::Staged {
                        target: target.clone(),
                    },
                    "start: a slot is staged on disk",
                );
            }
            return (m, Vec::new());
        }
        if facts.booted.is_none() {
            // The engine could not read the disk and basalt-init left no record: nothing can be
            // concluded about the last update. Keep the persisted state untouched (no
            // rollback recorded, no job resumed) until a start that can tell.
            tracing::error!(
                state = m.s.state.name(),
                "cannot tell which slot booted; keeping the persisted state as it is"
            );
            return (m, Vec::new());
        }
        let state = m.s.state.clone();
        let was_staged = matches!(state, State::Staged { .. });
        match state {
            // The new slot is up: judge it (again, after a crash during the gate).
            State::Staged { target }
            | State::PendingHealth { target }
            | State::Committing { target }
                if booted_hash == Some(target.usr_hash) && (facts.rebooted || !was_staged) =>
            {
                m.go(
                    State::PendingHealth { target },
                    "start: the updated slot booted",
                );
                (m, vec![Effect::StartHealthGate])
            }
            // Not rebooted yet: still staged.
            State::Staged { .. } if !facts.rebooted => (m, Vec::new()),
            // Rebooted, but not into the new slot: the boot loader fell back.
            State::Staged { target }
            | State::PendingHealth { target }
            | State::Committing { target } => {
                let (theirs, rest): (Vec<_>, Vec<_>) = std::mem::take(init_failures)
                    .into_iter()
                    .partition(|r| r.is_of(&target));
                *init_failures = rest;
                let reason = RollbackReason::StagedDidNotBoot {
                    init_failures: theirs,
                };
                m.rolled_back(now, Some(target.release.clone()), reason);
                (m, Vec::new())
            }
            State::MarkingBad { target, .. }
                if facts.booted_blessed && booted_hash == Some(target.usr_hash) =>
            {
                // The status file (on the writable root) asks to condemn a slot the boot loader
                // already holds as good: never act on that, say so.
                m.fail(
                    now,
                    Operation::MarkBad,
                    JobError {
                        class: ErrorClass::Internal,
                        name: "StatusInconsistent".into(),
                        message: format!(
                            "the status file says slot {} is being marked bad, but it booted and is blessed; nothing was changed",
                            target.slot
                        ),
                    },
                );
                (m, Vec::new())
            }
            State::MarkingBad { target, reason } => {
                if booted_hash == Some(target.usr_hash) && booted_slot == Some(target.slot) {
                    // Interrupted before the verdict was written: write it again.
                    m.go(
                        State::MarkingBad {
                            target: target.clone(),
                            reason,
                        },
                        "start: resume mark-bad",
                    );
                    (m, vec![Effect::Run(Job::MarkBad { slot: target.slot })])
                } else {
                    m.rolled_back(now, Some(target.release.clone()), reason);
                    (m, Vec::new())
                }
            }
            State::RebootPending { to, from, reason } => {
                if !facts.rebooted {
                    (m, Vec::new())
                } else if booted_slot == Some(to) {
                    let to_version = m.s.current.clone();
                    m.go(
                        State::RolledBack {
                            from: from.clone(),
                            to: to_version.clone(),
                            reason: reason.clone(),
                        },
                        "start: rolled back",
                    );
                    m.record(now, "rolled-back", from, to_version, reason.to_string());
                    (m, Vec::new())
                } else {
                    let message = format!(
                        "a reboot into slot {to} was due ({reason}) but slot {} booted",
                        booted_slot.map_or("?".to_owned(), |s| s.to_string())
                    );
                    m.fail(
                        now,
                        Operation::Rollback,
                        JobError {
                            class: ErrorClass::BootControl,
                            name: "RollbackDidNotHappen".into(),
                            message,
                        },
                    );
                    (m, Vec::new())
                }
            }
            // Interrupted work. A download resumes (the engine re-verifies what was written);
            // staging runs again from the re-verified slot.
            State::Downloading { release, intent } | State::Verifying { release, intent } => {
                m.go(
                    State::Downloading {
                        release: release.clone(),
                        intent,
                    },
                    "start: resume download",
                );
                (m, vec![Effect::Run(Job::Download { release })])
            }
            State::Staging { target } => {
                m.go(
                    State::Staging {
                        target: target.clone(),
                    },
                    "start: resume staging",
                );
                (m, vec![Effect::Run(Job::Apply { target })])
            }
            State::Cancelling { release, .. } => {
                m.go(
                    State::Cancelling {
                        release,
                        download_running: false,
                    },
                    "start: resume cancel",
                );
                (m, vec![Effect::Run(Job::Cancel)])
            }
            State::Checking { .. } => {
                m.go(State::Idle, "start: the interrupted check is dropped");
                (m, Vec::new())
            }
            State::RollingBack => {
                // The engine's rollback may or may not have been written: the operator asks
                // again. Nothing was lost: both slots are still what they were or rolled back.
                m.fail(now, Operation::Rollback, JobError { class: ErrorClass::Internal, name: "Interrupted".into(), message: "the daemon stopped during a rollback; check the boot state and ask again".into() });
                (m, Vec::new())
            }
            State::Idle
            | State::Available { .. }
            | State::Downloaded { .. }
            | State::Committed { .. }
            | State::RolledBack { .. }
            | State::Failed { .. } => (m, Vec::new()),
        }
    }

    /// The single place where the state changes; logs `from → to`.
    fn go(&mut self, to: State, why: &str) {
        let from = self.s.state.name();
        tracing::info!(
            from,
            to = to.name(),
            version = to
                .release()
                .map(|r| r.version.to_string())
                .unwrap_or_default(),
            why,
            "state {from} → {}",
            to.name()
        );
        self.s.state = to;
    }

    fn record(
        &mut self,
        at: DateTime<Utc>,
        kind: &str,
        from: Option<Version>,
        to: Option<Version>,
        detail: String,
    ) {
        if self.s.history.len() == HISTORY_LEN {
            self.s.history.pop_front();
        }
        self.s.history.push_back(Outcome {
            at,
            kind: kind.to_owned(),
            from,
            to,
            detail,
        });
        self.s.recorded += 1;
    }

    fn fail(&mut self, now: DateTime<Utc>, operation: Operation, error: JobError) {
        let failure = Failure { operation, error };
        tracing::warn!(operation = operation.as_str(), class = failure.error.class.as_str(), name = %failure.error.name, "{failure}");
        let to = self.s.state.release().map(|r| r.version.clone());
        self.record(
            now,
            "failed",
            self.s.current.clone(),
            to,
            failure.to_string(),
        );
        self.s.last_error = Some(failure.clone());
        self.go(State::Failed { failure }, "failure");
    }

    fn rolled_back(
        &mut self,
        now: DateTime<Utc>,
        release: Option<Release>,
        reason: RollbackReason,
    ) {
        let from = release.as_ref().map(|r| r.version.clone());
        if let Some(r) = release {
            self.deny(r);
        }
        let to = self.s.current.clone();
        self.record(
            now,
            "rolled-back",
            from.clone(),
            to.clone(),
            reason.to_string(),
        );
        self.go(
            State::RolledBack { from, to, reason },
            "the previous slot booted",
        );
    }

    fn deny(&mut self, r: Release) {
        if self.s.denied.contains(&r) {
            return;
        }
        if self.s.denied.len() == DENIED_LEN {
            self.s.denied.pop_front();
        }
        self.s.denied.push_back(r);
    }

    /// Whether `r` was rolled back on this node.
    pub fn is_denied(&self, r: &Release) -> bool {
        self.s.denied.contains(r)
    }

    /// Handle a command: the effects to run, or a typed refusal (the state is unchanged then).
    pub fn command(&mut self, cmd: Command) -> Result<Vec<Effect>, Refusal> {
        let result = self.command_inner(cmd);
        match &result {
            Ok(effects) => tracing::info!(
                command = cmd.name(),
                state = self.s.state.name(),
                effects = effects.len(),
                "accepted {}",
                cmd.name()
            ),
            Err(refusal) => tracing::info!(
                command = cmd.name(),
                state = self.s.state.name(),
                refusal = refusal.name(),
                "refused: {refusal}"
            ),
        }
        result
    }

    /// All (command, state) pairs, spelled out: the compiler checks that none is missing, so
    /// a new state or command cannot be accepted by accident.
    fn command_inner(&mut self, cmd: Command) -> Result<Vec<Effect>, Refusal> {
        let state_name = self.s.state.name();
        let state = self.s.state.clone();
        use Command as C;
        use State as S;
        match (cmd, state) {
            // ── pin / unpin: any state; they only gate future downloads and applies ──
            (C::Pin, _) => {
                self.s.pinned = true;
                Ok(Vec::new())
            }
            (C::Unpin, _) => {
                self.s.pinned = false;
                Ok(Vec::new())
            }

            // ── extension pins: what the next update keeps. Not while an update's set is
            // being staged, nor while one waits staged (its set was made under the old pins:
            // cancel it first); anywhere else they only gate future updates ──
            (
                C::PinExtension | C::UnpinExtension,
                S::Idle
                | S::Checking { .. }
                | S::Available { .. }
                | S::Committed { .. }
                | S::RolledBack { .. }
                | S::Failed { .. }
                | S::PendingHealth { .. }
                | S::Committing { .. }
                | S::MarkingBad { .. }
                | S::RollingBack
                | S::RebootPending { .. },
            ) => Ok(Vec::new()),
            (
                C::PinExtension | C::UnpinExtension,
                S::Downloading { .. }
                | S::Verifying { .. }
                | S::Staging { .. }
                | S::Cancelling { .. },
            ) => Err(Refusal::Busy {
                command: cmd.name(),
                state: state_name,
            }),
            (
                C::PinExtension | C::UnpinExtension,
                S::Downloaded { target } | S::Staged { target },
            ) => Err(Refusal::UpdatePending {
                command: cmd.name(),
                version: target.release.version,
                state: state_name,
            }),

            // ── check ──
            (
                C::Check { origin },
                S::Idle
                | S::Available { .. }
                | S::Committed { .. }
                | S::RolledBack { .. }
                | S::Failed { .. },
            ) => {
                self.go(
                    S::Checking {
                        intent: Intent::Check,
                        origin,
                        allow_downgrade: false,
                    },
                    "check",
                );
                Ok(vec![Effect::Run(Job::Check {
                    allow_downgrade: false,
                })])
            }
            (C::Check { .. }, S::Checking { .. }) => Ok(Vec::new()),
            (
                C::Check { .. },
                S::Downloading { .. }
                | S::Verifying { .. }
                | S::Staging { .. }
                | S::Cancelling { .. }
                | S::Committing { .. }
                | S::MarkingBad { .. }
                | S::RollingBack,
            ) => Err(Refusal::Busy {
                command: cmd.name(),
                state: state_name,
            }),
            (C::Check { .. }, S::Downloaded { target } | S::Staged { target }) => {
                Err(Refusal::UpdatePending {
                    command: cmd.name(),
                    version: target.release.version,
                    state: state_name,
                })
            }
            (C::Check { .. }, S::PendingHealth { .. }) => Err(Refusal::Busy {
                command: cmd.name(),
                state: state_name,
            }),
            (C::Check { .. }, S::RebootPending { to, .. }) => Err(Refusal::RebootPending {
                command: cmd.name(),
                to,
            }),

            // ── download / apply ──
            (C::Download { .. } | C::Apply { .. }, _) if self.s.pinned => Err(Refusal::Pinned {
                command: cmd.name(),
            }),
            (
                C::Download {
                    origin,
                    allow_downgrade,
                }
                | C::Apply {
                    origin,
                    allow_downgrade,
                },
                S::Idle | S::Committed { .. } | S::RolledBack { .. } | S::Failed { .. },
            ) => {
                let intent = if matches!(cmd, C::Apply { .. }) {
                    Intent::Apply
                } else {
                    Intent::Download
                };
                self.go(
                    S::Checking {
                        intent,
                        origin,
                        allow_downgrade,
                    },
                    "check before download",
                );
                Ok(vec![Effect::Run(Job::Check { allow_downgrade })])
            }
            (
                C::Download {
                    origin,
                    allow_downgrade,
                }
                | C::Apply {
                    origin,
                    allow_downgrade,
                },
                S::Available { release },
            ) => {
                if release.downgrade && !allow_downgrade {
                    return Err(Refusal::DowngradeNotAllowed {
                        command: cmd.name(),
                        version: release.version,
                    });
                }
                if origin == Origin::Timer && self.is_denied(&release) {
                    tracing::warn!(version = %release.version, "release {} was rolled back on this node: not installing it automatically", release.version);
                    return Ok(Vec::new());
                }
                let intent = if matches!(cmd, C::Apply { .. }) {
                    Intent::Apply
                } else {
                    Intent::Download
                };
                self.go(
                    S::Downloading {
                        release: release.clone(),
                        intent,
                    },
                    "download",
                );
                Ok(vec![Effect::Run(Job::Download { release })])
            }
            (
                C::Download { .. } | C::Apply { .. },
                S::Checking {
                    intent,
                    origin,
                    allow_downgrade,
                },
            ) => {
                // Join the running check and go further once it is done.
                let (want, allow) = match cmd {
                    C::Apply {
                        allow_downgrade: a, ..
                    } => (Intent::Apply, a),
                    C::Download {
                        allow_downgrade: a, ..
                    } => (Intent::Download, a),
                    _ => (intent, false),
                };
                if allow && !allow_downgrade {
                    // The running check refuses downgrades; one more check after it would be
                    // needed. Say so rather than silently ignore the override.
                    return Err(Refusal::Busy {
                        command: cmd.name(),
                        state: state_name,
                    });
                }
                let origin = if matches!(
                    cmd,
                    C::Download {
                        origin: Origin::Operator,
                        ..
                    } | C::Apply {
                        origin: Origin::Operator,
                        ..
                    }
                ) {
                    Origin::Operator
                } else {
                    origin
                };
                self.s.state = S::Checking {
                    intent: intent.max(want),
                    origin,
                    allow_downgrade,
                };
                Ok(Vec::new())
            }
            (C::Download { .. } | C::Apply { .. }, S::Downloading { release, intent }) => {
                if matches!(cmd, C::Apply { .. }) {
                    self.s.state = S::Downloading {
                        release,
                        intent: intent.max(Intent::Apply),
                    };
                }
                Ok(Vec::new())
            }
            (C::Download { .. } | C::Apply { .. }, S::Verifying { release, intent }) => {
                if matches!(cmd, C::Apply { .. }) {
                    self.s.state = S::Verifying {
                        release,
                        intent: intent.max(Intent::Apply),
                    };
                }
                Ok(Vec::new())
            }
            (C::Download { .. }, S::Downloaded { .. } | S::Staging { .. } | S::Staged { .. }) => {
                Ok(Vec::new())
            }
            (C::Apply { .. }, S::Downloaded { target }) => {
                self.go(
                    S::Staging {
                        target: target.clone(),
                    },
                    "apply",
                );
                Ok(vec![Effect::Run(Job::Apply { target })])
            }
            (C::Apply { .. }, S::Staging { .. } | S::Staged { .. }) => Ok(Vec::new()),
            (
                C::Download { .. } | C::Apply { .. },
                S::Cancelling { .. }
                | S::Committing { .. }
                | S::MarkingBad { .. }
                | S::RollingBack
                | S::PendingHealth { .. },
            ) => Err(Refusal::Busy {
                command: cmd.name(),
                state: state_name,
            }),
            (C::Download { .. } | C::Apply { .. }, S::RebootPending { to, .. }) => {
                Err(Refusal::RebootPending {
                    command: cmd.name(),
                    to,
                })
            }

            // ── cancel: withdraw the inactive slot only ──
            (C::Cancel, S::Downloading { release, .. } | S::Verifying { release, .. }) => {
                self.go(
                    S::Cancelling {
                        release,
                        download_running: true,
                    },
                    "cancel",
                );
                Ok(vec![Effect::CancelRunning])
            }
            (C::Cancel, S::Downloaded { target } | S::Staged { target }) => {
                self.go(
                    S::Cancelling {
                        release: target.release,
                        download_running: false,
                    },
                    "cancel",
                );
                Ok(vec![Effect::Run(Job::Cancel)])
            }
            (C::Cancel, S::Cancelling { .. }) => Ok(Vec::new()),
            (
                C::Cancel,
                S::Checking { .. }
                | S::Staging { .. }
                | S::Committing { .. }
                | S::MarkingBad { .. }
                | S::RollingBack,
            ) => Err(Refusal::Busy {
                command: cmd.name(),
                state: state_name,
            }),
            (
                C::Cancel,
                S::Idle
                | S::Available { .. }
                | S::Committed { .. }
                | S::RolledBack { .. }
                | S::Failed { .. }
                | S::PendingHealth { .. },
            ) => Err(Refusal::NothingToCancel { state: state_name }),
            (C::Cancel, S::RebootPending { to, .. }) => Err(Refusal::RebootPending {
                command: cmd.name(),
                to,
            }),

            // ── rollback (operator): the other slot boots next, the booted one is marked bad ──
            (
                C::Rollback,
                S::Idle
                | S::Available { .. }
                | S::Committed { .. }
                | S::RolledBack { .. }
                | S::Failed { .. }
                | S::PendingHealth { .. },
            ) => {
                self.go(S::RollingBack, "rollback");
                let mut effects = Vec::new();
                if matches!(self.s.state, S::PendingHealth { .. }) {
                    effects.push(Effect::StopHealthGate);
                }
                effects.push(Effect::Run(Job::Rollback));
                Ok(effects)
            }
            (C::Rollback, S::Downloaded { target } | S::Staged { target }) => {
                Err(Refusal::UpdatePending {
                    command: cmd.name(),
                    version: target.release.version,
                    state: state_name,
                })
            }
            (
                C::Rollback,
                S::Checking { .. }
                | S::Downloading { .. }
                | S::Verifying { .. }
                | S::Staging { .. }
                | S::Cancelling { .. }
                | S::Committing { .. }
                | S::MarkingBad { .. }
                | S::RollingBack,
            ) => Err(Refusal::Busy {
                command: cmd.name(),
                state: state_name,
            }),
            (C::Rollback, S::RebootPending { to, .. }) => Err(Refusal::RebootPending {
                command: cmd.name(),
                to,
            }),

            // ── the health verdict, by hand ──
            (C::MarkGood, S::PendingHealth { target }) => {
                self.go(S::Committing { target }, "marked good by an operator");
                Ok(vec![Effect::StopHealthGate, Effect::Run(Job::MarkGood)])
            }
            (C::MarkBad, S::PendingHealth { target }) => {
                let slot = target.slot;
                self.go(
                    S::MarkingBad {
                        target,
                        reason: RollbackReason::MarkedBad,
                    },
                    "marked bad by an operator",
                );
                Ok(vec![
                    Effect::StopHealthGate,
                    Effect::Run(Job::MarkBad { slot }),
                ])
            }
            (C::MarkGood | C::MarkBad, S::RebootPending { to, .. }) => {
                Err(Refusal::RebootPending {
                    command: cmd.name(),
                    to,
                })
            }
            (
                C::MarkGood | C::MarkBad,
                S::Idle
                | S::Checking { .. }
                | S::Available { .. }
                | S::Downloading { .. }
                | S::Verifying { .. }
                | S::Downloaded { .. }
                | S::Staging { .. }
                | S::Staged { .. }
                | S::Cancelling { .. }
                | S::Committing { .. }
                | S::MarkingBad { .. }
                | S::RollingBack
                | S::Committed { .. }
                | S::RolledBack { .. }
                | S::Failed { .. },
            ) => Err(Refusal::NotPendingHealth {
                command: cmd.name(),
                state: state_name,
            }),
        }
    }

    /// Handle the result of a job or of the health gate. Events that do not belong to the
    /// current state (a late result) are logged and ignored.
    pub fn event(&mut self, ev: Event, now: DateTime<Utc>) -> Vec<Effect> {
        let state = self.s.state.clone();
        use Event as E;
        use State as S;
        let ev_name = ev.name();
        match (ev, state) {
            (
                E::CheckDone(result),
                S::Checking {
                    intent,
                    origin,
                    allow_downgrade: _,
                },
            ) => {
                self.s.last_check = Some(now);
                match result {
                    Err(e) => {
                        self.fail(now, Operation::Check, e);
                        Vec::new()
                    }
                    Ok(CheckResult::UpToDate { sequence, version }) => {
                        // The head is the one accepted before: still available unless it is
                        // what runs (or what was committed).
                        match self.s.known.clone() {
                            Some(k)
                                if k.sequence == sequence
                                    && Some(&k.version) != self.s.current.as_ref() =>
                            {
                                self.available(k, intent, origin)
                            }
                            _ => {
                                tracing::info!(sequence, %version, "up to date");
                                self.go(S::Idle, "up to date");
                                Vec::new()
                            }
                        }
                    }
                    Ok(CheckResult::Available(release)) => {
                        self.s.known = Some(release.clone());
                        if release.downgrade {
                            tracing::warn!(version = %release.version, "DOWNGRADE to {} accepted by the operator's explicit override", release.version);
                        }
                        self.available(release, intent, origin)
                    }
                }
            }
            (E::Phase(Phase::Verifying), S::Downloading { release, intent }) => {
                self.go(S::Verifying { release, intent }, "written; re-verifying");
                Vec::new()
            }
            (E::Phase(_), S::Downloading { .. } | S::Verifying { .. } | S::Cancelling { .. }) => {
                Vec::new()
            }
            (
                E::DownloadDone(result),
                S::Downloading { intent, .. } | S::Verifying { intent, .. },
            ) => match result {
                Err(e) => {
                    self.fail(now, Operation::Download, e);
                    Vec::new()
                }
                Ok(target) if intent == Intent::Apply => {
                    self.go(
                        S::Staging {
                            target: target.clone(),
                        },
                        "downloaded; staging",
                    );
                    vec![Effect::Run(Job::Apply { target })]
                }
                Ok(target) => {
                    self.go(S::Downloaded { target }, "downloaded and re-verified");
                    Vec::new()
                }
            },
            (
                E::DownloadDone(_),
                S::Cancelling {
                    release,
                    download_running: true,
                },
            ) => {
                self.s.state = S::Cancelling {
                    release,
                    download_running: false,
                };
                vec![Effect::Run(Job::Cancel)]
            }
            (E::ApplyDone(result), S::Staging { target }) => match result {
                Ok(()) => {
                    self.go(S::Staged { target }, "staged for the next boot");
                    Vec::new()
                }
                Err(e) => {
                    self.fail(now, Operation::Apply, e);
                    Vec::new()
                }
            },
            (
                E::CancelDone(result),
                S::Cancelling {
                    release,
                    download_running: false,
                },
            ) => match result {
                Ok(()) => {
                    self.record(
                        now,
                        "cancelled",
                        self.s.current.clone(),
                        Some(release.version.clone()),
                        String::new(),
                    );
                    self.go(
                        S::Available { release },
                        "cancelled; the inactive slot is withdrawn",
                    );
                    Vec::new()
                }
                Err(e) => {
                    self.fail(now, Operation::Cancel, e);
                    Vec::new()
                }
            },
            (E::RollbackDone(result), S::RollingBack) => match result {
                Ok(to) => {
                    let from = self.s.current.clone();
                    self.go(
                        S::RebootPending {
                            to,
                            from,
                            reason: RollbackReason::Operator,
                        },
                        "rollback staged",
                    );
                    Vec::new()
                }
                Err(e) => {
                    self.fail(now, Operation::Rollback, e);
                    Vec::new()
                }
            },
            (E::HealthPassed, S::PendingHealth { target }) => {
                self.go(S::Committing { target }, "health gate passed");
                vec![Effect::Run(Job::MarkGood)]
            }
            (E::HealthFailed { check, detail }, S::PendingHealth { target }) => {
                let slot = target.slot;
                self.go(
                    S::MarkingBad {
                        target,
                        reason: RollbackReason::HealthCheckFailed { check, detail },
                    },
                    "health gate failed",
                );
                vec![Effect::Run(Job::MarkBad { slot })]
            }
            (E::MarkGoodDone(result), S::Committing { target }) => match result {
                Ok(()) => {
                    let version = target.release.version.clone();
                    self.s.current = Some(version.clone());
                    self.s.last_error = None;
                    self.s.denied.retain(|r| r != &target.release);
                    self.record(now, "committed", None, Some(version.clone()), String::new());
                    self.go(S::Committed { version }, "blessed");
                    Vec::new()
                }
                Err(e) => {
                    self.fail(now, Operation::MarkGood, e);
                    Vec::new()
                }
            },
            (E::MarkBadDone(result), S::MarkingBad { target, reason }) => {
                // Reboot even when marking failed: boot counting still falls back once the
                // tries run out, and staying on a slot that failed its gate is worse.
                if let Err(e) = &result {
                    tracing::error!(slot = %target.slot, name = %e.name, "marking slot {} bad failed: {}; rebooting anyway", target.slot, e.message);
                }
                self.deny(target.release.clone());
                self.go(
                    S::RebootPending {
                        to: !target.slot,
                        from: Some(target.release.version.clone()),
                        reason,
                    },
                    "verdict written; reboot into the previous slot",
                );
                Vec::new()
            }
            (_, state) => {
                tracing::warn!(
                    event = ev_name,
                    state = state.name(),
                    "ignored event {ev_name} in state {}",
                    state.name()
                );
                Vec::new()
            }
        }
    }

    fn available(&mut self, release: Release, intent: Intent, origin: Origin) -> Vec<Effect> {
        let blocked = if self.s.pinned {
            Some("pinned")
        } else if origin == Origin::Timer && self.is_denied(&release) {
            Some("rolled back on this node before")
        } else {
            None
        };
        match (intent, blocked) {
            (Intent::Download | Intent::Apply, None) => {
                self.go(
                    State::Downloading {
                        release: release.clone(),
                        intent,
                    },
                    "available; downloading",
                );
                vec![Effect::Run(Job::Download { release })]
            }
            (_, why) => {
                if let (Some(why), Intent::Download | Intent::Apply) = (why, intent) {
                    tracing::info!(version = %release.version, "not downloading {}: {why}", release.version);
                }
                self.go(State::Available { release }, "available");
                Vec::new()
            }
        }
    }
}

/// The SHA-256 of a signed envelope: what [`Release::envelope_sha256`] holds.
pub fn envelope_digest(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// `Slot` as `"A"` / `"B"` in the status file.
pub mod slot_letter {
    use basalt_disk::Slot;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(slot: &Slot, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&slot.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a slot (A or B)"
            ))),
        }
    }
}

/// `Option<Slot>` as `"A"` / `"B"` (absent when `None`).
mod opt_slot_letter {
    use basalt_disk::Slot;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(slot: &Option<Slot>, s: S) -> Result<S::Ok, S::Error> {
        match slot {
            Some(slot) => super::slot_letter::serialize(slot, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Slot>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None => Ok(None),
            Some("A") => Ok(Some(Slot::A)),
            Some("B") => Ok(Some(Slot::B)),
            Some(other) => Err(serde::de::Error::custom(format!(
                "{other:?} is not a slot (A or B)"
            ))),
        }
    }
}

/// `ErrorClass` by its stable name.
mod class_name {
    use crate::engine::ErrorClass;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &ErrorClass, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorClass, D::Error> {
        let text = String::deserialize(d)?;
        ErrorClass::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an error class")))
    }
}
