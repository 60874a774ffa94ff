//! The seam between the daemon and the update pipeline.
//!
//! The daemon (one task owning the state machine) decides *what* to do; an [`Engine`] does it:
//! reads the node's disk and boot state, fetches and verifies the channel head, streams a
//! release into the inactive slot, re-verifies it, stages it, and performs the boot-control
//! verdicts. Every method blocks and does I/O; the daemon calls them on one worker thread, one
//! call at a time, and never holds its state lock across a call. Tests of the daemon use an
//! in-memory engine; the production engine (`pipeline`) is tested against real disks images, a
//! real web server and the real boot-control backends.
//!
//! Invariants every implementation keeps (the host integration tests check them):
//! - the booted slot's partitions are never written (`basalt_disk::Error::BootedSlot`);
//! - before the first byte goes to the inactive slot, that slot is made unbootable (its boot
//!   entry withdrawn / priority cleared, partitions labelled `_installing`), and it stays so
//!   until the written bytes were re-read and their verity root hash matched the signed one;
//! - a failed or cancelled download leaves the inactive slot unbootable and the other slot's
//!   boot state exactly as it was (Bottlerocket #949);
//! - `apply` either stages the slot completely or leaves it unbootable (the daemon records a
//!   failed apply as `Failed` and does not retry it on its own);
//! - a download interrupted by a dropped connection, a killed daemon or a reboot resumes from
//!   what is already written *and re-verified*, never from trusting half-written data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::{Digest, VerifiedRelease};

/// The node's disk and boot state as the engine reads it (no writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The slot the running system booted from (its root hash is the kernel's `usrhash=`).
    pub booted: Option<Slot>,
    /// Both slots, A first.
    pub slots: [SlotView; 2],
    /// The slot the boot loader picks next, by the boot-control backend's own rule.
    pub next_boot: Option<Slot>,
}

/// One slot: content (from the GPT) and boot state (from the boot-control backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub slot: Slot,
    /// Content state (empty, installing, valid, active, bad).
    pub state: SlotState,
    /// The OS version in the slot, when it holds an image.
    pub version: Option<Version>,
    /// The verity root hash of the slot's `/usr`, when it holds an image.
    pub usr_hash: Option<Digest>,
    /// Boot-control state (absent, trying with tries left, good, bad).
    pub boot: BootStatus,
}

/// What a check needs from the daemon's persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// Now, for expiry and issue-time checks.
    pub now: DateTime<Utc>,
    /// The booted version (anti-downgrade).
    pub installed_version: Option<Version>,
    /// The highest manifest sequence this node accepted, and the SHA-256 of that envelope: the
    /// same head seen again is "up to date", a lower sequence is a replay and refused.
    pub last_seen: Option<(u64, Digest)>,
    /// The operator explicitly allowed an older version (logged, reported).
    pub allow_downgrade: bool,
}

/// The result of a check.
// One value per check, moved once: the size of the verified manifest in `Available` (it
// grew with `sysext_level`) does not matter, and boxing it would change every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The channel head is the one already seen (same sequence, same bytes).
    UpToDate { sequence: u64, version: Version },
    /// A verified release newer than what was seen.
    Available(Candidate),
}

/// A release that passed signature and policy checks, with the envelope bytes it came from (the
/// daemon persists them so a restart can resume; they are verified again when loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub release: VerifiedRelease,
    pub envelope: Vec<u8>,
    /// How its download moves the system extensions when the fleet server said so with its
    /// offer (`true`: keep the node's set, node-image-only; `false`: install the release's
    /// set); `None`: the node's own `update.node_image_only`. Engines set `None`; the daemon
    /// sets the server's word before the download.
    pub node_image_only: Option<bool>,
}

/// Which part of the work a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bytes fetched, checked and written into the slot.
    Downloading,
    /// The written slot re-read and re-hashed.
    Verifying,
    /// Kernel and initrd copied to the ESP, the boot entry staged.
    Staging,
}

/// Progress of a long call, reported often (at least once per MiB written) and cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes done in this phase, out of `total`.
    pub done: u64,
    pub total: u64,
    /// Bytes fetched from the source so far in this call (compressed).
    pub fetched: u64,
    /// Bytes that did not need fetching (already written and re-verified on resume).
    pub reused: u64,
}

/// The result of a successful download: the inactive slot holds the release, re-verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub slot: Slot,
    pub version: Version,
    pub sequence: u64,
    /// The verity root hash that was recomputed from the written bytes.
    pub usr_hash: Digest,
    /// Compressed bytes fetched by this call.
    pub fetched: u64,
    /// Uncompressed bytes kept from an earlier, interrupted attempt (re-verified).
    pub reused: u64,
}

/// The node's system extensions (issue 10): the sets staged per OS version, the active ones,
/// the operator's pins. A listing: nothing in it was verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionsView {
    /// Every staged set, oldest OS version first.
    pub staged: Vec<StagedSetView>,
    /// The extensions mounted by this boot's activation (`/run/extensions`), by name.
    pub active: Vec<String>,
    /// Pinned extensions: (name, version), by name.
    pub pins: Vec<(String, Version)>,
}

/// Lists the node's extensions without the engine: [`Engine::extensions_lister`].
pub type ExtensionsLister =
    Arc<dyn Fn() -> Result<ExtensionsView, Box<dyn EngineError>> + Send + Sync>;

/// One staged set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedSetView {
    /// The OS version the set belongs to.
    pub os_version: Version,
    /// (name, signed version; `None` when the image's statement is unreadable), by name.
    pub extensions: Vec<(String, Option<Version>)>,
}

/// How the usr images of an engine's downloads were installed, counted since the engine was
/// made (adaptive installs: `crate::pipeline::adaptive`). The daemon adds what each job
/// changed to `basalt_updater_adaptive_installs_total{result}` (`crate::metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdaptiveCounts {
    /// Installed adaptively: blocks of the booted slot copied, missing frames fetched.
    pub installed: u64,
    /// Tried adaptively, failed on an integrity or format problem (a wrong index entry, a
    /// bad or missing frame, a local block that changed), then installed from the full stream.
    pub fell_back: u64,
    /// Not tried: the frames to fetch were too large a part of the full stream.
    pub not_worth_it: u64,
}

impl AdaptiveCounts {
    /// What was counted after `before` (an earlier reading of the same engine).
    pub fn since(&self, before: &AdaptiveCounts) -> AdaptiveCounts {
        AdaptiveCounts {
            installed: self.installed.saturating_sub(before.installed),
            fell_back: self.fell_back.saturating_sub(before.fell_back),
            not_worth_it: self.not_worth_it.saturating_sub(before.not_worth_it),
        }
    }

    /// The counts by their metric label.
    pub fn by_result(&self) -> [(&'static str, u64); 3] {
        [
            ("installed", self.installed),
            ("fell-back", self.fell_back),
            ("not-worth-it", self.not_worth_it),
        ]
    }
}

/// A cancellation request shared between the daemon and a running call. The engine checks it
/// between chunks and returns its cancellation error soon after it is set.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the running call to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The class of an engine failure: what the daemon does about it and which D-Bus error
/// (`org.basalt.Updater1.Error.<Class>`) and `basaltctl` exit code the caller sees. The exact
/// variant travels along as [`EngineError::name`] and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// The repository could not be reached or answered wrongly (transport, HTTP status,
    /// timeout, not found). Retried at the next check.
    Network,
    /// Bytes did not match what was signed (a hash, a signature, a verity root, a size).
    Integrity,
    /// A verified document was refused by policy (expired, replayed sequence, equivocation,
    /// downgrade without the override, wrong os/arch/channel, trust-root rotation refused).
    Policy,
    /// Reading or writing the disk failed, or the slot does not fit.
    Disk,
    /// The boot-control backend (ESP entries, GPT priority bits) refused or failed.
    BootControl,
    /// The call stopped because its [`CancelFlag`] was set.
    Cancelled,
    /// The engine's own configuration or persisted state is unusable.
    Config,
    /// A bug or an impossible state; the message says which.
    Internal,
}

impl ErrorClass {
    /// Every class, for tests and docs.
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::Network,
        ErrorClass::Integrity,
        ErrorClass::Policy,
        ErrorClass::Disk,
        ErrorClass::BootControl,
        ErrorClass::Cancelled,
        ErrorClass::Config,
        ErrorClass::Internal,
    ];

    /// The stable name: the suffix of the D-Bus error name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Network => "Network",
            ErrorClass::Integrity => "Integrity",
            ErrorClass::Policy => "Policy",
            ErrorClass::Disk => "Disk",
            ErrorClass::BootControl => "BootControl",
            ErrorClass::Cancelled => "Cancelled",
            ErrorClass::Config => "Config",
            ErrorClass::Internal => "Internal",
        }
    }
}

/// What the daemon needs from an engine error besides its message: a class (what to do, which
/// D-Bus error) and a stable machine name of the exact failure (e.g. `SequenceReplayed`),
/// reported in `LastError` and the history.
pub trait EngineError: std::error::Error + Send + Sync + 'static {
    fn class(&self) -> ErrorClass;
    /// Stable, CamelCase, never reused for another meaning.
    fn name(&self) -> &'static str;
}

/// What the daemon asks of the update pipeline. Every method blocks; see the module docs for
/// the invariants. Errors are the crate's typed errors (they name the artifact, slot, URL or
/// version involved and map to stable D-Bus error names).
pub trait Engine: Send {
    /// The error type; `Display` must be a complete, human-readable sentence.
    type Error: EngineError;

    /// Read the disk and boot state. No writes.
    fn node(&mut self) -> Result<NodeView, Self::Error>;

    /// Walk the trust-root chain from the newest trusted generation, fetch the channel head and
    /// verify it (threshold, expiry, sequence, downgrade, os/arch/channel). Persists newly
    /// trusted root generations; no slot writes.
    fn check(&mut self, request: &CheckRequest) -> Result<CheckOutcome, Self::Error>;

    /// Verify again, without fetching, an envelope that an earlier [`Engine::check`] accepted
    /// and the daemon persisted (after a daemon restart, to resume or apply it): signatures
    /// against the current trust root, expiry at `request.now`, os/arch/channel, downgrade
    /// rule. `request.last_seen` is the envelope's own sequence and digest, so equality is
    /// accepted here (and only for these exact bytes).
    fn verify_candidate(
        &mut self,
        envelope: &[u8],
        request: &CheckRequest,
    ) -> Result<Candidate, Self::Error>;

    /// Stream `candidate` into the inactive slot and re-verify it (resuming an interrupted
    /// download of the same release). `progress` is called from the calling thread.
    fn download(
        &mut self,
        candidate: &Candidate,
        progress: &mut dyn FnMut(&Progress),
        cancel: &CancelFlag,
    ) -> Result<Downloaded, Self::Error>;

    /// Copy kernel and initrd to the ESP and stage the slot as the next boot with `tries`
    /// attempts (the flip). The slot must hold `downloaded`, re-verified.
    fn apply(&mut self, downloaded: &Downloaded, tries: u32) -> Result<(), Self::Error>;

    /// Withdraw a partial download or a staged, not yet booted slot: it becomes unbootable; the
    /// booted slot's bytes and boot state are untouched.
    fn cancel(&mut self) -> Result<(), Self::Error>;

    /// Make the other (good) slot the next boot and mark the booted one bad (explicit,
    /// operator-requested rollback). Returns the slot that boots next.
    fn rollback(&mut self) -> Result<Slot, Self::Error>;

    /// The booted slot passed its health gate: stop boot counting, keep it as the default.
    fn mark_good(&mut self) -> Result<(), Self::Error>;

    /// How this engine's downloads installed their usr images so far (no I/O). Engines
    /// without adaptive installs count nothing.
    fn adaptive_counts(&self) -> AdaptiveCounts {
        AdaptiveCounts::default()
    }

    /// `slot` must not boot again until re-staged.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), Self::Error>;

    /// The staged extension sets, the active extensions and the pins. No writes.
    fn extensions(&mut self) -> Result<ExtensionsView, Self::Error>;

    /// The same listing as [`Engine::extensions`], callable from any thread while the
    /// engine works (a download holds the engine for minutes; a listing must not wait for
    /// it). Read-only: it sees the store before or after a set is swapped in, never half.
    fn extensions_lister(&self) -> ExtensionsLister;

    /// Pin extension `name` at `version`: it must be staged, verify against the trust root
    /// and fit the booted OS (each refusal its own error kind). Updates then keep it (see
    /// `basalt_sysext::pins`). The pin is persisted atomically before the call returns.
    fn pin_extension(&mut self, name: &str, version: &Version) -> Result<(), Self::Error>;

    /// Remove `name`'s pin (a name that is not pinned is not an error).
    fn unpin_extension(&mut self, name: &str) -> Result<(), Self::Error>;
}
