//! Storage: one trait pair ([`Backend`], [`Conn`]) with two implementations — embedded SQLite
//! (one file, the default) and PostgreSQL (several server replicas behind a load balancer) —
//! and every query written once, in [`Tx`], in the SQL both understand.
//!
//! Owns: the schema and its versioned [`migrations`], transactions, and the typed reads and
//! writes the service needs. Does not own: any rule (the service and [`crate::policy`] decide;
//! this only stores).
//!
//! Decisions:
//! - **One SQL text for both.** Queries use `$1`-style parameters (PostgreSQL's); the SQLite
//!   backend rewrites them to `?1` (SQLite's numbered parameters, the same meaning). Only
//!   types both share are used: `BIGINT` (times are Unix seconds, booleans 0/1) and `TEXT`.
//! - **Limits inside transactions.** Every check-in that writes, FleetLock call and operator
//!   change is one transaction that first locks its pool ([`Tx::lock_pool`]): SQLite by
//!   `BEGIN IMMEDIATE` (one writer, across processes too), PostgreSQL by `SELECT … FOR
//!   UPDATE` on the pool's row, so two replicas never both admit a node into the last free
//!   slot: the second waits for the first to commit and then counts its admission. A
//!   steady-state check-in only reads ([`Tx::begin_read`]; `Service::check_in_with_token`).
//! - **Counters beside facts.** A rollout's touched and failed counts are columns updated in
//!   the same transaction as the progress rows they count (the hot path reads one row instead
//!   of counting thousands); the in-flight and unavailable counts depend on time and are
//!   counted from the few rows that can be in flight.

use std::fmt;

use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use basalt_rollout_wire::{NodeId, PoolName};

use crate::policy::{Plan, Progress, ReleaseRef, Rollout, RolloutState, Stage};

pub mod migrations;
pub mod postgres;
pub mod sqlite;

/// A storage failure. Each names the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite database {path}: {what}: {source}")]
    Sqlite {
        path: String,
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("PostgreSQL {what}: {source}")]
    Postgres {
        what: String,
        #[source]
        source: ::postgres::Error,
    },
    /// A stored value does not have the shape the schema promises.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was migrated by a newer build.
    #[error("the database schema is at version {found}, newer than this build's {known}: refusing to run against it")]
    SchemaTooNew { found: i64, known: i64 },
    /// A write would break a uniqueness rule (e.g. the same release sequence twice).
    #[error("{0}")]
    Conflict(String),
    /// A write was attempted in a transaction begun read-only (a bug in the caller).
    #[error("a write in a read-only transaction: {0}")]
    ReadOnly(String),
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which SQL dialect a connection speaks (only for the few statements that differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value passed to or read from SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} missing")))
    }
    /// An integer column.
    pub fn int(&self, i: usize) -> Result<i64> {
        match self.get(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: {other:?} is not an integer"
            ))),
        }
    }
    /// A nullable integer column.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
    /// A text column.
    pub fn text(&self, i: usize) -> Result<String> {
        match self.get(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: {other:?} is not text"
            ))),
        }
    }
    /// A nullable text column.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    fn uint(&self, i: usize) -> Result<u64> {
        u64::try_from(self.int(i)?)
            .map_err(|_| StoreError::Corrupt(format!("column {i} is negative")))
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>> {
        from_unix(self.int(i)?)
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>> {
        self.opt_int(i)?.map(from_unix).transpose()
    }
    fn version(&self, i: usize) -> Result<Version> {
        parse_version(&self.text(i)?)
    }
    fn opt_version(&self, i: usize) -> Result<Option<Version>> {
        self.opt_text(i)?.as_deref().map(parse_version).transpose()
    }
}

fn parse_version(text: &str) -> Result<Version> {
    Version::parse(text).map_err(|e| StoreError::Corrupt(format!("version {text:?}: {e}")))
}

fn from_unix(secs: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| StoreError::Corrupt(format!("time {secs}")))
}

/// Unix seconds of a time.
pub fn unix(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A database: SQLite file or PostgreSQL cluster.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Starts a transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `BEGIN`, read committed).
    fn begin(&self) -> Result<Box<dyn Conn + '_>>;
    /// Starts a transaction that only reads (SQLite: a deferred `BEGIN`, no write lock).
    fn begin_read(&self) -> Result<Box<dyn Conn + '_>> {
        self.begin()
    }
    /// For messages: the file or the server.
    fn describe(&self) -> String;
    /// Whether a read-only transaction may run on an async worker thread: it only reads
    /// what is in memory or the page cache and never waits for a writer (SQLite's readers).
    /// A client that blocks on the network (PostgreSQL's, which runs its own runtime) must
    /// not.
    fn reads_on_async_worker(&self) -> bool {
        false
    }
    /// Ends read transactions a backend keeps open between requests once they are stale
    /// (SQLite's readers, `sqlite::Snapshot`), so they do not hold back checkpoints while
    /// the server is idle. Called about once a second.
    fn end_idle_snapshots(&self) {}
}

/// A connection inside a transaction. Dropping it without [`Conn::commit`] rolls back.
pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    /// Runs a query; returns all rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs a query whose answer is the same for every node of a pool (the pool, its
    /// rollout, the channel's floors, the fleet counts): a backend may answer it from a cache
    /// that is exact for this transaction's snapshot (SQLite's readers, see
    /// `sqlite::QueryCache`). By default the same as [`Conn::query`].
    fn query_shared(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.query(sql, params)
    }
    /// Commits.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Kinds of credentials; each may call only its own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Operators: the `/api/v1` API and the metrics.
    Operator,
    /// One node: its check-ins and FleetLock calls, as itself only.
    Node,
    /// A pool's enrolment token: exchanged by a new node for its node token.
    Enroll,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Operator => "operator",
            TokenKind::Node => "node",
            TokenKind::Enroll => "enroll",
        }
    }
    fn parse(text: &str) -> Result<Self> {
        match text {
            "operator" => Ok(TokenKind::Operator),
            "node" => Ok(TokenKind::Node),
            "enroll" => Ok(TokenKind::Enroll),
            other => Err(StoreError::Corrupt(format!("token kind {other:?}"))),
        }
    }
}

/// A stored credential (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub kind: TokenKind,
    /// Operator name, node id, or pool (enrolment).
    pub subject: String,
    /// The pool of a node or enrolment token.
    pub pool: Option<String>,
    pub revoked: bool,
}

/// A node pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: PoolName,
    pub channel: String,
    pub arch: String,
    pub interval_secs: u64,
    pub pin: Option<Version>,
    /// FleetLock slots when no rollout sets max-unavailable.
    pub fleetlock_slots: u64,
    pub node_count: u64,
    pub created_at: DateTime<Utc>,
}

/// A node as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: NodeId,
    pub pool: PoolName,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    pub booted_version: Option<Version>,
    pub booted_slot: Option<String>,
    pub agent_state: Option<String>,
    pub last_event_seq: Option<u64>,
    pub pin: Option<Version>,
}

/// A published release of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRow {
    pub channel: String,
    pub arch: String,
    pub sequence: u64,
    pub version: Version,
    /// The signed envelope, exactly as published.
    pub envelope: String,
    pub sha256: String,
    pub published_at: DateTime<Utc>,
    pub floor: bool,
}

/// A rollout with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    pub pool: PoolName,
    pub rollout: Rollout,
    pub touched: u64,
    pub failed: u64,
    pub state_at: DateTime<Utc>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub node_id: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub kind: String,
    pub version: String,
    pub reason: Option<String>,
}

/// A node's progress row with its history columns (for status and charts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressRow {
    pub node_id: NodeId,
    pub progress: Progress,
    pub admitted_at: DateTime<Utc>,
    pub healthy_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

const POOL_COLUMNS: &str =
    "name, channel, arch, interval_secs, pin, fleetlock_slots, node_count, created_at";
const NODE_COLUMNS: &str = "id, pool, enrolled_at, last_seen, booted_version, booted_slot, agent_state, last_event_seq, pin";
const RELEASE_COLUMNS: &str =
    "channel, arch, sequence, version, envelope, sha256, published_at, floor";
const ROLLOUT_COLUMNS: &str = "id, pool, target_sequence, target_version, plan, started_at, state, reason, state_at, touched, failed, ack_failed, ack_touched";
const PROGRESS_COLUMNS: &str =
    "node_id, stage, since, hop_sequence, hop_version, reason, admitted_at, healthy_at, failed_at";

fn pool_row(r: &Row) -> Result<PoolRow> {
    Ok(PoolRow {
        name: PoolName::new(&r.text(0)?).map_err(StoreError::Corrupt)?,
        channel: r.text(1)?,
        arch: r.text(2)?,
        interval_secs: r.uint(3)?,
        pin: r.opt_version(4)?,
        fleetlock_slots: r.uint(5)?,
        node_count: r.uint(6)?,
        created_at: r.time(7)?,
    })
}

fn node_row(r: &Row) -> Result<NodeRow> {
    Ok(NodeRow {
        id: NodeId::new(&r.text(0)?).map_err(StoreError::Corrupt)?,
        pool: PoolName::new(&r.text(1)?).map_err(StoreError::Corrupt)?,
        enrolled_at: r.time(2)?,
        last_seen: r.opt_time(3)?,
        booted_version: r.opt_version(4)?,
        booted_slot: r.opt_text(5)?,
        agent_state: r.opt_text(6)?,
        last_event_seq: r.opt_int(7)?.map(|v| v as u64),
        pin: r.opt_version(8)?,
    })
}

fn release_row(r: &Row) -> Result<ReleaseRow> {
    Ok(ReleaseRow {
        channel: r.text(0)?,
        arch: r.text(1)?,
        sequence: r.uint(2)?,
        version: r.version(3)?,
        envelope: r.text(4)?,
        sha256: r.text(5)?,
        published_at: r.time(6)?,
        floor: r.int(7)? != 0,
    })
}

fn rollout_row(r: &Row) -> Result<RolloutRow> {
    let plan: Plan = serde_json::from_str(&r.text(4)?)
        .map_err(|e| StoreError::Corrupt(format!("rollout plan: {e}")))?;
    let state = r.text(6)?;
    Ok(RolloutRow {
        pool: PoolName::new(&r.text(1)?).map_err(StoreError::Corrupt)?,
        rollout: Rollout {
            id: r.int(0)?,
            target: ReleaseRef {
                sequence: r.uint(2)?,
                version: r.version(3)?,
            },
            plan,
            started_at: r.time(5)?,
            state: RolloutState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("rollout state {state:?}")))?,
            reason: r.opt_text(7)?,
            acknowledged_failed: r.uint(11)?,
            acknowledged_touched: r.uint(12)?,
        },
        state_at: r.time(8)?,
        touched: r.uint(9)?,
        failed: r.uint(10)?,
    })
}

fn progress_row(r: &Row) -> Result<ProgressRow> {
    let stage = r.text(1)?;
    Ok(ProgressRow {
        node_id: NodeId::new(&r.text(0)?).map_err(StoreError::Corrupt)?,
        progress: Progress {
            stage: Stage::parse(&stage)
                .ok_or_else(|| StoreError::Corrupt(format!("stage {stage:?}")))?,
            since: r.time(2)?,
            hop: ReleaseRef {
                sequence: r.uint(3)?,
                version: r.version(4)?,
            },
            reason: r.opt_text(5)?,
        },
        admitted_at: r.time(6)?,
        healthy_at: r.opt_time(7)?,
        failed_at: r.opt_time(8)?,
    })
}

fn one<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T>) -> Result<Option<T>> {
    rows.first().map(f).transpose()
}

fn all<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// A transaction with the typed operations. Dropped without [`Tx::commit`]: rolled back.
pub struct Tx<'a> {
    conn: Box<dyn Conn + 'a>,
    /// Begun by [`Tx::begin_read`]: every write is refused.
    read_only: bool,
}

impl fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("dialect", &self.conn.dialect())
            .finish()
    }
}

impl<'a> Tx<'a> {
    /// Begins a transaction on `backend`.
    pub fn begin(backend: &'a dyn Backend) -> Result<Self> {
        Ok(Tx {
            conn: backend.begin()?,
            read_only: false,
        })
    }

    /// Begins a read-only transaction on `backend`: its writes are refused
    /// ([`StoreError::ReadOnly`]) and it never takes the write lock.
    pub fn begin_read(backend: &'a dyn Backend) -> Result<Self> {
        Ok(Tx {
            conn: backend.begin_read()?,
            read_only: true,
        })
    }

    /// Whether this transaction was begun by [`Tx::begin_read`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Commits.
    pub fn commit(self) -> Result<()> {
        self.conn.commit()
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        if self.read_only {
            return Err(StoreError::ReadOnly(sql.to_owned()));
        }
        self.conn.execute(sql, params)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.conn.query(sql, params)
    }

    /// [`Conn::query_shared`]: for the pool-wide reads of the check-in's hot path only, never
    /// for a node's own rows (those would fill the cache with one entry per node).
    fn query_shared(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.conn.query_shared(sql, params)
    }

    /// Whether this transaction already excludes every other writer (a SQLite write
    /// transaction: `BEGIN IMMEDIATE`), so [`Tx::lock_pool`] adds nothing. A read-only
    /// transaction excludes nothing.
    pub fn locks_on_begin(&self) -> bool {
        !self.read_only && self.conn.dialect() == Dialect::Sqlite
    }

    /// Serialises this transaction against every other one touching `pool` (see the module
    /// docs). Returns false when the pool does not exist.
    pub fn lock_pool(&mut self, pool: &PoolName) -> Result<bool> {
        let sql = match self.conn.dialect() {
            Dialect::Postgres => "SELECT name FROM pools WHERE name = $1 FOR UPDATE",
            Dialect::Sqlite => "SELECT name FROM pools WHERE name = $1",
        };
        Ok(!self.query(sql, &[pool.as_str().into()])?.is_empty())
    }

    // --- credentials ---

    pub fn token(&mut self, hash: &str) -> Result<Option<TokenRow>> {
        let rows = self.query(
            "SELECT kind, subject, pool, revoked_at FROM tokens WHERE hash = $1",
            &[hash.into()],
        )?;
        one(rows, |r| {
            Ok(TokenRow {
                kind: TokenKind::parse(&r.text(0)?)?,
                subject: r.text(1)?,
                pool: r.opt_text(2)?,
                revoked: r.opt_int(3)?.is_some(),
            })
        })
    }

    pub fn insert_token(&mut self, hash: &str, row: &TokenRow, now: DateTime<Utc>) -> Result<()> {
        self.exec(
            "INSERT INTO tokens (hash, kind, subject, pool, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                hash.into(),
                row.kind.as_str().into(),
                row.subject.as_str().into(),
                row.pool.clone().into(),
                unix(now).into(),
            ],
        )?;
        Ok(())
    }

    /// Revokes every token of `kind` for `subject`; returns how many.
    pub fn revoke_tokens(
        &mut self,
        kind: TokenKind,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        self.exec(
            "UPDATE tokens SET revoked_at = $1 WHERE kind = $2 AND subject = $3 AND revoked_at IS NULL",
            &[unix(now).into(), kind.as_str().into(), subject.into()],
        )
    }

    // --- pools ---

    pub fn pool(&mut self, name: &PoolName) -> Result<Option<PoolRow>> {
        let rows = self.query_shared(
            &format!("SELECT {POOL_COLUMNS} FROM pools WHERE name = $1"),
            &[name.as_str().into()],
        )?;
        one(rows, pool_row)
    }

    pub fn pools(&mut self) -> Result<Vec<PoolRow>> {
        let rows = self.query(
            &format!("SELECT {POOL_COLUMNS} FROM pools ORDER BY name"),
            &[],
        )?;
        all(rows, pool_row)
    }

    pub fn insert_pool(&mut self, pool: &PoolRow) -> Result<()> {
        if self.pool(&pool.name)?.is_some() {
            return Err(StoreError::Conflict(format!("pool {} exists", pool.name)));
        }
        self.exec(
            &format!("INSERT INTO pools ({POOL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            &[
                pool.name.as_str().into(),
                pool.channel.as_str().into(),
                pool.arch.as_str().into(),
                int(pool.interval_secs),
                pool.pin.as_ref().map(ToString::to_string).into(),
                int(pool.fleetlock_slots),
                int(pool.node_count),
                unix(pool.created_at).into(),
            ],
        )?;
        Ok(())
    }

    pub fn set_pool_pin(&mut self, name: &PoolName, pin: Option<&Version>) -> Result<()> {
        self.exec(
            "UPDATE pools SET pin = $1 WHERE name = $2",
            &[pin.map(ToString::to_string).into(), name.as_str().into()],
        )?;
        Ok(())
    }

    // --- nodes ---

    pub fn node(&mut self, id: &NodeId) -> Result<Option<NodeRow>> {
        let rows = self.query(
            &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"),
            &[id.as_str().into()],
        )?;
        one(rows, node_row)
    }

    pub fn nodes(&mut self, pool: &PoolName) -> Result<Vec<NodeRow>> {
        let rows = self.query(
            &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE pool = $1 ORDER BY id"),
            &[pool.as_str().into()],
        )?;
        all(rows, node_row)
    }

    /// Adds a node to its pool (and the pool's count).
    pub fn insert_node(&mut self, id: &NodeId, pool: &PoolName, now: DateTime<Utc>) -> Result<()> {
        self.exec(
            "INSERT INTO nodes (id, pool, enrolled_at) VALUES ($1, $2, $3)",
            &[id.as_str().into(), pool.as_str().into(), unix(now).into()],
        )?;
        self.exec(
            "UPDATE pools SET node_count = node_count + 1 WHERE name = $1",
            &[pool.as_str().into()],
        )?;
        Ok(())
    }

    /// Records what a check-in reported.
    pub fn update_node_report(
        &mut self,
        id: &NodeId,
        now: DateTime<Utc>,
        booted: &Version,
        slot: &str,
        state: &str,
        last_event_seq: Option<u64>,
    ) -> Result<()> {
        self.exec(
            "UPDATE nodes SET last_seen = $1, booted_version = $2, booted_slot = $3, agent_state = $4, last_event_seq = $5 WHERE id = $6",
            &[
                unix(now).into(),
                booted.to_string().into(),
                slot.into(),
                state.into(),
                last_event_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)).into(),
                id.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// Moves a node's last-seen time forward to `at` (never back: a buffered time older
    /// than one a check-in wrote meanwhile changes nothing). Returns the rows changed.
    pub fn touch_last_seen(&mut self, id: &str, at: DateTime<Utc>) -> Result<u64> {
        self.exec(
            "UPDATE nodes SET last_seen = $1 WHERE id = $2 AND (last_seen IS NULL OR last_seen < $1)",
            &[unix(at).into(), id.into()],
        )
    }

    pub fn set_node_pin(&mut self, id: &NodeId, pin: Option<&Version>) -> Result<()> {
        self.exec(
            "UPDATE nodes SET pin = $1 WHERE id = $2",
            &[pin.map(ToString::to_string).into(), id.as_str().into()],
        )?;
        Ok(())
    }

    // --- events ---

    pub fn insert_event(&mut self, e: &EventRow) -> Result<()> {
        self.exec(
            "INSERT INTO events (node_id, seq, at, received_at, kind, version, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                e.node_id.as_str().into(),
                int(e.seq),
                unix(e.at).into(),
                unix(e.received_at).into(),
                e.kind.as_str().into(),
                e.version.as_str().into(),
                e.reason.clone().into(),
            ],
        )?;
        Ok(())
    }

    /// The newest events of a pool's nodes, newest first.
    pub fn recent_events(&mut self, pool: &PoolName, limit: u64) -> Result<Vec<EventRow>> {
        let rows = self.query(
            "SELECT e.node_id, e.seq, e.at, e.received_at, e.kind, e.version, e.reason FROM events e JOIN nodes n ON n.id = e.node_id WHERE n.pool = $1 ORDER BY e.received_at DESC, e.node_id, e.seq DESC LIMIT $2",
            &[pool.as_str().into(), int(limit)],
        )?;
        all(rows, |r| {
            Ok(EventRow {
                node_id: r.text(0)?,
                seq: r.uint(1)?,
                at: r.time(2)?,
                received_at: r.time(3)?,
                kind: r.text(4)?,
                version: r.text(5)?,
                reason: r.opt_text(6)?,
            })
        })
    }

    // --- releases ---

    pub fn insert_release(&mut self, rel: &ReleaseRow) -> Result<()> {
        if self
            .release(&rel.channel, &rel.arch, rel.sequence)?
            .is_some()
        {
            return Err(StoreError::Conflict(format!(
                "channel {}/{} already has a release with sequence {}",
                rel.channel, rel.arch, rel.sequence
            )));
        }
        self.exec(
            &format!(
                "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                rel.channel.as_str().into(),
                rel.arch.as_str().into(),
                int(rel.sequence),
                rel.version.to_string().into(),
                rel.envelope.as_str().into(),
                rel.sha256.as_str().into(),
                unix(rel.published_at).into(),
                i64::from(rel.floor).into(),
            ],
        )?;
        Ok(())
    }

    pub fn release(
        &mut self,
        channel: &str,
        arch: &str,
        sequence: u64,
    ) -> Result<Option<ReleaseRow>> {
        let rows = self.query(
            &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE channel = $1 AND arch = $2 AND sequence = $3"),
            &[channel.into(), arch.into(), int(sequence)],
        )?;
        one(rows, release_row)
    }

    /// Every release of a channel, by sequence.
    pub fn releases(&mut self, channel: &str, arch: &str) -> Result<Vec<ReleaseRow>> {
        let rows = self.query(
            &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE channel = $1 AND arch = $2 ORDER BY sequence"),
            &[channel.into(), arch.into()],
        )?;
        all(rows, release_row)
    }

    /// The floors of a channel (version and sequence only: the hot path).
    pub fn floors(&mut self, channel: &str, arch: &str) -> Result<Vec<ReleaseRef>> {
        let rows = self.query_shared(
            "SELECT sequence, version FROM releases WHERE channel = $1 AND arch = $2 AND floor = 1 ORDER BY sequence",
            &[channel.into(), arch.into()],
        )?;
        all(rows, |r| {
            Ok(ReleaseRef {
                sequence: r.uint(0)?,
                version: r.version(1)?,
            })
        })
    }

    pub fn set_floor(
        &mut self,
        channel: &str,
        arch: &str,
        sequence: u64,
        floor: bool,
    ) -> Result<u64> {
        self.exec(
            "UPDATE releases SET floor = $1 WHERE channel = $2 AND arch = $3 AND sequence = $4",
            &[
                i64::from(floor).into(),
                channel.into(),
                arch.into(),
                int(sequence),
            ],
        )
    }

    // --- rollouts ---

    /// The pool's newest rollout, in any state.
    pub fn current_rollout(&mut self, pool: &PoolName) -> Result<Option<RolloutRow>> {
        let rows = self.query_shared(
            &format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE pool = $1 ORDER BY id DESC LIMIT 1"
            ),
            &[pool.as_str().into()],
        )?;
        one(rows, rollout_row)
    }

    /// Every rollout of a pool, newest first.
    pub fn rollouts(&mut self, pool: &PoolName) -> Result<Vec<RolloutRow>> {
        let rows = self.query(
            &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE pool = $1 ORDER BY id DESC"),
            &[pool.as_str().into()],
        )?;
        all(rows, rollout_row)
    }

    /// Stores a new rollout; returns its id (from a counter row, atomic in both databases).
    pub fn insert_rollout(
        &mut self,
        pool: &PoolName,
        target: &ReleaseRef,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let id = self
            .query(
                "UPDATE meta SET value = value + 1 WHERE key = 'rollout_id' RETURNING value",
                &[],
            )?
            .first()
            .map(|r| r.int(0))
            .transpose()?
            .ok_or_else(|| StoreError::Corrupt("meta rollout_id missing".into()))?;
        let plan = serde_json::to_string(plan)
            .map_err(|e| StoreError::Corrupt(format!("encoding a plan: {e}")))?;
        self.exec(
            &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, 'active', NULL, $6, 0, 0, 0, 0)"),
            &[
                id.into(),
                pool.as_str().into(),
                int(target.sequence),
                target.version.to_string().into(),
                plan.into(),
                unix(now).into(),
            ],
        )?;
        Ok(id)
    }

    pub fn set_rollout_state(
        &mut self,
        id: i64,
        state: RolloutState,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.exec(
            "UPDATE rollouts SET state = $1, reason = $2, state_at = $3 WHERE id = $4",
            &[
                state.as_str().into(),
                reason.map(str::to_owned).into(),
                unix(now).into(),
                id.into(),
            ],
        )?;
        Ok(())
    }

    /// Acknowledges the failures so far (on resume after a halt).
    pub fn acknowledge(&mut self, id: i64) -> Result<()> {
        self.exec(
            "UPDATE rollouts SET ack_failed = failed, ack_touched = touched WHERE id = $1",
            &[id.into()],
        )?;
        Ok(())
    }

    fn bump(&mut self, id: i64, touched: i64, failed: i64) -> Result<()> {
        self.exec(
            "UPDATE rollouts SET touched = touched + $1, failed = failed + $2 WHERE id = $3",
            &[touched.into(), failed.into(), id.into()],
        )?;
        Ok(())
    }

    // --- progress ---

    pub fn progress(&mut self, rollout: i64, node: &NodeId) -> Result<Option<Progress>> {
        let rows = self.query(
            &format!(
                "SELECT {PROGRESS_COLUMNS} FROM progress WHERE rollout_id = $1 AND node_id = $2"
            ),
            &[rollout.into(), node.as_str().into()],
        )?;
        Ok(one(rows, progress_row)?.map(|r| r.progress))
    }

    /// Rows whose stage may have timed out: admitted since `admitted_cutoff` or earlier,
    /// rebooting since `rebooting_cutoff` or earlier (the caller confirms each with
    /// `policy::timed_out`; normally none).
    pub fn timeout_candidates(
        &mut self,
        rollout: i64,
        admitted_cutoff: DateTime<Utc>,
        rebooting_cutoff: DateTime<Utc>,
    ) -> Result<Vec<ProgressRow>> {
        let rows = self.query_shared(
            &format!("SELECT {PROGRESS_COLUMNS} FROM progress WHERE rollout_id = $1 AND ((stage = 'admitted' AND since <= $2) OR (stage = 'rebooting' AND since <= $3))"),
            &[rollout.into(), unix(admitted_cutoff).into(), unix(rebooting_cutoff).into()],
        )?;
        all(rows, progress_row)
    }

    /// Nodes holding an in-flight slot: admitted, staged, rebooting, or healthy since after
    /// `soak_cutoff` — the indexed count of `policy::occupies_slot` (a test checks they agree).
    pub fn count_in_flight(&mut self, rollout: i64, soak_cutoff: DateTime<Utc>) -> Result<u64> {
        let rows = self.query_shared(
            "SELECT (SELECT COUNT(*) FROM progress WHERE rollout_id = $1 AND stage IN ('admitted', 'staged', 'rebooting')) \
             + (SELECT COUNT(*) FROM progress WHERE rollout_id = $1 AND stage = 'healthy' AND since > $2)",
            &[rollout.into(), unix(soak_cutoff).into()],
        )?;
        rows.first()
            .map(|r| r.uint(0))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Nodes unavailable in `group`: holders of its FleetLock semaphore, plus nodes of
    /// `rollout` granted a reboot that hold no slot (one that said steady-state before its
    /// healthy report still counts until that report).
    pub fn count_unavailable(&mut self, group: &str, rollout: Option<i64>) -> Result<u64> {
        let rows = self.query_shared(
            "SELECT (SELECT COUNT(*) FROM locks WHERE grp = $1) \
             + (SELECT COUNT(*) FROM progress p WHERE p.rollout_id = $2 AND p.stage = 'rebooting' \
                AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.grp = $1 AND l.holder = p.node_id))",
            &[group.into(), rollout.unwrap_or(-1).into()],
        )?;
        rows.first()
            .map(|r| r.uint(0))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Every progress row of a rollout.
    pub fn all_progress(&mut self, rollout: i64) -> Result<Vec<ProgressRow>> {
        let rows = self.query(
            &format!(
                "SELECT {PROGRESS_COLUMNS} FROM progress WHERE rollout_id = $1 ORDER BY node_id"
            ),
            &[rollout.into()],
        )?;
        all(rows, progress_row)
    }

    /// Admits a node (first hop: touched + 1; a later hop: no new touch).
    pub fn admit(
        &mut self,
        rollout: i64,
        node: &NodeId,
        hop: &ReleaseRef,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let existed = self.progress(rollout, node)?.is_some();
        self.exec(
            "INSERT INTO progress (rollout_id, node_id, stage, since, hop_sequence, hop_version, reason, admitted_at) VALUES ($1, $2, 'admitted', $3, $4, $5, NULL, $3) \
             ON CONFLICT (rollout_id, node_id) DO UPDATE SET stage = 'admitted', since = $3, hop_sequence = $4, hop_version = $5, reason = NULL",
            &[rollout.into(), node.as_str().into(), unix(now).into(), int(hop.sequence), hop.version.to_string().into()],
        )?;
        if !existed {
            self.bump(rollout, 1, 0)?;
        }
        Ok(())
    }

    /// Moves a node to `stage` (failed: counted; healthy/failed: history time set).
    pub fn set_stage(
        &mut self,
        rollout: i64,
        node: &NodeId,
        from: Stage,
        stage: Stage,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let column = match stage {
            Stage::Healthy => ", healthy_at = $1",
            Stage::Failed => ", failed_at = $1",
            _ => "",
        };
        self.exec(
            &format!("UPDATE progress SET stage = $2, since = $1, reason = $3{column} WHERE rollout_id = $4 AND node_id = $5"),
            &[
                unix(now).into(),
                stage.as_str().into(),
                reason.map(str::to_owned).into(),
                rollout.into(),
                node.as_str().into(),
            ],
        )?;
        match (from == Stage::Failed, stage == Stage::Failed) {
            (false, true) => self.bump(rollout, 0, 1),
            (true, false) => self.bump(rollout, 0, -1),
            _ => Ok(()),
        }
    }

    // --- FleetLock semaphore ---

    pub fn lock_holders(&mut self, group: &str) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = self.query(
            "SELECT holder, acquired_at FROM locks WHERE grp = $1 ORDER BY acquired_at, holder",
            &[group.into()],
        )?;
        all(rows, |r| Ok((r.text(0)?, r.time(1)?)))
    }

    pub fn lock_count(&mut self, group: &str) -> Result<u64> {
        let rows = self.query("SELECT COUNT(*) FROM locks WHERE grp = $1", &[group.into()])?;
        rows.first()
            .map(|r| r.uint(0))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn holds_lock(&mut self, group: &str, holder: &str) -> Result<bool> {
        Ok(!self
            .query(
                "SELECT holder FROM locks WHERE grp = $1 AND holder = $2",
                &[group.into(), holder.into()],
            )?
            .is_empty())
    }

    pub fn take_lock(&mut self, group: &str, holder: &str, now: DateTime<Utc>) -> Result<()> {
        self.exec(
            "INSERT INTO locks (grp, holder, acquired_at) VALUES ($1, $2, $3) ON CONFLICT (grp, holder) DO NOTHING",
            &[group.into(), holder.into(), unix(now).into()],
        )?;
        Ok(())
    }

    /// Returns whether a slot was held.
    pub fn release_lock(&mut self, group: &str, holder: &str) -> Result<bool> {
        Ok(self.exec(
            "DELETE FROM locks WHERE grp = $1 AND holder = $2",
            &[group.into(), holder.into()],
        )? > 0)
    }
}
