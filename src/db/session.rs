//! One connection held by one owner, outside any pool — the credits writer's. On PostgreSQL
//! an sqlx connection: its statements, BEGIN and COMMIT are each one round trip, with no ping
//! when it is done. On SQLite a rusqlite connection used on the owner's own thread: its
//! statements are calls on that thread, not hand-offs (the hand-off is the batch the owner
//! takes; see `Database::hand_off`). Values are bound and read as in `sqlite` and `postgres`.

use std::{path::Path, sync::Arc, time::Duration};

use sea_orm::{DbErr, Statement};
use sqlx::{
    AssertSqlSafe, Connection as _,
    postgres::{PgConnectOptions, PgConnection},
};

use super::{
    Counts, Row, Shape,
    postgres::{bound, rows_of},
    sqlite,
};

/// An exclusive connection for write transactions.
pub struct Session {
    conn: Conn,
    counts: Arc<Counts>,
}

enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConnection>),
}

impl Session {
    pub(super) fn sqlite(
        path: &Path,
        busy_timeout: Duration,
        counts: Arc<Counts>,
    ) -> Result<Self, DbErr> {
        let conn = sqlite::open(path, busy_timeout, false)?;
        Ok(Session {
            conn: Conn::Sqlite(conn),
            counts,
        })
    }

    pub(super) async fn postgres(
        options: &PgConnectOptions,
        counts: Arc<Counts>,
    ) -> Result<Self, DbErr> {
        let conn = PgConnection::connect_with(options)
            .await
            .map_err(super::postgres::error)?;
        Ok(Session {
            conn: Conn::Postgres(Box::new(conn)),
            counts,
        })
    }

    pub fn backend(&self) -> sea_orm::DatabaseBackend {
        match self.conn {
            Conn::Sqlite(_) => sea_orm::DatabaseBackend::Sqlite,
            Conn::Postgres(_) => sea_orm::DatabaseBackend::Postgres,
        }
    }

    /// Starts a transaction: `BEGIN IMMEDIATE` on SQLite (the write lock from the start: another
    /// writer makes it wait, up to the busy timeout, instead of failing mid-transaction).
    pub async fn begin(&mut self) -> Result<(), DbErr> {
        let sql = match self.conn {
            Conn::Sqlite(_) => "BEGIN IMMEDIATE",
            Conn::Postgres(_) => "BEGIN",
        };
        self.batch(sql).await
    }

    pub async fn commit(&mut self) -> Result<(), DbErr> {
        self.batch("COMMIT").await
    }

    /// Rolls the open transaction back, if any.
    pub async fn rollback(&mut self) -> Result<(), DbErr> {
        if let Conn::Sqlite(conn) = &self.conn
            && conn.is_autocommit()
        {
            return Ok(());
        }
        self.batch("ROLLBACK").await
    }

    /// One statement's rows (on SQLite typed by `shape`).
    pub async fn query(&mut self, statement: &Statement, shape: &Shape) -> Result<Vec<Row>, DbErr> {
        self.count(1);
        match &mut self.conn {
            Conn::Sqlite(conn) => sqlite::run(conn, statement, shape),
            Conn::Postgres(conn) => {
                let rows = bound(statement).fetch_all(conn.as_mut()).await;
                rows.map(rows_of).map_err(super::postgres::error)
            }
        }
    }

    /// One statement run for its effect; how many rows it changed.
    pub async fn execute(&mut self, statement: &Statement) -> Result<u64, DbErr> {
        self.count(1);
        match &mut self.conn {
            Conn::Sqlite(conn) => sqlite::execute(conn, statement),
            Conn::Postgres(conn) => Ok(bound(statement)
                .execute(conn.as_mut())
                .await
                .map_err(super::postgres::error)?
                .rows_affected()),
        }
    }

    /// Ends the open transaction by `outcome`: commits an `Ok` one (a failed commit is its
    /// error), rolls back an `Err` one.
    pub async fn finish<T, E: From<DbErr>>(&mut self, outcome: Result<T, E>) -> Result<T, E> {
        match outcome {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.rollback().await;
                Err(e)
            }
        }
    }

    /// The row of a tenant's table `E` with this `id` (read in the open transaction, under
    /// whatever it has locked), as its model. For tables keyed by `(tenant_id, id)`; not for a
    /// hot path (the statement is built on each call).
    pub async fn find_owned<E>(
        &mut self,
        tenant_id: uuid::Uuid,
        id: uuid::Uuid,
    ) -> Result<Option<E::Model>, DbErr>
    where
        E: sea_orm::EntityTrait + Default,
        E::Model: sea_orm::FromQueryResult,
        E::ActiveModel: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::TryIntoModel<E::Model>,
    {
        let sql = super::Sql::new(
            self.backend(),
            &format!(
                "SELECT * FROM {} WHERE tenant_id = :tenant AND id = :id",
                E::default().table_name()
            ),
        );
        let statement = sql.bind(|name| match name {
            "tenant" => Some(tenant_id.into()),
            "id" => Some(id.into()),
            _ => None,
        })?;
        match self
            .query(&statement, &Shape::of::<E>())
            .await?
            .into_iter()
            .next()
        {
            Some(row) => Ok(Some(row.model::<E>()?)),
            None => Ok(None),
        }
    }

    /// A statement without parameters (transaction control).
    async fn batch(&mut self, sql: &str) -> Result<(), DbErr> {
        self.count(0);
        match &mut self.conn {
            Conn::Sqlite(conn) => conn.execute_batch(sql).map_err(sqlite::error),
            Conn::Postgres(conn) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(conn.as_mut())
                .await
                .map(|_| ())
                .map_err(super::postgres::error),
        }
    }
}

impl Session {
    /// Counts `statements` sent, and the round trip when there is one (PostgreSQL).
    fn count(&self, statements: u64) {
        let trips = match self.conn {
            Conn::Sqlite(_) => 0,
            Conn::Postgres(_) => 1,
        };
        self.counts.trip(statements, trips);
    }
}
