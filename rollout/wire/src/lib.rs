//! The check-in protocol between a node's update agent (`basalt-updated`) and the fleet
//! server (`basalt-rollout`): the JSON documents on the wire, their size caps and their
//! validation. Both sides depend on this crate and on nothing of each other.
//!
//! Owns: the request and answer types of enrolment ([`EnrollRequest`], [`Enrolled`]), the
//! check-in ([`CheckIn`], [`Directive`]), the FleetLock bodies ([`FleetLockRequest`],
//! [`FleetLockError`]), the error body of refused calls ([`ErrorBody`]), the endpoint paths
//! and the limits. Does not own: what the server decides (`basalt-rollout`'s policy), how a
//! node verifies a release it is offered (`basalt-manifest`: the node checks the offered
//! envelope exactly as if it had read it from a repository), nor the HTTP client or server.
//!
//! # The protocol
//!
//! ```text
//!   node                                              server
//!    │ POST /v1/enroll   Bearer <pool enrolment token>  │  once: the node gets its own token
//!    │ {protocol, node_id}  ─────────────────────────▶  │  (stored hashed; a second enrolment
//!    │ ◀──── {node_id, pool, node_token, interval}      │   of the same id is refused)
//!    │                                                  │
//!    │ POST /v1/check-in  Bearer <node token>           │  on the node's interval, with jitter,
//!    │ {node_id, pool, booted{version,slot}, state,     │  or after `retry_after_secs`
//!    │  events[seq, at, kind, version, reason]} ────▶   │
//!    │ ◀──── Directive {action: wait|update|reboot|cancel, retry_after_secs, reason,
//!    │                  release?{envelope, repository}, drain_timeout_secs?, acked_event_seq}
//! ```
//!
//! - **Events are delivered at least once.** Each carries a node-local sequence number,
//!   strictly increasing; the server records those above the highest it already has and
//!   answers that number in `acked_event_seq`; the node drops what was acknowledged. A lost
//!   answer means the same events are sent again and ignored the second time.
//! - **The server only directs.** An `update` directive carries the signed release envelope
//!   bytes (base64, exactly as published) and the repository to fetch the artifacts from; the
//!   node verifies the envelope against its own trust root and its own sequence and downgrade
//!   policy. A compromised server can delay an update or offer an old signed release (which
//!   the node refuses by sequence), never install something the release keys did not sign.
//! - **Strict parsing.** Unknown fields are refused, every document has a byte cap checked
//!   before parsing, every string and list a length cap, and each document's cross-field
//!   rules ([`CheckIn::validate`], [`Directive::validate`]) are checked after parsing, so
//!   both sides refuse the same malformed input with the same reason.

use std::fmt;

use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The protocol version every document carries (`protocol`); another number is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// `POST`: a node exchanges its pool's enrolment token for a node token.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// `POST`: a node reports and receives its directive.
pub const CHECK_IN_PATH: &str = "/v1/check-in";
/// FleetLock: take a reboot slot (Zincati's protocol).
pub const FLEETLOCK_PRE_REBOOT: &str = "/v1/pre-reboot";
/// FleetLock: give the reboot slot back.
pub const FLEETLOCK_STEADY_STATE: &str = "/v1/steady-state";
/// The header every FleetLock request carries, with the value `true`.
pub const FLEETLOCK_HEADER: &str = "fleet-lock-protocol";

/// Check-in bodies above this size (64 KiB) are refused before parsing.
pub const MAX_CHECK_IN_BYTES: usize = 64 * 1024;
/// Directive bodies above this size are refused before parsing: the cap of a release envelope
/// (`basalt_manifest::MAX_RELEASE_BYTES`) in base64, plus room for the other fields.
pub const MAX_DIRECTIVE_BYTES: usize = basalt_manifest::MAX_RELEASE_BYTES / 3 * 4 + 16 * 1024;
/// Small documents (enrolment, FleetLock, errors) above this size (8 KiB) are refused.
pub const MAX_SMALL_BYTES: usize = 8 * 1024;
/// At most this many events in one check-in; a node with more sends the oldest first.
pub const MAX_EVENTS: usize = 32;
/// The longest failure reason or directive reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// The longest `retry_after_secs` a directive may carry (one day).
pub const MAX_RETRY_AFTER_SECS: u64 = 86_400;
/// The longest drain timeout a directive may carry (one day, as AKS's 1440 minutes).
pub const MAX_DRAIN_TIMEOUT_SECS: u64 = 86_400;
/// The longest repository URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// A document that cannot be accepted. Each variant names the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Larger than the document's cap; not parsed.
    #[error("{document} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        document: &'static str,
        size: usize,
        limit: usize,
    },
    /// Not JSON of the document's schema (including unknown fields).
    #[error("{document}: malformed JSON: {source}")]
    Json {
        document: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Another protocol version.
    #[error(
        "{document}: protocol {found} is not supported (this build speaks {PROTOCOL_VERSION})"
    )]
    Protocol { document: &'static str, found: u32 },
    /// A field breaks a rule of the schema.
    #[error("{document}: field `{field}`: {reason}")]
    Invalid {
        document: &'static str,
        field: &'static str,
        reason: String,
    },
}

fn invalid(document: &'static str, field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        document,
        field,
        reason: reason.into(),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    document: &'static str,
    limit: usize,
) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            document,
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| WireError::Json { document, source })
}

fn check_protocol(document: &'static str, found: u32) -> Result<(), WireError> {
    if found == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(WireError::Protocol { document, found })
    }
}

fn check_text(
    document: &'static str,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), WireError> {
    if text.len() > max {
        return Err(invalid(
            document,
            field,
            format!("{} bytes, over the {max}-byte limit", text.len()),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(document, field, "contains control characters"));
    }
    Ok(())
}

/// Serialises a document; the types here always serialise (no maps with non-string keys).
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A node's identity in the fleet: 1–128 bytes of `[A-Za-z0-9._:-]`, starting with a letter or
/// digit. `basalt-updated` uses its application-specific machine id (32 hex digits), the same
/// id it gives FleetLock servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// The longest id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Checks `text` against the rule above.
    pub fn new(text: &str) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(NodeId(text.to_owned()))
        } else {
            Err(format!(
                "node id {text:?} must be 1-{} characters of [A-Za-z0-9._:-], starting with a letter or digit",
                Self::MAX_LEN
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        NodeId::new(&text)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node pool's name: the rule of channel and OS names (`basalt_manifest::valid_label`):
/// 1–64 bytes of `[a-z0-9._-]`, starting with `[a-z0-9]`. Also the FleetLock group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(String);

impl PoolName {
    /// Checks `text` against the rule above.
    pub fn new(text: &str) -> Result<Self, String> {
        if basalt_manifest::valid_label(text) && !text.is_empty() {
            Ok(PoolName(text.to_owned()))
        } else {
            Err(format!(
                "pool name {text:?} must be 1-64 characters of [a-z0-9._-], starting with [a-z0-9]"
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PoolName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        PoolName::new(&text)
    }
}

impl From<PoolName> for String {
    fn from(name: PoolName) -> String {
        name.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of the two `/usr` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

/// What the node's agent is doing, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// Nothing in progress.
    Idle,
    /// Streaming a release into the inactive slot.
    Downloading,
    /// The inactive slot holds a verified release, not yet staged for boot.
    Downloaded,
    /// The release is staged as the next boot; waiting for permission to reboot.
    Staged,
    /// Draining and rebooting.
    Rebooting,
    /// Booted into a new release that has not passed its health gate yet.
    Trying,
    /// The last update failed (reason in the events).
    Failed,
}

/// What happened on the node, reported in the next check-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The release was written to the inactive slot and re-verified.
    Downloaded,
    /// The release is staged as the next boot.
    Staged,
    /// The node rebooted into the release (before its health gate).
    Rebooted,
    /// The release passed the health gate and was marked good.
    Healthy,
    /// The release did not come up healthy and the node went back to the other slot.
    RolledBack,
    /// The update failed before the reboot (verification, download, disk …).
    Failed,
}

impl EventKind {
    /// Failures carry a reason.
    pub fn is_failure(self) -> bool {
        matches!(self, EventKind::RolledBack | EventKind::Failed)
    }

    /// The wire name (`rolled-back` …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Downloaded => "downloaded",
            EventKind::Staged => "staged",
            EventKind::Rebooted => "rebooted",
            EventKind::Healthy => "healthy",
            EventKind::RolledBack => "rolled-back",
            EventKind::Failed => "failed",
        }
    }
}

/// One event: `version` is the release the event is about (the one downloaded, staged,
/// booted, blessed, or the one that failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Node-local, strictly increasing across all events the node ever sends.
    pub seq: u64,
    /// When it happened, by the node's clock (informational: the server orders by `seq`).
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub version: Version,
    /// Why, for `rolled-back` and `failed` (required there, refused elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The release the node runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Booted {
    pub version: Version,
    pub slot: Slot,
}

/// A node's report (`POST /v1/check-in`, node token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Must be the node the token was issued to.
    pub node_id: NodeId,
    /// Must be the pool the node enrolled in.
    pub pool: PoolName,
    pub booted: Booted,
    pub state: AgentState,
    /// At most [`MAX_EVENTS`], `seq` strictly increasing.
    #[serde(default)]
    pub events: Vec<Event>,
}

const CHECK_IN: &str = "check-in";

impl CheckIn {
    /// Parses and validates a check-in body.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let check_in: CheckIn = parse(bytes, CHECK_IN, MAX_CHECK_IN_BYTES)?;
        check_in.validate()?;
        Ok(check_in)
    }

    /// The rules serde cannot express: protocol, event count and order, reasons.
    pub fn validate(&self) -> Result<(), WireError> {
        check_protocol(CHECK_IN, self.protocol)?;
        if self.events.len() > MAX_EVENTS {
            return Err(invalid(
                CHECK_IN,
                "events",
                format!(
                    "{} events, over the limit of {MAX_EVENTS}",
                    self.events.len()
                ),
            ));
        }
        let mut last: Option<u64> = None;
        for event in &self.events {
            if last.is_some_and(|last| event.seq <= last) {
                return Err(invalid(
                    CHECK_IN,
                    "events",
                    format!(
                        "event seq {} does not follow {} (must increase strictly)",
                        event.seq,
                        last.unwrap_or_default()
                    ),
                ));
            }
            last = Some(event.seq);
            match (&event.reason, event.kind.is_failure()) {
                (None, true) => {
                    return Err(invalid(
                        CHECK_IN,
                        "events.reason",
                        format!(
                            "a {} event (seq {}) needs a reason",
                            event.kind.as_str(),
                            event.seq
                        ),
                    ))
                }
                (Some(_), false) => {
                    return Err(invalid(
                        CHECK_IN,
                        "events.reason",
                        format!(
                            "a {} event (seq {}) carries no reason",
                            event.kind.as_str(),
                            event.seq
                        ),
                    ))
                }
                (Some(reason), true) => {
                    check_text(CHECK_IN, "events.reason", reason, MAX_REASON_BYTES)?
                }
                (None, false) => {}
            }
        }
        Ok(())
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// What the server tells a node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing now; check in again after `retry_after_secs`.
    Wait,
    /// Download and stage `release`; do not reboot until told to.
    Update,
    /// Run the pre-reboot (drain) command, bounded by `drain_timeout_secs`, then reboot into
    /// the staged release.
    Reboot,
    /// Withdraw a downloaded or staged release that has not been booted (the rollout was
    /// aborted or the node was pinned).
    Cancel,
}

/// The release an `update` directive moves the node to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseOffer {
    /// The release's version and sequence, as in the signed manifest (the node checks they
    /// match what it verifies).
    pub version: Version,
    pub sequence: u64,
    /// The signed release envelope (DSSE JSON), standard base64 of the exact published bytes.
    pub envelope: String,
    /// Base URL of the release repository holding the artifacts (the server's `/repo/` or a
    /// mirror); `http://` or `https://`.
    pub repository: String,
    /// How the node's system extensions move with this release: `true` (a rollout started
    /// with `--node-image-only`) keeps the node's own set, as far as it is compatible with the
    /// new OS, and refuses when it is not; `false` installs the release's signed set with the
    /// OS. Absent: the node's own `update.node_image_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_image_only: Option<bool>,
}

impl ReleaseOffer {
    /// The envelope bytes, decoded.
    pub fn envelope_bytes(&self) -> Result<Vec<u8>, WireError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.envelope)
            .map_err(|e| invalid(DIRECTIVE, "release.envelope", format!("not base64: {e}")))
    }

    /// Encodes envelope bytes for the wire.
    pub fn encode_envelope(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// The server's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directive {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol: u32,
    pub action: Action,
    /// When to check in next at the latest (1 s to [`MAX_RETRY_AFTER_SECS`]); a node with
    /// news (an event) may check in earlier.
    pub retry_after_secs: u64,
    /// Why, for people (e.g. `not yet: wave 2 opens at 2026-12-02T10:00:00Z`).
    pub reason: String,
    /// The release to move to, with `update` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseOffer>,
    /// How long the pre-reboot command may run, with `reboot` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_secs: Option<u64>,
    /// The highest event `seq` the server has recorded for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_event_seq: Option<u64>,
}

const DIRECTIVE: &str = "directive";

impl Directive {
    /// Parses and validates a directive body.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let directive: Directive = parse(bytes, DIRECTIVE, MAX_DIRECTIVE_BYTES)?;
        directive.validate()?;
        Ok(directive)
    }

    /// Protocol, ranges, and that each action carries exactly what it needs.
    pub fn validate(&self) -> Result<(), WireError> {
        check_protocol(DIRECTIVE, self.protocol)?;
        if !(1..=MAX_RETRY_AFTER_SECS).contains(&self.retry_after_secs) {
            return Err(invalid(
                DIRECTIVE,
                "retry_after_secs",
                format!(
                    "{} is not between 1 and {MAX_RETRY_AFTER_SECS}",
                    self.retry_after_secs
                ),
            ));
        }
        check_text(DIRECTIVE, "reason", &self.reason, MAX_REASON_BYTES)?;
        match (self.action, &self.release) {
            (Action::Update, None) => {
                return Err(invalid(
                    DIRECTIVE,
                    "release",
                    "an update directive needs a release",
                ))
            }
            (Action::Update, Some(release)) => {
                if !(release.repository.starts_with("http://")
                    || release.repository.starts_with("https://"))
                {
                    return Err(invalid(
                        DIRECTIVE,
                        "release.repository",
                        format!("{:?} is not an http(s) URL", release.repository),
                    ));
                }
                check_text(
                    DIRECTIVE,
                    "release.repository",
                    &release.repository,
                    MAX_URL_BYTES,
                )?;
                release.envelope_bytes()?;
            }
            (_, Some(_)) => {
                return Err(invalid(
                    DIRECTIVE,
                    "release",
                    "only an update directive carries a release",
                ))
            }
            (_, None) => {}
        }
        match (self.action, self.drain_timeout_secs) {
            (Action::Reboot, None) => Err(invalid(
                DIRECTIVE,
                "drain_timeout_secs",
                "a reboot directive needs a drain timeout",
            )),
            (Action::Reboot, Some(secs)) if !(1..=MAX_DRAIN_TIMEOUT_SECS).contains(&secs) => {
                Err(invalid(
                    DIRECTIVE,
                    "drain_timeout_secs",
                    format!("{secs} is not between 1 and {MAX_DRAIN_TIMEOUT_SECS}"),
                ))
            }
            (Action::Reboot, Some(_)) | (_, None) => Ok(()),
            (_, Some(_)) => Err(invalid(
                DIRECTIVE,
                "drain_timeout_secs",
                "only a reboot directive carries a drain timeout",
            )),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// `POST /v1/enroll` with the pool's enrolment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub protocol: u32,
    pub node_id: NodeId,
}

const ENROLL: &str = "enrolment";

impl EnrollRequest {
    /// Parses and validates an enrolment body.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let request: EnrollRequest = parse(bytes, ENROLL, MAX_SMALL_BYTES)?;
        check_protocol(ENROLL, request.protocol)?;
        Ok(request)
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// The answer to an enrolment: the node's own token, shown once (the server keeps its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    pub protocol: u32,
    pub node_id: NodeId,
    pub pool: PoolName,
    pub node_token: String,
    /// The pool's check-in interval.
    pub check_in_interval_secs: u64,
}

impl Enrolled {
    /// Parses and validates an enrolment answer.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let answer: Enrolled = parse(bytes, ENROLL, MAX_SMALL_BYTES)?;
        check_protocol(ENROLL, answer.protocol)?;
        if !(1..=MAX_RETRY_AFTER_SECS).contains(&answer.check_in_interval_secs) {
            return Err(invalid(
                ENROLL,
                "check_in_interval_secs",
                format!("{} is out of range", answer.check_in_interval_secs),
            ));
        }
        check_text(ENROLL, "node_token", &answer.node_token, 256)?;
        Ok(answer)
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// FleetLock's request body: `{"client_params":{"id":…,"group":…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockRequest {
    pub client_params: FleetLockParams,
}

/// FleetLock's client parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockParams {
    pub id: String,
    pub group: String,
}

const FLEETLOCK: &str = "fleet-lock request";

impl FleetLockRequest {
    /// Parses a FleetLock body (unknown fields are tolerated: other clients may add some) and
    /// checks that id and group follow Basalt's rules for node ids and pool names.
    pub fn from_json(bytes: &[u8]) -> Result<(NodeId, PoolName), WireError> {
        let request: FleetLockRequest = parse(bytes, FLEETLOCK, MAX_SMALL_BYTES)?;
        let id = NodeId::new(&request.client_params.id)
            .map_err(|reason| invalid(FLEETLOCK, "client_params.id", reason))?;
        let group = PoolName::new(&request.client_params.group)
            .map_err(|reason| invalid(FLEETLOCK, "client_params.group", reason))?;
        Ok((id, group))
    }

    /// The JSON body.
    pub fn body(id: &str, group: &str) -> Vec<u8> {
        to_json(&FleetLockRequest {
            client_params: FleetLockParams {
                id: id.to_owned(),
                group: group.to_owned(),
            },
        })
    }
}

/// FleetLock's error body: `{"kind":…,"value":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockError {
    pub kind: String,
    pub value: String,
}

impl FleetLockError {
    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// The body of every refused call (other than FleetLock's): a stable `kind` for programs and
/// a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable, kebab-case (`unauthenticated`, `malformed-check-in`, `wrong-node` …).
    pub kind: String,
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                kind: kind.to_owned(),
                message: message.into(),
            },
        }
    }

    /// Parses an error body (for clients' messages).
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        parse(bytes, "error body", MAX_SMALL_BYTES)
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

#[cfg(test)]
mod tests;
