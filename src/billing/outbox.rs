//! The usage-event outbox, and `usage_event`'s SQL but what the credits code writes (the row
//! a spend of a metered credit type adds inside the guard's own statement, a refund's
//! corrections: `credits::usage_events`): claimed by a reporter
//! for a while, and marked with what Stripe said. A claim is a time (`claimed_until`)
//! written in the claiming transaction, so any number of reporters in any number of processes
//! share the rows: on Postgres the claim skips rows another reporter is claiming
//! (`FOR UPDATE SKIP LOCKED`); on SQLite write transactions are serialized anyway.

use chrono::{DateTime, Utc};
use entity::usage_event;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter, prelude::*};
use serde_json::json;

use crate::{
    auth::{self, Viewer},
    credits::usage_events,
    db::{self, Database, PerBackend},
    error::AppError,
    webhooks,
};

pub use entity::usage_event::{UsageKind, UsageStatus};

/// A usage event a reporter has claimed, with what it needs to send it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The spend it reports (or corrects).
    pub credit_id: Uuid,
    pub kind: UsageKind,
    /// A cancel's event to cancel.
    pub adjusts: Option<Uuid>,
    /// A cancel is not sent after this.
    pub send_by: Option<DateTime<Utc>>,
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
        let lock = db::row_lock(backend, " FOR UPDATE SKIP LOCKED");
        format!(
            "UPDATE usage_event SET claimed_until = :until WHERE id IN (\
             SELECT id FROM usage_event WHERE status = 'PENDING' AND next_attempt_at <= :now \
             AND (claimed_until IS NULL OR claimed_until <= :now) \
             ORDER BY next_attempt_at LIMIT :limit{lock}) \
             RETURNING id, tenant_id, credit_id, kind, adjusts, send_by, identifier, event_name, \
             stripe_customer_id, quantity, attempts, created_at"
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
                tenant_id: row.try_get("", "tenant_id")?,
                credit_id: row.try_get("", "credit_id")?,
                kind: row.try_get("", "kind")?,
                adjusts: row.try_get("", "adjusts")?,
                send_by: row.try_get("", "send_by")?,
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

/// Records the outcome of one claimed event, in one transaction. `sent` says whether the event
/// went to Stripe (an attempt) or was judged without sending (too old, too late). Only a
/// pending event changes: a row another reporter already settled stays as it is.
///
/// The spend's other events follow, under the lock a refund of the spend takes (on
/// PostgreSQL its events, in id order, first):
///
/// - a meter event refunded while it was being sent: delivered, the cancel waiting for it is
///   due (by Stripe's 24 hours from now); failed, that cancel fails too;
/// - a cancel delivered: the event it cancels is `CANCELLED` and the re-report waiting for it
///   is due;
/// - a cancel failed: the re-report is `CANCELLED`, and the event it meant to cancel keeps,
///   as refunded, all that the re-report no longer carried — the usage stays on the invoice,
///   marked.
pub async fn settle(
    db: &Database,
    now: DateTime<Utc>,
    event: &Claimed,
    sent: bool,
    outcome: &Outcome,
) -> Result<(), DbErr> {
    static DELIVERED: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'DELIVERED', attempts = attempts + :attempts, \
         reported_at = :now, claimed_until = NULL \
         WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING' \
         RETURNING refunded_quantity"
            .to_owned()
    });
    static AGAIN: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET attempts = attempts + :attempts, last_error = :error, \
         next_attempt_at = :at, claimed_until = NULL \
         WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING' \
         RETURNING refunded_quantity"
            .to_owned()
    });
    static FAILED: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'FAILED', attempts = attempts + :attempts, \
         last_error = :error, claimed_until = NULL \
         WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING' \
         RETURNING refunded_quantity"
            .to_owned()
    });
    // The cancel waiting for this meter event.
    static ARM: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'PENDING', next_attempt_at = :now, send_by = :send_by \
         WHERE tenant_id = :tenant AND credit_id = :spend AND adjusts = :target \
         AND kind = 'CANCEL' AND status = 'WAITING'"
            .to_owned()
    });
    static NEVER_SENT: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'FAILED', last_error = 'the event to cancel was never \
         delivered' WHERE tenant_id = :tenant AND credit_id = :spend AND adjusts = :target \
         AND kind = 'CANCEL' AND status = 'WAITING'"
            .to_owned()
    });
    static CANCELLED: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'CANCELLED' \
         WHERE tenant_id = :tenant AND id = :target AND status = 'DELIVERED'"
            .to_owned()
    });
    // The re-report waiting for the cancel of `target`.
    static RELEASE: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'PENDING', next_attempt_at = :now \
         WHERE tenant_id = :tenant AND credit_id = :spend AND adjusts = :target \
         AND kind = 'METER_EVENT' AND status = 'WAITING'"
            .to_owned()
    });
    static KEEP: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET refunded_quantity = quantity - COALESCE((SELECT r.quantity \
         FROM usage_event r WHERE r.tenant_id = :tenant AND r.credit_id = :spend \
         AND r.adjusts = :target AND r.kind = 'METER_EVENT' AND r.status = 'WAITING'), 0) \
         WHERE tenant_id = :tenant AND id = :target"
            .to_owned()
    });
    static DROP_WAITING: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET status = 'CANCELLED' \
         WHERE tenant_id = :tenant AND credit_id = :spend AND adjusts = :target \
         AND kind = 'METER_EVENT' AND status = 'WAITING'"
            .to_owned()
    });
    let attempts: i32 = if sent { 1 } else { 0 };
    let (sql, error, at) = match outcome {
        Outcome::Delivered => (&DELIVERED, None, None),
        Outcome::Retry { error, at } | Outcome::Held { error, at } => {
            (&AGAIN, Some(error.as_str()), Some(*at))
        }
        Outcome::Failed { error } => (&FAILED, Some(error.as_str()), None),
    };
    // What the follow-ups are about: the cancel's event, or the meter event itself.
    let target = match event.kind {
        UsageKind::Cancel => event.adjusts,
        UsageKind::MeterEvent => Some(event.id),
    };
    let send_by = now + usage_events::CANCEL_DEADLINE;
    let txn = db.begin_write().await?;
    let backend = txn.get_database_backend();
    let bind = |sql: &PerBackend| {
        sql.get(backend).bind(|name| {
            Some(match name {
                "id" => event.id.into(),
                "tenant" => event.tenant_id.into(),
                "spend" => event.credit_id.into(),
                "target" => target?.into(),
                "attempts" => attempts.into(),
                "now" => now.into(),
                "send_by" => send_by.into(),
                "error" => error?.into(),
                "at" => at?.into(),
                _ => return None,
            })
        })
    };
    if backend == DatabaseBackend::Postgres {
        txn.query_all_raw(bind(&usage_events::LOCK_SPEND)?).await?;
    }
    let settled = txn.query_all_raw(bind(sql)?).await?;
    let Some(row) = settled.first() else {
        return txn.commit().await;
    };
    if let Outcome::Failed { error } = outcome {
        let failed = webhooks::NewEvent {
            tenant_id: Some(event.tenant_id),
            kind: "usage_report.failed",
            data: json!({
                "usageReportId": event.id,
                "kind": event.kind.to_value(),
                "creditId": event.credit_id,
                "eventName": event.event_name,
                "quantity": event.quantity,
                "error": error,
            }),
        };
        webhooks::record(&mut &txn, &failed, now).await?;
    }
    let refunded: i64 = row.try_get("", "refunded_quantity")?;
    // A first statement that must change a row for the rest to apply, and the rest.
    let (gate, follows): (Option<&PerBackend>, &[&PerBackend]) = match (event.kind, outcome) {
        (UsageKind::MeterEvent, _) if refunded == 0 => (None, &[]),
        (UsageKind::MeterEvent, Outcome::Delivered) => (None, &[&ARM]),
        // Only when a cancel was waiting for it: the event was refunded while being sent.
        (UsageKind::MeterEvent, Outcome::Failed { .. }) => {
            (Some(&NEVER_SENT), &[&KEEP, &DROP_WAITING])
        }
        (UsageKind::Cancel, Outcome::Delivered) => (None, &[&CANCELLED, &RELEASE]),
        (UsageKind::Cancel, Outcome::Failed { .. }) => (None, &[&KEEP, &DROP_WAITING]),
        _ => (None, &[]),
    };
    if let Some(gate) = gate
        && txn.execute_raw(bind(gate)?).await?.rows_affected() == 0
    {
        return txn.commit().await;
    }
    for follow in follows {
        txn.execute_raw(bind(follow)?).await?;
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
