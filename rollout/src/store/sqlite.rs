//! The embedded SQLite backend: one file, nothing to install (`basalt-rollout serve --db
//! fleet.db`). WAL journal, `synchronous=NORMAL` (a committed check-in survives a crash of the
//! server; a power cut may lose the last few, which nodes re-send: events are idempotent),
//! foreign keys on, a busy timeout so a second process on the same file waits instead of
//! failing. One connection behind a mutex: SQLite has one writer anyway, and every
//! transaction here writes.

use std::path::{Path, PathBuf};
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
        Ok(Sqlite {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
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
        self.start("BEGIN")
    }

    fn begin(&self) -> Result<Box<dyn Conn + '_>> {
        self.start("BEGIN IMMEDIATE")
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}
