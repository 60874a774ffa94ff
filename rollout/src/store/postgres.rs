//! The PostgreSQL backend, for several `basalt-rollout serve` replicas behind a load
//! balancer sharing one database. A small pool of connections (the synchronous `postgres`
//! client; the server calls the store from blocking threads), read-committed transactions,
//! and the pool-row lock of [`super::Tx::lock_pool`] for every decision that counts slots.

use std::collections::HashMap;
use std::sync::Mutex;

use ::postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use ::postgres::{Client, NoTls, Statement};
use bytes::BytesMut;

use super::{Backend, Conn, Dialect, Result, Row, StoreError, Value};

/// Connections kept open for reuse.
const IDLE_MAX: usize = 16;

/// A PostgreSQL database, by connection string (`host=127.0.0.1 port=5432 user=basalt …` or
/// `postgresql://…`).
pub struct Postgres {
    params: String,
    /// For messages: the connection string without a password.
    shown: String,
    idle: Mutex<Vec<Pooled>>,
}

/// A connection and its prepared statements (each SQL text is prepared once per connection).
struct Pooled {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Pooled {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .map_err(|source| StoreError::Postgres {
                what: format!("preparing {sql}"),
                source,
            })?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("server", &self.shown)
            .finish()
    }
}

fn err(what: impl Into<String>) -> impl FnOnce(::postgres::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Postgres { what, source }
}

fn redact(params: &str) -> String {
    params
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=…"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Postgres {
    /// Connects once (so a wrong address fails at start-up, naming it).
    pub fn connect(params: &str) -> Result<Self> {
        let shown = redact(params);
        let client = Client::connect(params, NoTls).map_err(|source| StoreError::Postgres {
            what: format!("connecting to {shown}"),
            source,
        })?;
        Ok(Postgres {
            params: params.to_owned(),
            shown,
            idle: Mutex::new(vec![Pooled {
                client,
                statements: HashMap::new(),
            }]),
        })
    }

    fn client(&self) -> Result<Pooled> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match idle {
            Some(pooled) if !pooled.client.is_closed() => Ok(pooled),
            _ => Ok(Pooled {
                client: Client::connect(&self.params, NoTls).map_err(|source| {
                    StoreError::Postgres {
                        what: format!("connecting to {}", self.shown),
                        source,
                    }
                })?,
                statements: HashMap::new(),
            }),
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <String as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

struct PgConn<'a> {
    owner: &'a Postgres,
    client: Option<Pooled>,
}

impl PgConn<'_> {
    fn client(&mut self) -> Result<&mut Pooled> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("connection already finished".into()))
    }
}

fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Conn for PgConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64> {
        let pooled = self.client()?;
        let statement = pooled.statement(sql)?;
        pooled
            .client
            .execute(&statement, &params(values))
            .map_err(|source| StoreError::Postgres {
                what: format!("running {sql}"),
                source,
            })
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>> {
        let pooled = self.client()?;
        let statement = pooled.statement(sql)?;
        let rows = pooled
            .client
            .query(&statement, &params(values))
            .map_err(|source| StoreError::Postgres {
                what: format!("running {sql}"),
                source,
            })?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_();
                        let value = if *ty == Type::INT8 {
                            row.try_get::<_, Option<i64>>(i)
                                .map(|v| v.map_or(Value::Null, Value::Int))
                        } else if *ty == Type::INT4 {
                            row.try_get::<_, Option<i32>>(i)
                                .map(|v| v.map_or(Value::Null, |v| Value::Int(v.into())))
                        } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                            row.try_get::<_, Option<String>>(i)
                                .map(|v| v.map_or(Value::Null, Value::Text))
                        } else if *ty == Type::VOID {
                            Ok(Value::Null)
                        } else {
                            return Err(StoreError::Corrupt(format!(
                                "{sql}: column {i} has type {ty}"
                            )));
                        };
                        value.map_err(|source| StoreError::Postgres {
                            what: format!("reading {sql}"),
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Row)
            })
            .collect()
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let mut pooled = self
            .client
            .take()
            .ok_or_else(|| StoreError::Corrupt("connection already finished".into()))?;
        pooled
            .client
            .batch_execute("COMMIT")
            .map_err(err("committing"))?;
        self.owner.give_back(pooled);
        Ok(())
    }
}

impl Drop for Postgres {
    /// The synchronous client closes its connection by blocking on its own runtime, which
    /// panics on a tokio worker thread (where the last server task may drop the store): close
    /// them on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

impl Postgres {
    fn give_back(&self, pooled: Pooled) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < IDLE_MAX && !pooled.client.is_closed() {
            idle.push(pooled);
        }
    }
}

impl Drop for PgConn<'_> {
    fn drop(&mut self) {
        if let Some(mut pooled) = self.client.take() {
            match pooled.client.batch_execute("ROLLBACK") {
                Ok(()) => self.owner.give_back(pooled),
                Err(e) => tracing::warn!(error = %e, "rollback failed; connection dropped"),
            }
        }
    }
}

impl Postgres {
    fn start(&self, statement: &str) -> Result<Box<dyn Conn + '_>> {
        let mut pooled = self.client()?;
        pooled
            .client
            .batch_execute(statement)
            .map_err(err("beginning a transaction"))?;
        Ok(Box::new(PgConn {
            owner: self,
            client: Some(pooled),
        }))
    }
}

impl Backend for Postgres {
    fn begin(&self) -> Result<Box<dyn Conn + '_>> {
        self.start("BEGIN ISOLATION LEVEL READ COMMITTED")
    }

    fn begin_read(&self) -> Result<Box<dyn Conn + '_>> {
        self.start("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY")
    }

    fn describe(&self) -> String {
        format!("postgresql:{}", self.shown)
    }
}
