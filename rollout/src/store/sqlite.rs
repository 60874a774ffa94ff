//! The embedded SQLite backend: one file, nothing to install (`basalt-rollout serve --db
//! fleet.db`). WAL journal, `synchronous=NORMAL` (a committed check-in survives a crash of the
//! server; a power cut may lose the last few, which nodes re-send: events are idempotent),
//! foreign keys on, a busy timeout so a second process on the same file waits instead of
//! failing. One writing connection behind a mutex (SQLite has one writer anyway) and, for a
//! database file, a few reading connections: in WAL mode readers see the last commit and
//! neither wait for the writer nor for each other, so read-only transactions (the steady
//! state check-in, status, metrics) run side by side on several cores.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::{Backend, Conn, Dialect, Result, Row, StoreError, Value};

/// A SQLite database file (or `:memory:`).
#[derive(Debug)]
pub struct Sqlite {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Read-only connections ([`READERS`] of them; none for `:memory:`, whose every
    /// connection would be a database of its own).
    readers: Vec<Mutex<Connection>>,
    /// Where the next reader search starts (spreads the readers' use).
    next_reader: AtomicUsize,
}

/// Reading connections of a database file: enough for this server's cores to read at once;
/// a request finding them all busy waits for one.
pub const READERS: usize = 4;

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
                readers.push(Mutex::new(reader));
            }
        }
        Ok(Sqlite {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }
}

struct SqliteConn<'a> {
    path: &'a Path,
    conn: MutexGuard<'a, Connection>,
    done: bool,
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
        let mut statement =
            self.conn
                .prepare_cached(&sql(text))
                .map_err(stmt_err(self.path, "preparing", text))?;
        let n = statement
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(stmt_err(self.path, "running", text))?;
        Ok(n as u64)
    }

    fn query(&mut self, text: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut statement =
            self.conn
                .prepare_cached(&sql(text))
                .map_err(stmt_err(self.path, "preparing", text))?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(stmt_err(self.path, "running", text))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(stmt_err(self.path, "reading", text))? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(
                    match row.get_ref(i).map_err(err(self.path, "reading a column"))? {
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

    fn commit(mut self: Box<Self>) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(err(self.path, "committing"))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for SqliteConn<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(path = %self.path.display(), error = %e, "rollback failed");
            }
        }
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
        self.start_on(conn, statement)
    }

    /// A free reader if there is one, else (all busy) the next one in turn, waited for.
    fn reader(&self) -> Option<MutexGuard<'_, Connection>> {
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

    fn start_on<'a>(
        &'a self,
        conn: MutexGuard<'a, Connection>,
        statement: &str,
    ) -> Result<Box<dyn Conn + 'a>> {
        conn.execute_batch(statement)
            .map_err(err(&self.path, "beginning a transaction"))?;
        Ok(Box::new(SqliteConn {
            path: &self.path,
            conn,
            done: false,
        }))
    }
}

impl Backend for Sqlite {
    fn begin_read(&self) -> Result<Box<dyn Conn + '_>> {
        match self.reader() {
            Some(reader) => self.start_on(reader, "BEGIN"),
            None => self.start("BEGIN"),
        }
    }

    fn begin(&self) -> Result<Box<dyn Conn + '_>> {
        self.start("BEGIN IMMEDIATE")
    }

    fn reads_on_async_worker(&self) -> bool {
        !self.readers.is_empty()
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}
