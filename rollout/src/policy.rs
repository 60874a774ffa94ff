//! The rollout rules, as pure functions of (plan, fleet state, `now`, node seeds). No I/O, no
//! clock, no randomness: the store loads the facts inside a transaction, calls these, and
//! writes the outcome in the same transaction.
//!
//! # A node's progress in one rollout
//!
//! ```text
//!  (not started) ──admit: Update──▶ Admitted ──event staged──▶ Staged ──grant: Reboot──▶ Rebooting
//!        ▲                            │ timeout / failed          │ abort: Cancel          │
//!        │ next hop (a floor          ▼                           ▼                        │ healthy
//!        │ was reached)            Failed ◀────── rolled-back / failed / timeout ─────────┤
//!        └──────────────────────────────────────────── Healthy ◀─────────────────────────┘
//! ```
//!
//! # The rules
//!
//! - **Waves**: a cumulative share of the pool allowed by time since the rollout started
//!   (`1%@0,10%@1h,…`). A node belongs to the first wave whose share is above its seed
//!   (0–2047, a hash of the rollout id and the node id: stable per rollout, different between
//!   rollouts, so the same nodes are not always the canaries). The number of nodes touched is
//!   also capped at ⌈share × pool size⌉, so a pool whose seeds happen to cluster still keeps the
//!   share exactly.
//! - **max-unavailable**: nodes between a reboot grant and their healthy (or failed) report,
//!   counted as the holders of the pool's FleetLock semaphore — other agents speaking
//!   FleetLock take slots of the same semaphore. In-place A/B flips always make a node
//!   unavailable for its reboot, so it is at least 1.
//! - **max-surge**: nodes that may be prepared ahead (downloading, staged, waiting for a reboot
//!   slot) on top of the unavailable ones: nodes in flight ≤ max-unavailable + max-surge. An
//!   in-place flip adds no capacity, so unlike AKS the surge buys preparation, not nodes.
//! - **Soak**: a node that came back healthy keeps its in-flight slot for the soak time; the
//!   next batch starts only as slots free up.
//! - **Windows**: admissions and reboot grants only inside a maintenance window.
//! - **Floors**: a node below a floor release of the channel goes to the lowest such floor
//!   first (one hop at a time, each hop admitted like a new node, but touched once).
//! - **Pin / hold**: a pinned node (or pool) is never moved above its pin.
//! - **Auto-halt**: when failed (including timed-out) nodes reach `halt_at` percent of the nodes
//!   touched since the last resume, the rollout halts and says why. Touched nodes count in the
//!   denominator while still in flight, so the first failure of a bad release halts as soon
//!   as it is reported.
//! - **Timeouts**: a node admitted but not staged, or granted a reboot but not back, within
//!   `node_timeout` (plus the drain timeout for a reboot) counts as failed: a node that never
//!   comes back must not hold a slot for ever, and counts towards the halt.
//! - **Pause / halt**: no admissions and no reboot grants; nodes in flight keep reporting.
//!   **Abort**: the same, for good, and nodes downloaded or staged but not rebooted are told to
//!   cancel; nodes already updated stay.

use std::fmt;
use std::str::FromStr;

use basalt_manifest::chrono::{DateTime, Duration, Utc};
use basalt_manifest::semver::Version;
use basalt_rollout_wire::{AgentState, NodeId, MAX_DRAIN_TIMEOUT_SECS, MAX_RETRY_AFTER_SECS};
use serde::{Deserialize, Serialize};

use crate::window::{self, Window};

/// Seeds are 0..SEED_RANGE (Bottlerocket's wave seeds use the same range).
pub const SEED_RANGE: u32 = 2048;

/// A plan that cannot be used; names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout setting {setting}: {reason}")]
pub struct PlanError {
    pub setting: &'static str,
    pub reason: String,
}

fn plan_error(setting: &'static str, reason: impl Into<String>) -> PlanError {
    PlanError {
        setting,
        reason: reason.into(),
    }
}

/// A count of nodes: absolute, or a percentage of the pool (rounded up, as AKS does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Nodes(u64),
    Percent(u32),
}

impl Limit {
    /// The number of nodes for a pool of `pool_size`.
    pub fn resolve(self, pool_size: u64) -> u64 {
        match self {
            Limit::Nodes(n) => n,
            Limit::Percent(p) => (u64::from(p) * pool_size).div_ceil(100),
        }
    }
}

impl FromStr for Limit {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a node count (e.g. 3) or a percentage (e.g. 10%)");
        match text.strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(format!("{text:?} is over 100%"));
                }
                Ok(Limit::Percent(p))
            }
            None => text.parse().map(Limit::Nodes).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Nodes(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 90s, 30m, 2h, 1d)");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// One wave: after `after_secs` since the start, `percent` of the pool (cumulative) may have
/// been touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub after_secs: u64,
    pub percent: u32,
}

/// Parses `1%@0,10%@1h,100%@6h`.
pub fn parse_waves(text: &str) -> Result<Vec<Wave>, PlanError> {
    let waves = text
        .split(',')
        .map(|part| {
            let (percent, after) = part
                .split_once('@')
                .ok_or_else(|| plan_error("waves", format!("{part:?} is not PERCENT%@DURATION")))?;
            let percent = match percent.parse::<Limit>() {
                Ok(Limit::Percent(p)) => p,
                _ => {
                    return Err(plan_error(
                        "waves",
                        format!("{percent:?} is not a percentage"),
                    ))
                }
            };
            let after_secs = parse_duration(after).map_err(|e| plan_error("waves", e))?;
            Ok(Wave {
                after_secs,
                percent,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_waves(&waves)?;
    Ok(waves)
}

fn check_waves(waves: &[Wave]) -> Result<(), PlanError> {
    let first = waves
        .first()
        .ok_or_else(|| plan_error("waves", "at least one wave is needed"))?;
    if first.after_secs != 0 {
        return Err(plan_error("waves", "the first wave starts at 0"));
    }
    for pair in waves.windows(2) {
        if pair[1].after_secs <= pair[0].after_secs || pair[1].percent < pair[0].percent {
            return Err(plan_error(
                "waves",
                "times must increase and shares must not decrease",
            ));
        }
    }
    if waves.iter().any(|w| w.percent == 0 && w.after_secs > 0)
        || waves.last().map(|w| w.percent) != Some(100)
    {
        return Err(plan_error(
            "waves",
            "the last wave reaches 100% (and no later wave is 0%)",
        ));
    }
    Ok(())
}

/// The default waves: 1 % at once, 10 % after an hour, half after 3 h, all after 6 h.
pub fn default_waves() -> Vec<Wave> {
    [(0, 1), (3600, 10), (3 * 3600, 50), (6 * 3600, 100)]
        .into_iter()
        .map(|(after_secs, percent)| Wave {
            after_secs,
            percent,
        })
        .collect()
}

/// How a pool is upgraded (`basalt-rollout pool upgrade`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `true`: only the OS image moves, each node keeps its system extensions (refusing the
    /// update where they do not fit the new OS); `false`: the release's signed extension set
    /// moves with the OS. Sent to the nodes with every offer (`ReleaseOffer::node_image_only`).
    pub node_image_only: bool,
    pub max_unavailable: Limit,
    pub max_surge: Limit,
    pub soak_secs: u64,
    pub drain_timeout_secs: u64,
    pub windows: Vec<Window>,
    /// Halt when failed ≥ this percentage of the nodes touched.
    pub halt_at_percent: u32,
    pub waves: Vec<Wave>,
    /// How long a node may stay admitted-not-staged, or rebooting (plus the drain timeout),
    /// before it counts as failed.
    pub node_timeout_secs: u64,
}

impl Default for Plan {
    /// AKS's defaults where it has them (max-surge 10 %, drain timeout 30 min, soak 0); one
    /// node unavailable at a time; halt at 5 % failures; node timeout 1 h.
    fn default() -> Self {
        Plan {
            node_image_only: true,
            max_unavailable: Limit::Nodes(1),
            max_surge: Limit::Percent(10),
            soak_secs: 0,
            drain_timeout_secs: 1800,
            windows: Vec::new(),
            halt_at_percent: 5,
            waves: default_waves(),
            node_timeout_secs: 3600,
        }
    }
}

impl Plan {
    /// Refuses settings that cannot work: no unavailable node allowed, percentages over 100,
    /// a drain timeout out of range, bad waves.
    pub fn validate(&self) -> Result<(), PlanError> {
        if matches!(self.max_unavailable, Limit::Nodes(0) | Limit::Percent(0)) {
            return Err(plan_error(
                "max-unavailable",
                "must allow at least one node: an in-place flip reboots the node",
            ));
        }
        for (setting, limit) in [
            ("max-unavailable", self.max_unavailable),
            ("max-surge", self.max_surge),
        ] {
            if matches!(limit, Limit::Percent(p) if p > 100) {
                return Err(plan_error(setting, "over 100%"));
            }
        }
        if !(1..=MAX_DRAIN_TIMEOUT_SECS).contains(&self.drain_timeout_secs) {
            return Err(plan_error(
                "drain-timeout",
                format!("must be between 1 s and {MAX_DRAIN_TIMEOUT_SECS} s"),
            ));
        }
        if self.soak_secs > 7 * 86_400 {
            return Err(plan_error("soak", "at most a week"));
        }
        if !(1..=100).contains(&self.halt_at_percent) {
            return Err(plan_error("halt-at", "must be between 1% and 100%"));
        }
        if self.node_timeout_secs == 0 {
            return Err(plan_error("node-timeout", "must be at least 1 s"));
        }
        check_waves(&self.waves)
    }

    /// Nodes that may be unavailable at once, for a pool of `pool_size` (at least 1).
    pub fn unavailable_limit(&self, pool_size: u64) -> u64 {
        self.max_unavailable.resolve(pool_size).max(1)
    }

    /// Nodes that may be in flight at once.
    pub fn in_flight_limit(&self, pool_size: u64) -> u64 {
        self.unavailable_limit(pool_size)
            .saturating_add(self.max_surge.resolve(pool_size))
    }

    /// The cumulative share (percent) allowed `elapsed_secs` after the start.
    pub fn allowed_percent(&self, elapsed_secs: i64) -> u32 {
        self.waves
            .iter()
            .take_while(|w| i64::try_from(w.after_secs).is_ok_and(|a| a <= elapsed_secs))
            .map(|w| w.percent)
            .last()
            .unwrap_or(0)
    }

    /// The wave (index, opening offset) a seed belongs to.
    pub fn wave_of(&self, seed: u32) -> (usize, u64) {
        self.waves
            .iter()
            .enumerate()
            .find(|(_, w)| seed * 100 < w.percent * SEED_RANGE)
            .map(|(i, w)| (i, w.after_secs))
            .unwrap_or((self.waves.len().saturating_sub(1), 0))
    }
}

/// A release of the channel, by sequence and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub sequence: u64,
    pub version: Version,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Active,
    Paused,
    Halted,
    Aborted,
}

impl RolloutState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Active, Self::Paused, Self::Halted, Self::Aborted]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One rollout of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub id: i64,
    pub target: ReleaseRef,
    pub plan: Plan,
    pub started_at: DateTime<Utc>,
    pub state: RolloutState,
    /// Why it is paused, halted or aborted.
    pub reason: Option<String>,
    /// Failed and touched counts at the last resume: the halt rule counts what came after.
    pub acknowledged_failed: u64,
    pub acknowledged_touched: u64,
}

/// A node's stage in the current rollout (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Admitted,
    Staged,
    Rebooting,
    Healthy,
    Failed,
}

impl Stage {
    /// All stages, in progress order.
    pub const ALL: [Stage; 5] = [
        Stage::Admitted,
        Stage::Staged,
        Stage::Rebooting,
        Stage::Healthy,
        Stage::Failed,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Admitted => "admitted",
            Stage::Staged => "staged",
            Stage::Rebooting => "rebooting",
            Stage::Healthy => "healthy",
            Stage::Failed => "failed",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Stage::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A node's progress in the current rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    /// When it entered the stage (server time).
    pub since: DateTime<Utc>,
    /// The release this hop goes to (the target, or a floor on the way).
    pub hop: ReleaseRef,
    /// Why it failed.
    pub reason: Option<String>,
}

/// What the rules know of the pool, read in the same transaction as the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fleet {
    /// Nodes enrolled in the pool.
    pub pool_size: u64,
    /// Distinct nodes admitted at least once in this rollout.
    pub touched: u64,
    /// Nodes whose progress is failed (timeouts included once recorded).
    pub failed: u64,
    /// Nodes occupying an in-flight slot now (see [`occupies_slot`]).
    pub in_flight: u64,
    /// Holders of the pool's FleetLock semaphore.
    pub unavailable: u64,
}

/// What else a decision needs.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub now: DateTime<Utc>,
    /// The pool's check-in interval.
    pub interval_secs: u64,
    /// The channel's floor releases.
    pub floors: &'a [ReleaseRef],
    /// The pool's pin, if any (a node's own pin wins).
    pub pool_pin: Option<&'a Version>,
}

/// The node, as its check-in and the store describe it.
#[derive(Debug, Clone)]
pub struct NodeFacts<'a> {
    pub id: &'a NodeId,
    pub booted: &'a Version,
    pub pin: Option<&'a Version>,
    pub progress: Option<&'a Progress>,
    /// The state the node reports in this check-in.
    pub reported: AgentState,
}

/// The answer to one check-in. The store turns it into a [`basalt_rollout_wire::Directive`]
/// and the progress change it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now.
    Wait { retry_after: u64, reason: String },
    /// Download and stage `release` (progress → Admitted; counts as touched the first time).
    Update { release: ReleaseRef, reason: String },
    /// Reboot now (progress → Rebooting; takes a FleetLock slot).
    Reboot { reason: String },
    /// Withdraw the downloaded or staged release (progress → Failed "cancelled").
    Cancel { reason: String },
}

/// The node's seed in rollout `rollout_id`: 0..[`SEED_RANGE`], a hash of both ids.
pub fn seed(rollout_id: i64, node: &NodeId) -> u32 {
    let mut input = rollout_id.to_be_bytes().to_vec();
    input.extend_from_slice(node.as_str().as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let bytes = digest.as_ref();
    u32::from(u16::from_be_bytes([bytes[0], bytes[1]])) % SEED_RANGE
}

fn secs_until(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    u64::try_from((then - now).num_seconds()).unwrap_or(0)
}

fn clamp_retry(secs: u64) -> u64 {
    secs.clamp(1, MAX_RETRY_AFTER_SECS)
}

fn wait(retry_after: u64, reason: impl Into<String>) -> Decision {
    Decision::Wait {
        retry_after: clamp_retry(retry_after),
        reason: reason.into(),
    }
}

/// The deadline of a node's current stage, after which it counts as failed, if the stage has
/// one (admitted: the download; rebooting: drain, reboot and health gate).
pub fn deadline(progress: &Progress, plan: &Plan) -> Option<DateTime<Utc>> {
    let secs = match progress.stage {
        Stage::Admitted => plan.node_timeout_secs,
        Stage::Rebooting => plan
            .node_timeout_secs
            .saturating_add(plan.drain_timeout_secs),
        Stage::Staged | Stage::Healthy | Stage::Failed => return None,
    };
    Some(progress.since + Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2)))
}

/// The failure reason if the node's stage timed out at `now`.
pub fn timed_out(progress: &Progress, plan: &Plan, now: DateTime<Utc>) -> Option<String> {
    let deadline = deadline(progress, plan)?;
    (now >= deadline).then(|| {
        format!(
            "timed out: {} since {} without a report (node timeout {} s{})",
            progress.stage.as_str(),
            progress.since.to_rfc3339(),
            plan.node_timeout_secs,
            if progress.stage == Stage::Rebooting {
                format!(" + drain timeout {} s", plan.drain_timeout_secs)
            } else {
                String::new()
            }
        )
    })
}

/// Whether the node holds an in-flight slot at `now`: admitted, staged, rebooting, or healthy
/// and still soaking.
pub fn occupies_slot(progress: &Progress, plan: &Plan, now: DateTime<Utc>) -> bool {
    match progress.stage {
        Stage::Admitted | Stage::Staged | Stage::Rebooting => true,
        Stage::Healthy => {
            now < progress.since + Duration::seconds(i64::try_from(plan.soak_secs).unwrap_or(0))
        }
        Stage::Failed => false,
    }
}

/// How a reported event moves the node's progress (None: no change). Events about another
/// release than the node's current hop change nothing (they are still recorded).
pub fn apply_event(
    progress: &Progress,
    kind: basalt_rollout_wire::EventKind,
    version: &Version,
) -> Option<Stage> {
    use basalt_rollout_wire::EventKind as E;
    if *version != progress.hop.version {
        return None;
    }
    match (progress.stage, kind) {
        (Stage::Admitted, E::Staged) => Some(Stage::Staged),
        (Stage::Admitted | Stage::Staged | Stage::Rebooting, E::Healthy) => Some(Stage::Healthy),
        (
            Stage::Admitted | Stage::Staged | Stage::Rebooting | Stage::Healthy,
            E::RolledBack | E::Failed,
        ) => Some(Stage::Failed),
        _ => None,
    }
}

/// The release a node at `booted` should move to next: the lowest floor above it and below
/// the target, else the target; None when it is at or above the target. A pin caps it: a
/// node is never sent above its pin (node pin first, then the pool's).
pub fn next_hop(
    target: &ReleaseRef,
    floors: &[ReleaseRef],
    booted: &Version,
    pin: Option<&Version>,
) -> Result<Option<ReleaseRef>, String> {
    if target.version.cmp_precedence(booted).is_le() {
        return Ok(None);
    }
    let hop = floors
        .iter()
        .filter(|f| {
            f.version.cmp_precedence(booted).is_gt()
                && f.version.cmp_precedence(&target.version).is_lt()
        })
        .min_by(|a, b| a.version.cmp_precedence(&b.version))
        .unwrap_or(target)
        .clone();
    match pin {
        Some(pin) if hop.version.cmp_precedence(pin).is_gt() => {
            Err(format!("pinned at {pin}: not moved to {}", hop.version))
        }
        _ => Ok(Some(hop)),
    }
}

/// Whether the rollout must halt now, and why. `last_failure` names the latest failure for
/// the message.
pub fn halt_reason(rollout: &Rollout, fleet: &Fleet, last_failure: Option<&str>) -> Option<String> {
    if rollout.state != RolloutState::Active {
        return None;
    }
    let failed = fleet.failed.saturating_sub(rollout.acknowledged_failed);
    let touched = fleet.touched.saturating_sub(rollout.acknowledged_touched);
    if failed == 0 || touched == 0 {
        return None;
    }
    let threshold = u64::from(rollout.plan.halt_at_percent);
    (failed * 100 >= threshold * touched).then(|| {
        format!(
            "auto-halt: {failed} of {touched} nodes touched failed or rolled back ({:.1}% ≥ {threshold}%){}",
            failed as f64 * 100.0 / touched as f64,
            last_failure
                .map(|f| format!("; latest: {f}"))
                .unwrap_or_default()
        )
    })
}

/// The decision for one check-in, after its events were applied and timeouts recorded.
pub fn decide(
    rollout: &Rollout,
    ctx: &Context<'_>,
    fleet: &Fleet,
    node: &NodeFacts<'_>,
) -> Decision {
    let plan = &rollout.plan;
    let now = ctx.now;
    let interval = ctx.interval_secs;
    let busy = (interval / 5).max(1);
    let progress = node.progress;
    let target = &rollout.target;

    if rollout.state == RolloutState::Aborted {
        return match progress.map(|p| p.stage) {
            Some(Stage::Admitted | Stage::Staged) => Decision::Cancel {
                reason: format!("rollout {} to {} was aborted", rollout.id, target.version),
            },
            _ => wait(
                interval,
                format!("rollout {} to {} was aborted", rollout.id, target.version),
            ),
        };
    }
    let halted = match rollout.state {
        RolloutState::Paused | RolloutState::Halted => Some(format!(
            "rollout {} is {}{}",
            rollout.id,
            rollout.state.as_str(),
            rollout
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
        RolloutState::Active | RolloutState::Aborted => None,
    };
    let closed = (!window::in_windows(&plan.windows, now)).then(|| {
        let opens = window::next_open(&plan.windows, now);
        (
            secs_until(now, opens),
            format!(
                "outside the maintenance windows; next opens at {}",
                opens.to_rfc3339()
            ),
        )
    });

    match progress.map(|p| (p.stage, p)) {
        Some((Stage::Admitted, p)) => {
            return Decision::Update {
                release: p.hop.clone(),
                reason: format!("move to {} (sequence {})", p.hop.version, p.hop.sequence),
            }
        }
        // Granted, but the node still says it is staged: the answer was lost or the agent
        // restarted before rebooting. The grant (and its FleetLock slot) is already held, so
        // saying it again takes nothing new; otherwise the node would wait for its timeout.
        Some((Stage::Rebooting, p)) if node.reported == AgentState::Staged => {
            return Decision::Reboot {
                reason: format!("reboot into {} (granted earlier)", p.hop.version),
            }
        }
        Some((Stage::Rebooting, p)) => {
            return wait(
                interval,
                format!("rebooting into {}: report when healthy", p.hop.version),
            )
        }
        Some((Stage::Failed, p)) => {
            return wait(
                interval,
                format!(
                    "the update to {} failed ({}); not retried in this rollout",
                    p.hop.version,
                    p.reason.as_deref().unwrap_or("no reason given")
                ),
            )
        }
        Some((Stage::Staged, p)) => {
            if let Some(reason) = halted {
                return wait(interval, format!("staged {}; {reason}", p.hop.version));
            }
            if let Some((secs, reason)) = closed {
                return wait(secs, reason);
            }
            let limit = plan.unavailable_limit(fleet.pool_size);
            if fleet.unavailable >= limit {
                return wait(
                    busy,
                    format!(
                        "staged {}; max-unavailable reached ({} of {limit} nodes unavailable)",
                        p.hop.version, fleet.unavailable
                    ),
                );
            }
            return Decision::Reboot {
                reason: format!("reboot into {}", p.hop.version),
            };
        }
        Some((Stage::Healthy, _)) | None => {}
    }

    let pin = node.pin.or(ctx.pool_pin);
    let hop = match next_hop(target, ctx.floors, node.booted, pin) {
        Ok(Some(hop)) => hop,
        Ok(None) => {
            return wait(
                interval,
                format!("up to date: {} (target {})", node.booted, target.version),
            )
        }
        Err(reason) => return wait(interval, reason),
    };
    if let Some(reason) = halted {
        return wait(interval, reason);
    }
    if let Some((secs, reason)) = closed {
        return wait(secs, reason);
    }
    if progress.is_none() {
        let elapsed = (now - rollout.started_at).num_seconds();
        let seed = seed(rollout.id, node.id);
        let (wave, opens_after) = plan.wave_of(seed);
        let opens = rollout.started_at
            + Duration::seconds(i64::try_from(opens_after).unwrap_or(i64::MAX / 2));
        if now < opens {
            return wait(
                secs_until(now, opens).min(interval),
                format!("not yet: wave {} opens at {}", wave + 1, opens.to_rfc3339()),
            );
        }
        let share = plan.allowed_percent(elapsed);
        let cap = (u64::from(share) * fleet.pool_size).div_ceil(100);
        if fleet.touched >= cap {
            return wait(
                busy,
                format!(
                    "not yet: {} of {cap} nodes allowed by the current wave ({share}%) already started",
                    fleet.touched
                ),
            );
        }
    }
    let limit = plan.in_flight_limit(fleet.pool_size);
    if fleet.in_flight >= limit {
        return wait(
            busy,
            format!(
                "not yet: {} of {limit} nodes in flight (max-unavailable {} + max-surge {})",
                fleet.in_flight, plan.max_unavailable, plan.max_surge
            ),
        );
    }
    Decision::Update {
        reason: format!("move to {} (sequence {})", hop.version, hop.sequence),
        release: hop,
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
