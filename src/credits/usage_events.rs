//! The Stripe usage event a spend of a metered credit type adds to the outbox, inside the
//! guard's own statement, and what a refund of the spend does to it, inside the refund's
//! transaction (the reporter in `billing` sends both). Their SQL lives with the credits code
//! that writes it.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use entity::usage_event::{self, UsageKind, UsageStatus};
use sea_orm::{ActiveEnum, DbErr, prelude::Uuid};

use crate::{
    config::Meter,
    db::{PerBackend, Session, Shape},
};

/// The usage event of one spend, for the guard's statement: inserted only for a tenant with a
/// Stripe customer, and only when `condition` (SQL) holds. The spend's own parameters are
/// `:tenant`, `:ledger_id`, `:cost` and `:now`; the event's are `spend_event_value`'s.
pub fn spend_event_sql(condition: &str) -> String {
    format!(
        "INSERT INTO usage_event (id, tenant_id, credit_id, unit, event_name, stripe_customer_id, \
         quantity, identifier, status, attempts, next_attempt_at, created_at) \
         SELECT :usage_id, :tenant, :ledger_id, :unit, :event_name, t.stripe_customer_id, :cost, \
         :identifier, 'PENDING', 0, :now, :now FROM tenant t \
         WHERE t.id = :tenant AND t.stripe_customer_id IS NOT NULL AND {condition}"
    )
}

/// The value of the usage event's own parameter `name` in `spend_event_sql`, for event `id`
/// of `meter`; `None` for any other name.
pub fn spend_event_value(name: &str, id: Uuid, meter: &Meter) -> Option<sea_orm::Value> {
    Some(match name {
        "usage_id" => id.into(),
        "unit" => meter.unit.as_str().into(),
        "event_name" => meter.event_name.as_str().into(),
        "identifier" => identifier(id).into(),
        _ => return None,
    })
}

/// The meter-event `identifier` of a usage event: derived from its id alone, so every send of
/// the row — after a crash, by another replica — carries the same one, and Stripe keeps one.
pub fn identifier(usage_event_id: Uuid) -> String {
    format!("tollgate-{usage_event_id}")
}

/// How long after Stripe received a meter event a refund still cancels it. Stripe cancels
/// events within 24 hours of receiving them; the last hour is left for the cancel to go out.
pub const CANCEL_WITHIN: chrono::Duration = chrono::Duration::hours(23);

/// The last moment a cancel is sent, after Stripe received the event it cancels (24 hours, less
/// a margin for the request's own time): a cancel not sent by then fails and the usage stays
/// on the invoice — never a re-report beside an event Stripe still counts.
pub const CANCEL_DEADLINE: chrono::Duration = chrono::Duration::minutes(24 * 60 - 5);

/// Takes `amount` credits off the metered usage of `spend_id` (a refund of its allowance
/// part), inside the refund's transaction. The spend's events are locked first, in id order
/// (as a settled cancel locks them), and the one that stands — not cancelled, not being
/// cancelled — is corrected:
///
/// - not yet sent (nor being sent): `quantity` less `amount`, `CANCELLED` at zero;
/// - else `amount` is added to its `refunded_quantity`, and
///   - received by Stripe less than `CANCEL_WITHIN` ago: a `CANCEL` of it, sent as a meter
///     event adjustment, and — when part of it stands — a re-report of that part, `WAITING`
///     until the cancel has gone through (same meter timestamp as the original);
///   - being sent: the same, the cancel itself `WAITING` until Stripe has the event (the
///     reporter arms it when it records the delivery, and fails it if the event fails);
///   - older, or failed: nothing more — it stays on the invoice, marked.
///
/// Whatever happens, for the standing events of a spend `quantity - refunded_quantity` is
/// its allowance part less the allowance refunded (`tollgate verify` checks it).
pub async fn refund(
    session: &mut Session,
    tenant_id: Uuid,
    spend_id: Uuid,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    static SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<usage_event::Entity>);
    let backend = session.backend();
    let statement = LOCK_SPEND.get(backend).bind(|name| {
        Some(match name {
            "tenant" => tenant_id.into(),
            "spend" => spend_id.into(),
            _ => return None,
        })
    })?;
    let events = session
        .query(&statement, &SHAPE)
        .await?
        .into_iter()
        .map(|row| row.model::<usage_event::Entity>())
        .collect::<Result<Vec<_>, _>>()?;
    let Some(standing) = standing(&events) else {
        return Ok(());
    };
    let claimed = standing.claimed_until.is_some_and(|until| until >= now);
    let unsent = matches!(standing.status, UsageStatus::Pending | UsageStatus::Waiting) && !claimed;
    if unsent {
        static REDUCE: PerBackend = PerBackend::new(|_| {
            "UPDATE usage_event SET quantity = CASE WHEN quantity > :amount \
             THEN quantity - :amount ELSE 0 END, status = CASE WHEN quantity > :amount \
             THEN status ELSE 'CANCELLED' END WHERE tenant_id = :tenant AND id = :id"
                .to_owned()
        });
        return change(session, &REDUCE, standing, amount).await;
    }
    static MARK: PerBackend = PerBackend::new(|_| {
        "UPDATE usage_event SET refunded_quantity = refunded_quantity + :amount \
         WHERE tenant_id = :tenant AND id = :id"
            .to_owned()
    });
    change(session, &MARK, standing, amount).await?;
    // Being sent: the cancel waits for Stripe's answer (armed when it is delivered). Received
    // within the window: the cancel is due now.
    let (status, send_by) = match (standing.status, standing.reported_at) {
        (UsageStatus::Pending, _) => (UsageStatus::Waiting, None),
        (UsageStatus::Delivered, Some(at)) if at > now - CANCEL_WITHIN => {
            (UsageStatus::Pending, Some(at + CANCEL_DEADLINE))
        }
        _ => return Ok(()),
    };
    let cancel = usage_event::Model {
        id: Uuid::now_v7(),
        quantity: standing.quantity,
        status,
        created_at: now,
        kind: UsageKind::Cancel,
        adjusts: Some(standing.id),
        send_by,
        ..standing.clone()
    };
    insert(session, &cancel, now).await?;
    let rest = standing.quantity - standing.refunded_quantity - amount;
    if rest > 0 {
        let again = usage_event::Model {
            id: Uuid::now_v7(),
            quantity: rest,
            status: UsageStatus::Waiting,
            kind: UsageKind::MeterEvent,
            adjusts: Some(standing.id),
            send_by: None,
            // The meter event's timestamp: the usage's own time, in its own billing period.
            created_at: standing.created_at,
            ..standing.clone()
        };
        insert(session, &again, now).await?;
    }
    Ok(())
}

/// The event of a spend that stands: a meter event not cancelled and not being cancelled
/// (no cancel of it that has not failed). At most one (`tollgate verify` checks it).
fn standing(events: &[usage_event::Model]) -> Option<&usage_event::Model> {
    events.iter().rev().find(|e| {
        e.kind == UsageKind::MeterEvent
            && e.status != UsageStatus::Cancelled
            && !events.iter().any(|c| {
                c.kind == UsageKind::Cancel
                    && c.adjusts == Some(e.id)
                    && c.status != UsageStatus::Failed
            })
    })
}

/// A spend's usage events (`:tenant`, `:spend`), locked in id order: the one order every
/// transaction that changes several of them — a refund, a settled cancel — takes them in, so
/// they cannot deadlock.
pub static LOCK_SPEND: PerBackend = PerBackend::new(|backend| {
    format!(
        "SELECT * FROM usage_event WHERE tenant_id = :tenant AND credit_id = :spend \
         ORDER BY id{}",
        crate::db::row_lock(backend, " FOR UPDATE")
    )
});

async fn change(
    session: &mut Session,
    sql: &PerBackend,
    event: &usage_event::Model,
    amount: i64,
) -> Result<(), DbErr> {
    let statement = sql.get(session.backend()).bind(|name| {
        Some(match name {
            "amount" => amount.into(),
            "tenant" => event.tenant_id.into(),
            "id" => event.id.into(),
            _ => return None,
        })
    })?;
    session.execute(&statement).await?;
    Ok(())
}

/// Adds a row to the outbox (a cancel, or a re-report), due at `now`.
async fn insert(
    session: &mut Session,
    e: &usage_event::Model,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "INSERT INTO usage_event (id, tenant_id, credit_id, unit, event_name, \
         stripe_customer_id, quantity, identifier, status, attempts, next_attempt_at, \
         created_at, refunded_quantity, kind, adjusts, send_by) VALUES (:id, :tenant, :spend, \
         :unit, :event_name, :customer, :quantity, :identifier, :status, 0, :now, :created, 0, \
         :kind, :adjusts, :send_by)"
            .to_owned()
    });
    let statement = SQL.get(session.backend()).bind(|name| {
        Some(match name {
            "id" => e.id.into(),
            "tenant" => e.tenant_id.into(),
            "spend" => e.credit_id.into(),
            "unit" => e.unit.as_str().into(),
            "event_name" => e.event_name.as_str().into(),
            "customer" => e.stripe_customer_id.as_str().into(),
            "quantity" => e.quantity.into(),
            "identifier" => identifier(e.id).into(),
            "status" => e.status.to_value().into(),
            "now" => now.into(),
            "created" => e.created_at.into(),
            "kind" => e.kind.to_value().into(),
            "adjusts" => e.adjusts.into(),
            "send_by" => e.send_by.into(),
            _ => return None,
        })
    })?;
    session.execute(&statement).await?;
    Ok(())
}
