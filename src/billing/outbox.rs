//! The usage-event outbox, and `usage_event`'s SQL but the row a spend of a metered credit
//! type adds inside the guard's own statement (`credits::usage_events`): claimed by a reporter
//! for a while, and marked with what Stripe said. A claim is a time (`claimed_until`)
//! written in the claiming transaction, so any number of reporters in any number of processes
//! share the rows: on Postgres the claim skips rows another reporter is claiming
//! (`FOR UPDATE SKIP LOCKED`); on SQLite write transactions are serialized anyway.

use chrono::{DateTime, Utc};
use entity::usage_event;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter, prelude::*};

use crate::{
    auth::{self, Viewer},
    db::{self, Database, PerBackend},
    error::AppError,
};

pub use entity::usage_event::UsageStatus;

/// A usage event a reporter has claimed, with what it needs to send it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub identifier: String,
    pub event_name: String,
    pub stripe_customer_id: String,
    pub quantity: i64,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` due events until `until`: pending, due, and not claimed by anyone
/// else (or their claim has run out — the reporter holding it died).
pub async fn claim(
    db: &Database,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Claimed>, DbErr> {
    static CLAIM: PerBackend = PerBackend::new(|backend| {
        let lock = match backend {
            DatabaseBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        format!(
            "UPDATE usage_event SET claimed_until = :until WHERE id IN (\
             SELECT id FROM usage_event WHERE status = 'PENDING' AND next_attempt_at <= :now \
             AND (claimed_until IS NULL OR claimed_until <= :now) \
             ORDER BY next_attempt_at LIMIT :limit{lock}) \
             RETURNING id, identifier, event_name, stripe_customer_id, quantity, attempts, created_at"
        )
    });
    let txn = db.begin_write().await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let statement = CLAIM.get(txn.get_database_backend()).bind(|name| {
        Some(match name {
            "now" => now.into(),
            "until" => until.into(),
            "limit" => limit.into(),
            _ => return None,
        })
    })?;
    let rows = txn.query_all_raw(statement).await?;
    txn.commit().await?;
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                id: row.try_get("", "id")?,
                identifier: row.try_get("", "identifier")?,
                event_name: row.try_get("", "event_name")?,
                stripe_customer_id: row.try_get("", "stripe_customer_id")?,
                quantity: row.try_get("", "quantity")?,
                attempts: row.try_get("", "attempts")?,
                created_at: row.try_get("", "created_at")?,
            })
        })
        .collect()
}

/// What became of one claimed event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stripe has it.
    Delivered,
    /// Try again at the given time; the error is kept.
    Retry { error: String, at: DateTime<Utc> },
    /// Stripe refused our key (configuration, not the event): try again at the given time
    /// without counting an attempt; the error is kept.
    Held { error: String, at: DateTime<Utc> },
    /// Give up; the error is kept.
    Failed { error: String },
}

/// Records the outcomes of a batch, in one transaction. `sent` says whether the event went
/// to Stripe (an attempt) or was judged without sending (too old). Only pending events
/// change: a row another reporter already settled stays as it is.
pub async fn settle(
    db: &Database,
    now: DateTime<Utc>,
    outcomes: &[(Uuid, bool, Outcome)],
) -> Result<(), DbErr> {
    if outcomes.is_empty() {
        return Ok(());
    }
    static DELIVERED: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'DELIVERED', attempts = attempts + :attempts, \
         reported_at = :now, claimed_until = NULL WHERE id = :id AND status = 'PENDING'"
            .to_owned()
    });
    static AGAIN: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET attempts = attempts + :attempts, last_error = :error, \
         next_attempt_at = :at, claimed_until = NULL WHERE id = :id AND status = 'PENDING'"
            .to_owned()
    });
    static FAILED: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'FAILED', attempts = attempts + :attempts, \
         last_error = :error, claimed_until = NULL WHERE id = :id AND status = 'PENDING'"
            .to_owned()
    });
    let txn = db.begin_write().await?;
    let backend = txn.get_database_backend();
    for (id, sent, outcome) in outcomes {
        let attempts: i32 = if *sent { 1 } else { 0 };
        let (sql, error, at) = match outcome {
            Outcome::Delivered => (&DELIVERED, None, None),
            Outcome::Retry { error, at } | Outcome::Held { error, at } => {
                (&AGAIN, Some(error.as_str()), Some(*at))
            }
            Outcome::Failed { error } => (&FAILED, Some(error.as_str()), None),
        };
        let statement = sql.get(backend).bind(|name| {
            Some(match name {
                "id" => (*id).into(),
                "attempts" => attempts.into(),
                "now" => now.into(),
                "error" => error?.into(),
                "at" => at?.into(),
                _ => return None,
            })
        })?;
        txn.execute_raw(statement).await?;
    }
    txn.commit().await
}

/// A tenant's usage events, newest first, `first` after the event `after` (keyset), for its
/// OWNER or ADMIN. The bool says whether more follow.
pub async fn reports(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    first: u64,
    after: Option<Uuid>,
) -> Result<(Vec<usage_event::Model>, bool), AppError> {
    auth::require_admin(db, viewer, tenant_id).await?;
    let query = usage_event::Entity::find().filter(usage_event::Column::TenantId.eq(tenant_id));
    let id = usage_event::Column::Id;
    Ok(db::keyset(&db.read, query, id, first, after).await?)
}
