//! Server mode, the node side of the check-in protocol of `basalt-rollout` (the documents
//! are in `basalt_rollout_wire`; this crate and the server share that crate and nothing
//! else).
//!
//! Owns: enrolment (the pool's enrolment token, read from `server.enroll_token_file`, is
//! exchanged once for this node's own token, kept in `<state>/fleet-token`, mode 0600), the
//! check-in request and its answer ([`FleetClient::check_in`]), and the node's event log
//! ([`EventLog`]: what happened since the server last acknowledged, with node-local sequence
//! numbers that survive restarts and reboots, in `<state>/fleet-events.json`). Does not own:
//! when to check in and what to do with a directive (the daemon), nor verifying an offered
//! release (the engine, through [`crate::source::offered::OfferedSource`]).
//!
//! Trust: the server decides *when* a node updates, never *what* it installs. An `update`
//! directive's envelope goes to the engine as the channel head, so the signature threshold,
//! expiry, sequence (anti-replay) and downgrade checks apply unchanged. A directive that does
//! not parse or validate is refused as a whole and the node keeps its schedule.

use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use basalt_rollout_wire::{
    AgentState, CheckIn, Directive, EnrollRequest, Enrolled, ErrorBody, Event, EventKind, NodeId,
    PoolName, CHECK_IN_PATH, ENROLL_PATH, MAX_DIRECTIVE_BYTES, MAX_EVENTS, MAX_REASON_BYTES,
    MAX_SMALL_BYTES, PROTOCOL_VERSION,
};
use hyper::header::{HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};

use crate::config::ServerSettings;
use crate::http::{url, HttpClient, HttpError, Request};
use crate::machine::State;
use crate::source::offered::OfferedSource;

/// Events kept for the server at most; older ones are dropped (and logged) beyond this, so a
/// node cut off from its server for months does not grow its state file without bound.
pub const MAX_PENDING_EVENTS: usize = 256;

/// Why a check-in or enrolment failed. Each names the URL or file.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet server {step}: {source}")]
    Http {
        step: &'static str,
        #[source]
        source: HttpError,
    },
    /// The server answered, but not with 200.
    #[error("fleet server {step} refused by {url}: HTTP {status}: {detail}")]
    Refused {
        step: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    /// The server's answer is not a valid document: nothing of it is used.
    #[error("fleet server {step} at {url}: unusable answer: {source}")]
    Answer {
        step: &'static str,
        url: String,
        #[source]
        source: basalt_rollout_wire::WireError,
    },
    /// The answer is valid but not for this node (another id or pool).
    #[error("fleet server {step} at {url}: {detail}")]
    Mismatch {
        step: &'static str,
        url: String,
        detail: String,
    },
    #[error("reading the enrolment token {path}: {source}")]
    EnrollToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storing the node token {path}: {source}")]
    StoreToken {
        path: PathBuf,
        #[source]
        source: basalt_fsutil::Error,
    },
    #[error("fleet server URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: url::UrlError,
    },
    #[error("reading the machine id {path}: {detail}")]
    MachineId { path: PathBuf, detail: String },
}

/// The check-in client of one node: server, pool, identity, token storage, and the source the
/// offers go into.
#[derive(Debug, Clone)]
pub struct FleetClient {
    base: String,
    pool: PoolName,
    node_id: NodeId,
    enroll_token_file: PathBuf,
    token_file: PathBuf,
    client: HttpClient,
    source: OfferedSource,
    pre_reboot: Option<Vec<String>>,
}

impl FleetClient {
    /// From the settings: the node id from `server.node_id` or derived from the machine id
    /// (as the FleetLock id), the node token kept under `state_dir`. Both URLs are checked
    /// now.
    pub fn new(
        settings: &ServerSettings,
        machine_id: &Path,
        state_dir: &Path,
        client: HttpClient,
        source: OfferedSource,
    ) -> Result<Self, FleetError> {
        let node_id = match &settings.node_id {
            Some(id) => id.clone(),
            None => {
                let text =
                    std::fs::read_to_string(machine_id).map_err(|e| FleetError::MachineId {
                        path: machine_id.to_owned(),
                        detail: e.to_string(),
                    })?;
                crate::fleetlock::node_id(&text).map_err(|detail| FleetError::MachineId {
                    path: machine_id.to_owned(),
                    detail,
                })?
            }
        };
        let node_id = NodeId::new(&node_id).map_err(|detail| FleetError::MachineId {
            path: machine_id.to_owned(),
            detail,
        })?;
        let pool = PoolName::new(&settings.pool).map_err(|detail| FleetError::Mismatch {
            step: "configuration",
            url: settings.url.clone(),
            detail,
        })?;
        let c = FleetClient {
            base: settings.url.trim_end_matches('/').to_owned(),
            pool,
            node_id,
            enroll_token_file: settings.enroll_token_file.clone(),
            token_file: state_dir.join("fleet-token"),
            client,
            source,
            pre_reboot: settings.pre_reboot.clone(),
        };
        c.url(ENROLL_PATH)?;
        c.url(CHECK_IN_PATH)?;
        Ok(c)
    }

    fn url(&self, path: &str) -> Result<url::Url, FleetError> {
        let u = format!("{}{path}", self.base);
        url::parse(&u).map_err(|source| FleetError::Url { url: u, source })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn pool(&self) -> &PoolName {
        &self.pool
    }

    /// The source the offers go into.
    pub fn source(&self) -> &OfferedSource {
        &self.source
    }

    /// The pre-reboot (drain) command, when configured.
    pub fn pre_reboot(&self) -> Option<&[String]> {
        self.pre_reboot.as_deref()
    }

    /// POST `body` to `path` with a bearer token; the answer's body when 200.
    async fn post(
        &self,
        step: &'static str,
        path: &str,
        token: &str,
        body: Vec<u8>,
        cap: u64,
    ) -> Result<(String, Vec<u8>), FleetError> {
        let url = self.url(path)?;
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| {
            FleetError::Mismatch {
                step,
                url: url.to_string(),
                detail: format!("the token is not a header value: {e}"),
            }
        })?;
        let req = Request::post(url.clone(), "application/json", body).header(AUTHORIZATION, auth);
        let http = |source| FleetError::Http { step, source };
        let resp = self.client.send(&req).await.map_err(http)?;
        let status = resp.status().as_u16();
        let answer = resp.bytes(cap).await.map_err(http)?;
        if status != 200 {
            let detail = match ErrorBody::from_json(&answer) {
                Ok(b) => format!("{}: {}", b.error.kind, b.error.message),
                Err(_) => String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned(),
            };
            return Err(FleetError::Refused {
                step,
                url: url.to_string(),
                status,
                detail,
            });
        }
        Ok((url.to_string(), answer.to_vec()))
    }

    /// This node's token: the stored one, else enrol with the pool's enrolment token and
    /// store the answer (before it is used, so a lost answer to the first check-in does not
    /// cost the identity).
    pub async fn token(&self) -> Result<String, FleetError> {
        if let Ok(t) = std::fs::read_to_string(&self.token_file) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_owned());
            }
        }
        let enroll = std::fs::read_to_string(&self.enroll_token_file).map_err(|source| {
            FleetError::EnrollToken {
                path: self.enroll_token_file.clone(),
                source,
            }
        })?;
        let request = EnrollRequest {
            protocol: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
        };
        let (url, answer) = self
            .post(
                "enrolment",
                ENROLL_PATH,
                enroll.trim(),
                request.to_json(),
                MAX_SMALL_BYTES as u64,
            )
            .await?;
        let enrolled = Enrolled::from_json(&answer).map_err(|source| FleetError::Answer {
            step: "enrolment",
            url: url.clone(),
            source,
        })?;
        if enrolled.node_id != self.node_id || enrolled.pool != self.pool {
            return Err(FleetError::Mismatch {
                step: "enrolment",
                url,
                detail: format!(
                    "enrolled {} in pool {}, but this node is {} in pool {}",
                    enrolled.node_id, enrolled.pool, self.node_id, self.pool
                ),
            });
        }
        if let Some(dir) = self.token_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        basalt_fsutil::write_atomic(&self.token_file, enrolled.node_token.as_bytes(), 0o600)
            .map_err(|source| FleetError::StoreToken {
                path: self.token_file.clone(),
                source,
            })?;
        tracing::info!(node = %self.node_id, pool = %self.pool, "enrolled with the fleet server");
        Ok(enrolled.node_token)
    }

    /// One check-in: enrol if needed, send `report`, return the validated directive.
    pub async fn check_in(&self, report: &CheckIn) -> Result<Directive, FleetError> {
        let token = self.token().await?;
        let (url, answer) = self
            .post(
                "check-in",
                CHECK_IN_PATH,
                &token,
                report.to_json(),
                MAX_DIRECTIVE_BYTES as u64,
            )
            .await?;
        Directive::from_json(&answer).map_err(|source| FleetError::Answer {
            step: "check-in",
            url,
            source,
        })
    }
}

/// The events not yet acknowledged by the server, and the next sequence number. Persisted
/// after every change, so sequence numbers never repeat across restarts and reboots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    pub next_seq: u64,
    pub pending: Vec<Event>,
}

impl EventLog {
    /// The log at `path`; a missing file is an empty log, a damaged one is set aside (logged)
    /// and restarted from a sequence number above anything it could have held.
    pub fn load(path: &Path, now: DateTime<Utc>) -> EventLog {
        match std::fs::read(path) {
            Err(_) => EventLog {
                next_seq: 1,
                pending: Vec::new(),
            },
            Ok(bytes) => match serde_json::from_slice::<EventLog>(&bytes) {
                Ok(log) => log,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "unusable fleet event log ({e}); starting a new one");
                    // Microseconds since the epoch: above any sequence an older log used.
                    let seq = u64::try_from(now.timestamp_micros()).unwrap_or(1).max(1);
                    EventLog {
                        next_seq: seq,
                        pending: Vec::new(),
                    }
                }
            },
        }
    }

    /// Writes the log atomically.
    pub fn save(&self, path: &Path) -> Result<(), basalt_fsutil::Error> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        basalt_fsutil::write_atomic(path, &bytes, 0o644)
    }

    /// Record an event. Reasons are cut to the protocol's limit (at a character boundary)
    /// and control characters replaced, so a long engine message never makes a check-in
    /// invalid.
    pub fn push(
        &mut self,
        kind: EventKind,
        version: Version,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) {
        let reason = if kind.is_failure() {
            let mut r: String = reason
                .unwrap_or_else(|| "no reason recorded".into())
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if r.len() > MAX_REASON_BYTES {
                let mut end = MAX_REASON_BYTES;
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                r.truncate(end);
            }
            Some(r)
        } else {
            None
        };
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        self.pending.push(Event {
            seq,
            at,
            kind,
            version,
            reason,
        });
        if self.pending.len() > MAX_PENDING_EVENTS {
            let dropped = self.pending.len() - MAX_PENDING_EVENTS;
            self.pending.drain(..dropped);
            tracing::warn!(
                dropped,
                "fleet event log full: the oldest events were dropped"
            );
        }
    }

    /// The events to send now: the oldest [`MAX_EVENTS`].
    pub fn batch(&self) -> Vec<Event> {
        self.pending.iter().take(MAX_EVENTS).cloned().collect()
    }

    /// The server recorded everything up to `seq`. Returns whether anything was dropped.
    pub fn ack(&mut self, seq: u64) -> bool {
        let before = self.pending.len();
        self.pending.retain(|e| e.seq > seq);
        before != self.pending.len()
    }
}

/// What the node reports as its state (`state` of a check-in) for the machine's `state`.
pub fn agent_state(state: &State, rebooting: bool) -> AgentState {
    match state {
        State::Idle
        | State::Available { .. }
        | State::Committed { .. }
        | State::RolledBack { .. }
        | State::Cancelling { .. } => AgentState::Idle,
        State::Checking { .. } | State::Downloading { .. } | State::Verifying { .. } => {
            AgentState::Downloading
        }
        State::Downloaded { .. } | State::Staging { .. } => AgentState::Downloaded,
        State::Staged { .. } if rebooting => AgentState::Rebooting,
        State::Staged { .. } => AgentState::Staged,
        State::PendingHealth { .. } | State::Committing { .. } | State::MarkingBad { .. } => {
            AgentState::Trying
        }
        State::RollingBack | State::RebootPending { .. } => AgentState::Rebooting,
        State::Failed { .. } => AgentState::Failed,
    }
}

/// The events a move of the machine from `prev` to `next` means for the server (oldest
/// first). `fallback` is the version a failure is about when no state names one (the last
/// offered release, else the booted one); without any version nothing can be reported.
pub fn transition_events(
    prev: &State,
    next: &State,
    fallback: Option<&Version>,
) -> Vec<(EventKind, Version, Option<String>)> {
    if prev == next {
        return Vec::new();
    }
    let written = |s: &State| {
        matches!(
            s,
            State::Downloaded { .. } | State::Staging { .. } | State::Staged { .. }
        )
    };
    let mut out = Vec::new();
    match next {
        State::Downloaded { target } | State::Staging { target } if !written(prev) => {
            out.push((EventKind::Downloaded, target.release.version.clone(), None));
        }
        State::Staged { target } => {
            if !written(prev) {
                out.push((EventKind::Downloaded, target.release.version.clone(), None));
            }
            if !matches!(prev, State::Staged { .. }) {
                out.push((EventKind::Staged, target.release.version.clone(), None));
            }
        }
        State::PendingHealth { target } if !matches!(prev, State::PendingHealth { .. }) => {
            out.push((EventKind::Rebooted, target.release.version.clone(), None));
        }
        State::Committed { version } => out.push((EventKind::Healthy, version.clone(), None)),
        State::RolledBack { from, to, reason } => {
            if let Some(v) = from.as_ref().or(to.as_ref()).or(fallback) {
                out.push((EventKind::RolledBack, v.clone(), Some(reason.to_string())));
            }
        }
        State::Failed { failure } => {
            if let Some(v) = prev.release().map(|r| &r.version).or(fallback) {
                out.push((EventKind::Failed, v.clone(), Some(failure.to_string())));
            }
        }
        _ => {}
    }
    out
}

/// Runs the pre-reboot (drain) command `argv` (no shell), bounded by `timeout`: killed when it
/// runs longer. `Err` names the command and why it did not succeed.
pub async fn run_pre_reboot(argv: &[String], timeout: std::time::Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} ended with {status}")),
        Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
        Err(_) => {
            // Only the process this daemon started, by its handle.
            let _ = child.kill().await;
            Err(format!(
                "{program} still running after the drain timeout of {} s: stopped",
                timeout.as_secs()
            ))
        }
    }
}

/// When to check in next after a directive: the server's `retry_after_secs` plus a random
/// part of at most a tenth of it and at most `check.jitter_secs`, so nodes told the same
/// time drift apart.
pub fn retry_delay(
    retry_after_secs: u64,
    check: &crate::config::CheckSettings,
    rng: &mut dyn crate::schedule::Random,
) -> std::time::Duration {
    let spread = (retry_after_secs / 10).min(check.jitter_secs);
    std::time::Duration::from_secs(retry_after_secs + rng.up_to(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn events_keep_increasing_across_reloads_and_acks_drop_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet-events.json");
        let now = Utc::now();
        let mut log = EventLog::load(&path, now);
        log.push(EventKind::Downloaded, v("2.0.0"), None, now);
        log.push(EventKind::Staged, v("2.0.0"), Some("ignored".into()), now);
        log.save(&path).unwrap();
        let mut log = EventLog::load(&path, now);
        log.push(EventKind::Failed, v("2.0.0"), Some("x\n".repeat(2000)), now);
        let seqs: Vec<u64> = log.pending.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(log.pending[1].reason, None, "no reason on a staged event");
        let r = log.pending[2].reason.as_deref().unwrap();
        assert!(r.len() <= MAX_REASON_BYTES && !r.contains('\n'));
        // What the node sends validates on the wire.
        let report = CheckIn {
            protocol: PROTOCOL_VERSION,
            node_id: NodeId::new("n1").unwrap(),
            pool: PoolName::new("web").unwrap(),
            booted: basalt_rollout_wire::Booted {
                version: v("1.0.0"),
                slot: basalt_rollout_wire::Slot::A,
            },
            state: basalt_rollout_wire::AgentState::Failed,
            events: log.batch(),
        };
        CheckIn::from_json(&report.to_json()).unwrap();
        assert!(log.ack(2));
        assert_eq!(log.pending.len(), 1);
        assert!(!log.ack(2));
        // A damaged file: a new log whose numbers are above any earlier one.
        std::fs::write(&path, b"{damaged").unwrap();
        let log = EventLog::load(&path, now);
        assert!(log.next_seq > 3 && log.pending.is_empty());
    }

    #[test]
    fn transitions_become_events_once() {
        use crate::machine::{Release, RollbackReason, Target};
        use basalt_manifest::Digest;
        let target = Target {
            release: Release {
                version: v("2.0.0"),
                sequence: 2,
                envelope_sha256: Digest([1; 32]),
                downgrade: false,
                node_image_only: None,
            },
            slot: basalt_disk::Slot::B,
            usr_hash: Digest([2; 32]),
        };
        let kinds = |p: &State, n: &State| -> Vec<EventKind> {
            transition_events(p, n, Some(&v("1.0.0")))
                .into_iter()
                .map(|e| e.0)
                .collect()
        };
        let staging = State::Staging {
            target: target.clone(),
        };
        let staged = State::Staged {
            target: target.clone(),
        };
        assert_eq!(kinds(&State::Idle, &staging), [EventKind::Downloaded]);
        assert_eq!(kinds(&staging, &staged), [EventKind::Staged]);
        assert_eq!(
            kinds(&State::Idle, &staged),
            [EventKind::Downloaded, EventKind::Staged]
        );
        assert!(kinds(&staged, &staged).is_empty());
        let trying = State::PendingHealth {
            target: target.clone(),
        };
        assert_eq!(kinds(&staged, &trying), [EventKind::Rebooted]);
        assert_eq!(
            kinds(
                &trying,
                &State::Committed {
                    version: v("2.0.0")
                }
            ),
            [EventKind::Healthy]
        );
        let back = transition_events(
            &staged,
            &State::RolledBack {
                from: Some(v("2.0.0")),
                to: Some(v("1.0.0")),
                reason: RollbackReason::MarkedBad,
            },
            None,
        );
        assert_eq!(back[0].0, EventKind::RolledBack);
        assert_eq!(back[0].1, v("2.0.0"));
        assert!(back[0].2.as_deref().unwrap().contains("marked bad"));
        assert_eq!(agent_state(&staged, false), AgentState::Staged);
        assert_eq!(agent_state(&staged, true), AgentState::Rebooting);
        assert_eq!(agent_state(&trying, false), AgentState::Trying);
    }

    #[test]
    fn retry_follows_the_server_with_bounded_jitter() {
        struct Max;
        impl crate::schedule::Random for Max {
            fn up_to(&mut self, max: u64) -> u64 {
                max
            }
        }
        let check = crate::config::CheckSettings {
            interval_secs: 3600,
            jitter_secs: 300,
            initial_delay_secs: 0,
        };
        assert_eq!(retry_delay(60, &check, &mut Max).as_secs(), 66);
        assert_eq!(retry_delay(10_000, &check, &mut Max).as_secs(), 10_300);
        assert_eq!(retry_delay(1, &check, &mut Max).as_secs(), 1);
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = EventLog::default();
        let now = Utc::now();
        for _ in 0..MAX_PENDING_EVENTS + 10 {
            log.push(EventKind::Downloaded, v("2.0.0"), None, now);
        }
        assert_eq!(log.pending.len(), MAX_PENDING_EVENTS);
        assert_eq!(log.pending[0].seq, 11);
        assert_eq!(log.batch().len(), MAX_EVENTS);
    }
}
