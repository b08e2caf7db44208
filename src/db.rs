//! Database connections. The request path's reads go through `Database::query`: on SQLite on
//! the request's own thread (`sqlite`), on PostgreSQL on connections of our own (`postgres`) —
//! one round trip each. Everything else uses sea-orm: on SQLite, which allows one writer,
//! every write transaction goes through a single writer connection (so guards queue in-process
//! instead of failing with SQLITE_BUSY) while reads use a pool; on PostgreSQL both are the
//! same pool. Every round trip is counted (`round_trips`, `tollgate_db_round_trips_total`):
//! on PostgreSQL each statement, BEGIN, COMMIT and pool ping; on SQLite each hand-off to a
//! connection's thread (sqlx's statements, BEGINs, COMMITs and pings; a batch handed to the
//! credits writer's thread) and each read made on a request's own thread.

mod postgres;
mod session;
mod sql;
mod sqlite;

pub use session::Session;
pub use sql::{PerBackend, Sql, Variants};
pub use sqlite::Shape;

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, FromQueryResult, Iterable, QueryResult, RuntimeErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, TryGetable,
    TryIntoModel,
    sea_query::ValueType,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::config::Config;

#[derive(Clone)]
pub struct Database {
    /// For queries: a pool.
    pub read: DatabaseConnection,
    /// For write transactions: on SQLite one connection, on Postgres the same pool as `read`.
    pub write: DatabaseConnection,
    /// The request path's reads.
    readers: Arc<Readers>,
    counts: Arc<Counts>,
}

enum Readers {
    Sqlite(sqlite::Readers),
    Postgres(Box<postgres::Readers>),
}

#[derive(Default)]
struct Counts {
    statements: AtomicU64,
    round_trips: AtomicU64,
}

impl Counts {
    fn trip(&self, statements: u64, round_trips: u64) {
        self.statements.fetch_add(statements, Ordering::Relaxed);
        self.round_trips.fetch_add(round_trips, Ordering::Relaxed);
    }
}

impl Database {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let counts = Arc::new(Counts::default());
        let settings = &config.database;
        let (read, write, readers) = if config.is_sqlite() {
            let read = open(config, settings.max_connections, &counts).await?;
            let write = open(config, 1, &counts).await?;
            let path = SqliteConnectOptions::from_str(&config.database_url)
                .context("the SQLite URL")?
                .get_filename()
                .to_owned();
            // Each connection to `:memory:` is a database of its own: readers and the writer
            // would not see each other's rows.
            let url = &config.database_url;
            if url.contains(":memory:") || url.contains("mode=memory") {
                anyhow::bail!(
                    "an in-memory SQLite database cannot be shared by Tollgate's connections: \
                     use a file (sqlite://tollgate.db?mode=rwc)"
                );
            }
            let busy_timeout = Duration::from_millis(settings.sqlite_busy_timeout_ms);
            let readers = Readers::Sqlite(sqlite::Readers::new(path, busy_timeout));
            (read, write, readers)
        } else {
            let pool = open(config, settings.max_connections, &counts).await?;
            let readers = postgres::Readers::new(&config.database_url, settings.max_connections)?;
            (pool.clone(), pool, Readers::Postgres(Box::new(readers)))
        };
        Ok(Database {
            read,
            write,
            readers: Arc::new(readers),
            counts,
        })
    }

    /// One read of the request path, in one round trip; its rows (on SQLite typed by
    /// `shape`; PostgreSQL's rows carry their types).
    pub async fn query(&self, statement: &Statement, shape: &Shape) -> Result<Vec<Row>, DbErr> {
        self.counts.trip(1, 1);
        match &*self.readers {
            Readers::Sqlite(readers) => readers.query(statement, shape),
            Readers::Postgres(readers) => readers.query(statement).await,
        }
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.write.get_database_backend()
    }

    /// A connection of its own for write transactions (the credits writer's), outside every
    /// pool.
    pub async fn session(&self) -> Result<Session, DbErr> {
        let counts = Arc::clone(&self.counts);
        match &*self.readers {
            Readers::Sqlite(readers) => {
                Session::sqlite(readers.path(), readers.busy_timeout(), counts)
            }
            Readers::Postgres(readers) => Session::postgres(readers.options(), counts).await,
        }
    }

    /// Counts one hand-off of work to a connection's own thread (the SQLite writer's batch).
    pub fn hand_off(&self) {
        self.counts.trip(0, 1);
    }

    /// `query`'s first row.
    pub async fn query_one(
        &self,
        statement: &Statement,
        shape: &Shape,
    ) -> Result<Option<Row>, DbErr> {
        Ok(self.query(statement, shape).await?.into_iter().next())
    }

    /// How many SQL statements this process has sent (for tests and metrics).
    pub fn statements(&self) -> u64 {
        self.counts.statements.load(Ordering::Relaxed)
    }

    /// How many round trips to the database this process has made: statements, BEGINs,
    /// COMMITs and the pool's pings (for tests and metrics).
    pub fn round_trips(&self) -> u64 {
        self.counts.round_trips.load(Ordering::Relaxed)
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), sea_orm::DbErr> {
        self.read.ping().await
    }

    /// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite, so that it holds the write
    /// lock from its first statement (another process's writer makes it wait, up to the busy
    /// timeout, instead of failing mid-transaction); a plain `BEGIN` on Postgres.
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        // BEGIN, and the COMMIT or ROLLBACK that will end it.
        self.counts.trip(0, 2);
        self.write
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
    }
}

/// One row of a read: as sea-orm's driver gave it (PostgreSQL's request path, any sea-orm
/// connection), or SQLite's values typed by the query's `Shape`. Read it by column name, or as
/// an entity's model.
#[derive(Debug)]
pub enum Row {
    Driver(QueryResult),
    Sqlite(sqlite::Values),
}

impl Row {
    /// Column `name`.
    pub fn get<T: TryGetable + ValueType>(&self, name: &str) -> Result<T, DbErr> {
        match self {
            Row::Driver(row) => row.try_get("", name),
            Row::Sqlite(values) => {
                let value = values.get(name)?;
                T::try_from(value.clone())
                    .map_err(|_| DbErr::Type(format!("column {name}: unexpected {value:?}")))
            }
        }
    }

    /// The row as a model of entity `E` (its columns by name; others are ignored).
    pub fn model<E>(self) -> Result<E::Model, DbErr>
    where
        E: EntityTrait,
        E::Model: FromQueryResult,
        E::ActiveModel: ActiveModelTrait<Entity = E> + TryIntoModel<E::Model>,
    {
        match self {
            Row::Driver(row) => E::Model::from_query_result(&row, ""),
            Row::Sqlite(mut values) => {
                let mut model = <E::ActiveModel as ActiveModelTrait>::default();
                for column in E::Column::iter() {
                    let value = values.take(sea_orm::IdenStatic::as_str(&column))?;
                    model.try_set(column, value)?;
                }
                model.try_into_model()
            }
        }
    }
}

/// A connection inside a write transaction: a `Session` (the credits writer's, a refund's) or
/// a sea-orm transaction. What code run from both kinds of callers needs of it.
pub trait Tx: Send {
    fn backend(&self) -> DatabaseBackend;

    /// One statement's rows (on SQLite's `Session`, typed by `shape`).
    fn rows(
        &mut self,
        statement: &Statement,
        shape: &Shape,
    ) -> impl Future<Output = Result<Vec<Row>, DbErr>> + Send;

    /// One statement run for its effect; how many rows it changed.
    fn run(&mut self, statement: &Statement) -> impl Future<Output = Result<u64, DbErr>> + Send;
}

impl Tx for Session {
    fn backend(&self) -> DatabaseBackend {
        Session::backend(self)
    }

    async fn rows(&mut self, statement: &Statement, shape: &Shape) -> Result<Vec<Row>, DbErr> {
        self.query(statement, shape).await
    }

    async fn run(&mut self, statement: &Statement) -> Result<u64, DbErr> {
        self.execute(statement).await
    }
}

impl<C: ConnectionTrait + Sync> Tx for &C {
    fn backend(&self) -> DatabaseBackend {
        self.get_database_backend()
    }

    async fn rows(&mut self, statement: &Statement, _: &Shape) -> Result<Vec<Row>, DbErr> {
        let rows = self.query_all_raw(statement.clone()).await?;
        Ok(rows.into_iter().map(Row::Driver).collect())
    }

    async fn run(&mut self, statement: &Statement) -> Result<u64, DbErr> {
        Ok(self.execute_raw(statement.clone()).await?.rows_affected())
    }
}

/// A keyset page of `query`'s rows, newest first by their UUIDv7 `id`: `first` after the
/// row `after`, and whether more follow. One query, whatever the depth.
pub async fn keyset<E>(
    db: &impl sea_orm::ConnectionTrait,
    query: sea_orm::Select<E>,
    id: E::Column,
    first: u64,
    after: Option<uuid::Uuid>,
) -> Result<(Vec<E::Model>, bool), DbErr>
where
    E: EntityTrait,
{
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};
    let query = match after {
        Some(after) => query.filter(id.lt(after)),
        None => query,
    };
    let rows = query.order_by_desc(id).limit(first + 1).all(db).await?;
    Ok(page(rows, first))
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
    if let DbErr::Custom(message) = err {
        return message.starts_with(sqlite::BUSY);
    }
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

/// The `(tenant_id, id)` of up to `limit` rows of `sql` (parameters `:now` and `:limit`):
/// what a sweeper has to do at `now`.
pub async fn due(
    db: &Database,
    sql: &PerBackend,
    now: chrono::DateTime<chrono::Utc>,
    limit: u64,
) -> Result<Vec<(uuid::Uuid, uuid::Uuid)>, DbErr> {
    static SHAPE: std::sync::LazyLock<Shape> = std::sync::LazyLock::new(|| {
        Shape::default()
            .with("tenant_id", sea_orm::ColumnType::Uuid)
            .with("id", sea_orm::ColumnType::Uuid)
    });
    let statement = sql.get(db.backend()).bind(|name| match name {
        "now" => Some(now.into()),
        "limit" => Some(
            <i64 as TryFrom<u64>>::try_from(limit)
                .unwrap_or(i64::MAX)
                .into(),
        ),
        _ => None,
    })?;
    db.query(&statement, &SHAPE)
        .await?
        .iter()
        .map(|row| Ok((row.get("tenant_id")?, row.get("id")?)))
        .collect()
}

/// `clause` — a row lock: ` FOR UPDATE`, ` FOR UPDATE SKIP LOCKED`, ` FOR UPDATE OF g` — on
/// PostgreSQL; nothing on SQLite, whose write transactions are serialized anyway.
pub fn row_lock(backend: DatabaseBackend, clause: &'static str) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => clause,
        _ => "",
    }
}

/// Whether `err` is a unique constraint's refusal, from either driver (rusqlite's errors
/// arrive as text).
pub fn is_unique_violation(err: &DbErr) -> bool {
    match err {
        DbErr::Custom(message) => message.contains("UNIQUE constraint failed"),
        err => matches!(
            err.sql_err(),
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
        ),
    }
}

/// `pool` counting a round trip each time it takes a connection back (its ping).
fn count_releases<DB: sea_orm::sqlx::Database>(
    pool: sea_orm::sqlx::pool::PoolOptions<DB>,
    counts: &Arc<Counts>,
) -> sea_orm::sqlx::pool::PoolOptions<DB> {
    let counts = Arc::clone(counts);
    pool.after_release(move |_, _| {
        counts.trip(0, 1);
        Box::pin(async { Ok(true) })
    })
}

async fn open(
    config: &Config,
    max_connections: u32,
    counts: &Arc<Counts>,
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
    // sqlx pings every connection its pool takes back, right after this hook: a round trip.
    let released = Arc::clone(counts);
    options.map_sqlx_sqlite_pool_opts(move |o| count_releases(o, &released));
    let released = Arc::clone(counts);
    options.map_sqlx_postgres_pool_opts(move |o| count_releases(o, &released));
    let mut conn = sea_orm::Database::connect(options)
        .await
        .context("cannot connect to the database")?;
    let counter = Arc::clone(counts);
    conn.set_metric_callback(move |_| counter.trip(1, 1));
    Ok(conn)
}
