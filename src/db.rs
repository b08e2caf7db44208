//! Database connections. On SQLite, which allows one writer, every write transaction goes
//! through a single writer connection (so guards queue in-process instead of failing with
//! SQLITE_BUSY) while reads use a pool; on Postgres both are the same pool.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sea_orm::{
    ConnectOptions, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr, RuntimeErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

use crate::config::Config;

#[derive(Clone)]
pub struct Database {
    /// For queries: a pool.
    pub read: DatabaseConnection,
    /// For write transactions: on SQLite one connection, on Postgres the same pool as `read`.
    pub write: DatabaseConnection,
    statements: Arc<AtomicU64>,
}

impl Database {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let statements = Arc::new(AtomicU64::new(0));
        let settings = &config.database;
        let (read, write) = if config.is_sqlite() {
            let read = open(config, settings.max_connections, &statements).await?;
            let write = open(config, 1, &statements).await?;
            (read, write)
        } else {
            let pool = open(config, settings.max_connections, &statements).await?;
            (pool.clone(), pool)
        };
        Ok(Database {
            read,
            write,
            statements,
        })
    }

    /// How many SQL statements this process has sent (for tests and metrics).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), sea_orm::DbErr> {
        self.read.ping().await
    }

    /// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite, so that it holds the write
    /// lock from its first statement (another process's writer makes it wait, up to the busy
    /// timeout, instead of failing mid-transaction); a plain `BEGIN` on Postgres.
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.write
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
    }
}

/// A hand-written SQL statement for `backend`, written with Postgres's numbered parameters
/// (`$1`, `$2`, …; a number may repeat), which SQLite spells `?1`, `?2`, ….
pub fn statement(
    backend: DatabaseBackend,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Statement {
    let sql = match backend {
        DatabaseBackend::Postgres => sql.to_owned(),
        _ => sql.replace('$', "?"),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// SQL written once with named parameters (`:tenant`, `:now`; a name may repeat), turned
/// into `backend`'s numbered ones (`$1` on Postgres, `?1` on SQLite): each name gets the number
/// of its first appearance. Build it once; bind it per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sql {
    backend: DatabaseBackend,
    text: String,
    /// The parameter names, in number order.
    names: Vec<String>,
}

impl Sql {
    pub fn new(backend: DatabaseBackend, named: &str) -> Self {
        let sign = match backend {
            DatabaseBackend::Postgres => '$',
            _ => '?',
        };
        let mut text = String::with_capacity(named.len());
        let mut names: Vec<String> = Vec::new();
        let mut chars = named.char_indices().peekable();
        let mut quoted = false;
        while let Some((i, c)) = chars.next() {
            let starts_name = !quoted
                && c == ':'
                && !named[..i].ends_with(':')
                && chars
                    .peek()
                    .is_some_and(|&(_, n)| n.is_ascii_lowercase() || n == '_');
            if !starts_name {
                quoted ^= c == '\'';
                text.push(c);
                continue;
            }
            let mut name = String::new();
            while let Some(&(_, n)) = chars.peek() {
                if !(n.is_ascii_alphanumeric() || n == '_') {
                    break;
                }
                name.push(n);
                chars.next();
            }
            let number = match names.iter().position(|known| *known == name) {
                Some(at) => at + 1,
                None => {
                    names.push(name);
                    names.len()
                }
            };
            text.push(sign);
            text.push_str(&number.to_string());
        }
        Sql {
            backend,
            text,
            names,
        }
    }

    /// The statement as the database sees it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parameter names, in number order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The statement with each parameter bound to `value(name)`; an error names a parameter
    /// `value` does not know.
    pub fn bind(
        &self,
        mut value: impl FnMut(&str) -> Option<sea_orm::Value>,
    ) -> Result<Statement, DbErr> {
        let values = self
            .names
            .iter()
            .map(|name| {
                value(name)
                    .ok_or_else(|| DbErr::Custom(format!("SQL parameter :{name} is not bound")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Statement::from_sql_and_values(
            self.backend,
            self.text.clone(),
            values,
        ))
    }
}

/// A statement whose text is a constant of the code, built the first time each dialect needs
/// it (a `static`: it never changes once built).
pub struct PerBackend {
    build: fn(DatabaseBackend) -> String,
    postgres: OnceLock<Sql>,
    sqlite: OnceLock<Sql>,
}

impl PerBackend {
    pub const fn new(build: fn(DatabaseBackend) -> String) -> Self {
        PerBackend {
            build,
            postgres: OnceLock::new(),
            sqlite: OnceLock::new(),
        }
    }

    pub fn get(&self, backend: DatabaseBackend) -> &Sql {
        let cell = match backend {
            DatabaseBackend::Postgres => &self.postgres,
            _ => &self.sqlite,
        };
        cell.get_or_init(|| Sql::new(backend, &(self.build)(backend)))
    }
}

/// A keyset page from `first + 1` rows read: the first `first`, and whether more follow.
pub fn page<T>(mut rows: Vec<T>, first: u64) -> (Vec<T>, bool) {
    let more = rows.len() as u64 > first;
    rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    (rows, more)
}

/// Whether `err` is worth retrying the whole transaction for: a Postgres serialization
/// failure or deadlock, or SQLite's busy/locked after its timeout.
pub fn is_transient(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    let Some(db) = e.as_database_error() else {
        return false;
    };
    matches!(
        db.code().as_deref(),
        // Postgres: serialization_failure, deadlock_detected.
        // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
        Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
    )
}

async fn open(
    config: &Config,
    max_connections: u32,
    statements: &Arc<AtomicU64>,
) -> anyhow::Result<DatabaseConnection> {
    let settings = &config.database;
    let busy_timeout = Duration::from_millis(settings.sqlite_busy_timeout_ms);
    let mut options = ConnectOptions::new(config.database_url.clone());
    options
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        // A ping before every acquire costs 12-15 % of a guard (DESIGN.md); a dead
        // connection fails its statement instead, and the pool replaces it.
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(busy_timeout)
                .foreign_keys(true)
        });
    let mut conn = sea_orm::Database::connect(options)
        .await
        .context("cannot connect to the database")?;
    let counter = Arc::clone(statements);
    conn.set_metric_callback(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_are_numbered_by_first_appearance_outside_quotes() {
        let named = "SELECT :b, ':not_a_param', :a, :b, x::text, strftime('%H:%M', :a_2)";
        let pg = Sql::new(DatabaseBackend::Postgres, named);
        assert_eq!(
            pg.text(),
            "SELECT $1, ':not_a_param', $2, $1, x::text, strftime('%H:%M', $3)"
        );
        assert_eq!(pg.names(), ["b", "a", "a_2"]);
        let sqlite = Sql::new(DatabaseBackend::Sqlite, named);
        assert!(
            sqlite
                .text()
                .starts_with("SELECT ?1, ':not_a_param', ?2, ?1")
        );
    }

    #[test]
    fn binding_fails_when_a_named_parameter_has_no_value() {
        let sql = Sql::new(DatabaseBackend::Postgres, "SELECT :known, :unknown");
        let err = sql
            .bind(|name| (name == "known").then(|| 1i64.into()))
            .unwrap_err();
        assert!(err.to_string().contains(":unknown"), "{err}");
        let ok = sql.bind(|_| Some(1i64.into())).unwrap();
        assert_eq!(ok.values.map(|v| v.0.len()), Some(2));
    }
}
