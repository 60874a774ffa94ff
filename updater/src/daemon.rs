//! `basalt-updated`'s core: one task owns the [`Machine`] and everything around it; other
//! tasks (D-Bus method calls, timers, the health gate, the lock client) talk to it through
//! messages, and it publishes what it knows through a `tokio::sync::watch` of [`View`] (the
//! D-Bus layer turns changes into `PropertiesChanged`).
//!
//! ```text
//!  D-Bus calls ──Request (mpsc + oneshot reply)──▶ ┌────────────────────────┐ ──watch<View>──▶ D-Bus properties
//!  timers (check, reboot window, retries) ───────▶ │ owning task: Machine,  │ ──▶ status file (atomic, every outcome)
//!  health gate / fleet-lock / reboot tasks ──────▶ │ status, view, metrics  │ ──▶ sd_notify STATUS= / WATCHDOG=1
//!                                                  └──────────┬─────────────┘
//!                                      WorkerJob (one at a time) │ ▲ WorkerMsg (progress, results, node view)
//!                                                  ┌──────────▼─┴───────────┐
//!                                                  │ engine (spawn_blocking)│  blocking Engine calls,
//!                                                  │ (owns the Engine)      │  CancelFlag, catch_unwind
//!                                                  └────────────────────────┘
//! ```
//!
//! Owns: the wiring (which job runs when, replies to callers, persistence, the reboot
//! strategy, periodic checks, the FleetLock steps). Does not own: the transitions (`machine`),
//! the engine's work, the D-Bus encoding (`dbus`).
//!
//! Time: the daemon sleeps with tokio's clock and reads wall time from a [`Clock`]; tests run
//! with tokio's paused clock and a [`Clock`] derived from it, so hours of schedule pass
//! instantly. Randomness (check jitter) is a [`Random`] passed in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_disk::{BootStatus, Slot};
use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::Digest;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::{RebootStrategy, Settings};
use crate::engine::{
    AdaptiveCounts, CancelFlag, Candidate, CheckOutcome, CheckRequest, Downloaded, Engine,
    EngineError, ErrorClass, ExtensionsLister, ExtensionsView, NodeView, Phase, Progress,
};
use crate::fleetlock::FleetLock;
use crate::health::Probe;
use crate::machine::{
    BootFacts, CheckResult, Command, Effect, Event, Failure, Job, JobError, Machine, Origin,
    Outcome, Refusal, Release, RollbackReason, Snapshot, State, Target,
};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::reboot::Reboot;
use crate::schedule::{self, Random};
use crate::status::{self, StatusFile};

/// Wall-clock time, passed in.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that follows tokio's clock from a fixed start: with a paused tokio clock (tests)
/// both move together.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    at: Instant,
}

impl TokioClock {
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Self {
            wall,
            at: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.at);
        self.wall + basalt_manifest::chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}

/// Files the daemon reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/var/lib/basalt/updater`: `status.json` and set-aside copies.
    pub state_dir: PathBuf,
    /// `/run/basalt/boot.env`, written by basalt-init.
    pub boot_env: PathBuf,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: PathBuf,
    /// `/etc/machine-id` (FleetLock node id).
    pub machine_id: PathBuf,
    /// `/sys/firmware/efi/efivars`: basalt-init's failure records (see `bootfail`).
    pub efivars: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/basalt/updater"),
            boot_env: PathBuf::from("/run/basalt/boot.env"),
            boot_id: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            machine_id: PathBuf::from("/etc/machine-id"),
            efivars: PathBuf::from(crate::bootfail::EFIVARS),
        }
    }
}

impl Paths {
    pub fn status_file(&self) -> PathBuf {
        self.state_dir.join(status::STATUS_FILE)
    }
}

/// Progress as published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProgressView {
    /// `downloading`, `verifying`, `staging` or empty.
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub fetched: u64,
    pub reused: u64,
}

/// One slot as published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    pub slot: String,
    pub version: String,
    /// Content: empty, installing, valid, active, bad, unknown.
    pub state: String,
    /// Boot control: absent, trying, good, bad.
    pub boot: String,
    pub tries_left: u32,
}

/// Everything the daemon publishes (D-Bus properties, `basaltctl status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    pub state: String,
    pub progress: ProgressView,
    pub current_version: String,
    pub booted_slot: String,
    pub next_boot_slot: String,
    pub available_version: String,
    pub staged_version: String,
    pub pinned: bool,
    /// `org.basalt.Updater1.Error.<Class>` of the last failure, or empty.
    pub last_error_name: String,
    pub last_error_message: String,
    /// Unix seconds; 0: never / not scheduled.
    pub last_check: i64,
    pub next_check: i64,
    pub reboot_required: bool,
    pub reboot_strategy: String,
    pub slots: [SlotInfo; 2],
}

/// What a caller gets back when a command was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Accepted; the work goes on (follow `State`).
    Started,
    /// A check finished: the available version, or empty when up to date.
    Checked(String),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Failed(Failure),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// An extension request (list, pin, unpin) failed or was refused by the engine; the
    /// error's name is the engine's kind (`UnknownExtension`, `ExtensionNotStaged`, …).
    #[error("{}", .0.message)]
    Extension(JobError),
}

/// A request about the node's system extensions (issue 10). Pin and unpin are first put to
/// the machine ([`Command::PinExtension`] / [`Command::UnpinExtension`]: may the pins change
/// in this state?), then done by the engine on its worker, in order with its other jobs;
/// every request answers with the listing after it. A plain listing does not queue behind
/// the engine (a download holds it for minutes): it runs on a blocking thread through
/// [`Engine::extensions_lister`], read-only, in any state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionRequest {
    List,
    Pin {
        name: String,
        version: basalt_manifest::semver::Version,
    },
    Unpin {
        name: String,
    },
}

/// A message to the owning task.
#[derive(Debug)]
pub enum Request {
    Command {
        command: Command,
        reply: oneshot::Sender<Result<Accepted, ApiError>>,
    },
    History {
        reply: oneshot::Sender<Vec<Outcome>>,
    },
    Extensions {
        request: ExtensionRequest,
        reply: oneshot::Sender<Result<ExtensionsView, ApiError>>,
    },
}

/// The other tasks' handle on the daemon.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    view: watch::Receiver<View>,
}

impl Handle {
    /// Send a command and wait for its acceptance (or a check's result).
    pub async fn command(&self, command: Command) -> Result<Accepted, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Command { command, reply })
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    pub async fn history(&self) -> Result<Vec<Outcome>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::History { reply })
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)
    }

    /// List the extensions, or pin / unpin one (see [`ExtensionRequest`]); answers with the
    /// listing after the change.
    pub async fn extensions(&self, request: ExtensionRequest) -> Result<ExtensionsView, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Extensions { request, reply })
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// The published view (subscribe for changes).
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }
}

/// The D-Bus error name of a failure class (`org.basalt.Updater1.Error.<Class>`).
pub fn error_name(class: ErrorClass) -> String {
    format!("org.basalt.Updater1.Error.{}", class.as_str())
}

// ───────────────────────────── the engine worker ─────────────────────────────

#[derive(Debug)]
enum WorkerJob {
    Node,
    Check(CheckRequest),
    Download {
        candidate: Option<Box<Candidate>>,
        envelope: Option<Vec<u8>>,
        request: CheckRequest,
        /// The fleet server's word on the extensions (`Release::node_image_only`).
        node_image_only: Option<bool>,
        cancel: CancelFlag,
    },
    Apply {
        downloaded: Downloaded,
        tries: u32,
    },
    Cancel,
    Rollback,
    MarkGood,
    MarkBad(Slot),
    /// Answered directly to the caller (no state change, no node refresh).
    Extensions {
        request: ExtensionRequest,
        reply: oneshot::Sender<Result<ExtensionsView, ApiError>>,
    },
}

#[derive(Debug)]
enum WorkerMsg {
    Progress(Progress),
    Node(Result<NodeView, JobError>),
    Checked(Result<CheckOutcome, JobError>),
    Done {
        event: Event,
        candidate: Option<Box<Candidate>>,
        downloaded: Option<(u64, u64)>,
    },
    /// How the job's usr image was installed (sent before its `Done`, only when it counted).
    Adaptive(AdaptiveCounts),
}

fn job_error<E: EngineError>(e: E) -> JobError {
    JobError {
        class: e.class(),
        name: e.name().to_owned(),
        message: e.to_string(),
    }
}

fn panicked(what: &str) -> JobError {
    JobError {
        class: ErrorClass::Internal,
        name: "EnginePanicked".to_owned(),
        message: format!("the update engine panicked during {what} (a bug; see the journal)"),
    }
}

/// Run `f` and turn a panic into an internal error: the worker thread must outlive a bug.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, JobError>) -> Result<T, JobError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(panicked(what)))
}

/// The engine and its output channel, behind one lock, type-erased: each job runs as one
/// `spawn_blocking` call (the machine never asks for two at once). Why `spawn_blocking` and
/// not a dedicated thread: tokio does not auto-advance a paused clock while a blocking task
/// runs, so tests with a paused clock see engine work take no simulated time.
type Runner = Arc<std::sync::Mutex<Box<dyn FnMut(WorkerJob) + Send>>>;

fn make_runner<E: Engine + 'static>(
    mut engine: E,
    out: mpsc::UnboundedSender<WorkerMsg>,
) -> Runner {
    let f = move |job: WorkerJob| {
        if let WorkerJob::Extensions { request, reply } = job {
            let _ = reply.send(run_extensions(&mut engine, &request).map_err(ApiError::Extension));
            return;
        }
        let is_node = matches!(job, WorkerJob::Node);
        let before = engine.adaptive_counts();
        let msg = run_job(&mut engine, job, &out);
        let adaptive = engine.adaptive_counts().since(&before);
        if adaptive != AdaptiveCounts::default() {
            let _ = out.send(WorkerMsg::Adaptive(adaptive));
        }
        if !is_node {
            // Every job may have changed the disk: publish a fresh view of it — before the
            // job's result, so the state the result leads to (`committed`, `staged` …) is
            // never shown beside the slots as they were before the job.
            let node = guarded("node", || engine.node().map_err(job_error));
            let _ = out.send(WorkerMsg::Node(node));
        }
        let _ = out.send(msg);
        if !is_node {
            release_heap();
        }
    };
    Arc::new(std::sync::Mutex::new(Box::new(f)))
}

/// Give the heap's free pages back to the kernel after an engine job (a download runs on
/// several threads, each with its own glibc arena). Measured alone it did not lower the RSS
/// kept after an install (the frame buffers stayed in the arenas because glibc had raised its
/// mmap threshold); the fixed threshold set by `basalt-updated` at start did (anonymous RSS
/// after a 64 MiB install 12.5 → 1.3 MiB, `cargo xtask bench-agent`). Kept as the cheap
/// second half: once per job, a walk over the arenas.
fn release_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only returns free pages of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An extension request on the engine, then the listing after it.
fn run_extensions<E: Engine>(
    engine: &mut E,
    request: &ExtensionRequest,
) -> Result<ExtensionsView, JobError> {
    let result = guarded("extensions", || {
        match request {
            ExtensionRequest::List => {}
            ExtensionRequest::Pin { name, version } => {
                engine.pin_extension(name, version).map_err(job_error)?;
            }
            ExtensionRequest::Unpin { name } => {
                engine.unpin_extension(name).map_err(job_error)?;
            }
        }
        engine.extensions().map_err(job_error)
    });
    if let Err(e) = &result {
        tracing::info!(?request, name = %e.name, "extension request refused: {}", e.message);
    }
    result
}

fn submit(runner: &Runner, job: WorkerJob) {
    let runner = runner.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = match runner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        (*f)(job);
    });
}

fn run_job<E: Engine>(
    engine: &mut E,
    job: WorkerJob,
    out: &mpsc::UnboundedSender<WorkerMsg>,
) -> WorkerMsg {
    let done = |event| WorkerMsg::Done {
        event,
        candidate: None,
        downloaded: None,
    };
    match job {
        WorkerJob::Node => WorkerMsg::Node(guarded("node", || engine.node().map_err(job_error))),
        WorkerJob::Check(req) => {
            WorkerMsg::Checked(guarded("check", || engine.check(&req).map_err(job_error)))
        }
        WorkerJob::Download {
            candidate,
            envelope,
            request,
            node_image_only,
            cancel,
        } => {
            let result = guarded("download", || {
                let mut candidate = match (candidate, envelope) {
                    (Some(c), _) => *c,
                    (None, Some(env)) => {
                        engine.verify_candidate(&env, &request).map_err(job_error)?
                    }
                    (None, None) => {
                        return Err(JobError {
                            class: ErrorClass::Internal,
                            name: "NoCandidate".into(),
                            message: "no verified release to download (check again)".into(),
                        })
                    }
                };
                // Persisted with the release (a restart re-verifies the bare envelope).
                candidate.node_image_only = node_image_only;
                // Progress: forwarded at most every 100 ms, and at every phase change.
                let mut last: Option<(Phase, std::time::Instant)> = None;
                let mut report = |p: &Progress| {
                    let now = std::time::Instant::now();
                    let due = match last {
                        Some((phase, at)) => {
                            phase != p.phase
                                || now.duration_since(at) >= Duration::from_millis(100)
                                || p.done == p.total
                        }
                        None => true,
                    };
                    if due {
                        last = Some((p.phase, now));
                        let _ = out.send(WorkerMsg::Progress(p.clone()));
                    }
                };
                let d = engine
                    .download(&candidate, &mut report, &cancel)
                    .map_err(job_error)?;
                Ok((candidate, d))
            });
            match result {
                Ok((candidate, d)) => WorkerMsg::Done {
                    downloaded: Some((d.fetched, d.reused)),
                    event: Event::DownloadDone(Ok(Target {
                        release: Release {
                            version: d.version.clone(),
                            sequence: d.sequence,
                            envelope_sha256: crate::machine::envelope_digest(&candidate.envelope),
                            downgrade: candidate.release.downgrade_override,
                            node_image_only: candidate.node_image_only,
                        },
                        slot: d.slot,
                        usr_hash: d.usr_hash,
                    })),
                    candidate: Some(Box::new(candidate)),
                },
                Err(e) => done(Event::DownloadDone(Err(e))),
            }
        }
        WorkerJob::Apply { downloaded, tries } => {
            let _ = out.send(WorkerMsg::Progress(Progress {
                phase: Phase::Staging,
                done: 0,
                total: 1,
                fetched: 0,
                reused: 0,
            }));
            done(Event::ApplyDone(guarded("apply", || {
                engine.apply(&downloaded, tries).map_err(job_error)
            })))
        }
        WorkerJob::Cancel => done(Event::CancelDone(guarded("cancel", || {
            engine.cancel().map_err(job_error)
        }))),
        WorkerJob::Rollback => done(Event::RollbackDone(guarded("rollback", || {
            engine.rollback().map_err(job_error)
        }))),
        WorkerJob::MarkGood => done(Event::MarkGoodDone(guarded("mark-good", || {
            engine.mark_good().map_err(job_error)
        }))),
        WorkerJob::MarkBad(slot) => done(Event::MarkBadDone(guarded("mark-bad", || {
            engine.mark_bad(slot).map_err(job_error)
        }))),
        // Answered by the runner before `run_job` (see `make_runner`); kept total.
        WorkerJob::Extensions { request, reply } => {
            let _ = reply.send(run_extensions(engine, &request).map_err(ApiError::Extension));
            WorkerMsg::Node(guarded("node", || engine.node().map_err(job_error)))
        }
    }
}

// ───────────────────────────── the owning task ─────────────────────────────

/// Everything the daemon is built from; all I/O edges are here so tests replace them.
pub struct Parts<E: Engine> {
    pub engine: E,
    pub settings: Settings,
    pub paths: Paths,
    pub clock: Arc<dyn Clock>,
    pub random: Box<dyn Random>,
    pub reboot: Arc<dyn Reboot>,
    /// The health gate's checks (see `health::probes`).
    pub probes: Vec<Box<dyn Probe>>,
    /// Set when the reboot strategy is `fleet-lock`.
    pub fleet_lock: Option<FleetLock>,
    pub notifier: Notifier,
    pub metrics: Metrics,
    /// Ping the systemd watchdog this often.
    pub watchdog: Option<Duration>,
    /// Pause before asking again after a refused lock, a failed steady-state release or a
    /// failed reboot request ([`RETRY`] in production).
    pub retry: Duration,
    /// Server mode (`[server]`): the check-in client; its offers are the engine's source.
    pub fleet: Option<crate::fleet::FleetClient>,
}

impl<E: Engine> std::fmt::Debug for Parts<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// Messages from the daemon's helper tasks.
#[derive(Debug)]
enum Internal {
    Health(Result<(), crate::health::GateFailure>),
    Lock(Result<(), String>),
    SteadyState(Result<(), String>),
    Rebooted(Result<(), String>),
    /// A check-in's answer (server mode).
    CheckedIn(Result<basalt_rollout_wire::Directive, String>),
    /// The pre-reboot (drain) command ended (server mode).
    Drained(Result<(), String>),
}

/// Server mode's part of the daemon (see `fleet`): the client, the unacknowledged events and
/// what the server last allowed.
struct FleetLink {
    client: crate::fleet::FleetClient,
    events: crate::fleet::EventLog,
    log_path: PathBuf,
    /// The machine state the events were last derived from.
    last_state: State,
    /// The version of the last release offered (what a failure without a release is about).
    offered: Option<basalt_manifest::semver::Version>,
    /// The last offer's word on the extensions (`ReleaseOffer::node_image_only`).
    node_image_only: Option<bool>,
    in_flight: bool,
    /// The server's `reboot` directive for the staged release: its drain timeout.
    reboot_allowed: Option<u64>,
    draining: bool,
    told_waiting: bool,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The running daemon's owning task.
pub struct Daemon {
    machine: Machine,
    settings: Settings,
    paths: Paths,
    boot_id: String,
    clock: Arc<dyn Clock>,
    random: Box<dyn Random>,
    reboot: Arc<dyn Reboot>,
    probes: Arc<Vec<Box<dyn Probe>>>,
    fleet_lock: Option<FleetLock>,
    notifier: Notifier,
    metrics: Metrics,
    watchdog: Option<Duration>,
    retry: Duration,

    runner: Runner,
    /// Lists the extensions without waiting for the engine (see `ExtensionRequest`).
    lister: ExtensionsLister,
    worker_rx: mpsc::UnboundedReceiver<WorkerMsg>,
    requests: mpsc::Receiver<Request>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    view_tx: watch::Sender<View>,

    candidate: Option<Box<Candidate>>,
    envelope: Option<Vec<u8>>,
    node: Option<NodeView>,
    progress: Option<Progress>,
    cancel: Option<CancelFlag>,
    check_waiters: Vec<oneshot::Sender<Result<Accepted, ApiError>>>,
    next_check: Option<Instant>,
    reboot_at: Option<Instant>,
    reboot_in_flight: bool,
    lock_in_flight: bool,
    steady_state_done: bool,
    steady_state_at: Option<Instant>,
    health: Option<tokio::task::JoinHandle<()>>,
    persisted: Option<(Snapshot, Option<Vec<u8>>)>,
    announced_state: String,
    told_reboot_off: bool,
    /// The failure-record variable is to be deleted after the next successful persist.
    clear_init_failures: bool,
    fleet: Option<FleetLink>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state", &self.machine.state().name())
            .finish_non_exhaustive()
    }
}

/// Retry pause for a refused or failed lock / reboot / steady-state request.
pub const RETRY: Duration = Duration::from_secs(60);

pub use crate::envfile::read as read_env_file;

fn slot_target(node: &NodeView, slot: Slot) -> Option<Target> {
    let v = &node.slots[usize::from(slot == Slot::B)];
    Some(Target {
        // Recovered from the disk: the manifest's sequence and envelope are unknown.
        release: Release {
            version: v.version.clone()?,
            sequence: 0,
            envelope_sha256: Digest([0; 32]),
            downgrade: false,
            node_image_only: None,
        },
        slot,
        usr_hash: v.usr_hash?,
    })
}

/// What booted, from `boot.env` (the kernel's `usrhash=`, authoritative) and the engine's view.
/// Public so tests build facts exactly as the daemon does.
pub fn boot_facts(
    node: Option<&NodeView>,
    boot_env_hash: Option<Digest>,
    rebooted: bool,
) -> BootFacts {
    let mut facts = BootFacts {
        booted: None,
        booted_version: None,
        rebooted,
        staged_on_disk: None,
        booted_on_trial: None,
        booted_blessed: false,
        init_failures: None,
    };
    let Some(node) = node else {
        return facts;
    };
    let by_hash = boot_env_hash.and_then(|h| {
        node.slots
            .iter()
            .find(|s| s.usr_hash == Some(h))
            .map(|s| s.slot)
    });
    if let (Some(h), Some(b)) = (boot_env_hash, node.booted) {
        if by_hash != Some(b) {
            tracing::warn!(booted = %b, usrhash = %h, "boot.env's usrhash does not match the engine's booted slot {b}; trusting usrhash");
        }
    }
    let booted = by_hash.or(node.booted);
    if let Some(b) = booted {
        let v = &node.slots[usize::from(b == Slot::B)];
        facts.booted = boot_env_hash.or(v.usr_hash).map(|h| (b, h));
        facts.booted_version = v.version.clone();
        if matches!(v.boot, BootStatus::Trying { .. }) {
            facts.booted_on_trial = slot_target(node, b);
        }
        facts.booted_blessed = v.boot == BootStatus::Good;
        let o = &node.slots[usize::from(b == Slot::A)];
        if matches!(o.boot, BootStatus::Trying { tries_left, .. } if tries_left > 0) {
            facts.staged_on_disk = slot_target(node, !b);
        }
    }
    facts
}

impl Daemon {
    /// Start: load the status (a bad file is set aside), read what booted, reconcile, and
    /// start whatever must resume. Returns the daemon (run it with [`Daemon::run`]) and the
    /// handle for D-Bus.
    pub async fn start<E: Engine + 'static>(
        parts: Parts<E>,
    ) -> Result<(Daemon, Handle), StartError> {
        let Parts {
            engine,
            settings,
            paths,
            clock,
            random,
            reboot,
            probes,
            fleet_lock,
            notifier,
            metrics,
            watchdog,
            retry,
            fleet,
        } = parts;
        std::fs::create_dir_all(&paths.state_dir).map_err(|source| StartError::StateDir {
            path: paths.state_dir.clone(),
            source,
        })?;
        // Temporaries of atomic writes a crash or power loss tore (the daemon is the state
        // folder's only writer; a running writer's are kept).
        match basalt_fsutil::remove_stale_temporaries(&paths.state_dir) {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(path = %path.display(), "removed a torn write's temporary");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        let now = clock.now();
        let status_path = paths.status_file();
        let loaded = match status::load(&status_path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}; starting from what the disk says");
                match status::set_aside(&status_path, now) {
                    Ok(to) => {
                        tracing::warn!(kept = %to.display(), "the unusable status file was kept as {}", to.display())
                    }
                    Err(e) => tracing::error!("{e}"),
                }
                None
            }
        };
        let boot_id = std::fs::read_to_string(&paths.boot_id)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let boot_env = read_env_file(&paths.boot_env);
        let boot_env_hash = boot_env
            .as_deref()
            .and_then(|kv| crate::envfile::get(kv, crate::envfile::BASALT_USRHASH))
            .and_then(Digest::from_hex);
        if boot_env.is_none() {
            tracing::warn!(path = %paths.boot_env.display(), "no {}: the booted slot comes from the engine alone", paths.boot_env.display());
        }

        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
        let lister = engine.extensions_lister();
        let runner = make_runner(engine, worker_tx);
        let (req_tx, requests) = mpsc::channel(64);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (view_tx, view_rx) = watch::channel(View::default());

        let mut d = Daemon {
            machine: Machine::from_snapshot(Snapshot::default()),
            settings,
            paths,
            boot_id,
            clock,
            random,
            reboot,
            probes: Arc::new(probes),
            fleet_lock,
            notifier,
            metrics,
            watchdog,
            retry,
            runner,
            lister,
            worker_rx,
            requests,
            internal_tx,
            internal_rx,
            view_tx,
            candidate: None,
            envelope: None,
            node: None,
            progress: None,
            cancel: None,
            check_waiters: Vec::new(),
            next_check: None,
            reboot_at: None,
            reboot_in_flight: false,
            lock_in_flight: false,
            steady_state_done: false,
            steady_state_at: None,
            health: None,
            persisted: None,
            announced_state: String::new(),
            told_reboot_off: false,
            clear_init_failures: false,
            fleet: None,
        };

        // What the disk says.
        d.node = d.read_node().await;
        let rebooted = loaded.as_ref().is_some_and(|s| s.boot_id != d.boot_id);
        let mut facts = boot_facts(d.node.as_ref(), boot_env_hash, rebooted);
        facts.init_failures = match crate::bootfail::read(&d.paths.efivars) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        };
        d.envelope = loaded.as_ref().and_then(StatusFile::envelope);
        if let Some(client) = fleet {
            let log_path = d.paths.state_dir.join("fleet-events.json");
            d.fleet = Some(FleetLink {
                client,
                events: crate::fleet::EventLog::load(&log_path, now),
                log_path,
                // Events are derived from the state the last run ended in: a reboot from
                // `staged` into a trial boot is `rebooted`, and so on.
                last_state: loaded
                    .as_ref()
                    .map_or(State::Idle, |s| s.machine.state.clone()),
                offered: None,
                node_image_only: None,
                in_flight: false,
                reboot_allowed: None,
                draining: false,
                told_waiting: false,
            });
        }
        let history_before = loaded.as_ref().map_or(0, |s| s.machine.recorded);
        let (machine, effects) = Machine::start(loaded.map(|s| s.machine), &facts, now);
        d.machine = machine;
        d.count_new_outcomes(history_before);
        tracing::info!(
            state = d.machine.state().name(),
            booted = facts.booted.map(|(s, _)| s.to_string()).unwrap_or_default(),
            version = facts
                .booted_version
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            rebooted,
            "basalt-updated starting in state {}",
            d.machine.state().name()
        );
        if d.settings.repository.is_some() {
            let delay = schedule::first_check_delay(&d.settings.check, d.random.as_mut());
            d.next_check = Some(Instant::now() + delay);
        } else {
            tracing::warn!("no repository configured (repository.url): no periodic checks");
        }
        d.apply_effects(effects);
        d.after_change();
        let handle = Handle {
            tx: req_tx,
            view: view_rx,
        };
        Ok((d, handle))
    }

    /// Tell systemd the daemon is ready (call after the bus name is owned).
    pub fn ready(&self) {
        let msg = format!("READY=1\nSTATUS={}", self.status_line());
        if let Err(e) = self.notifier.notify(&msg) {
            tracing::warn!("sd_notify READY: {e}");
        }
    }

    fn status_line(&self) -> String {
        let s = self.machine.state();
        match s.release() {
            Some(r) => format!("{} {}", s.name(), r.version),
            None => s.name().to_owned(),
        }
    }

    async fn read_node(&mut self) -> Option<NodeView> {
        submit(&self.runner, WorkerJob::Node);
        loop {
            match self.worker_rx.recv().await? {
                WorkerMsg::Node(Ok(n)) => return Some(n),
                WorkerMsg::Node(Err(e)) => {
                    tracing::error!(name = %e.name, "reading the node's disk and boot state: {}", e.message);
                    return None;
                }
                other => tracing::debug!("ignored worker message at start: {other:?}"),
            }
        }
    }

    /// Run until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut watchdog = self.watchdog.map(tokio::time::interval);
        loop {
            let next_check = self.next_check;
            let reboot_at = self.reboot_at;
            let steady_at = self.steady_state_at;
            tokio::select! {
                _ = &mut shutdown => break,
                Some(req) = self.requests.recv() => self.on_request(req),
                Some(msg) = self.worker_rx.recv() => self.on_worker(msg),
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg),
                _ = sleep_until(next_check) => self.on_check_timer(),
                _ = sleep_until(reboot_at) => { self.reboot_at = None; }
                _ = sleep_until(steady_at) => { self.steady_state_at = None; }
                _ = tick(&mut watchdog) => {
                    if let Err(e) = self.notifier.notify("WATCHDOG=1") {
                        tracing::warn!("sd_notify WATCHDOG: {e}");
                    }
                    continue;
                }
            }
            self.after_change();
        }
        tracing::info!("stopping");
        let _ = self.notifier.notify("STOPPING=1");
        if let Some(flag) = &self.cancel {
            // The engine resumes the download at the next start.
            flag.cancel();
        }
        if let Some(h) = self.health.take() {
            h.abort();
        }
        self.persist();
        for w in self.check_waiters.drain(..) {
            let _ = w.send(Err(ApiError::ShuttingDown));
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::History { reply } => {
                let _ = reply.send(self.machine.snapshot().history.iter().cloned().collect());
            }
            Request::Extensions { request, reply } => {
                let command = match &request {
                    ExtensionRequest::List => {
                        let lister = self.lister.clone();
                        tokio::task::spawn_blocking(move || {
                            let listed = guarded("list extensions", || {
                                lister().map_err(|e| JobError {
                                    class: e.class(),
                                    name: e.name().to_owned(),
                                    message: e.to_string(),
                                })
                            });
                            let _ = reply.send(listed.map_err(ApiError::Extension));
                        });
                        return;
                    }
                    ExtensionRequest::Pin { .. } => Command::PinExtension,
                    ExtensionRequest::Unpin { .. } => Command::UnpinExtension,
                };
                match self.machine.command(command) {
                    Err(r) => {
                        let _ = reply.send(Err(ApiError::Refused(r)));
                        return;
                    }
                    Ok(effects) => self.apply_effects(effects),
                }
                tracing::info!(?request, "extension request accepted");
                submit(&self.runner, WorkerJob::Extensions { request, reply });
            }
            Request::Command { command, reply } => {
                let allow = matches!(
                    command,
                    Command::Download {
                        allow_downgrade: true,
                        ..
                    } | Command::Apply {
                        allow_downgrade: true,
                        ..
                    }
                );
                if allow {
                    tracing::warn!(
                        command = command.name(),
                        "operator request with allow-downgrade: an older release may be installed"
                    );
                }
                if let Some(refused) = self.needs_repository(command) {
                    tracing::info!(command = command.name(), "refused: {refused}");
                    let _ = reply.send(Err(refused));
                    return;
                }
                let was_checking = matches!(self.machine.state(), State::Checking { .. });
                match self.machine.command(command) {
                    Err(r) => {
                        let _ = reply.send(Err(ApiError::Refused(r)));
                    }
                    Ok(effects) => {
                        let is_check = matches!(command, Command::Check { .. });
                        self.apply_effects(effects);
                        if is_check
                            && (matches!(self.machine.state(), State::Checking { .. })
                                || was_checking)
                        {
                            self.check_waiters.push(reply);
                        } else {
                            let _ = reply.send(Ok(Accepted::Started));
                        }
                    }
                }
            }
        }
    }

    /// Check, download and apply need a repository: without `repository.url` they are
    /// refused with a configuration error (the state does not change; nothing is recorded).
    /// In server mode they need an offer from the server first.
    fn needs_repository(&self, command: Command) -> Option<ApiError> {
        let operation = match command {
            Command::Check { .. } => crate::machine::Operation::Check,
            Command::Download { .. } => crate::machine::Operation::Download,
            Command::Apply { .. } => crate::machine::Operation::Apply,
            _ => return None,
        };
        if let Some(f) = &self.fleet {
            if f.client.source().has_offer() {
                return None;
            }
            // Server mode: the fleet server says when; an operator's check before any offer
            // would only fail (and be reported to the server as a node failure).
            return Some(ApiError::Failed(Failure {
                operation,
                error: JobError {
                    class: ErrorClass::Config,
                    name: "ServerMode".into(),
                    message: "server mode: the fleet server has offered no release yet; updates start with its update directive (basalt-rollout pool upgrade)".into(),
                },
            }));
        }
        if self.settings.repository.is_some() {
            return None;
        }
        Some(ApiError::Failed(Failure {
            operation,
            error: JobError {
                class: ErrorClass::Config,
                name: "NoRepository".into(),
                message: "no repository is configured: set repository.url in a file under /etc/basalt/updater.d/".into(),
            },
        }))
    }

    fn check_request(&self, allow_downgrade: bool) -> CheckRequest {
        CheckRequest {
            now: self.clock.now(),
            installed_version: self.machine.current().cloned(),
            last_seen: self
                .machine
                .known()
                .map(|k| (k.sequence, k.envelope_sha256)),
            allow_downgrade,
        }
    }

    fn apply_effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Run(job) => self.run_job(job),
                Effect::CancelRunning => {
                    if let Some(flag) = &self.cancel {
                        flag.cancel();
                    }
                }
                Effect::StartHealthGate => self.start_health_gate(),
                Effect::StopHealthGate => {
                    if let Some(h) = self.health.take() {
                        h.abort();
                    }
                }
                Effect::ClearInitFailures => self.clear_init_failures = true,
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        tracing::debug!(?job, "starting engine job");
        let work = match job {
            Job::Check { allow_downgrade } => WorkerJob::Check(self.check_request(allow_downgrade)),
            Job::Download { release } => {
                let cancel = CancelFlag::new();
                self.cancel = Some(cancel.clone());
                self.progress = None;
                let candidate = self.candidate.clone().filter(|c| {
                    crate::machine::envelope_digest(&c.envelope) == release.envelope_sha256
                });
                let envelope = self
                    .envelope
                    .clone()
                    .filter(|e| crate::machine::envelope_digest(e) == release.envelope_sha256);
                let mut request = self.check_request(release.downgrade);
                request.last_seen = Some((release.sequence, release.envelope_sha256));
                WorkerJob::Download {
                    candidate,
                    envelope,
                    request,
                    node_image_only: release.node_image_only,
                    cancel,
                }
            }
            Job::Apply { target } => WorkerJob::Apply {
                downloaded: Downloaded {
                    slot: target.slot,
                    version: target.release.version.clone(),
                    sequence: target.release.sequence,
                    usr_hash: target.usr_hash,
                    fetched: 0,
                    reused: 0,
                },
                tries: self.settings.update.tries,
            },
            Job::Cancel => WorkerJob::Cancel,
            Job::Rollback => WorkerJob::Rollback,
            Job::MarkGood => WorkerJob::MarkGood,
            Job::MarkBad { slot } => WorkerJob::MarkBad(slot),
        };
        submit(&self.runner, work);
    }

    fn on_worker(&mut self, msg: WorkerMsg) {
        let now = self.clock.now();
        let before = self.machine.snapshot().recorded;
        match msg {
            WorkerMsg::Progress(p) => {
                if p.phase == Phase::Verifying
                    && matches!(self.machine.state(), State::Downloading { .. })
                {
                    let effects = self.machine.event(Event::Phase(Phase::Verifying), now);
                    self.apply_effects(effects);
                }
                self.progress = Some(p);
                return;
            }
            WorkerMsg::Node(Ok(n)) => {
                self.node = Some(n);
                return;
            }
            WorkerMsg::Node(Err(e)) => {
                tracing::warn!(name = %e.name, "reading the node state: {}", e.message);
                return;
            }
            WorkerMsg::Checked(result) => {
                let summary = match result {
                    Ok(CheckOutcome::UpToDate { sequence, version }) => {
                        self.metrics.check("up-to-date");
                        Ok(CheckResult::UpToDate { sequence, version })
                    }
                    Ok(CheckOutcome::Available(mut c)) => {
                        self.metrics.check("available");
                        // In server mode the release came from the server's offer, and with
                        // it the server's word on the extensions.
                        c.node_image_only = self.fleet.as_ref().and_then(|f| f.node_image_only);
                        let m = &c.release.manifest;
                        let release = Release {
                            version: m.version.clone(),
                            sequence: m.sequence,
                            envelope_sha256: crate::machine::envelope_digest(&c.envelope),
                            downgrade: c.release.downgrade_override,
                            node_image_only: c.node_image_only,
                        };
                        self.envelope = Some(c.envelope.clone());
                        self.candidate = Some(Box::new(c));
                        Ok(CheckResult::Available(release))
                    }
                    Err(e) => {
                        self.metrics.check("failed");
                        Err(e)
                    }
                };
                self.metrics.last_check.set(now.timestamp());
                let effects = self.machine.event(Event::CheckDone(summary), now);
                self.apply_effects(effects);
                self.answer_check_waiters();
            }
            WorkerMsg::Adaptive(counts) => {
                for (result, n) in counts.by_result() {
                    if n > 0 {
                        self.metrics.adaptive_install(result, n);
                    }
                }
            }
            WorkerMsg::Done {
                event,
                candidate,
                downloaded,
            } => {
                if let Some(c) = candidate {
                    self.candidate = Some(c);
                }
                if let Some((fetched, reused)) = downloaded {
                    self.metrics.bytes_fetched.inc_by(fetched);
                    self.metrics.bytes_reused.inc_by(reused);
                }
                if matches!(event, Event::DownloadDone(_)) {
                    self.cancel = None;
                }
                let effects = self.machine.event(event, now);
                self.apply_effects(effects);
                if !matches!(
                    self.machine.state(),
                    State::Downloading { .. } | State::Verifying { .. } | State::Staging { .. }
                ) {
                    self.progress = None;
                }
            }
        }
        self.count_new_outcomes(before);
    }

    fn answer_check_waiters(&mut self) {
        let answer = match self.machine.state() {
            State::Checking { .. } => return,
            State::Failed { failure } => Err(ApiError::Failed(failure.clone())),
            s => Ok(Accepted::Checked(
                s.release()
                    .map(|r| r.version.to_string())
                    .unwrap_or_default(),
            )),
        };
        for w in self.check_waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
    }

    /// Count outcomes recorded since `before` (the machine's running total) in the metrics.
    fn count_new_outcomes(&mut self, before: u64) {
        let snap = self.machine.snapshot();
        let new = usize::try_from(snap.recorded.saturating_sub(before)).unwrap_or(usize::MAX);
        for o in snap.history.iter().rev().take(new) {
            self.metrics.outcome(&o.kind);
            if o.kind == "rolled-back" {
                self.metrics.rollbacks.inc();
            }
        }
    }

    fn on_internal(&mut self, msg: Internal) {
        let now = self.clock.now();
        let before = self.machine.snapshot().recorded;
        match msg {
            Internal::Health(result) => {
                self.health = None;
                let ev = match result {
                    Ok(()) => Event::HealthPassed,
                    Err(f) => Event::HealthFailed {
                        check: f.check,
                        detail: f.detail,
                    },
                };
                let effects = self.machine.event(ev, now);
                self.apply_effects(effects);
            }
            Internal::Lock(result) => {
                self.lock_in_flight = false;
                match result {
                    Ok(()) => self.do_reboot(),
                    Err(e) => {
                        tracing::warn!(
                            "fleet-lock: no reboot slot yet: {e}; retrying in {} s",
                            self.retry.as_secs()
                        );
                        self.reboot_at = Some(Instant::now() + self.retry);
                    }
                }
            }
            Internal::SteadyState(result) => match result {
                Ok(()) => self.steady_state_done = true,
                Err(e) => {
                    tracing::warn!(
                        "fleet-lock steady-state: {e}; retrying in {} s",
                        self.retry.as_secs()
                    );
                    self.steady_state_at = Some(Instant::now() + self.retry);
                }
            },
            Internal::Rebooted(result) => {
                if let Err(e) = result {
                    tracing::error!("{e}; retrying in {} s", self.retry.as_secs());
                    self.reboot_in_flight = false;
                    self.reboot_at = Some(Instant::now() + self.retry);
                }
            }
            Internal::CheckedIn(result) => self.on_directive(result),
            Internal::Drained(result) => {
                if let Some(f) = self.fleet.as_mut() {
                    f.draining = false;
                }
                match result {
                    Ok(()) => tracing::info!("pre-reboot command done"),
                    // Bounded by the drain timeout, as AKS's drain timeout bounds eviction:
                    // the reboot goes ahead (the server already counts this node unavailable).
                    Err(e) => tracing::warn!("pre-reboot command: {e}; rebooting anyway"),
                }
                if matches!(self.machine.state(), State::Staged { .. }) {
                    self.do_reboot();
                }
            }
        }
        self.count_new_outcomes(before);
    }

    fn on_check_timer(&mut self) {
        let delay = schedule::next_check_delay(&self.settings.check, self.random.as_mut());
        self.next_check = Some(Instant::now() + delay);
        if self.settings.repository.is_none() {
            return;
        }
        if self.fleet.is_some() {
            self.start_check_in();
            return;
        }
        self.timer_command();
    }

    /// What the timer (or, in server mode, an `update` directive) asks of the machine.
    fn timer_command(&mut self) {
        let u = self.settings.update;
        let command = if u.auto_apply {
            Command::Apply {
                origin: Origin::Timer,
                allow_downgrade: false,
            }
        } else if u.auto_download {
            Command::Download {
                origin: Origin::Timer,
                allow_downgrade: false,
            }
        } else {
            Command::Check {
                origin: Origin::Timer,
            }
        };
        // Only from a rest state: a timer never interrupts or joins running work.
        if !self.machine.state().is_rest() {
            tracing::debug!(
                state = self.machine.state().name(),
                "periodic check skipped"
            );
            return;
        }
        match self.machine.command(command) {
            Ok(effects) => self.apply_effects(effects),
            Err(r) => tracing::debug!("periodic {}: {r}", command.name()),
        }
    }

    /// Server mode: send the state and the unacknowledged events; the answer comes back as
    /// [`Internal::CheckedIn`].
    fn start_check_in(&mut self) {
        let booted = self.node.as_ref().and_then(|n| {
            let slot = n.booted?;
            let version = self
                .machine
                .current()
                .cloned()
                .or_else(|| n.slots[usize::from(slot == Slot::B)].version.clone())?;
            Some(basalt_rollout_wire::Booted {
                version,
                slot: match slot {
                    Slot::A => basalt_rollout_wire::Slot::A,
                    Slot::B => basalt_rollout_wire::Slot::B,
                },
            })
        });
        let state = crate::fleet::agent_state(self.machine.state(), self.reboot_in_flight);
        let Some(f) = self.fleet.as_mut() else {
            return;
        };
        if f.in_flight {
            return;
        }
        let Some(booted) = booted else {
            tracing::warn!("fleet check-in skipped: the booted slot or its version is unknown");
            return;
        };
        let report = basalt_rollout_wire::CheckIn {
            protocol: basalt_rollout_wire::PROTOCOL_VERSION,
            node_id: f.client.node_id().clone(),
            pool: f.client.pool().clone(),
            booted,
            state,
            events: f.events.batch(),
        };
        f.in_flight = true;
        let client = f.client.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = client.check_in(&report).await.map_err(|e| e.to_string());
            let _ = tx.send(Internal::CheckedIn(r));
        });
    }

    /// Server mode: obey a directive. The server decides when; what is installed is still
    /// checked by the engine (the offer is the channel head of the node's own checks).
    fn on_directive(&mut self, result: Result<basalt_rollout_wire::Directive, String>) {
        use basalt_rollout_wire::Action;
        let Some(f) = self.fleet.as_mut() else {
            return;
        };
        f.in_flight = false;
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("{e}; checking in again in {} s", self.retry.as_secs());
                self.metrics.check("failed");
                self.next_check = Some(Instant::now() + self.retry);
                return;
            }
        };
        if let Some(seq) = d.acked_event_seq {
            if f.events.ack(seq) {
                if let Err(e) = f.events.save(&f.log_path) {
                    tracing::warn!("{e}");
                }
            }
        }
        let delay = crate::fleet::retry_delay(
            d.retry_after_secs,
            &self.settings.check,
            self.random.as_mut(),
        );
        self.next_check = Some(Instant::now() + delay);
        tracing::info!(action = ?d.action, reason = %d.reason, retry_after_secs = d.retry_after_secs, "fleet server directive");
        let state = self.machine.state().clone();
        match d.action {
            Action::Wait => {}
            Action::Update => {
                let Some(offer) = d.release else { return };
                if !state.is_rest() {
                    tracing::debug!(state = state.name(), "update directive while busy: ignored");
                    return;
                }
                let set = offer
                    .envelope_bytes()
                    .map_err(|e| e.to_string())
                    .and_then(|env| {
                        self.fleet.as_ref().map_or(Ok(()), |f| {
                            f.client
                                .source()
                                .set_offer(env, &offer.repository)
                                .map_err(|e| e.to_string())
                        })
                    });
                if let Err(e) = set {
                    tracing::warn!("update directive refused: {e}");
                    return;
                }
                if let Some(f) = self.fleet.as_mut() {
                    f.offered = Some(offer.version.clone());
                    f.node_image_only = offer.node_image_only;
                }
                tracing::info!(version = %offer.version, sequence = offer.sequence, repository = %offer.repository, node_image_only = ?offer.node_image_only, "the fleet server offers a release; verifying it");
                self.timer_command();
            }
            Action::Reboot => {
                if let (Some(f), State::Staged { .. }) = (self.fleet.as_mut(), &state) {
                    f.reboot_allowed = d.drain_timeout_secs;
                } else {
                    tracing::debug!(
                        state = state.name(),
                        "reboot directive without a staged release: ignored"
                    );
                }
            }
            Action::Cancel => {
                if matches!(
                    state,
                    State::Downloading { .. }
                        | State::Verifying { .. }
                        | State::Downloaded { .. }
                        | State::Staged { .. }
                ) {
                    match self.machine.command(Command::Cancel) {
                        Ok(effects) => self.apply_effects(effects),
                        Err(r) => tracing::info!("cancel directive: {r}"),
                    }
                }
            }
        }
    }

    /// Server mode: turn state changes into events; news makes the node check in soon.
    fn fleet_observe(&mut self) {
        let state = self.machine.state().clone();
        let now = self.clock.now();
        let booted = self.machine.current().cloned();
        let Some(f) = self.fleet.as_mut() else {
            return;
        };
        if f.last_state == state {
            return;
        }
        let fallback = f.offered.clone().or(booted);
        let events = crate::fleet::transition_events(&f.last_state, &state, fallback.as_ref());
        if !matches!(state, State::Staged { .. }) {
            f.reboot_allowed = None;
            f.told_waiting = false;
        }
        f.last_state = state;
        if events.is_empty() {
            return;
        }
        for (kind, version, reason) in events {
            tracing::info!(event = kind.as_str(), %version, "fleet event");
            f.events.push(kind, version, reason, now);
        }
        if let Err(e) = f.events.save(&f.log_path) {
            tracing::warn!("{e}");
        }
        let soon = Instant::now() + Duration::from_secs(1);
        if self.next_check.is_none_or(|at| at > soon) {
            self.next_check = Some(soon);
        }
    }

    fn start_health_gate(&mut self) {
        if let Some(h) = self.health.take() {
            h.abort();
        }
        let probes = self.probes.clone();
        let deadline = Duration::from_secs(self.settings.health.deadline_secs);
        let interval = Duration::from_secs(self.settings.health.interval_secs);
        let tx = self.internal_tx.clone();
        tracing::info!(
            checks = probes.len(),
            deadline_secs = deadline.as_secs(),
            "health gate started"
        );
        self.health = Some(tokio::spawn(async move {
            let result = crate::health::run_gate(&probes, deadline, interval).await;
            let _ = tx.send(Internal::Health(result));
        }));
    }

    /// After every input: reboot and lock decisions, persistence, publication.
    fn after_change(&mut self) {
        self.fleet_observe();
        self.consider_reboot();
        self.consider_steady_state();
        self.persist();
        self.publish();
    }

    fn consider_reboot(&mut self) {
        let state = self.machine.state().clone();
        if !state.needs_reboot() {
            self.told_reboot_off = false;
        }
        if !state.needs_reboot()
            || self.reboot_in_flight
            || self.lock_in_flight
            || self.reboot_at.is_some()
        {
            return;
        }
        let urgent = matches!(
            state,
            State::RebootPending {
                reason: RollbackReason::HealthCheckFailed { .. } | RollbackReason::MarkedBad,
                ..
            }
        );
        if urgent {
            self.do_reboot();
            return;
        }
        if let (Some(f), State::Staged { .. }) = (self.fleet.as_mut(), &state) {
            // Server mode: the server says when a staged release boots.
            match f.reboot_allowed {
                None => {
                    if !f.told_waiting {
                        tracing::info!(
                            "update staged; waiting for the fleet server's reboot directive"
                        );
                        f.told_waiting = true;
                    }
                }
                Some(_) if f.draining => {}
                Some(drain) => match f.client.pre_reboot().map(<[String]>::to_vec) {
                    None => self.do_reboot(),
                    Some(argv) => {
                        f.draining = true;
                        let tx = self.internal_tx.clone();
                        tokio::spawn(async move {
                            let r = crate::fleet::run_pre_reboot(&argv, Duration::from_secs(drain))
                                .await;
                            let _ = tx.send(Internal::Drained(r));
                        });
                    }
                },
            }
            return;
        }
        match self.settings.reboot.clone() {
            RebootStrategy::Off => {
                if !self.told_reboot_off {
                    tracing::info!(
                        "a reboot is needed; reboot strategy is off: waiting for an operator"
                    );
                    self.told_reboot_off = true;
                }
            }
            RebootStrategy::Immediate => self.do_reboot(),
            RebootStrategy::Window(w) => match schedule::wait_for_window(&w, self.clock.now()) {
                Some(wait) if wait.is_zero() => self.do_reboot(),
                Some(wait) => {
                    tracing::info!(
                        wait_secs = wait.as_secs(),
                        "reboot waits for the maintenance window"
                    );
                    self.reboot_at = Some(Instant::now() + wait);
                }
                None => tracing::error!("the maintenance window never opens"),
            },
            RebootStrategy::FleetLock(_) => match self.fleet_lock.clone() {
                Some(lock) => {
                    self.lock_in_flight = true;
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        let r = lock.pre_reboot().await.map_err(|e| e.to_string());
                        let _ = tx.send(Internal::Lock(r));
                    });
                }
                None => tracing::error!("reboot strategy fleet-lock without a lock client"),
            },
        }
    }

    fn do_reboot(&mut self) {
        if self.reboot_in_flight {
            return;
        }
        let reason = match self.machine.state() {
            State::RebootPending { to, reason, .. } => {
                format!("rolling back to slot {to}: {reason}")
            }
            State::Staged { target } => format!(
                "booting update {} in slot {}",
                target.release.version, target.slot
            ),
            s => format!("state {}", s.name()),
        };
        // The reason is on disk before the reboot is asked for.
        self.persist();
        let _ = self.notifier.notify(&format!("STATUS=rebooting: {reason}"));
        self.reboot_in_flight = true;
        let reboot = self.reboot.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = reboot.reboot(&reason).await.map_err(|e| e.to_string());
            let _ = tx.send(Internal::Rebooted(r));
        });
    }

    fn consider_steady_state(&mut self) {
        let Some(lock) = self.fleet_lock.clone() else {
            return;
        };
        let s = self.machine.state();
        let settled = !s.needs_reboot()
            && !matches!(
                s,
                State::PendingHealth { .. } | State::Committing { .. } | State::MarkingBad { .. }
            );
        if !settled || self.steady_state_done || self.steady_state_at.is_some() {
            return;
        }
        // Mark as in flight with a far deadline; the answer replaces it.
        self.steady_state_at = Some(Instant::now() + Duration::from_secs(3600));
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = lock.steady_state().await.map_err(|e| e.to_string());
            let _ = tx.send(Internal::SteadyState(r));
        });
    }

    fn persist(&mut self) {
        let snapshot = self.machine.snapshot().clone();
        let current = Some((snapshot.clone(), self.envelope.clone()));
        if self.persisted == current {
            return;
        }
        let file = StatusFile::new(
            snapshot,
            &self.boot_id,
            self.envelope.as_deref(),
            self.clock.now(),
        );
        match file.save(&self.paths.status_file()) {
            Ok(()) => {
                self.persisted = current;
                if std::mem::take(&mut self.clear_init_failures) {
                    // The records are in the status file now; only then is the variable deleted.
                    match crate::bootfail::clear(&self.paths.efivars) {
                        Ok(()) => {
                            tracing::info!("basalt-init's failure records reported and cleared")
                        }
                        Err(e) => tracing::warn!("{e}; it will not be reported again"),
                    }
                }
            }
            Err(e) => {
                self.metrics.status_write_errors.inc();
                tracing::error!("{e}");
            }
        }
    }

    fn publish(&mut self) {
        let view = self.view();
        let name = self.status_line();
        if name != self.announced_state {
            self.metrics.set_state(self.machine.state().name());
            if let Err(e) = self.notifier.notify(&format!("STATUS={name}")) {
                tracing::debug!("sd_notify STATUS: {e}");
            }
            self.announced_state = name;
        }
        self.view_tx.send_if_modified(|v| {
            if *v == view {
                false
            } else {
                *v = view;
                true
            }
        });
    }

    fn view(&self) -> View {
        let s = self.machine.snapshot();
        let state = &s.state;
        let slot_info = |i: usize| -> SlotInfo {
            let Some(n) = &self.node else {
                return SlotInfo {
                    slot: ["A", "B"][i].to_owned(),
                    ..Default::default()
                };
            };
            let v = &n.slots[i];
            let (boot, tries_left) = match v.boot {
                BootStatus::Absent => ("absent", 0),
                BootStatus::Trying { tries_left, .. } => ("trying", tries_left),
                BootStatus::Good => ("good", 0),
                BootStatus::Bad => ("bad", 0),
            };
            SlotInfo {
                slot: v.slot.to_string(),
                version: v
                    .version
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                state: v.state.as_str().to_owned(),
                boot: boot.to_owned(),
                tries_left,
            }
        };
        let progress = self.progress.as_ref().map(|p| ProgressView {
            phase: match p.phase {
                Phase::Downloading => "downloading",
                Phase::Verifying => "verifying",
                Phase::Staging => "staging",
            }
            .to_owned(),
            done: p.done,
            total: p.total,
            fetched: p.fetched,
            reused: p.reused,
        });
        let next_check = self.next_check.map_or(0, |at| {
            let wait = at.saturating_duration_since(Instant::now());
            (self.clock.now()
                + basalt_manifest::chrono::Duration::from_std(wait).unwrap_or_default())
            .timestamp()
        });
        View {
            state: state.name().to_owned(),
            progress: progress.unwrap_or_default(),
            current_version: s
                .current
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            booted_slot: self
                .node
                .as_ref()
                .and_then(|n| n.booted)
                .map(|b| b.to_string())
                .unwrap_or_default(),
            next_boot_slot: self
                .node
                .as_ref()
                .and_then(|n| n.next_boot)
                .map(|b| b.to_string())
                .unwrap_or_default(),
            available_version: match state {
                State::Available { release }
                | State::Downloading { release, .. }
                | State::Verifying { release, .. }
                | State::Cancelling { release, .. } => release.version.to_string(),
                _ => String::new(),
            },
            staged_version: match state {
                State::Downloaded { target }
                | State::Staging { target }
                | State::Staged { target } => target.release.version.to_string(),
                _ => String::new(),
            },
            pinned: s.pinned,
            last_error_name: s
                .last_error
                .as_ref()
                .map(|f| error_name(f.error.class))
                .unwrap_or_default(),
            last_error_message: s
                .last_error
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_default(),
            last_check: s.last_check.map_or(0, |t| t.timestamp()),
            next_check,
            reboot_required: state.needs_reboot(),
            reboot_strategy: self.settings.reboot.name().to_owned(),
            slots: [slot_info(0), slot_info(1)],
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SlotView;
    use basalt_disk::SlotState;

    fn node(booted: Slot, b_boot: BootStatus) -> NodeView {
        let view = |slot, v: &str, boot| SlotView {
            slot,
            state: SlotState::Valid,
            version: Some(v.parse().unwrap()),
            usr_hash: Some(crate::machine::envelope_digest(v.as_bytes())),
            boot,
        };
        NodeView {
            booted: Some(booted),
            slots: [
                view(Slot::A, "1.0.0", BootStatus::Good),
                view(Slot::B, "2.0.0", b_boot),
            ],
            next_boot: Some(Slot::A),
        }
    }

    #[test]
    fn boot_env_usrhash_decides_which_slot_booted() {
        let n = node(
            Slot::A,
            BootStatus::Trying {
                tries_left: 2,
                tries_done: 1,
            },
        );
        let b_hash = crate::machine::envelope_digest(b"2.0.0");
        let f = boot_facts(Some(&n), Some(b_hash), true);
        assert_eq!(
            f.booted,
            Some((Slot::B, b_hash)),
            "the kernel's usrhash wins"
        );
        assert_eq!(f.booted_version.unwrap().to_string(), "2.0.0");
        assert!(f.booted_on_trial.is_some());
        assert!(!f.booted_blessed);
        // Without boot.env: the engine's view.
        let f = boot_facts(Some(&n), None, false);
        assert_eq!(f.booted.map(|(s, _)| s), Some(Slot::A));
        assert!(f.booted_blessed);
        assert_eq!(
            f.staged_on_disk.unwrap().slot,
            Slot::B,
            "B is staged with tries left"
        );
        // An unknown hash: the engine's view too.
        let f = boot_facts(Some(&n), Some(crate::machine::envelope_digest(b"x")), false);
        assert_eq!(f.booted.map(|(s, _)| s), Some(Slot::A));
        // No engine view: nothing is known.
        assert_eq!(boot_facts(None, Some(b_hash), true).booted, None);
    }

    #[test]
    fn env_files_parse_and_bad_hashes_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.env");
        std::fs::write(&p, "BASALT_USRHASH=zz\nBASALT_DISK=/dev/vda\nnot a pair\n").unwrap();
        let kv = read_env_file(&p).unwrap();
        assert_eq!(
            kv,
            [
                ("BASALT_USRHASH".to_owned(), "zz".to_owned()),
                ("BASALT_DISK".to_owned(), "/dev/vda".to_owned())
            ]
        );
        assert!(Digest::from_hex("zz").is_none());
        assert!(read_env_file(&dir.path().join("missing")).is_none());
    }
}
