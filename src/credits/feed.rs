//! A tenant's credit events, as `creditEvents` streams them: its ledger rows (spends, refunds,
//! grants, expiries, voids) and its alert events (`credits.threshold_reached`, …), numbered
//! 1, 2, 3, … per tenant in the order they commit (`credit.seq`, `webhook_event.seq`).
//!
//! Every transaction that writes an event takes the tenant's next number (`next`) under a lock
//! it holds until it commits: the numbers are dense, their order is the commit order, and the
//! newest number committed (`last_committed`) tells a reader how far everything has committed.
//! A reader that reads it first and then the events up to it sees every one of them (`since`);
//! one that resumes after number n misses nothing and gets nothing twice.
//!
//! On PostgreSQL the number comes from the tenant's `credit_feed` row, whose row lock is taken
//! **first** in every transaction that may write an event — before a counter, a grant, an
//! idempotency key or an alert row of the tenant (`lock`; the guard's statement takes it in
//! its first CTE) — so that no two transactions wait on each other in opposite orders. On
//! SQLite every write transaction holds the database's write lock from its start (`BEGIN
//! IMMEDIATE`), so the next number is one past the highest the tenant's events carry, read
//! from the `(tenant_id, seq)` indexes (`SQLITE_NEXT`): no row to write on the hot path, and
//! `credit_feed` is not kept.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use entity::credit;
use sea_orm::{ColumnType, DatabaseBackend, DbErr, prelude::*};
use serde_json::Value;

use super::alerts;
use crate::{
    auth::Viewer,
    db::{Database, PerBackend, Shape, Tx},
    error::AppError,
};

/// Rows read at most per query and source.
pub const PAGE: u64 = 500;

/// The alert events the feed carries, by their webhook type: those numbered with the ledger.
pub const ALERT_TYPES: [&str; 4] = [
    "credits.threshold_reached",
    "credits.threshold_resolved",
    "credits.depleted",
    "credits.limit_reached",
];

/// Statement `sql` bound to its one parameter, `:tenant`.
fn of_tenant(
    sql: &PerBackend,
    backend: DatabaseBackend,
    tenant_id: Uuid,
) -> Result<sea_orm::Statement, DbErr> {
    sql.get(backend)
        .bind(|name| (name == "tenant").then(|| tenant_id.into()))
}

/// Takes the tenant's next number, as a statement over `:tenant` of the rows of `source`
/// (one row: the next number; none: nothing taken) returning `last_seq`. Creates the
/// tenant's row if it has none.
pub fn next_sql(source: Option<&str>) -> String {
    let values = match source {
        Some(source) => format!("SELECT :tenant, 1 FROM {source}"),
        None => "VALUES (:tenant, 1)".to_owned(),
    };
    format!(
        "INSERT INTO credit_feed (tenant_id, last_seq) {values} ON CONFLICT (tenant_id) \
         DO UPDATE SET last_seq = credit_feed.last_seq + 1 RETURNING last_seq"
    )
}

/// SQLite's next number of tenant `:tenant`, as an expression: one past the highest its
/// ledger rows and alert events carry (two seeks to the end of an index).
pub const SQLITE_NEXT: &str = "MAX(COALESCE((SELECT MAX(seq) FROM credit WHERE tenant_id = :tenant), 0), \
     COALESCE((SELECT MAX(seq) FROM webhook_event WHERE tenant_id = :tenant), 0)) + 1";

/// The tenant's next event number, in `tx`'s open transaction (which keeps the tenant's
/// numbering locked until it ends).
pub async fn next(tx: &mut impl Tx, tenant_id: Uuid) -> Result<i64, DbErr> {
    static SQL: PerBackend = PerBackend::new(|backend| match backend {
        DatabaseBackend::Postgres => next_sql(None),
        _ => format!("SELECT {SQLITE_NEXT} AS last_seq"),
    });
    static SHAPE: LazyLock<Shape> =
        LazyLock::new(|| Shape::default().with("last_seq", ColumnType::BigInteger));
    let statement = of_tenant(&SQL, tx.backend(), tenant_id)?;
    let rows = tx.rows(&statement, &SHAPE).await?;
    let row = rows
        .first()
        .ok_or_else(|| DbErr::Custom("the tenant's event number was not taken".to_owned()))?;
    row.get("last_seq")
}

/// Locks the tenant's numbering in `tx`'s open transaction before anything else of the
/// tenant is locked (PostgreSQL; see the module's comment). Creates its row if it has none:
/// the transaction that creates a tenant calls it too, so that the guard's statement, which
/// only locks the row, always finds one.
pub async fn lock(tx: &mut impl Tx, tenant_id: Uuid) -> Result<(), DbErr> {
    if tx.backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    static SQL: PerBackend = PerBackend::new(|_| {
        "INSERT INTO credit_feed (tenant_id, last_seq) VALUES (:tenant, 0) ON CONFLICT (tenant_id) \
         DO UPDATE SET last_seq = credit_feed.last_seq"
            .to_owned()
    });
    let statement = of_tenant(&SQL, tx.backend(), tenant_id)?;
    tx.run(&statement).await?;
    Ok(())
}

/// One event of a tenant's feed.
#[derive(Clone, Debug)]
pub enum FeedEvent {
    /// A ledger row.
    Ledger(Box<credit::Model>),
    /// An alert event: its number, id, webhook type, time and `data` (as its webhook
    /// carries it).
    Alert {
        seq: i64,
        id: Uuid,
        kind: String,
        at: DateTime<Utc>,
        data: Value,
    },
}

impl FeedEvent {
    pub fn id(&self) -> Uuid {
        match self {
            FeedEvent::Ledger(c) => c.id,
            FeedEvent::Alert { id, .. } => *id,
        }
    }

    /// Its number among the tenant's events.
    pub fn seq(&self) -> i64 {
        match self {
            FeedEvent::Ledger(c) => c.seq.unwrap_or_default(),
            FeedEvent::Alert { seq, .. } => *seq,
        }
    }
}

/// What one read of a feed found.
#[derive(Debug, Default)]
pub struct Read {
    /// The events numbered after the number read from, in number order. A number missing
    /// among them is an event that does not exist (none is ever deleted).
    pub events: Vec<FeedEvent>,
    /// The number read through: the next read starts after it.
    pub through: i64,
    /// Whether events past `through` had committed already (a page was full).
    pub more: bool,
}

/// The newest number of the tenant's committed events (0: none yet), for a member or a key
/// with `CREDITS_READ`.
pub async fn newest(db: &Database, viewer: &Viewer, tenant_id: Uuid) -> Result<i64, AppError> {
    alerts::authorize_read(db, viewer, tenant_id).await?;
    last_committed(db, tenant_id).await
}

/// The newest number of the tenant's committed events: every event up to it has committed.
async fn last_committed(db: &Database, tenant_id: Uuid) -> Result<i64, AppError> {
    static SQL: PerBackend = PerBackend::new(|backend| match backend {
        DatabaseBackend::Postgres => {
            "SELECT last_seq FROM credit_feed WHERE tenant_id = :tenant".to_owned()
        }
        _ => format!("SELECT {SQLITE_NEXT} - 1 AS last_seq"),
    });
    static SHAPE: LazyLock<Shape> =
        LazyLock::new(|| Shape::default().with("last_seq", ColumnType::BigInteger));
    let statement = of_tenant(&SQL, db.backend(), tenant_id)?;
    Ok(match db.query_one(&statement, &SHAPE).await? {
        Some(row) => row.get("last_seq")?,
        None => 0,
    })
}

/// The tenant's events numbered after `after`, in number order, at most a page of each
/// source, for a member or a key with `CREDITS_READ`. The newest committed number is read
/// first: every event up to it has committed, so nothing up to `through` is missed.
pub async fn since(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    after: i64,
) -> Result<Read, AppError> {
    alerts::authorize_read(db, viewer, tenant_id).await?;
    let upto = last_committed(db, tenant_id).await?;
    if upto <= after {
        return Ok(Read {
            through: after,
            ..Read::default()
        });
    }
    static LEDGER: PerBackend = PerBackend::new(|_| {
        format!(
            "SELECT * FROM credit WHERE tenant_id = :tenant AND seq > :after AND seq <= :upto \
             ORDER BY seq LIMIT {PAGE}"
        )
    });
    static ALERTS: PerBackend = PerBackend::new(|_| {
        format!(
            "SELECT seq, id, type, payload, created_at FROM webhook_event \
             WHERE tenant_id = :tenant AND seq > :after AND seq <= :upto ORDER BY seq LIMIT {PAGE}"
        )
    });
    static LEDGER_SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<credit::Entity>);
    static ALERT_SHAPE: LazyLock<Shape> = LazyLock::new(|| {
        Shape::default()
            .with("seq", ColumnType::BigInteger)
            .with("id", ColumnType::Uuid)
            .with("type", ColumnType::Text)
            .with("payload", ColumnType::Text)
            .with("created_at", ColumnType::TimestampWithTimeZone)
    });
    let value = |name: &str| -> Option<sea_orm::Value> {
        Some(match name {
            "tenant" => tenant_id.into(),
            "after" => after.into(),
            "upto" => upto.into(),
            _ => return None,
        })
    };
    let backend = db.backend();
    // The last number of each source that filled a page: nothing past the first is complete.
    let mut cut: Option<i64> = None;
    let mut full = |count: usize, last: Option<i64>| {
        if let (true, Some(last)) = (count as u64 >= PAGE, last) {
            cut = Some(cut.map_or(last, |cut| cut.min(last)));
        }
    };
    let mut events = Vec::new();
    let ledger = db
        .query(&LEDGER.get(backend).bind(value)?, &LEDGER_SHAPE)
        .await?;
    let count = ledger.len();
    for row in ledger {
        events.push(FeedEvent::Ledger(Box::new(row.model::<credit::Entity>()?)));
    }
    full(count, events.last().map(FeedEvent::seq));
    let alerts = db
        .query(&ALERTS.get(backend).bind(value)?, &ALERT_SHAPE)
        .await?;
    let count = alerts.len();
    let mut last_alert = None;
    for row in alerts {
        let payload: String = row.get("payload")?;
        let body: Value = serde_json::from_str(&payload)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("an event's payload: {e}")))?;
        let seq: i64 = row.get("seq")?;
        last_alert = Some(seq);
        events.push(FeedEvent::Alert {
            seq,
            id: row.get("id")?,
            kind: row.get("type")?,
            at: row.get("created_at")?,
            data: body["data"].clone(),
        });
    }
    full(count, last_alert);
    events.sort_by_key(FeedEvent::seq);
    Ok(match cut {
        Some(cut) => {
            events.retain(|e| e.seq() <= cut);
            Read {
                events,
                through: cut,
                more: true,
            }
        }
        None => Read {
            events,
            through: upto,
            more: false,
        },
    })
}
