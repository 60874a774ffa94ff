//! What the server does for each request, as blocking functions over the store: one
//! transaction per request, every check and every write inside it, the rules from
//! [`crate::policy`]. The HTTP layer ([`crate::server`]) only parses, authenticates the
//! header's shape, and calls these on a blocking thread.
//!
//! Owns: authentication against stored token hashes, enrolment, the check-in (events →
//! progress → timeouts → auto-halt → decision → directive), the FleetLock semaphore,
//! publishing signed releases, and the operator operations. Does not own: the rules
//! (policy), SQL (store), HTTP (server).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use basalt_manifest::chrono::{DateTime, Duration, Utc};
use basalt_manifest::{Policy, TrustRoot};
use basalt_rollout_wire::{
    self as wire, Action, CheckIn, Directive, EnrollRequest, Enrolled, NodeId, PoolName,
    ReleaseOffer, PROTOCOL_VERSION,
};

use crate::api;
use crate::auth::{self, Random};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::last_seen::LastSeen;
use crate::policy::{
    self, Context, Decision, Fleet, NodeFacts, Progress, ReleaseRef, Rollout, RolloutState, Stage,
};
use crate::store::{
    Backend, EventRow, PoolRow, ProgressRow, ReleaseRow, RolloutRow, TokenKind, TokenRow, Tx,
};

/// Check-in interval of a pool created without one: 5 minutes.
pub const DEFAULT_INTERVAL_SECS: u64 = 300;

/// How the service is set up.
#[derive(Debug)]
pub struct Config {
    /// The base URL nodes fetch artifacts from (the server's own `/repo/` or a mirror), ending
    /// in `/`.
    pub repository_url: String,
    /// The repository folder the server serves under `/repo/`, if it serves one: releases
    /// published into a channel must then have every blob there.
    pub repository_dir: Option<PathBuf>,
    /// The keys releases must be signed by to be published.
    pub trust_root: TrustRoot,
}

/// The service: a store, a clock, a random source and the configuration.
#[derive(Debug, Clone)]
pub struct Service {
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    config: Arc<Config>,
    /// Steady-state check-ins' last-seen times, written by [`Service::flush_last_seen`].
    last_seen: Arc<LastSeen>,
}

/// Who called, after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator(String),
    Node { id: NodeId, pool: String },
    Enroll { pool: String },
}

fn secs(v: u64) -> Duration {
    Duration::seconds(i64::try_from(v).unwrap_or(i64::MAX / 2))
}

impl Service {
    pub fn new(
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        config: Config,
    ) -> Self {
        Service {
            backend,
            clock,
            random,
            config: Arc::new(config),
            last_seen: Arc::new(LastSeen::default()),
        }
    }

    /// The current time of the service's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn tx(&self) -> Result<Tx<'_>> {
        Ok(Tx::begin(self.backend.as_ref())?)
    }

    fn new_token(&self, kind: TokenKind) -> Result<(String, String)> {
        auth::generate(kind, self.random.as_ref()).map_err(Error::Internal)
    }

    /// Resolves a bearer token to its caller; unknown, revoked or mislabelled tokens are
    /// refused.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller> {
        let mut tx = Tx::begin_read(self.backend.as_ref())?;
        Self::authenticate_in(&mut tx, token)
    }

    /// [`Service::authenticate`] inside a transaction the caller goes on using.
    fn authenticate_in(tx: &mut Tx<'_>, token: Option<&str>) -> Result<Caller> {
        let token = token.ok_or_else(|| {
            Error::Unauthenticated("no credentials: send Authorization: Bearer <token>".into())
        })?;
        let claimed = auth::claimed_kind(token).ok_or_else(|| {
            Error::Unauthenticated("not a basalt-rollout token (bro_, brn_ or bre_ …)".into())
        })?;
        let row = tx
            .token(&auth::hash(token))?
            .filter(|row| !row.revoked && row.kind == claimed)
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))?;
        match (row.kind, row.pool) {
            (TokenKind::Operator, _) => Ok(Caller::Operator(row.subject)),
            (TokenKind::Node, Some(pool)) => Ok(Caller::Node {
                id: NodeId::new(&row.subject).map_err(Error::Internal)?,
                pool,
            }),
            (TokenKind::Enroll, Some(pool)) => Ok(Caller::Enroll { pool }),
            (kind, None) => Err(Error::Internal(format!(
                "stored {} token without a pool",
                kind.as_str()
            ))),
        }
    }

    // ------------------------------------------------------------------ nodes

    /// `POST /v1/enroll`: the enrolment token's pool gets a new node with its own token.
    pub fn enroll(&self, caller: &Caller, body: &[u8]) -> Result<Enrolled> {
        let Caller::Enroll { pool } = caller else {
            return Err(Error::Forbidden(
                "enrolment needs a pool enrolment token (bre_…)".into(),
            ));
        };
        let request = EnrollRequest::from_json(body).map_err(|e| Error::bad("enrolment", e))?;
        let pool = PoolName::new(pool).map_err(Error::Internal)?;
        let now = self.now();
        let (token, hash) = self.new_token(TokenKind::Node)?;
        let mut tx = self.tx()?;
        let pool_row = tx
            .pool(&pool)?
            .ok_or_else(|| Error::NotFound(format!("pool {pool} does not exist")))?;
        self.add_node(&mut tx, &pool, &request.node_id, &hash, now)?;
        tx.commit()?;
        tracing::info!(node = %request.node_id, %pool, "node enrolled");
        Ok(Enrolled {
            protocol: PROTOCOL_VERSION,
            node_id: request.node_id,
            pool,
            node_token: token,
            check_in_interval_secs: pool_row.interval_secs,
        })
    }

    fn add_node(
        &self,
        tx: &mut Tx<'_>,
        pool: &PoolName,
        id: &NodeId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let Some(existing) = tx.node(id)? {
            return Err(Error::Conflict(format!(
                "node {id} is already enrolled (pool {}): an operator must remove it before it enrols again",
                existing.pool
            )));
        }
        tx.insert_node(id, pool, now)?;
        tx.insert_token(
            hash,
            &TokenRow {
                kind: TokenKind::Node,
                subject: id.to_string(),
                pool: Some(pool.to_string()),
                revoked: false,
            },
            now,
        )?;
        Ok(())
    }

    /// `POST /v1/check-in`. Validation and authorisation happen before the transaction, so a
    /// refused check-in changes nothing.
    pub fn check_in(&self, caller: &Caller, body: &[u8]) -> Result<Directive> {
        if let Some(d) = self.check_in_tx(Tx::begin_read(self.backend.as_ref())?, caller, body)? {
            return Ok(d);
        }
        self.check_in_tx(self.tx()?, caller, body)?.ok_or_else(|| {
            Error::Internal("a check-in in a write transaction gave no answer".into())
        })
    }

    /// Authentication and the check-in (the hot path). First in a **read-only**
    /// transaction: a node in the steady state (no new events, the same version, slot and
    /// agent state as stored, told to wait or to go on with an update it was already
    /// admitted to) is answered from what is committed, writing nothing but its last-seen
    /// time into [`LastSeen`] (flushed in batches). Anything that must be written — an event,
    /// a changed report, an admission, a reboot grant, a timeout, a halt — reruns the whole
    /// check-in in one write transaction, where every limit is checked again under the
    /// pool's lock. A read-only answer is what a check-in committed just before any
    /// concurrent write would have got, and it never takes a slot, so the limits hold.
    pub fn check_in_with_token(&self, token: Option<&str>, body: &[u8]) -> Result<Directive> {
        match self.check_in_read_only(token, body)? {
            Some(d) => Ok(d),
            None => self.check_in_writing(token, body),
        }
    }

    /// The read-only half of [`Service::check_in_with_token`]: the answer to a steady-state
    /// check-in, or `None` when the check-in has something to write. Refusals (bad
    /// credentials, a malformed or foreign report) are final here already.
    pub fn check_in_read_only(
        &self,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<Option<Directive>> {
        let mut tx = Tx::begin_read(self.backend.as_ref())?;
        let caller = Self::authenticate_in(&mut tx, token)?;
        self.check_in_tx(tx, &caller, body)
    }

    /// The writing half of [`Service::check_in_with_token`]: the whole check-in in one write
    /// transaction.
    pub fn check_in_writing(&self, token: Option<&str>, body: &[u8]) -> Result<Directive> {
        let mut tx = self.tx()?;
        let caller = Self::authenticate_in(&mut tx, token)?;
        self.check_in_tx(tx, &caller, body)?.ok_or_else(|| {
            Error::Internal("a check-in in a write transaction gave no answer".into())
        })
    }

    /// Whether [`Service::check_in_read_only`] may run on an async worker (see
    /// [`Backend::reads_on_async_worker`]).
    pub fn reads_on_async_worker(&self) -> bool {
        self.backend.reads_on_async_worker()
    }

    /// Writes the buffered last-seen times in one transaction; returns how many nodes. On
    /// failure the batch goes back into the buffer for the next flush.
    pub fn flush_last_seen(&self) -> Result<usize> {
        self.backend.end_idle_snapshots();
        let batch = self.last_seen.take();
        if batch.is_empty() {
            return Ok(0);
        }
        // In node order: two replicas' flushes (and a check-in, whose node row is the last
        // row it locks) then always take row locks in the same order, so they cannot
        // deadlock on PostgreSQL.
        let mut rows: Vec<(&String, &DateTime<Utc>)> = batch.iter().collect();
        rows.sort();
        let write = || -> Result<()> {
            let mut tx = self.tx()?;
            for (node, at) in &rows {
                tx.touch_last_seen(node, **at)?;
            }
            tx.commit()?;
            Ok(())
        };
        match write() {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                self.last_seen.restore(batch);
                Err(e)
            }
        }
    }

    /// The check-in in `tx`. In a read-only `tx` (see [`Service::check_in_with_token`]) it
    /// returns `None` as soon as the check-in would have to write; in a write `tx` it always
    /// answers.
    fn check_in_tx(
        &self,
        mut tx: Tx<'_>,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Option<Directive>> {
        let read_only = tx.is_read_only();
        let Caller::Node { id, pool } = caller else {
            return Err(Error::Forbidden(
                "check-ins need a node token (brn_…)".into(),
            ));
        };
        let report = CheckIn::from_json(body).map_err(|e| Error::bad("check-in", e))?;
        if report.node_id != *id {
            return Err(Error::Forbidden(format!(
                "this token belongs to node {id}; it cannot report for node {}",
                report.node_id
            )));
        }
        if report.pool.as_str() != pool {
            return Err(Error::Forbidden(format!(
                "node {id} is enrolled in pool {pool}, not {}",
                report.pool
            )));
        }
        let now = self.now();
        // The pool is locked only when this check-in may take a slot (see below): most
        // check-ins ("not yet") run in parallel on PostgreSQL.
        let node = tx
            .node(id)?
            .ok_or_else(|| Error::Forbidden(format!("node {id} is not enrolled")))?;
        let pool_row = tx
            .pool(&report.pool)?
            .ok_or_else(|| Error::NotFound(format!("pool {} does not exist", report.pool)))?;
        let rollout = tx.current_rollout(&report.pool)?;
        let mut progress = match &rollout {
            Some(r) => tx.progress(r.rollout.id, id)?,
            None => None,
        };

        // Events above the highest recorded, in order; each may move the progress.
        let mut last_seq = node.last_event_seq;
        let mut last_failure = None;
        let mut events_moved = false;
        for event in &report.events {
            if last_seq.is_some_and(|last| event.seq <= last) {
                continue;
            }
            if read_only {
                return Ok(None);
            }
            last_seq = Some(event.seq);
            tx.insert_event(&EventRow {
                node_id: id.to_string(),
                seq: event.seq,
                at: event.at,
                received_at: now,
                kind: event.kind.as_str().into(),
                version: event.version.to_string(),
                reason: event.reason.clone(),
            })?;
            let (Some(r), Some(p)) = (&rollout, progress.as_mut()) else {
                continue;
            };
            if let Some(stage) = policy::apply_event(p, event.kind, &event.version) {
                events_moved = true;
                tx.set_stage(
                    r.rollout.id,
                    id,
                    p.stage,
                    stage,
                    event.reason.as_deref(),
                    now,
                )?;
                if matches!(stage, Stage::Healthy | Stage::Failed) {
                    tx.release_lock(report.pool.as_str(), id.as_str())?;
                }
                if stage == Stage::Failed {
                    last_failure = Some(format!(
                        "node {id}: {} {}: {}",
                        event.kind.as_str(),
                        event.version,
                        event.reason.as_deref().unwrap_or("")
                    ));
                }
                tracing::info!(node = %id, from = p.stage.as_str(), to = stage.as_str(), version = %event.version, "progress");
                p.stage = stage;
                p.since = now;
                p.reason = event.reason.clone();
            }
        }

        let directive = match rollout {
            None => Decision::Wait {
                retry_after: pool_row.interval_secs,
                reason: format!("no rollout in pool {}", report.pool),
            },
            Some(row) => {
                let floors = tx.floors(&pool_row.channel, &pool_row.arch)?;
                let ctx = Context {
                    now,
                    interval_secs: pool_row.interval_secs,
                    floors: &floors,
                    pool_pin: pool_row.pin.as_ref(),
                };
                // Decide without the pool lock; when the decision takes a slot (an admission
                // or a reboot grant), or timeouts or a halt must be written, lock the pool and
                // decide again on what is committed by then: two replicas never both take the
                // last slot.
                let mut locked = tx.locks_on_begin();
                let mut known = (!events_moved).then(|| row.clone());
                loop {
                    let settled = Self::settle(
                        &mut tx,
                        &pool_row,
                        row.rollout.id,
                        now,
                        last_failure.clone(),
                        locked,
                        known.take(),
                    )?;
                    if settled.changed {
                        progress = tx.progress(row.rollout.id, id)?;
                    }
                    let decision = policy::decide(
                        &settled.rollout,
                        &ctx,
                        &settled.fleet,
                        &NodeFacts {
                            id,
                            booted: &report.booted.version,
                            pin: node.pin.as_ref(),
                            progress: progress.as_ref(),
                            reported: report.state,
                        },
                    );
                    let takes_slot = match &decision {
                        Decision::Update { .. } => {
                            progress.as_ref().map(|p| p.stage) != Some(Stage::Admitted)
                        }
                        Decision::Reboot { .. } => true,
                        Decision::Wait { .. } | Decision::Cancel { .. } => false,
                    };
                    let writes = takes_slot
                        || settled.needs_lock
                        || settled.changed
                        || matches!(decision, Decision::Cancel { .. });
                    if read_only && writes {
                        return Ok(None);
                    }
                    if !locked && (takes_slot || settled.needs_lock) {
                        tx.lock_pool(&report.pool)?;
                        locked = true;
                        progress = tx.progress(row.rollout.id, id)?;
                        continue;
                    }
                    self.record_decision(
                        &mut tx,
                        &pool_row,
                        &settled.rollout,
                        id,
                        progress.as_ref(),
                        &decision,
                        now,
                    )?;
                    break decision;
                }
            }
        };
        let slot = match report.booted.slot {
            wire::Slot::A => "a",
            wire::Slot::B => "b",
        };
        let state = serde_json::to_value(report.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if read_only {
            let unchanged = node.booted_version.as_ref() == Some(&report.booted.version)
                && node.booted_slot.as_deref() == Some(slot)
                && node.agent_state.as_deref() == Some(state.as_str())
                && node.last_event_seq == last_seq;
            if !unchanged {
                return Ok(None);
            }
            let directive = self.directive(&mut tx, &pool_row, directive, last_seq)?;
            drop(tx);
            self.last_seen.record(id.as_str(), now);
            return Ok(Some(directive));
        }
        tx.update_node_report(id, now, &report.booted.version, slot, &state, last_seq)?;
        let directive = self.directive(&mut tx, &pool_row, directive, last_seq)?;
        tx.commit()?;
        Ok(Some(directive))
    }

    /// Counts the fleet and finds timeouts and a due halt. Holding the pool lock
    /// (`locked`), it records them; without it, it only reports that they need the lock.
    /// `known`: the rollout row as this transaction already read it, when nothing it holds
    /// has changed since (saves a query on the hot path).
    fn settle(
        tx: &mut Tx<'_>,
        pool: &PoolRow,
        rollout_id: i64,
        now: DateTime<Utc>,
        mut last_failure: Option<String>,
        locked: bool,
        known: Option<RolloutRow>,
    ) -> Result<Settled> {
        let current = |tx: &mut Tx<'_>| -> Result<RolloutRow> {
            tx.current_rollout(&pool.name)?
                .filter(|r| r.rollout.id == rollout_id)
                .ok_or_else(|| {
                    Error::Conflict(format!("rollout {rollout_id} was replaced; check in again"))
                })
        };
        let first = match known {
            Some(row) => row,
            None => current(tx)?,
        };
        let plan = first.rollout.plan.clone();
        let node_timeout = secs(plan.node_timeout_secs);
        let candidates = tx.timeout_candidates(
            rollout_id,
            now - node_timeout,
            now - node_timeout - secs(plan.drain_timeout_secs),
        )?;
        let mut changed = false;
        let mut needs_lock = false;
        for r in candidates {
            let Some(reason) = policy::timed_out(&r.progress, &plan, now) else {
                continue;
            };
            if !locked {
                needs_lock = true;
                continue;
            }
            tx.set_stage(
                rollout_id,
                &r.node_id,
                r.progress.stage,
                Stage::Failed,
                Some(&reason),
                now,
            )?;
            tx.release_lock(pool.name.as_str(), r.node_id.as_str())?;
            tracing::warn!(node = %r.node_id, %reason, "node timed out");
            last_failure = Some(format!("node {}: {reason}", r.node_id));
            changed = true;
        }
        // The rollout and its counters as committed now plus this transaction's changes.
        let row = if changed { current(tx)? } else { first };
        let mut rollout = row.rollout;
        let fleet = Fleet {
            pool_size: pool.node_count,
            touched: row.touched,
            failed: row.failed,
            in_flight: tx.count_in_flight(rollout_id, now - secs(plan.soak_secs))?,
            unavailable: tx.count_unavailable(pool.name.as_str(), Some(rollout_id))?,
        };
        if let Some(reason) = policy::halt_reason(&rollout, &fleet, last_failure.as_deref()) {
            if locked {
                tracing::warn!(rollout = rollout_id, pool = %pool.name, %reason, "rollout halted");
                tx.set_rollout_state(rollout_id, RolloutState::Halted, Some(&reason), now)?;
                rollout.state = RolloutState::Halted;
                rollout.reason = Some(reason);
            } else {
                needs_lock = true;
            }
        }
        Ok(Settled {
            rollout,
            fleet,
            changed,
            needs_lock,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn record_decision(
        &self,
        tx: &mut Tx<'_>,
        pool: &PoolRow,
        rollout: &Rollout,
        id: &NodeId,
        progress: Option<&Progress>,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> Result<()> {
        match decision {
            Decision::Update { release, .. } => {
                if progress.map(|p| p.stage) != Some(Stage::Admitted) {
                    tx.admit(rollout.id, id, release, now)?;
                    tracing::info!(node = %id, rollout = rollout.id, version = %release.version, "admitted");
                }
            }
            Decision::Reboot { .. } => {
                let from = progress.map_or(Stage::Staged, |p| p.stage);
                // A repeated grant (see `policy::decide`) keeps the first one's time, so the
                // node's timeout still runs from it.
                if from != Stage::Rebooting {
                    tx.set_stage(rollout.id, id, from, Stage::Rebooting, None, now)?;
                }
                tx.take_lock(pool.name.as_str(), id.as_str(), now)?;
                tracing::info!(node = %id, rollout = rollout.id, "reboot granted");
            }
            Decision::Cancel { reason } => {
                let from = progress.map_or(Stage::Admitted, |p| p.stage);
                tx.set_stage(
                    rollout.id,
                    id,
                    from,
                    Stage::Failed,
                    Some(&format!("cancelled: {reason}")),
                    now,
                )?;
            }
            Decision::Wait { .. } => {}
        }
        Ok(())
    }

    fn directive(
        &self,
        tx: &mut Tx<'_>,
        pool: &PoolRow,
        decision: Decision,
        acked: Option<u64>,
    ) -> Result<Directive> {
        let mut d = Directive {
            protocol: PROTOCOL_VERSION,
            action: Action::Wait,
            retry_after_secs: pool.interval_secs.clamp(1, wire::MAX_RETRY_AFTER_SECS),
            reason: String::new(),
            release: None,
            drain_timeout_secs: None,
            acked_event_seq: acked,
        };
        match decision {
            Decision::Wait {
                retry_after,
                reason,
            } => {
                d.retry_after_secs = retry_after.clamp(1, wire::MAX_RETRY_AFTER_SECS);
                d.reason = reason;
            }
            Decision::Update { release, reason } => {
                let row = tx
                    .release(&pool.channel, &pool.arch, release.sequence)?
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "release sequence {} of {}/{} is not stored",
                            release.sequence, pool.channel, pool.arch
                        ))
                    })?;
                // The rollout's mode travels with the offer: the node moves its extensions
                // as the operator chose, whatever its own default is.
                let node_image_only = tx
                    .current_rollout(&pool.name)?
                    .map(|r| r.rollout.plan.node_image_only);
                d.action = Action::Update;
                d.reason = reason;
                d.release = Some(ReleaseOffer {
                    version: row.version,
                    sequence: row.sequence,
                    envelope: ReleaseOffer::encode_envelope(row.envelope.as_bytes()),
                    repository: self.config.repository_url.clone(),
                    node_image_only,
                });
            }
            Decision::Reboot { reason } => {
                d.action = Action::Reboot;
                d.reason = reason;
                let drain = tx
                    .current_rollout(&pool.name)?
                    .map(|r| r.rollout.plan.drain_timeout_secs)
                    .unwrap_or(policy::Plan::default().drain_timeout_secs);
                d.drain_timeout_secs = Some(drain);
            }
            Decision::Cancel { reason } => {
                d.action = Action::Cancel;
                d.reason = reason;
            }
        }
        d.reason.truncate(wire::MAX_REASON_BYTES);
        Ok(d)
    }

    // --------------------------------------------------------------- FleetLock

    fn fleetlock_caller(&self, caller: &Caller, body: &[u8]) -> Result<(NodeId, PoolName)> {
        let Caller::Node { id, pool } = caller else {
            return Err(Error::Forbidden(
                "FleetLock calls need a node token (brn_…)".into(),
            ));
        };
        let (claimed, group) =
            wire::FleetLockRequest::from_json(body).map_err(|e| Error::bad("fleet-lock", e))?;
        if claimed != *id {
            return Err(Error::Forbidden(format!(
                "this token belongs to node {id}; it cannot lock for node {claimed}"
            )));
        }
        if group.as_str() != pool {
            return Err(Error::Forbidden(format!(
                "node {id} is in group (pool) {pool}, not {group}"
            )));
        }
        Ok((claimed, group))
    }

    /// FleetLock `pre-reboot`: take a slot of the pool's semaphore (the same slots the
    /// rollout's reboot grants take). Ok(false) when all slots are held.
    pub fn pre_reboot(
        &self,
        caller: &Caller,
        body: &[u8],
    ) -> Result<std::result::Result<(), String>> {
        let (id, group) = self.fleetlock_caller(caller, body)?;
        let now = self.now();
        let mut tx = self.tx()?;
        if !tx.lock_pool(&group)? {
            return Err(Error::NotFound(format!("pool {group} does not exist")));
        }
        if tx.holds_lock(group.as_str(), id.as_str())? {
            return Ok(Ok(()));
        }
        let pool = tx
            .pool(&group)?
            .ok_or_else(|| Error::NotFound(format!("pool {group} does not exist")))?;
        let (limit, rollout) = match tx.current_rollout(&group)? {
            Some(r) if r.rollout.state != RolloutState::Aborted => (
                r.rollout.plan.unavailable_limit(pool.node_count),
                Some(r.rollout.id),
            ),
            _ => (pool.fleetlock_slots, None),
        };
        let held = tx.count_unavailable(group.as_str(), rollout)?;
        if held >= limit {
            return Ok(Err(format!(
                "all {limit} reboot slots of group {group} are taken ({held} nodes unavailable)"
            )));
        }
        tx.take_lock(group.as_str(), id.as_str(), now)?;
        tx.commit()?;
        tracing::info!(node = %id, %group, "fleet-lock taken");
        Ok(Ok(()))
    }

    /// FleetLock `steady-state`: give the slot back (idempotent).
    pub fn steady_state(&self, caller: &Caller, body: &[u8]) -> Result<()> {
        let (id, group) = self.fleetlock_caller(caller, body)?;
        let mut tx = self.tx()?;
        if !tx.lock_pool(&group)? {
            return Err(Error::NotFound(format!("pool {group} does not exist")));
        }
        if tx.release_lock(group.as_str(), id.as_str())? {
            tracing::info!(node = %id, %group, "fleet-lock released");
        }
        tx.commit()?;
        Ok(())
    }

    // --------------------------------------------------------------- operators

    fn operator(caller: &Caller) -> Result<&str> {
        match caller {
            Caller::Operator(name) => Ok(name),
            _ => Err(Error::Forbidden(
                "this needs an operator token (bro_…)".into(),
            )),
        }
    }

    pub fn create_pool(&self, caller: &Caller, body: &[u8]) -> Result<api::PoolInfo> {
        Self::operator(caller)?;
        let req: api::CreatePool = parse_json("pool", body)?;
        for (field, value) in [("channel", &req.channel), ("arch", &req.arch)] {
            if !basalt_manifest::valid_label(value) || value.is_empty() {
                return Err(Error::bad(
                    "pool",
                    format!("{field} {value:?} is not a valid name"),
                ));
            }
        }
        let interval = req.check_in_interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS);
        if !(1..=wire::MAX_RETRY_AFTER_SECS).contains(&interval) {
            return Err(Error::bad("pool", "check-in interval must be 1 s to 1 day"));
        }
        let slots = req.fleetlock_slots.unwrap_or(1);
        if slots == 0 {
            return Err(Error::bad("pool", "fleetlock slots must be at least 1"));
        }
        let row = PoolRow {
            name: req.name,
            channel: req.channel,
            arch: req.arch,
            interval_secs: interval,
            pin: None,
            fleetlock_slots: slots,
            node_count: 0,
            created_at: self.now(),
        };
        let mut tx = self.tx()?;
        tx.insert_pool(&row)?;
        tx.commit()?;
        Ok(pool_info(row, None))
    }

    pub fn pools(&self, caller: &Caller) -> Result<Vec<api::PoolInfo>> {
        Self::operator(caller)?;
        let mut tx = self.tx()?;
        let pools = tx.pools()?;
        pools
            .into_iter()
            .map(|p| {
                let rollout = tx.current_rollout(&p.name)?;
                Ok(pool_info(p, rollout))
            })
            .collect()
    }

    fn pool_of(tx: &mut Tx<'_>, pool: &str) -> Result<PoolRow> {
        let name = PoolName::new(pool).map_err(|e| Error::bad("pool", e))?;
        tx.pool(&name)?
            .ok_or_else(|| Error::NotFound(format!("pool {name} does not exist")))
    }

    pub fn enroll_token(&self, caller: &Caller, pool: &str) -> Result<api::TokenIssued> {
        Self::operator(caller)?;
        let (token, hash) = self.new_token(TokenKind::Enroll)?;
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        tx.insert_token(
            &hash,
            &TokenRow {
                kind: TokenKind::Enroll,
                subject: pool.name.to_string(),
                pool: Some(pool.name.to_string()),
                revoked: false,
            },
            self.now(),
        )?;
        tx.commit()?;
        Ok(api::TokenIssued {
            kind: "enroll".into(),
            subject: pool.name.to_string(),
            token,
        })
    }

    /// Registers a node by hand and returns its node token (for agents that do not enrol).
    pub fn register_node(
        &self,
        caller: &Caller,
        pool: &str,
        body: &[u8],
    ) -> Result<api::TokenIssued> {
        Self::operator(caller)?;
        let req: api::AddNode = parse_json("node", body)?;
        let (token, hash) = self.new_token(TokenKind::Node)?;
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        tx.lock_pool(&pool.name)?;
        self.add_node(&mut tx, &pool.name, &req.node_id, &hash, self.now())?;
        tx.commit()?;
        Ok(api::TokenIssued {
            kind: "node".into(),
            subject: req.node_id.to_string(),
            token,
        })
    }

    /// Publishes a signed release into its channel: it must verify against the trusted keys
    /// (signatures, threshold, expiry), have a sequence above the channel's newest, and — when
    /// the server serves the repository — have every blob in it.
    pub fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        arch: &str,
        body: &[u8],
        floor: bool,
    ) -> Result<api::ReleaseInfo> {
        Self::operator(caller)?;
        let now = self.now();
        let verified =
            basalt_manifest::verify_release(body, &self.config.trust_root, &Policy::new(now))
                .map_err(Error::Unsigned)?;
        let m = &verified.manifest;
        if m.channel != channel || m.arch != arch {
            return Err(Error::bad(
                "release",
                format!(
                    "the manifest is for channel {}/{}, not {channel}/{arch}",
                    m.channel, m.arch
                ),
            ));
        }
        let envelope = String::from_utf8(body.to_vec())
            .map_err(|_| Error::bad("release", "the envelope is not UTF-8 JSON"))?;
        if let Some(dir) = &self.config.repository_dir {
            for artifact in &m.artifacts {
                let mut digests = vec![artifact
                    .compression
                    .as_ref()
                    .map_or(artifact.sha256, |c| c.compressed_sha256)];
                if let Some(index) = artifact
                    .compression
                    .as_ref()
                    .and_then(|c| c.frame_index.as_ref())
                {
                    digests.push(index.sha256);
                }
                for digest in digests {
                    let path = dir.join(basalt_manifest::repo::blob_path(&digest));
                    if !path.is_file() {
                        return Err(Error::Conflict(format!(
                            "artifact {} of release {}: blob {} is not in the served repository {}",
                            artifact.name,
                            m.version,
                            path.display(),
                            dir.display()
                        )));
                    }
                }
            }
        }
        let row = ReleaseRow {
            channel: m.channel.clone(),
            arch: m.arch.clone(),
            sequence: m.sequence,
            version: m.version.clone(),
            envelope,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, body)),
            published_at: now,
            floor,
        };
        let mut tx = self.tx()?;
        if let Some(newest) = tx.releases(channel, arch)?.last() {
            if newest.sequence >= row.sequence {
                return Err(Error::Conflict(format!(
                    "release {} has sequence {}, not above the channel's newest ({} at sequence {})",
                    row.version, row.sequence, newest.version, newest.sequence
                )));
            }
        }
        tx.insert_release(&row)?;
        tx.commit()?;
        tracing::info!(channel, arch, version = %row.version, sequence = row.sequence, "release published");
        Ok(release_info(&row))
    }

    pub fn releases(
        &self,
        caller: &Caller,
        channel: &str,
        arch: &str,
    ) -> Result<Vec<api::ReleaseInfo>> {
        Self::operator(caller)?;
        Ok(self
            .tx()?
            .releases(channel, arch)?
            .iter()
            .map(release_info)
            .collect())
    }

    pub fn set_floor(
        &self,
        caller: &Caller,
        channel: &str,
        arch: &str,
        sequence: u64,
        body: &[u8],
    ) -> Result<api::ReleaseInfo> {
        Self::operator(caller)?;
        let req: api::SetFloor = parse_json("floor", body)?;
        let mut tx = self.tx()?;
        if tx.set_floor(channel, arch, sequence, req.floor)? == 0 {
            return Err(Error::NotFound(format!(
                "channel {channel}/{arch} has no release with sequence {sequence}"
            )));
        }
        let row = tx
            .release(channel, arch, sequence)?
            .ok_or_else(|| Error::Internal("release vanished".into()))?;
        tx.commit()?;
        Ok(release_info(&row))
    }

    /// `pool upgrade`: starts a rollout of the pool to a release of its channel.
    pub fn upgrade(&self, caller: &Caller, pool: &str, body: &[u8]) -> Result<api::RolloutInfo> {
        let who = Self::operator(caller)?.to_owned();
        let req: api::Upgrade = parse_json("upgrade", body)?;
        let plan = req.plan();
        plan.validate().map_err(|e| Error::bad("upgrade", e))?;
        let now = self.now();
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        tx.lock_pool(&pool.name)?;
        if let Some(current) = tx.current_rollout(&pool.name)? {
            if current.rollout.state != RolloutState::Aborted {
                let progress = tx.all_progress(current.rollout.id)?;
                let busy = progress.iter().any(|p| {
                    matches!(
                        p.progress.stage,
                        Stage::Admitted | Stage::Staged | Stage::Rebooting
                    )
                });
                if busy || current.rollout.state != RolloutState::Active {
                    return Err(Error::Conflict(format!(
                        "pool {} has rollout {} to {} ({}{}): abort it first",
                        pool.name,
                        current.rollout.id,
                        current.rollout.target.version,
                        current.rollout.state.as_str(),
                        if busy { ", nodes in flight" } else { "" }
                    )));
                }
            }
        }
        let releases = tx.releases(&pool.channel, &pool.arch)?;
        let target = match &req.to {
            Some(version) => releases
                .iter()
                .rev()
                .find(|r| r.version == *version)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "channel {}/{} has no release {version}",
                        pool.channel, pool.arch
                    ))
                })?,
            None => releases.last().ok_or_else(|| {
                Error::NotFound(format!(
                    "channel {}/{} has no release yet",
                    pool.channel, pool.arch
                ))
            })?,
        };
        let target = ReleaseRef {
            sequence: target.sequence,
            version: target.version.clone(),
        };
        let id = tx.insert_rollout(&pool.name, &target, &plan, now)?;
        let row = tx
            .current_rollout(&pool.name)?
            .ok_or_else(|| Error::Internal("rollout vanished".into()))?;
        tx.commit()?;
        tracing::info!(rollout = id, pool = %pool.name, version = %target.version, operator = %who, "rollout started");
        Ok(rollout_info(&row))
    }

    /// `pause`, `resume`, `abort`.
    pub fn set_state(
        &self,
        caller: &Caller,
        pool: &str,
        to: RolloutState,
        body: &[u8],
    ) -> Result<api::RolloutInfo> {
        let who = Self::operator(caller)?.to_owned();
        let req: api::Reason = if body.is_empty() {
            api::Reason::default()
        } else {
            parse_json("reason", body)?
        };
        if let Some(reason) = &req.reason {
            if reason.len() > wire::MAX_REASON_BYTES || reason.chars().any(char::is_control) {
                return Err(Error::bad("reason", "at most 1024 printable bytes"));
            }
        }
        let now = self.now();
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        tx.lock_pool(&pool.name)?;
        let current = tx
            .current_rollout(&pool.name)?
            .ok_or_else(|| Error::NotFound(format!("pool {} has no rollout", pool.name)))?;
        let from = current.rollout.state;
        let id = current.rollout.id;
        let reason = req
            .reason
            .unwrap_or_else(|| format!("{} by {who}", to.as_str()));
        match (from, to) {
            (RolloutState::Aborted, _) => {
                return Err(Error::Conflict(format!(
                    "rollout {id} was aborted; start a new one"
                )))
            }
            (RolloutState::Active, RolloutState::Paused)
            | (
                RolloutState::Active | RolloutState::Paused | RolloutState::Halted,
                RolloutState::Aborted,
            ) => tx.set_rollout_state(id, to, Some(&reason), now)?,
            (RolloutState::Paused | RolloutState::Halted, RolloutState::Active) => {
                // Resuming acknowledges the failures that caused a halt: the rule counts
                // what comes after.
                tx.acknowledge(id)?;
                tx.set_rollout_state(id, to, None, now)?;
            }
            (from, to) => {
                return Err(Error::Conflict(format!(
                    "rollout {id} is {}; it cannot become {}",
                    from.as_str(),
                    to.as_str()
                )))
            }
        }
        let row = tx
            .current_rollout(&pool.name)?
            .ok_or_else(|| Error::Internal("rollout vanished".into()))?;
        tx.commit()?;
        tracing::info!(rollout = id, from = from.as_str(), to = to.as_str(), operator = %who, "rollout state");
        Ok(rollout_info(&row))
    }

    /// `pin`: hold a node or the pool at a version (or lift it).
    pub fn pin(&self, caller: &Caller, pool: &str, body: &[u8]) -> Result<()> {
        Self::operator(caller)?;
        let req: api::Pin = parse_json("pin", body)?;
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        tx.lock_pool(&pool.name)?;
        match &req.node {
            Some(id) => {
                let node = tx
                    .node(id)?
                    .filter(|n| n.pool == pool.name)
                    .ok_or_else(|| {
                        Error::NotFound(format!("pool {} has no node {id}", pool.name))
                    })?;
                let version = if req.remove {
                    None
                } else {
                    Some(req.version.clone().or(node.booted_version).ok_or_else(|| {
                        Error::bad(
                            "pin",
                            format!("node {id} has not reported a version yet: name one"),
                        )
                    })?)
                };
                tx.set_node_pin(id, version.as_ref())?;
            }
            None => {
                let version = if req.remove {
                    None
                } else {
                    Some(
                        req.version
                            .clone()
                            .ok_or_else(|| Error::bad("pin", "pinning a pool needs a version"))?,
                    )
                };
                tx.set_pool_pin(&pool.name, version.as_ref())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn nodes(&self, caller: &Caller, pool: &str) -> Result<Vec<api::NodeInfo>> {
        Self::operator(caller)?;
        // The listing shows last-seen times: write the buffered ones first.
        self.flush_last_seen()?;
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        let rollout = tx.current_rollout(&pool.name)?;
        let progress: BTreeMap<NodeId, ProgressRow> = match &rollout {
            Some(r) => tx
                .all_progress(r.rollout.id)?
                .into_iter()
                .map(|p| (p.node_id.clone(), p))
                .collect(),
            None => BTreeMap::new(),
        };
        Ok(tx
            .nodes(&pool.name)?
            .into_iter()
            .map(|n| {
                let p = progress.get(&n.id);
                api::NodeInfo {
                    wave: rollout
                        .as_ref()
                        .map(|r| r.rollout.plan.wave_of(policy::seed(r.rollout.id, &n.id)).0 + 1),
                    stage: p.map(|p| p.progress.stage),
                    reason: p.and_then(|p| p.progress.reason.clone()),
                    id: n.id,
                    last_seen: n.last_seen,
                    booted_version: n.booted_version,
                    booted_slot: n.booted_slot,
                    agent_state: n.agent_state,
                    pin: n.pin,
                }
            })
            .collect())
    }

    /// `status POOL`.
    pub fn status(&self, caller: &Caller, pool: &str) -> Result<api::Status> {
        Self::operator(caller)?;
        let now = self.now();
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        let nodes = tx.nodes(&pool.name)?;
        let mut versions = BTreeMap::new();
        for n in &nodes {
            let v = n
                .booted_version
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string);
            *versions.entry(v).or_insert(0u64) += 1;
        }
        let row = tx.current_rollout(&pool.name)?;
        let lock_holders: Vec<String> = tx
            .lock_holders(pool.name.as_str())?
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        let recent_events = tx
            .recent_events(&pool.name, 20)?
            .into_iter()
            .map(|e| api::EventInfo {
                node: e.node_id,
                seq: e.seq,
                at: e.at,
                received_at: e.received_at,
                kind: e.kind,
                version: e.version,
                reason: e.reason,
            })
            .collect();
        let rollout = match &row {
            None => None,
            Some(row) => Some(rollout_status(&mut tx, &pool, row, &nodes, now)?),
        };
        Ok(api::Status {
            pool: pool_info(pool, row),
            now,
            versions,
            rollout,
            lock_holders,
            recent_events,
        })
    }

    /// `history POOL`: cumulative admitted / healthy / failed over time (the chart).
    pub fn history(&self, caller: &Caller, pool: &str) -> Result<api::History> {
        Self::operator(caller)?;
        let mut tx = self.tx()?;
        let pool = Self::pool_of(&mut tx, pool)?;
        let Some(row) = tx.current_rollout(&pool.name)? else {
            return Ok(api::History {
                rollout: None,
                pool_size: pool.node_count,
                points: Vec::new(),
                admitted_by_wave: Vec::new(),
            });
        };
        let progress = tx.all_progress(row.rollout.id)?;
        let mut changes: Vec<(DateTime<Utc>, u8)> = Vec::new();
        let mut by_wave = vec![0u64; row.rollout.plan.waves.len()];
        for p in &progress {
            changes.push((p.admitted_at, 0));
            if let Some(t) = p.healthy_at {
                if p.progress.stage == Stage::Healthy {
                    changes.push((t, 1));
                }
            }
            if let Some(t) = p.failed_at {
                if p.progress.stage == Stage::Failed {
                    changes.push((t, 2));
                }
            }
            let wave = row
                .rollout
                .plan
                .wave_of(policy::seed(row.rollout.id, &p.node_id))
                .0;
            if let Some(n) = by_wave.get_mut(wave) {
                *n += 1;
            }
        }
        changes.sort();
        let mut points = vec![api::HistoryPoint {
            at: row.rollout.started_at,
            admitted: 0,
            healthy: 0,
            failed: 0,
        }];
        let mut counts = [0u64; 3];
        for (at, which) in changes {
            counts[usize::from(which)] += 1;
            let point = api::HistoryPoint {
                at,
                admitted: counts[0],
                healthy: counts[1],
                failed: counts[2],
            };
            match points.last_mut() {
                Some(last) if last.at == at => *last = point,
                _ => points.push(point),
            }
        }
        Ok(api::History {
            rollout: Some(rollout_info(&row)),
            pool_size: pool.node_count,
            points,
            admitted_by_wave: by_wave,
        })
    }

    /// Prometheus text exposition of every pool's rollout.
    pub fn metrics(&self, caller: &Caller) -> Result<String> {
        Self::operator(caller)?;
        let now = self.now();
        let mut tx = self.tx()?;
        let pools = tx.pools()?;
        let mut m = crate::metrics::Metrics::default();
        for pool in pools {
            let nodes = tx.nodes(&pool.name)?;
            let name = pool.name.to_string();
            m.gauge(
                "basalt_rollout_pool_nodes",
                "Nodes enrolled in the pool.",
                &[("pool", &name)],
                pool.node_count as f64,
            );
            let mut versions: BTreeMap<String, u64> = BTreeMap::new();
            for n in &nodes {
                *versions
                    .entry(
                        n.booted_version
                            .as_ref()
                            .map_or_else(|| "unknown".into(), ToString::to_string),
                    )
                    .or_default() += 1;
            }
            for (v, n) in versions {
                m.gauge(
                    "basalt_rollout_nodes_by_version",
                    "Nodes by booted version.",
                    &[("pool", &name), ("version", &v)],
                    n as f64,
                );
            }
            let holders = tx.lock_holders(pool.name.as_str())?.len();
            m.gauge(
                "basalt_rollout_fleetlock_holders",
                "Holders of the pool's FleetLock semaphore.",
                &[("pool", &name)],
                holders as f64,
            );
            if let Some(row) = tx.current_rollout(&pool.name)? {
                let s = rollout_status(&mut tx, &pool, &row, &nodes, now)?;
                let id = row.rollout.id.to_string();
                let labels = [("pool", name.as_str()), ("rollout", id.as_str())];
                for state in ["active", "paused", "halted", "aborted"] {
                    let value = f64::from(u8::from(row.rollout.state.as_str() == state));
                    m.gauge(
                        "basalt_rollout_state",
                        "1 for the rollout's current state.",
                        &[("pool", &name), ("rollout", &id), ("state", state)],
                        value,
                    );
                }
                for (stage, n) in &s.stages {
                    m.gauge(
                        "basalt_rollout_nodes_by_stage",
                        "Nodes by stage in the rollout.",
                        &[("pool", &name), ("rollout", &id), ("stage", stage)],
                        *n as f64,
                    );
                }
                m.gauge(
                    "basalt_rollout_touched",
                    "Nodes touched by the rollout.",
                    &labels,
                    s.touched as f64,
                );
                m.gauge(
                    "basalt_rollout_failed",
                    "Nodes failed or rolled back in the rollout.",
                    &labels,
                    s.failed as f64,
                );
                m.gauge(
                    "basalt_rollout_in_flight",
                    "Nodes in flight.",
                    &labels,
                    s.in_flight as f64,
                );
                m.gauge(
                    "basalt_rollout_unavailable",
                    "Nodes unavailable (rebooting or holding a FleetLock slot).",
                    &labels,
                    s.unavailable as f64,
                );
                m.gauge(
                    "basalt_rollout_unavailable_limit",
                    "max-unavailable, resolved.",
                    &labels,
                    s.unavailable_limit as f64,
                );
                m.gauge(
                    "basalt_rollout_at_target",
                    "Nodes at or above the target version.",
                    &labels,
                    s.at_target as f64,
                );
                m.gauge(
                    "basalt_rollout_allowed_percent",
                    "Share of the pool the waves allow now.",
                    &labels,
                    f64::from(s.allowed_percent),
                );
            }
        }
        Ok(m.render())
    }
}

/// What [`Service::settle`] found.
struct Settled {
    rollout: Rollout,
    fleet: Fleet,
    /// Progress rows changed (timeouts recorded).
    changed: bool,
    /// Something must be written under the pool lock.
    needs_lock: bool,
}

/// Holders of the pool's semaphore plus rollout nodes rebooting without one (a node that
/// said steady-state before its healthy report still counts until that report).
fn unavailable(tx: &mut Tx<'_>, group: &str, rows: &[ProgressRow]) -> Result<BTreeSet<String>> {
    let mut set: BTreeSet<String> = tx
        .lock_holders(group)?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    set.extend(
        rows.iter()
            .filter(|r| r.progress.stage == Stage::Rebooting)
            .map(|r| r.node_id.to_string()),
    );
    Ok(set)
}

fn parse_json<T: for<'de> serde::Deserialize<'de>>(what: &'static str, body: &[u8]) -> Result<T> {
    if body.len() > api::MAX_API_BODY {
        return Err(Error::bad(
            what,
            format!("body of {} bytes is too large", body.len()),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Error::bad(what, e))
}

fn pool_info(p: PoolRow, rollout: Option<RolloutRow>) -> api::PoolInfo {
    api::PoolInfo {
        name: p.name,
        channel: p.channel,
        arch: p.arch,
        check_in_interval_secs: p.interval_secs,
        fleetlock_slots: p.fleetlock_slots,
        nodes: p.node_count,
        pin: p.pin,
        rollout: rollout.as_ref().map(rollout_info),
    }
}

fn release_info(r: &ReleaseRow) -> api::ReleaseInfo {
    api::ReleaseInfo {
        channel: r.channel.clone(),
        arch: r.arch.clone(),
        sequence: r.sequence,
        version: r.version.clone(),
        sha256: r.sha256.clone(),
        published_at: r.published_at,
        floor: r.floor,
    }
}

fn rollout_info(r: &RolloutRow) -> api::RolloutInfo {
    api::RolloutInfo {
        id: r.rollout.id,
        pool: r.pool.clone(),
        target: r.rollout.target.clone(),
        state: r.rollout.state,
        reason: r.rollout.reason.clone(),
        started_at: r.rollout.started_at,
        state_at: r.state_at,
        plan: r.rollout.plan.clone(),
    }
}

fn rollout_status(
    tx: &mut Tx<'_>,
    pool: &PoolRow,
    row: &RolloutRow,
    nodes: &[crate::store::NodeRow],
    now: DateTime<Utc>,
) -> Result<api::RolloutStatus> {
    let r = &row.rollout;
    let plan = &r.plan;
    let progress = tx.all_progress(r.id)?;
    let by_node: BTreeMap<&NodeId, &ProgressRow> =
        progress.iter().map(|p| (&p.node_id, p)).collect();
    let mut stages: BTreeMap<String, u64> = BTreeMap::new();
    let mut waves: Vec<api::WaveStatus> = plan
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let opens_at = r.started_at + secs(w.after_secs);
            api::WaveStatus {
                wave: i + 1,
                percent: w.percent,
                opens_at,
                open: now >= opens_at,
                nodes: 0,
                stages: BTreeMap::new(),
            }
        })
        .collect();
    let mut at_target = 0;
    for n in nodes {
        if n.booted_version
            .as_ref()
            .is_some_and(|v| v.cmp_precedence(&r.target.version).is_ge())
        {
            at_target += 1;
        }
        let wave = plan.wave_of(policy::seed(r.id, &n.id)).0;
        let stage = by_node
            .get(&n.id)
            .map_or("not-started", |p| p.progress.stage.as_str());
        *stages.entry(stage.to_owned()).or_default() += 1;
        if let Some(w) = waves.get_mut(wave) {
            w.nodes += 1;
            *w.stages.entry(stage.to_owned()).or_default() += 1;
        }
    }
    let in_flight_rows: Vec<ProgressRow> = progress
        .iter()
        .filter(|p| policy::occupies_slot(&p.progress, plan, now))
        .cloned()
        .collect();
    let unavailable = unavailable(tx, pool.name.as_str(), &in_flight_rows)?.len() as u64;
    let mut failures: Vec<api::Failure> = progress
        .iter()
        .filter(|p| p.progress.stage == Stage::Failed)
        .map(|p| api::Failure {
            node: p.node_id.clone(),
            version: p.progress.hop.version.clone(),
            at: p.progress.since,
            reason: p.progress.reason.clone().unwrap_or_default(),
        })
        .collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.at));
    failures.truncate(100);
    let in_flight = in_flight_rows.len() as u64;
    let complete = in_flight == 0
        && nodes.iter().all(|n| {
            n.booted_version
                .as_ref()
                .is_some_and(|v| v.cmp_precedence(&r.target.version).is_ge())
                || by_node
                    .get(&n.id)
                    .is_some_and(|p| p.progress.stage == Stage::Failed)
        });
    Ok(api::RolloutStatus {
        info: rollout_info(row),
        allowed_percent: plan.allowed_percent((now - r.started_at).num_seconds()),
        unavailable_limit: plan.unavailable_limit(pool.node_count),
        in_flight_limit: plan.in_flight_limit(pool.node_count),
        touched: row.touched,
        failed: row.failed,
        in_flight,
        unavailable,
        at_target,
        stages,
        waves,
        failures,
        complete,
    })
}

/// Creates a token for operator `name` straight in the database (bootstrap: `basalt-rollout
/// operator add`; there is no HTTP call that mints operator tokens).
pub fn create_operator_token(
    backend: &dyn Backend,
    random: &dyn Random,
    name: &str,
) -> Result<api::TokenIssued> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(Error::bad("operator name", "1-128 printable characters"));
    }
    let (token, hash) = auth::generate(TokenKind::Operator, random).map_err(Error::Internal)?;
    let mut tx = Tx::begin(backend)?;
    tx.insert_token(
        &hash,
        &TokenRow {
            kind: TokenKind::Operator,
            subject: name.to_owned(),
            pool: None,
            revoked: false,
        },
        Utc::now(),
    )?;
    tx.commit()?;
    Ok(api::TokenIssued {
        kind: "operator".into(),
        subject: name.to_owned(),
        token,
    })
}

/// Revokes every token of operator `name`; returns how many.
pub fn revoke_operator(backend: &dyn Backend, name: &str) -> Result<u64> {
    let mut tx = Tx::begin(backend)?;
    let n = tx.revoke_tokens(TokenKind::Operator, name, Utc::now())?;
    tx.commit()?;
    Ok(n)
}

/// The trust root releases are checked against: the initial root from `path` (signed by its
/// own keys), then, when the server serves a repository, each newer `roots/N.root.json` of it
/// in turn (TUF's walk: every step signed by the old and the new keys).
pub fn load_trust_root(
    path: &std::path::Path,
    repository: Option<&std::path::Path>,
) -> Result<TrustRoot> {
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| Error::Internal(format!("reading the trust root {}: {e}", p.display())))
    };
    let mut root = TrustRoot::from_initial_envelope(&read(path)?)
        .map_err(|e| Error::Internal(format!("trust root {}: {e}", path.display())))?;
    if let Some(dir) = repository {
        loop {
            let next = dir.join(basalt_manifest::repo::root_path(
                root.generation().saturating_add(1),
            ));
            if !next.is_file() {
                break;
            }
            root = root
                .rotate(&read(&next)?)
                .map_err(|e| Error::Internal(format!("trust root {}: {e}", next.display())))?;
        }
    }
    Ok(root)
}
