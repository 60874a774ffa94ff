//! The embedded SQLite backend: one file, nothing to install (`basalt-rollout serve --db
//! fleet.db`). WAL journal, `synchronous=NORMAL` (a committed check-in survives a crash of the
//! server; a power cut may lose the last few, which nodes re-send: events are idempotent),
//! foreign keys on, a busy timeout so a second process on the same file waits instead of
//! failing. One writing connection behind a mutex (SQLite has one writer anyway) and, for a
//! database file, a few reading connections: in WAL mode readers see the last commit and
//! neither wait for the writer nor for each other, so read-only transactions (the steady
//! state check-in, status, metrics) run side by side on several cores.
//!
//! Each reader keeps a [`QueryCache`] of the pool-wide reads (`Conn::query_shared`), exact
//! for the snapshot it was filled from: the steady-state check-in then runs its few per-node
//! queries only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::{Backend, Conn, Dialect, Result, Row, StoreError, Value};

/// A SQLite database file (or `:memory:`).
#[derive(Debug)]
pub struct Sqlite {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Read-only connections ([`READERS`] of them; none for `:memory:`, whose every
    /// connection would be a database of its own), each with its cache.
    readers: Vec<Mutex<Reader>>,
    /// Where the next reader search starts (spreads the readers' use).
    next_reader: AtomicUsize,
    /// Commits made through this server's writer (see [`Snapshot`]).
    commits: AtomicU64,
}

/// Reading connections of a database file: enough for this server's cores to read at once;
/// a request finding them all busy waits for one.
pub const READERS: usize = 4;

/// A reading connection, its cache, and the read transaction it keeps open.
#[derive(Debug)]
struct Reader {
    conn: Connection,
    cache: QueryCache,
    snapshot: Option<Snapshot>,
}

/// A read transaction a reader keeps open between requests, reused while it is younger than
/// [`SNAPSHOT_REUSE`] and this server's writer has committed nothing since it began.
///
/// Why: beginning and ending a read transaction takes and drops SQLite's file locks (fcntl
/// and mutexes shared by every connection to the file), and was the largest part of a
/// steady-state check-in's cost after its queries were cached (measured: ≈ 13 % of the
/// server's CPU time in lock calls and waits). What it costs: an answer may come from a
/// snapshot up to [`SNAPSHOT_REUSE`] old — the answer a check-in sent that much earlier
/// would have got, which nodes cannot tell apart — but never older than this server's own
/// last commit: a request that follows a write the server acknowledged (an operator's
/// `pool upgrade`, a node's event) sees it. Commits by another process on the file (the
/// CLI's bootstrap commands) are seen within [`SNAPSHOT_REUSE`]. A snapshot held open keeps
/// the WAL from being checkpointed past it, so idle readers' snapshots are ended by
/// [`Backend::end_idle_snapshots`] (the last-seen flusher, every second).
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    began: Instant,
    /// [`Sqlite::commits`] read before the transaction began.
    commits: u64,
}

/// How long a reader reuses its read transaction (see [`Snapshot`]).
pub const SNAPSHOT_REUSE: Duration = Duration::from_millis(20);

/// Answers of `query_shared` on one reading connection, valid for one value of its
/// `PRAGMA data_version`.
///
/// Why this is exact: a read transaction in WAL mode sees one snapshot from its first read to
/// its end. `PRAGMA data_version`, read as the transaction's first statement, starts that
/// snapshot and names it: the value changes exactly when another connection has committed
/// since this connection last looked (readers never write, so every commit is another
/// connection's, this server's writer or any other process on the file). Equal versions mean
/// equal database contents, and the cached queries depend on nothing but the database and
/// their parameters (times are parameters, never `now()` in SQL). So a cached answer is the
/// one the query would give in this snapshot. The writer commits at least every second while
/// nodes check in (the batched last-seen times), which empties the cache; between commits the
/// pool's rows, rollout and counts are read once per reader instead of once per check-in.
#[derive(Debug, Default)]
struct QueryCache {
    version: Option<i64>,
    entries: HashMap<(String, Vec<Value>), Vec<Row>>,
    /// Queries this cache could not answer (for tests).
    misses: u64,
}

/// Entries a reader's cache holds before it starts over (one pool's check-in uses six; a
/// server with many pools and a rollout per pool stays well below).
const CACHE_ENTRIES: usize = 512;

impl QueryCache {
    /// Makes the cache the one of snapshot `version`.
    fn at(&mut self, version: i64) {
        if self.version != Some(version) {
            self.entries.clear();
            self.version = Some(version);
        }
    }

    fn get(&self, sql: &str, params: &[Value]) -> Option<&Vec<Row>> {
        // The key is built only to look up: cheaper than the query it saves by far.
        self.entries.get(&(sql.to_owned(), params.to_vec()))
    }

    fn put(&mut self, sql: &str, params: &[Value], rows: Vec<Row>) {
        self.misses += 1;
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert((sql.to_owned(), params.to_vec()), rows);
    }
}

fn err<'a>(path: &'a Path, what: &'a str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        what: what.to_owned(),
        source,
    }
}

/// Like [`err`], for a statement (the message is only built on failure).
fn stmt_err<'a>(
    path: &'a Path,
    step: &'static str,
    sql: &'a str,
) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        what: format!("{step} {sql}"),
        source,
    }
}

impl Sqlite {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(err(path, "opening"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(err(path, "setting the busy timeout"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(err(path, "setting pragmas"))?;
        let in_memory = path.as_os_str().is_empty()
            || path
                .to_str()
                .is_some_and(|p| p == ":memory:" || p.contains("mode=memory"));
        let mut readers = Vec::new();
        if !in_memory {
            for _ in 0..READERS {
                let reader = Connection::open(path).map_err(err(path, "opening a reader"))?;
                reader
                    .busy_timeout(Duration::from_secs(10))
                    .map_err(err(path, "setting a reader's busy timeout"))?;
                reader
                    // Pages read through a shared mapping instead of copied into each
                    // reader's own cache by read(2).
                    .execute_batch(
                        "PRAGMA query_only = ON; PRAGMA foreign_keys = ON; PRAGMA mmap_size = 1073741824;",
                    )
                    .map_err(err(path, "setting a reader's pragmas"))?;
                readers.push(Mutex::new(Reader {
                    conn: reader,
                    cache: QueryCache::default(),
                    snapshot: None,
                }));
            }
        }
        Ok(Sqlite {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
        })
    }
}

struct SqliteConn<'a> {
    path: &'a Path,
    conn: Held<'a>,
    done: bool,
    /// A statement failed: the transaction is ended on drop, never reused.
    failed: bool,
    /// The writer's commit counter, bumped after a commit.
    commits: &'a AtomicU64,
}

/// The connection a transaction holds: the writer, or a reader with its cache.
enum Held<'a> {
    Writer(MutexGuard<'a, Connection>),
    Reader(MutexGuard<'a, Reader>),
}

impl Held<'_> {
    fn conn(&self) -> &Connection {
        match self {
            Held::Writer(conn) => conn,
            Held::Reader(reader) => &reader.conn,
        }
    }
}

fn sql(text: &str) -> String {
    text.replace('$', "?")
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(v) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, text: &str, params: &[Value]) -> Result<u64> {
        let out = self
            .conn
            .conn()
            .prepare_cached(&sql(text))
            .map_err(stmt_err(self.path, "preparing", text))
            .and_then(|mut statement| {
                statement
                    .execute(rusqlite::params_from_iter(params.iter()))
                    .map_err(stmt_err(self.path, "running", text))
            });
        self.failed |= out.is_err();
        Ok(out? as u64)
    }

    fn query(&mut self, text: &str, params: &[Value]) -> Result<Vec<Row>> {
        let out = query(self.conn.conn(), self.path, text, params);
        self.failed |= out.is_err();
        out
    }

    fn query_shared(&mut self, text: &str, params: &[Value]) -> Result<Vec<Row>> {
        let Held::Reader(reader) = &mut self.conn else {
            return self.query(text, params);
        };
        if let Some(rows) = reader.cache.get(text, params) {
            return Ok(rows.clone());
        }
        let rows = query(&reader.conn, self.path, text, params);
        let Ok(rows) = rows else {
            self.failed = true;
            return rows;
        };
        reader.cache.put(text, params, rows.clone());
        Ok(rows)
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        match &self.conn {
            // A read transaction has nothing to commit: its snapshot is kept for reuse.
            Held::Reader(_) => {}
            Held::Writer(conn) => {
                conn.execute_batch("COMMIT")
                    .map_err(err(self.path, "committing"))?;
                self.commits.fetch_add(1, Ordering::Release);
            }
        }
        self.done = true;
        Ok(())
    }
}

/// Runs a query on `conn`; returns all rows.
fn query(conn: &Connection, path: &Path, text: &str, params: &[Value]) -> Result<Vec<Row>> {
    {
        let mut statement =
            conn.prepare_cached(&sql(text))
                .map_err(stmt_err(path, "preparing", text))?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(stmt_err(path, "running", text))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(stmt_err(path, "reading", text))? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(
                    match row.get_ref(i).map_err(err(path, "reading a column"))? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Real(_) | ValueRef::Blob(_) => {
                            return Err(StoreError::Corrupt(format!(
                                "{text}: column {i} has an unexpected type"
                            )))
                        }
                    },
                );
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

impl Drop for SqliteConn<'_> {
    fn drop(&mut self) {
        match &mut self.conn {
            // A reader keeps its snapshot for the next request (see `Snapshot`), unless a
            // statement failed.
            Held::Reader(reader) if !self.failed => {}
            Held::Reader(reader) => {
                reader.snapshot = None;
                end_read(&reader.conn, self.path);
            }
            Held::Writer(conn) => {
                if !self.done {
                    if let Err(e) = conn.execute_batch("ROLLBACK") {
                        tracing::warn!(path = %self.path.display(), error = %e, "rollback failed");
                    }
                }
            }
        }
    }
}

/// Ends the read transaction open on `conn`, if any.
fn end_read(conn: &Connection, path: &Path) {
    if conn.is_autocommit() {
        return;
    }
    let done = conn
        .prepare_cached("ROLLBACK")
        .and_then(|mut statement| statement.execute([]));
    if let Err(e) = done {
        tracing::warn!(path = %path.display(), error = %e, "ending a read transaction failed");
    }
}

impl Sqlite {
    fn start(&self, statement: &str) -> Result<Box<dyn Conn + '_>> {
        // A panic elsewhere while holding the lock leaves a connection that is still
        // consistent (the transaction was rolled back by Drop): keep using it.
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute_batch(statement)
            .map_err(err(&self.path, "beginning a transaction"))?;
        Ok(Box::new(SqliteConn {
            path: &self.path,
            conn: Held::Writer(conn),
            done: false,
            failed: false,
            commits: &self.commits,
        }))
    }

    /// A free reader if there is one, else (all busy) the next one in turn, waited for.
    fn reader(&self) -> Option<MutexGuard<'_, Reader>> {
        let n = self.readers.len();
        if n == 0 {
            return None;
        }
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.readers[(first + i) % n].try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        Some(
            self.readers[first]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// A read transaction on `reader`: the one it keeps open while that is still fresh (see
    /// [`Snapshot`]), else a new one whose first statement reads `PRAGMA data_version`,
    /// which starts the snapshot and tells whether the reader's cache still describes it.
    fn start_read<'a>(&'a self, mut reader: MutexGuard<'a, Reader>) -> Result<Box<dyn Conn + 'a>> {
        let commits = self.commits.load(Ordering::Acquire);
        let fresh = reader
            .snapshot
            .is_some_and(|s| s.commits == commits && s.began.elapsed() < SNAPSHOT_REUSE)
            && !reader.conn.is_autocommit();
        if !fresh {
            reader.snapshot = None;
            end_read(&reader.conn, &self.path);
            let version = begin_snapshot(&reader.conn)
                .map_err(err(&self.path, "beginning a read transaction"))?;
            reader.cache.at(version);
            reader.snapshot = Some(Snapshot {
                began: Instant::now(),
                commits,
            });
        }
        Ok(Box::new(SqliteConn {
            path: &self.path,
            conn: Held::Reader(reader),
            done: false,
            failed: false,
            commits: &self.commits,
        }))
    }
}

/// `BEGIN` and `PRAGMA data_version` (which starts the snapshot); on failure the
/// transaction is ended again.
fn begin_snapshot(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("BEGIN")?.execute([])?;
    let version = conn
        .prepare_cached("PRAGMA data_version")
        .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)));
    if version.is_err() {
        let _ = conn
            .prepare_cached("ROLLBACK")
            .and_then(|mut s| s.execute([]));
    }
    version
}

impl Backend for Sqlite {
    fn begin_read(&self) -> Result<Box<dyn Conn + '_>> {
        match self.reader() {
            Some(reader) => self.start_read(reader),
            None => self.start("BEGIN"),
        }
    }

    fn begin(&self) -> Result<Box<dyn Conn + '_>> {
        self.start("BEGIN IMMEDIATE")
    }

    fn reads_on_async_worker(&self) -> bool {
        !self.readers.is_empty()
    }

    fn end_idle_snapshots(&self) {
        for reader in &self.readers {
            // A reader in use is not idle.
            if let Ok(mut reader) = reader.try_lock() {
                if reader
                    .snapshot
                    .is_some_and(|s| s.began.elapsed() >= SNAPSHOT_REUSE)
                {
                    reader.snapshot = None;
                    end_read(&reader.conn, &self.path);
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = "SELECT name, size FROM things WHERE name = $1";

    fn size(backend: &Sqlite) -> i64 {
        let mut tx = backend.begin_read().unwrap();
        let rows = tx.query_shared(SHARED, &["a".into()]).unwrap();
        rows[0].int(1).unwrap()
    }

    fn misses(backend: &Sqlite) -> u64 {
        backend
            .readers
            .iter()
            .map(|r| r.lock().unwrap().cache.misses)
            .sum()
    }

    /// A database file in `dir` with table `things`, and row ('a', 1) if `row`.
    fn things(dir: &Path, row: bool) -> Sqlite {
        let backend = Sqlite::open(&dir.join("fleet.db")).unwrap();
        write(
            &backend,
            "CREATE TABLE things (name TEXT PRIMARY KEY, size INTEGER NOT NULL)",
        );
        if row {
            write(&backend, "INSERT INTO things VALUES ('a', 1)");
        }
        backend
    }

    fn write(backend: &Sqlite, sql: &str) {
        let mut tx = backend.begin().unwrap();
        tx.execute(sql, &[]).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_reader_answers_shared_queries_from_its_cache_until_anything_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = things(dir.path(), true);

        // Every reader fills its cache once; then answers from it.
        for _ in 0..3 * READERS {
            assert_eq!(size(&backend), 1);
        }
        assert_eq!(misses(&backend), READERS as u64);

        // A commit by the writer, of any row, is seen by every reader at once.
        write(&backend, "UPDATE things SET size = 2 WHERE name = 'a'");
        for _ in 0..3 * READERS {
            assert_eq!(size(&backend), 2);
        }
        assert_eq!(misses(&backend), 2 * READERS as u64);

        // A commit by another process on the same file (another connection) is seen once
        // the readers' snapshots are older than SNAPSHOT_REUSE.
        let other = Connection::open(dir.path().join("fleet.db")).unwrap();
        other
            .execute("UPDATE things SET size = 3 WHERE name = 'a'", [])
            .unwrap();
        std::thread::sleep(SNAPSHOT_REUSE);
        for _ in 0..READERS {
            assert_eq!(size(&backend), 3);
        }

        // Other parameters are other entries.
        let mut tx = backend.begin_read().unwrap();
        assert!(tx.query_shared(SHARED, &["b".into()]).unwrap().is_empty());
    }

    #[test]
    fn a_read_transaction_keeps_its_snapshot_and_its_cache_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let backend = things(dir.path(), true);
        assert_eq!(size(&backend), 1);

        let mut open = backend.begin_read().unwrap();
        let other = Connection::open(dir.path().join("fleet.db")).unwrap();
        other
            .execute("UPDATE things SET size = 5 WHERE name = 'a'", [])
            .unwrap();
        // The open transaction's snapshot predates the commit: cached or not, it sees 1.
        let cached = open.query_shared(SHARED, &["a".into()]).unwrap();
        let direct = open.query(SHARED, &["a".into()]).unwrap();
        assert_eq!(cached[0].int(1).unwrap(), 1);
        assert_eq!(direct[0].int(1).unwrap(), 1);
        drop(open);
        // A new one sees the commit, on every reader (another connection's commit: once the
        // kept snapshots are stale).
        std::thread::sleep(SNAPSHOT_REUSE);
        for _ in 0..2 * READERS {
            assert_eq!(size(&backend), 5);
        }
    }

    fn open_snapshots(backend: &Sqlite) -> usize {
        backend
            .readers
            .iter()
            .filter(|r| !r.lock().unwrap().conn.is_autocommit())
            .count()
    }

    #[test]
    fn readers_reuse_a_snapshot_only_while_fresh_and_never_past_this_servers_commit() {
        let dir = tempfile::tempdir().unwrap();
        let backend = things(dir.path(), true);
        for _ in 0..READERS {
            assert_eq!(size(&backend), 1);
        }
        assert_eq!(open_snapshots(&backend), READERS, "kept between requests");
        // This server's writer commits: the very next read sees it, on any reader, however
        // young its snapshot.
        for n in 2..10 {
            write(&backend, &format!("UPDATE things SET size = {n}"));
            assert_eq!(size(&backend), n);
        }
        // Another connection's commit is not seen by a fresh kept snapshot...
        let other = Connection::open(dir.path().join("fleet.db")).unwrap();
        let seen_before = size(&backend);
        other.execute("UPDATE things SET size = 100", []).unwrap();
        let soon = size(&backend);
        assert!(soon == seen_before || soon == 100, "{soon}");
        // ...and is once the snapshot is older than SNAPSHOT_REUSE.
        std::thread::sleep(SNAPSHOT_REUSE);
        for _ in 0..READERS {
            assert_eq!(size(&backend), 100);
        }
        // Idle snapshots are ended (they would hold back checkpoints), fresh ones kept.
        backend.end_idle_snapshots();
        assert_eq!(open_snapshots(&backend), READERS, "all still fresh");
        std::thread::sleep(SNAPSHOT_REUSE);
        backend.end_idle_snapshots();
        assert_eq!(open_snapshots(&backend), 0);
    }

    #[test]
    fn a_failed_statement_ends_the_readers_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let backend = things(dir.path(), false);
        for _ in 0..READERS {
            let mut tx = backend.begin_read().unwrap();
            assert!(tx.query("SELECT nope FROM things", &[]).is_err());
        }
        assert_eq!(open_snapshots(&backend), 0);
        // A reader refuses writes (query_only) and is usable afterwards.
        let mut tx = backend.begin_read().unwrap();
        assert!(tx
            .execute("INSERT INTO things VALUES ('b', 2)", &[])
            .is_err());
        drop(tx);
        assert!(size_opt(&backend).is_none());
    }

    fn size_opt(backend: &Sqlite) -> Option<i64> {
        let mut tx = backend.begin_read().unwrap();
        let rows = tx.query_shared(SHARED, &["a".into()]).unwrap();
        rows.first().map(|r| r.int(1).unwrap())
    }

    #[test]
    fn the_writer_and_an_in_memory_database_never_cache() {
        let backend = Sqlite::open(Path::new(":memory:")).unwrap();
        write(
            &backend,
            "CREATE TABLE things (name TEXT PRIMARY KEY, size INTEGER NOT NULL)",
        );
        write(&backend, "INSERT INTO things VALUES ('a', 1)");
        assert_eq!(size(&backend), 1);
        let mut tx = backend.begin().unwrap();
        tx.execute("UPDATE things SET size = 2 WHERE name = 'a'", &[])
            .unwrap();
        // Inside the writing transaction, its own change is seen.
        let rows = tx.query_shared(SHARED, &["a".into()]).unwrap();
        assert_eq!(rows[0].int(1).unwrap(), 2);
        tx.commit().unwrap();
        assert_eq!(size(&backend), 2);
    }
}
