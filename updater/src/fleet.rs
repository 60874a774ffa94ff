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
    CheckIn, Directive, EnrollRequest, Enrolled, ErrorBody, Event, EventKind, NodeId, PoolName,
    CHECK_IN_PATH, ENROLL_PATH, MAX_DIRECTIVE_BYTES, MAX_EVENTS, MAX_REASON_BYTES,
    MAX_SMALL_BYTES, PROTOCOL_VERSION,
};
use hyper::header::{HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};

use crate::config::ServerSettings;
use crate::http::{url, HttpClient, HttpError, Request};
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
                let text = std::fs::read_to_string(machine_id).map_err(|e| {
                    FleetError::MachineId {
                        path: machine_id.to_owned(),
                        detail: e.to_string(),
                    }
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
