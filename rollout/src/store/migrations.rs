//! Versioned schema migrations, applied in order inside one transaction at start-up and
//! recorded in `schema_migrations`. A database migrated by a newer build is refused
//! ([`super::StoreError::SchemaTooNew`]) rather than written with an older idea of the schema.
//! Two replicas starting at once serialise on the migration (SQLite: `BEGIN IMMEDIATE`;
//! PostgreSQL: a transaction-scoped advisory lock), so each step runs exactly once.
//!
//! Never edit a released migration; add the next one.

use basalt_manifest::chrono::{DateTime, Utc};

use super::{unix, Backend, Dialect, Result, StoreError, Tx, Value};

/// `(version, SQL)`: statements separated by `;` at line ends.
pub const MIGRATIONS: &[(i64, &str)] = &[(1, V1)];

/// The schema version this build reads and writes.
pub const LATEST: i64 = 1;

const V1: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('rollout_id', 0);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    pool TEXT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_subject ON tokens (kind, subject);
CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    arch TEXT NOT NULL,
    interval_secs BIGINT NOT NULL,
    pin TEXT,
    fleetlock_slots BIGINT NOT NULL,
    node_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL REFERENCES pools (name),
    enrolled_at BIGINT NOT NULL,
    last_seen BIGINT,
    booted_version TEXT,
    booted_slot TEXT,
    agent_state TEXT,
    last_event_seq BIGINT,
    pin TEXT
);
CREATE INDEX nodes_pool ON nodes (pool);
CREATE TABLE events (
    node_id TEXT NOT NULL REFERENCES nodes (id),
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (node_id, seq)
);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE releases (
    channel TEXT NOT NULL,
    arch TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    version TEXT NOT NULL,
    envelope TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    floor BIGINT NOT NULL,
    PRIMARY KEY (channel, arch, sequence)
);
CREATE TABLE rollouts (
    id BIGINT PRIMARY KEY,
    pool TEXT NOT NULL REFERENCES pools (name),
    target_sequence BIGINT NOT NULL,
    target_version TEXT NOT NULL,
    plan TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    state_at BIGINT NOT NULL,
    touched BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    ack_failed BIGINT NOT NULL,
    ack_touched BIGINT NOT NULL
);
CREATE INDEX rollouts_pool ON rollouts (pool, id);
CREATE TABLE progress (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    node_id TEXT NOT NULL REFERENCES nodes (id),
    stage TEXT NOT NULL,
    since BIGINT NOT NULL,
    hop_sequence BIGINT NOT NULL,
    hop_version TEXT NOT NULL,
    reason TEXT,
    admitted_at BIGINT NOT NULL,
    healthy_at BIGINT,
    failed_at BIGINT,
    PRIMARY KEY (rollout_id, node_id)
);
CREATE INDEX progress_stage ON progress (rollout_id, stage, since);
CREATE TABLE locks (
    grp TEXT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    PRIMARY KEY (grp, holder)
)
";

/// Brings the schema to [`LATEST`]; returns the version it was at before.
pub fn migrate(backend: &dyn Backend, now: DateTime<Utc>) -> Result<i64> {
    let mut tx = Tx::begin(backend)?;
    if tx.conn.dialect() == Dialect::Postgres {
        // Any constant: replicas starting together migrate one after the other.
        tx.query("SELECT pg_advisory_xact_lock(4242424242)", &[])?;
    }
    tx.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        &[],
    )?;
    let found = tx
        .query(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    if found > LATEST {
        return Err(StoreError::SchemaTooNew {
            found,
            known: LATEST,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            tx.exec(statement, &[])?;
        }
        tx.exec(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[Value::Int(*version), unix(now).into()],
        )?;
        tracing::info!(version, backend = %backend.describe(), "schema migrated");
    }
    tx.commit()?;
    Ok(found)
}
