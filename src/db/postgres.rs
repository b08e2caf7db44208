//! PostgreSQL reads on connections of our own (sqlx, without its pool): one network round
//! trip per read. sqlx's pool pings every connection it takes back — a second round trip per
//! request — and sea-orm runs on that pool; the request path's reads come here instead. Each
//! connection keeps its prepared statements.

use std::sync::{Mutex, PoisonError};

use sea_orm::{DbErr, QueryResult, Statement};
use sea_query_sqlx::SqlxValues;
use sqlx::{
    AssertSqlSafe, Connection,
    postgres::{PgConnectOptions, PgConnection},
};
use tokio::sync::Semaphore;

use super::Row;

/// Up to `max` connections to one database, opened as needed.
pub struct Readers {
    options: PgConnectOptions,
    permits: Semaphore,
    idle: Mutex<Vec<PgConnection>>,
}

/// An sqlx error as sea-orm's, so that `db::is_transient` reads its code.
pub(super) fn error(e: sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
}

/// `statement` with its values, for sqlx.
pub(super) fn bound(statement: &Statement) -> sqlx::query::Query<'_, sqlx::Postgres, SqlxValues> {
    let values = statement
        .values
        .clone()
        .unwrap_or(sea_orm::Values(Vec::new()));
    sqlx::query_with(AssertSqlSafe(statement.sql.as_str()), SqlxValues(values))
}

/// sqlx's rows as ours.
pub(super) fn rows_of(rows: Vec<sqlx::postgres::PgRow>) -> Vec<Row> {
    rows.into_iter()
        .map(|row| Row::Driver(QueryResult::from(row)))
        .collect()
}

/// The connection options of `url`.
pub(super) fn options(url: &str) -> Result<PgConnectOptions, DbErr> {
    url.parse().map_err(error)
}

impl Readers {
    pub fn new(url: &str, max: u32) -> Result<Self, DbErr> {
        let options = options(url)?;
        Ok(Readers {
            options,
            permits: Semaphore::new(usize::try_from(max.max(1)).unwrap_or(1)),
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Runs one statement: one round trip. A kept connection the server has dropped since
    /// (a restart, an administrator) fails with it: the other kept ones are dropped too (they
    /// were most likely cut with it) and the read runs once more on a new connection.
    pub async fn query(&self, statement: &Statement) -> Result<Vec<Row>, DbErr> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DbErr::Custom("the reader connections are closed".to_owned()))?;
        let kept = self.idle().pop();
        let reused = kept.is_some();
        let rows = self.run(kept, statement).await;
        match rows {
            Err(e) if reused && is_connection_lost(&e) => {
                self.idle().clear();
                self.run(None, statement).await.map_err(error)
            }
            rows => rows.map_err(error),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PgConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `statement` on `conn` (or a new connection); the connection is kept for the next read
    /// unless it was lost.
    async fn run(
        &self,
        conn: Option<PgConnection>,
        statement: &Statement,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let mut conn = match conn {
            Some(conn) => conn,
            None => PgConnection::connect_with(&self.options).await?,
        };
        let rows = bound(statement).fetch_all(&mut conn).await;
        match &rows {
            Err(e) if is_connection_lost(e) => {}
            _ => self.idle().push(conn),
        }
        rows.map(rows_of)
    }
}

/// Whether `e` leaves the connection unusable: I/O or the protocol, or the server ending the
/// session (SQLSTATE class 08, connection exception; 57, operator intervention). A
/// statement's own error (a constraint, a type) leaves it usable.
fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
