//! Database connections. On SQLite, which allows one writer, every write transaction goes
//! through a single writer connection (so guards queue in-process instead of failing with
//! SQLITE_BUSY) while reads use a pool; on Postgres both are the same pool.

use std::{
    sync::{
        Arc,
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
