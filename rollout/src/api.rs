//! The operator API's documents (`/api/v1/…`, operator token), shared by the server and the
//! `basalt-rollout` CLI. The node protocol is in `basalt-rollout-wire`.
//!
//! | method and path | body → answer |
//! |---|---|
//! | `GET  /api/v1/pools` | → `[PoolInfo]` |
//! | `POST /api/v1/pools` | `CreatePool` → `PoolInfo` |
//! | `POST /api/v1/pools/{pool}/enroll-tokens` | → `TokenIssued` |
//! | `POST /api/v1/pools/{pool}/nodes` | `AddNode` → `TokenIssued` (a node token, for agents that do not enrol) |
//! | `GET  /api/v1/pools/{pool}/nodes` | → `[NodeInfo]` |
//! | `POST /api/v1/pools/{pool}/upgrade` | `Upgrade` → `RolloutInfo` |
//! | `GET  /api/v1/pools/{pool}/status` | → `Status` |
//! | `GET  /api/v1/pools/{pool}/history` | → `History` |
//! | `POST /api/v1/pools/{pool}/pause`, `/resume`, `/abort` | `Reason` → `RolloutInfo` |
//! | `POST /api/v1/pools/{pool}/pin` | `Pin` → `{}` |
//! | `POST /api/v1/channels/{channel}/{arch}/releases[?floor=true]` | the signed envelope bytes → `ReleaseInfo` |
//! | `GET  /api/v1/channels/{channel}/{arch}/releases` | → `[ReleaseInfo]` |
//! | `POST /api/v1/channels/{channel}/{arch}/releases/{sequence}/floor` | `SetFloor` → `ReleaseInfo` |
//! | `GET  /metrics` | Prometheus text |

use std::collections::BTreeMap;

use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use basalt_rollout_wire::{NodeId, PoolName};
use serde::{Deserialize, Serialize};

use crate::policy::{Limit, Plan, ReleaseRef, RolloutState, Stage, Wave};
use crate::window::Window;

/// Operator request bodies above this size are refused (a release envelope is the largest).
pub const MAX_API_BODY: usize = basalt_manifest::MAX_RELEASE_BYTES + 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: PoolName,
    pub channel: String,
    pub arch: String,
    #[serde(default)]
    pub check_in_interval_secs: Option<u64>,
    /// FleetLock slots when no rollout sets max-unavailable (default 1).
    #[serde(default)]
    pub fleetlock_slots: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: PoolName,
    pub channel: String,
    pub arch: String,
    pub check_in_interval_secs: u64,
    pub fleetlock_slots: u64,
    pub nodes: u64,
    pub pin: Option<Version>,
    /// The newest rollout, if any.
    pub rollout: Option<RolloutInfo>,
}

/// A token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub kind: String,
    pub subject: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    pub node_id: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub last_seen: Option<DateTime<Utc>>,
    pub booted_version: Option<Version>,
    pub booted_slot: Option<String>,
    pub agent_state: Option<String>,
    pub pin: Option<Version>,
    /// Stage in the newest rollout.
    pub stage: Option<Stage>,
    pub wave: Option<usize>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub channel: String,
    pub arch: String,
    pub sequence: u64,
    pub version: Version,
    pub sha256: String,
    pub published_at: DateTime<Utc>,
    pub floor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFloor {
    pub floor: bool,
}

/// `pool upgrade`: unset fields take [`Plan::default`]'s values.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    pub node_image_only: bool,
    /// A version of the pool's channel (the newest release when unset).
    #[serde(default)]
    pub to: Option<Version>,
    #[serde(default)]
    pub max_unavailable: Option<Limit>,
    #[serde(default)]
    pub max_surge: Option<Limit>,
    #[serde(default)]
    pub soak_secs: Option<u64>,
    #[serde(default)]
    pub drain_timeout_secs: Option<u64>,
    #[serde(default)]
    pub windows: Vec<Window>,
    #[serde(default)]
    pub halt_at_percent: Option<u32>,
    #[serde(default)]
    pub waves: Option<Vec<Wave>>,
    #[serde(default)]
    pub node_timeout_secs: Option<u64>,
}

impl Upgrade {
    /// The plan these settings give (not yet validated).
    pub fn plan(&self) -> Plan {
        let d = Plan::default();
        Plan {
            node_image_only: self.node_image_only,
            max_unavailable: self.max_unavailable.unwrap_or(d.max_unavailable),
            max_surge: self.max_surge.unwrap_or(d.max_surge),
            soak_secs: self.soak_secs.unwrap_or(d.soak_secs),
            drain_timeout_secs: self.drain_timeout_secs.unwrap_or(d.drain_timeout_secs),
            windows: self.windows.clone(),
            halt_at_percent: self.halt_at_percent.unwrap_or(d.halt_at_percent),
            waves: self.waves.clone().unwrap_or(d.waves),
            node_timeout_secs: self.node_timeout_secs.unwrap_or(d.node_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutInfo {
    pub id: i64,
    pub pool: PoolName,
    pub target: ReleaseRef,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub state_at: DateTime<Utc>,
    pub plan: Plan,
}

/// Why an operator paused, resumed or aborted (recorded with the state).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Pin (hold) a node or the whole pool at a version; `version` unset = at what it runs now
/// (a node) — for a pool a version is required; `remove` lifts the pin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    #[serde(default)]
    pub node: Option<NodeId>,
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default)]
    pub remove: bool,
}

/// Progress of one wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// 1-based.
    pub wave: usize,
    pub percent: u32,
    pub opens_at: DateTime<Utc>,
    pub open: bool,
    /// Nodes whose seed falls in this wave.
    pub nodes: u64,
    /// By stage (nodes not started are `nodes` minus the sum).
    pub stages: BTreeMap<String, u64>,
}

/// A failed node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub node: NodeId,
    pub version: Version,
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// The rollout part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub info: RolloutInfo,
    pub allowed_percent: u32,
    pub unavailable_limit: u64,
    pub in_flight_limit: u64,
    pub touched: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub unavailable: u64,
    /// Nodes at or above the target version.
    pub at_target: u64,
    pub stages: BTreeMap<String, u64>,
    pub waves: Vec<WaveStatus>,
    pub failures: Vec<Failure>,
    /// Done: every node at the target or failed, nothing in flight.
    pub complete: bool,
}

/// `status POOL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pool: PoolInfo,
    pub now: DateTime<Utc>,
    /// Booted versions and how many nodes run each.
    pub versions: BTreeMap<String, u64>,
    pub rollout: Option<RolloutStatus>,
    pub lock_holders: Vec<String>,
    pub recent_events: Vec<EventInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    pub node: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub kind: String,
    pub version: String,
    pub reason: Option<String>,
}

/// One point of the progress chart: cumulative counts at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub at: DateTime<Utc>,
    pub admitted: u64,
    pub healthy: u64,
    pub failed: u64,
}

/// `history POOL`: the newest rollout's progress over time, with its halts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub rollout: Option<RolloutInfo>,
    pub pool_size: u64,
    pub points: Vec<HistoryPoint>,
    /// Per wave: nodes admitted so far.
    pub admitted_by_wave: Vec<u64>,
}

/// `status POOL` for people: the rollout, its counts by stage and wave, its failures.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let p = &s.pool;
    let _ = writeln!(
        o,
        "pool {} ({}/{}), {} nodes",
        p.name, p.channel, p.arch, p.nodes
    );
    if let Some(pin) = &p.pin {
        let _ = writeln!(o, "pinned at {pin}");
    }
    let versions: Vec<String> = s
        .versions
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    let _ = writeln!(o, "versions: {}", versions.join(", "));
    let Some(r) = &s.rollout else {
        let _ = writeln!(o, "no rollout");
        return o;
    };
    let i = &r.info;
    let _ = writeln!(
        o,
        "rollout {} to {} (sequence {}): {}{}",
        i.id,
        i.target.version,
        i.target.sequence,
        i.state.as_str(),
        if r.complete { ", complete" } else { "" }
    );
    if let Some(reason) = &i.reason {
        let _ = writeln!(o, "  why: {reason}");
    }
    let _ = writeln!(
        o,
        "  started {}; waves allow {}%; at target {}; touched {}; failed {}; in flight {}/{}; unavailable {}/{}",
        i.started_at.to_rfc3339(),
        r.allowed_percent,
        r.at_target,
        r.touched,
        r.failed,
        r.in_flight,
        r.in_flight_limit,
        r.unavailable,
        r.unavailable_limit
    );
    let stages: Vec<String> = r.stages.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(o, "  by stage: {}", stages.join(", "));
    for w in &r.waves {
        let stages: Vec<String> = w.stages.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            o,
            "  wave {} ({}%, {} {}): {} nodes: {}",
            w.wave,
            w.percent,
            if w.open { "opened" } else { "opens" },
            w.opens_at.to_rfc3339(),
            w.nodes,
            stages.join(", ")
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(o, "  failures:");
        for f in &r.failures {
            let _ = writeln!(
                o,
                "    {} {} at {}: {}",
                f.node,
                f.version,
                f.at.to_rfc3339(),
                f.reason
            );
        }
    }
    o
}
