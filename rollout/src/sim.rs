//! A fleet simulation: simulated nodes that speak the real check-in protocol to real
//! servers over 127.0.0.1 (HTTP/1.1, keep-alive), on a [`ManualClock`] shared with the
//! servers, so hours of rollout run in seconds. Used by the integration tests (1,000 nodes,
//! SQLite and PostgreSQL with two replicas, a restart mid-rollout) and `cargo xtask bench`
//! (10,000 nodes).
//!
//! Each simulated node follows its directives as `basalt-updated` does: `update` → download
//! for `download_secs`, then report `downloaded` + `staged`; `reboot` → reboot for
//! `reboot_secs`, then report `rebooted` + `healthy` (a good release) or `rolled-back` with a
//! reason (a bad one); `cancel` → drop what it staged; `wait` → check in again after
//! `retry_after_secs` plus jitter. Events are re-sent until acknowledged.
//!
//! **Checking the limits without trusting the server.** Every round runs in two phases:
//! first the check-ins that carry a report freeing a slot (healthy, rolled back, failed),
//! then all the others, which are the only ones that can be granted a slot. At the end of the
//! second phase no request is in flight and nothing was freed during it, so the simulation's
//! own count of nodes holding a reboot grant (or an in-flight slot) is exact; if two server
//! replicas had both admitted a node into the last free slot, that count shows it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_manifest::chrono::{DateTime, Duration as TimeDelta, Utc};
use basalt_manifest::semver::Version;
use basalt_rollout_wire::{
    Action, AgentState, Booted, CheckIn, Directive, EnrollRequest, Enrolled, Event, EventKind,
    NodeId, PoolName, Slot, CHECK_IN_PATH, ENROLL_PATH, PROTOCOL_VERSION,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::clock::{Clock, ManualClock};

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// What a simulated release does after its reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Comes back healthy.
    Healthy,
    /// Fails its health gate and rolls back to the other slot.
    RollBack,
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base URLs of the server replicas (`http://127.0.0.1:PORT/`); requests spread over them.
    pub servers: Vec<String>,
    pub download_secs: i64,
    pub reboot_secs: i64,
    pub outcome: Outcome,
    /// Limits to hold (resolved for the pool), checked after every round.
    pub unavailable_limit: u64,
    pub in_flight_limit: u64,
    pub soak_secs: i64,
    /// Check-ins in flight at once.
    pub concurrency: usize,
    /// Stop after this many rounds (bounded loops).
    pub max_rounds: u64,
    /// Stop when simulated time passes this.
    pub until: DateTime<Utc>,
    /// The clock moves at least this far per round, so each round batches the check-ins
    /// due in that span (nodes check in up to this late, as with a real timer's slack).
    pub tick_secs: i64,
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub id: NodeId,
    token: String,
    pub booted: Version,
    slot: Slot,
    next_seq: u64,
    events: Vec<Event>,
    next_check_in: DateTime<Utc>,
    pending: Pending,
    /// Holds a reboot grant (until its healthy or rolled-back report is acknowledged).
    pub unavailable: bool,
    /// Holds an in-flight slot (admitted, until healthy + soak or failure is acknowledged).
    pub in_flight: bool,
    healthy_acked_at: Option<DateTime<Utc>>,
    /// Times this node was told to update (first hop counts as touched).
    pub updates: u64,
    pub failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    Downloading {
        until: DateTime<Utc>,
        version: Version,
    },
    Staged {
        version: Version,
    },
    Rebooting {
        until: DateTime<Utc>,
        version: Version,
    },
}

/// What a run observed.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub rounds: u64,
    pub check_ins: u64,
    /// Check-ins that failed (transport or 5xx), retried next round.
    pub errors: u64,
    pub first_error: Option<String>,
    pub max_unavailable: u64,
    pub max_in_flight: u64,
    pub wall: Duration,
    /// Simulated seconds covered.
    pub sim_secs: i64,
    /// Limit violations seen (empty when the limits held).
    pub violations: Vec<String>,
}

/// A simulated fleet.
#[derive(Debug)]
pub struct Fleet {
    pub pool: PoolName,
    pub nodes: Vec<SimNode>,
    http: Http,
    rr: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("simulation: {0}")]
pub struct SimError(pub String);

fn http() -> Http {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

async fn post(
    http: &Http,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let req = hyper::Request::post(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(60), http.request(req))
        .await
        .map_err(|_| format!("{url}: no answer in 60 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: reading: {e}"))?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

impl SimNode {
    /// The node token it enrolled with.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Fleet {
    /// Enrols `count` nodes named `{prefix}-{i}` running `booted`, with the pool's enrolment
    /// token, against `server`.
    pub async fn enroll(
        server: &str,
        enroll_token: &str,
        prefix: &str,
        count: usize,
        booted: &Version,
        now: DateTime<Utc>,
    ) -> Result<Fleet, SimError> {
        let http = http();
        let url = format!("{}{}", server, ENROLL_PATH.trim_start_matches('/'));
        let mut nodes = Vec::with_capacity(count);
        let mut pool = None;
        let mut set = tokio::task::JoinSet::new();
        let mut started = 0;
        let mut results = Vec::new();
        while started < count || !set.is_empty() {
            while started < count && set.len() < 32 {
                let (http, url, token) = (http.clone(), url.clone(), enroll_token.to_owned());
                let id = NodeId::new(&format!("{prefix}-{started}")).map_err(SimError)?;
                let body = EnrollRequest {
                    protocol: PROTOCOL_VERSION,
                    node_id: id.clone(),
                }
                .to_json();
                let i = started;
                set.spawn(async move { (i, id, post(&http, &url, &token, body).await) });
                started += 1;
            }
            if let Some(joined) = set.join_next().await {
                results.push(joined.map_err(|e| SimError(e.to_string()))?);
            }
        }
        results.sort_by_key(|r| r.0);
        for (_, id, answer) in results {
            let (status, body) = answer.map_err(SimError)?;
            if status != 200 {
                return Err(SimError(format!(
                    "enrolling {id}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            let enrolled = Enrolled::from_json(&body).map_err(|e| SimError(e.to_string()))?;
            pool = Some(enrolled.pool.clone());
            nodes.push(SimNode {
                id,
                token: enrolled.node_token,
                booted: booted.clone(),
                slot: Slot::A,
                next_seq: 1,
                events: Vec::new(),
                next_check_in: now,
                pending: Pending::None,
                unavailable: false,
                in_flight: false,
                healthy_acked_at: None,
                updates: 0,
                failed: false,
            });
        }
        Ok(Fleet {
            pool: pool.ok_or_else(|| SimError("no node enrolled".into()))?,
            nodes,
            http,
            rr: 0,
        })
    }

    fn push_event(
        node: &mut SimNode,
        now: DateTime<Utc>,
        kind: EventKind,
        version: &Version,
        reason: Option<String>,
    ) {
        node.events.push(Event {
            seq: node.next_seq,
            at: now,
            kind,
            version: version.clone(),
            reason,
        });
        node.next_seq += 1;
    }

    /// Moves nodes whose download or reboot finished by `now`.
    fn advance(&mut self, now: DateTime<Utc>, cfg: &RunConfig) {
        for node in &mut self.nodes {
            match node.pending.clone() {
                Pending::Downloading { until, version } if until <= now => {
                    Self::push_event(node, now, EventKind::Downloaded, &version, None);
                    Self::push_event(node, now, EventKind::Staged, &version, None);
                    node.pending = Pending::Staged { version };
                    node.next_check_in = now;
                }
                Pending::Rebooting { until, version } if until <= now => {
                    match cfg.outcome {
                        Outcome::Healthy => {
                            node.booted = version.clone();
                            node.slot = if node.slot == Slot::A {
                                Slot::B
                            } else {
                                Slot::A
                            };
                            Self::push_event(node, now, EventKind::Rebooted, &version, None);
                            Self::push_event(node, now, EventKind::Healthy, &version, None);
                        }
                        Outcome::RollBack => {
                            Self::push_event(
                                node,
                                now,
                                EventKind::RolledBack,
                                &version,
                                Some("health check kubelet failed 3 times; back on the previous slot".into()),
                            );
                        }
                    }
                    node.pending = Pending::None;
                    node.next_check_in = now;
                }
                _ => {}
            }
        }
    }

    fn state(node: &SimNode) -> AgentState {
        match node.pending {
            Pending::None => AgentState::Idle,
            Pending::Downloading { .. } => AgentState::Downloading,
            Pending::Staged { .. } => AgentState::Staged,
            Pending::Rebooting { .. } => AgentState::Rebooting,
        }
    }

    fn frees_slot(node: &SimNode) -> bool {
        node.events.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::Healthy | EventKind::RolledBack | EventKind::Failed
            )
        })
    }

    /// Runs check-ins of `which` nodes concurrently; applies the directives in order.
    async fn phase(
        &mut self,
        which: Vec<usize>,
        now: DateTime<Utc>,
        cfg: &RunConfig,
        report: &mut RunReport,
    ) -> Result<(), SimError> {
        let mut set = tokio::task::JoinSet::new();
        let mut queue = which.into_iter();
        let mut answers = Vec::new();
        loop {
            while set.len() < cfg.concurrency.max(1) {
                let Some(i) = queue.next() else { break };
                let node = &self.nodes[i];
                let body = CheckIn {
                    protocol: PROTOCOL_VERSION,
                    node_id: node.id.clone(),
                    pool: self.pool.clone(),
                    booted: Booted {
                        version: node.booted.clone(),
                        slot: node.slot,
                    },
                    state: Self::state(node),
                    events: node
                        .events
                        .iter()
                        .take(basalt_rollout_wire::MAX_EVENTS)
                        .cloned()
                        .collect(),
                }
                .to_json();
                let server = &cfg.servers[self.rr % cfg.servers.len()];
                self.rr = self.rr.wrapping_add(1);
                let url = format!("{}{}", server, CHECK_IN_PATH.trim_start_matches('/'));
                let (http, token) = (self.http.clone(), node.token.clone());
                set.spawn(async move { (i, post(&http, &url, &token, body).await) });
            }
            match set.join_next().await {
                Some(joined) => answers.push(joined.map_err(|e| SimError(e.to_string()))?),
                None => break,
            }
        }
        answers.sort_by_key(|a| a.0);
        for (i, answer) in answers {
            report.check_ins += 1;
            let directive = match answer {
                Ok((200, body)) => {
                    Directive::from_json(&body).map_err(|e| SimError(format!("node {i}: {e}")))?
                }
                Ok((status, body)) if status >= 500 => {
                    report.errors += 1;
                    report.first_error.get_or_insert_with(|| {
                        format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                    });
                    self.nodes[i].next_check_in = now + TimeDelta::seconds(5);
                    continue;
                }
                Ok((status, body)) => {
                    return Err(SimError(format!(
                        "check-in of {} refused: HTTP {status}: {}",
                        self.nodes[i].id,
                        String::from_utf8_lossy(&body)
                    )))
                }
                Err(e) => {
                    report.errors += 1;
                    report.first_error.get_or_insert(e);
                    self.nodes[i].next_check_in = now + TimeDelta::seconds(5);
                    continue;
                }
            };
            self.apply(i, &directive, now, cfg);
        }
        Ok(())
    }

    fn apply(&mut self, i: usize, d: &Directive, now: DateTime<Utc>, cfg: &RunConfig) {
        let node = &mut self.nodes[i];
        if let Some(acked) = d.acked_event_seq {
            // What was acknowledged frees or keeps slots, as the server now sees it.
            for e in node.events.iter().filter(|e| e.seq <= acked) {
                match e.kind {
                    EventKind::Healthy => {
                        node.unavailable = false;
                        node.healthy_acked_at = Some(now);
                    }
                    EventKind::RolledBack | EventKind::Failed => {
                        node.unavailable = false;
                        node.in_flight = false;
                        node.failed = true;
                    }
                    _ => {}
                }
            }
            node.events.retain(|e| e.seq > acked);
        }
        // Jitter: up to a tenth of the wait, from the node's id (deterministic per node).
        let jitter =
            (node.next_seq as i64 * 7 + i as i64 * 13) % (d.retry_after_secs as i64 / 10 + 1);
        node.next_check_in = now + TimeDelta::seconds(d.retry_after_secs as i64 + jitter);
        match d.action {
            Action::Wait => {}
            Action::Update => {
                if let Some(release) = &d.release {
                    let already = matches!(&node.pending,
                        Pending::Downloading { version, .. } | Pending::Staged { version } | Pending::Rebooting { version, .. }
                        if *version == release.version);
                    if !already {
                        node.updates += 1;
                        node.in_flight = true;
                        node.healthy_acked_at = None;
                        node.pending = Pending::Downloading {
                            until: now + TimeDelta::seconds(cfg.download_secs),
                            version: release.version.clone(),
                        };
                        node.next_check_in = now + TimeDelta::seconds(cfg.download_secs);
                    }
                }
            }
            Action::Reboot => {
                if let Pending::Staged { version } = node.pending.clone() {
                    node.unavailable = true;
                    node.pending = Pending::Rebooting {
                        until: now + TimeDelta::seconds(cfg.reboot_secs),
                        version,
                    };
                    node.next_check_in = now + TimeDelta::seconds(cfg.reboot_secs);
                }
            }
            Action::Cancel => {
                node.pending = Pending::None;
                node.in_flight = false;
            }
        }
    }

    fn check_limits(&mut self, now: DateTime<Utc>, cfg: &RunConfig, report: &mut RunReport) {
        for node in &mut self.nodes {
            if let Some(at) = node.healthy_acked_at {
                if now >= at + TimeDelta::seconds(cfg.soak_secs) {
                    node.in_flight = false;
                }
            }
        }
        let unavailable = self.nodes.iter().filter(|n| n.unavailable).count() as u64;
        let in_flight = self.nodes.iter().filter(|n| n.in_flight).count() as u64;
        report.max_unavailable = report.max_unavailable.max(unavailable);
        report.max_in_flight = report.max_in_flight.max(in_flight);
        if unavailable > cfg.unavailable_limit {
            report.violations.push(format!(
                "{now}: {unavailable} nodes hold a reboot grant, limit {}",
                cfg.unavailable_limit
            ));
        }
        if in_flight > cfg.in_flight_limit {
            report.violations.push(format!(
                "{now}: {in_flight} nodes in flight, limit {}",
                cfg.in_flight_limit
            ));
        }
    }

    /// Runs rounds until `done` says so, the round or time bound is hit, or an error.
    pub async fn run(
        &mut self,
        clock: &Arc<ManualClock>,
        cfg: &RunConfig,
        mut done: impl FnMut(&Fleet) -> bool,
    ) -> Result<RunReport, SimError> {
        let mut report = RunReport::default();
        let started = Instant::now();
        let sim_start = clock.now();
        while report.rounds < cfg.max_rounds {
            let now = clock.now();
            if now >= cfg.until || done(self) {
                break;
            }
            report.rounds += 1;
            self.advance(now, cfg);
            let due: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].next_check_in <= now)
                .collect();
            let (first, second): (Vec<usize>, Vec<usize>) = due
                .into_iter()
                .partition(|&i| Self::frees_slot(&self.nodes[i]));
            self.phase(first, now, cfg, &mut report).await?;
            self.phase(second, now, cfg, &mut report).await?;
            self.check_limits(now, cfg, &mut report);
            // Jump to the next thing that happens.
            let next =
                self.nodes
                    .iter()
                    .flat_map(|n| {
                        let transition = match &n.pending {
                            Pending::Downloading { until, .. }
                            | Pending::Rebooting { until, .. } => Some(*until),
                            _ => None,
                        };
                        [Some(n.next_check_in), transition].into_iter().flatten()
                    })
                    .min()
                    .unwrap_or(now + TimeDelta::seconds(60));
            clock.set(next.max(now + TimeDelta::seconds(cfg.tick_secs.max(1))));
        }
        report.wall = started.elapsed();
        report.sim_secs = (clock.now() - sim_start).num_seconds();
        Ok(report)
    }

    /// Nodes running `version` (or newer).
    pub fn at_least(&self, version: &Version) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.booted.cmp_precedence(version).is_ge())
            .count()
    }

    /// Nodes with nothing pending and no unacknowledged event.
    pub fn quiet(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.pending == Pending::None && n.events.is_empty())
    }

    /// Distinct nodes that were told to update at least once.
    pub fn touched(&self) -> usize {
        self.nodes.iter().filter(|n| n.updates > 0).count()
    }

    /// Ids of nodes that failed.
    pub fn failed(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|n| n.failed)
            .map(|n| n.id.to_string())
            .collect()
    }
}
