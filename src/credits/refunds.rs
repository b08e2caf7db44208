//! Refunds with provenance: a spend (or part of it) given back to exactly the buckets that paid
//! it, newest first — the grants in reverse burn order, then the period's allowance. A bucket
//! that no longer exists is restored for the record only and reported `lapsed`: a closed
//! period's counter (nothing can be spent in it again), a grant past its expiry (the sweeper
//! forfeits it again) or an expired or voided grant (an `EXPIRY` or `VOID` movement takes it
//! straight back). Never more than was spent: the refunds of a spend are summed under the
//! lock of its counter row, which every refund of it takes first (then its grants, in burn
//! order: the guard's lock order).
//!
//! The allowance's part comes off the spend's metered usage (`usage_events::refund`): reduced
//! in the outbox while unsent, cancelled at Stripe and re-reported within 24 hours of Stripe
//! receiving it, else left for the invoice and marked (see the README).

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use entity::{
    credit::{self, Movement},
    credit_grant::{self, GrantStatus},
    tenant_user::Role,
};
use sea_orm::{ColumnType, DatabaseBackend, prelude::*};

use super::{
    Actor, Period, alerts, balance, feed,
    grants::{self, BURN_ORDER_SQL},
    limit::plan_sql,
    usage_events,
};
use crate::{
    auth::{self, ApiScope, Viewer},
    db::{Database, PerBackend, Session, Shape},
    error::AppError,
    idempotency::{self, Claim, Fingerprint},
    webhooks,
};
use serde_json::json;

/// A refund asked for.
pub struct Refund {
    pub tenant_id: Uuid,
    /// The spend (a `SPEND` ledger row).
    pub credit_id: Uuid,
    /// Default: all that is left of it.
    pub amount: Option<i64>,
    pub reason: Option<String>,
    pub idempotency_key: String,
}

/// Where a refund put credits back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Returned {
    /// `None`: the period's allowance.
    pub grant_id: Option<Uuid>,
    pub amount: i64,
    /// Restored for the record only: the period closed, or the grant expired or was voided.
    pub lapsed: bool,
}

/// A refund made (or found again).
pub struct Refunded {
    pub credit: credit::Model,
    pub returned: Vec<Returned>,
    pub replayed: bool,
}

/// Who may refund a tenant's spends: its OWNER or ADMIN, or an API key with `CREDITS_GRANT`.
pub async fn authorize(db: &Database, viewer: &Viewer, tenant_id: Uuid) -> Result<Actor, AppError> {
    let key = auth::api_keys::reaching(db, viewer, tenant_id, ApiScope::CreditsGrant, "credit");
    if let Some(key) = key.await? {
        return Ok(Actor::ApiKey(key));
    }
    match auth::require_member(db, viewer, tenant_id).await? {
        Role::Owner | Role::Admin => Ok(Actor::User(viewer.require()?)),
        Role::Member => Err(AppError::Forbidden),
    }
}

/// Gives back `request.amount` of a spend, in one transaction, idempotent on its key.
pub async fn refund(
    db: &Database,
    actor: Actor,
    request: Refund,
    retention: Duration,
    now: DateTime<Utc>,
) -> Result<Refunded, AppError> {
    if request.amount.is_some_and(|a| a < 1) {
        return Err(AppError::bad_input("amount must be at least 1"));
    }
    if request
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 500)
    {
        return Err(AppError::bad_input("reason must be at most 500 characters"));
    }
    let key = idempotency::check_key(Some(request.idempotency_key.clone()))?.unwrap_or_default();
    let fingerprint = Fingerprint::new(
        "refundCredit",
        &[
            &request.tenant_id.to_string(),
            &request.credit_id.to_string(),
            &request.amount.map(|a| a.to_string()).unwrap_or_default(),
            request.reason.as_deref().unwrap_or(""),
        ],
    );
    let refund_id = Uuid::now_v7();
    let mut session = db.session().await?;
    session.begin().await?;
    let outcome = async {
        feed::lock(&mut session, request.tenant_id).await?;
        let claim = idempotency::claim(
            &mut session,
            request.tenant_id,
            &key,
            &fingerprint,
            refund_id,
            now,
            retention,
        )
        .await?;
        if let Claim::Replay(id) = claim {
            let credit = row(&mut session, request.tenant_id, id)
                .await?
                .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a refund is gone")))?;
            let returned = given_back(&mut session, &credit, now).await?;
            return Ok(Refunded {
                credit,
                returned,
                replayed: true,
            });
        }
        held_by_pending_reservation(&mut session, &request).await?;
        let refunded = give_back(&mut session, actor, &request, refund_id, now).await?;
        let credit = &refunded.credit;
        let balance =
            balance::balance(&mut session, credit.tenant_id, &credit.feature, now).await?;
        let buckets: Vec<serde_json::Value> = refunded
            .returned
            .iter()
            .map(|r| json!({ "grantId": r.grant_id, "amount": r.amount, "lapsed": r.lapsed }))
            .collect();
        let event = webhooks::NewEvent {
            tenant_id: Some(credit.tenant_id),
            kind: "credits.refunded",
            data: balance::with_balance(
                json!({
                    "creditId": credit.id,
                    "refundOf": credit.refund_of,
                    "amount": credit.amount,
                    "creditType": credit.kind,
                    "reason": credit.reason,
                    "buckets": buckets,
                }),
                &balance,
            ),
        };
        webhooks::events::record(&mut session, &event, now).await?;
        alerts::reconcile(&mut session, credit.tenant_id, &credit.feature, now).await?;
        Ok(refunded)
    }
    .await;
    session.finish(outcome).await
}

/// `BAD_USER_INPUT` when the spend is the hold of a reservation still pending: it is settled
/// by confirming or releasing it (a refund beside would give back twice).
async fn held_by_pending_reservation(
    session: &mut Session,
    request: &Refund,
) -> Result<(), AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "SELECT r.id FROM credit c JOIN credit_reservation r ON r.tenant_id = c.tenant_id \
         AND r.status = 'PENDING' WHERE c.tenant_id = :tenant AND c.id = :spend \
         AND c.object_id = :reservation"
            .to_owned()
    });
    let spend = row(session, request.tenant_id, request.credit_id).await?;
    let Some(reservation) = spend
        .and_then(|c| c.object_id)
        .and_then(|o| Uuid::parse_str(&o).ok())
    else {
        return Ok(());
    };
    let statement = SQL.get(session.backend()).bind(|name| {
        Some(match name {
            "tenant" => request.tenant_id.into(),
            "spend" => request.credit_id.into(),
            "reservation" => reservation.to_string().into(),
            _ => return None,
        })
    })?;
    let held = session
        .query(&statement, &Shape::default().with("id", ColumnType::Uuid))
        .await?
        .into_iter()
        .any(|r| r.get::<Uuid>("id").is_ok_and(|id| id == reservation));
    match held {
        true => Err(AppError::bad_input(
            "this spend holds a pending reservation: confirm or release the reservation instead",
        )),
        false => Ok(()),
    }
}

/// Gives back `amount` (default: all that is left) of spend `credit_id` inside the session's
/// open transaction, as `refund` does but with no key of its own: a reservation's release.
pub async fn give_back_within(
    session: &mut Session,
    actor: Actor,
    tenant_id: Uuid,
    credit_id: Uuid,
    amount: Option<i64>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Refunded, AppError> {
    let request = Refund {
        tenant_id,
        credit_id,
        amount,
        reason: Some(reason.to_owned()),
        idempotency_key: String::new(),
    };
    let refunded = give_back(session, actor, &request, Uuid::now_v7(), now).await?;
    alerts::reconcile(session, tenant_id, &refunded.credit.feature, now).await?;
    Ok(refunded)
}

/// One bucket of a spend: what it paid and what was refunded to it so far.
struct Bucket {
    grant: Option<credit_grant::Model>,
    paid: i64,
    refunded: i64,
}

async fn give_back(
    session: &mut Session,
    actor: Actor,
    request: &Refund,
    refund_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Refunded, AppError> {
    let tenant_id = request.tenant_id;
    let spend = row(session, tenant_id, request.credit_id)
        .await?
        .filter(|c| c.movement == Movement::Spend)
        .ok_or(AppError::NotFound("credit"))?;
    let backend = session.backend();
    // The spend's counter row first: every refund of this spend (and every spend of its
    // period) waits here.
    static LOCK: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_usage SET used = used WHERE tenant_id = :tenant AND feature = :feature \
         AND period_start = :period"
            .to_owned()
    });
    let value = |name: &str| -> Option<sea_orm::Value> {
        Some(match name {
            "tenant" => tenant_id.into(),
            "feature" => spend.feature.as_str().into(),
            "period" => spend.period_start.into(),
            "spend" => spend.id.into(),
            "now" => now.into(),
            "month" => Period::calendar_month(now).start.into(),
            "lifetime" => Period::lifetime().start.into(),
            _ => return None,
        })
    };
    if session.execute(&LOCK.get(backend).bind(value)?).await? != 1 {
        return Err(AppError::Internal(anyhow::anyhow!(
            "a spend's counter row is gone"
        )));
    }
    let mut buckets = buckets(session, &spend, value).await?;
    let left: i64 = buckets.iter().map(|b| b.paid - b.refunded).sum();
    let amount = request.amount.unwrap_or(left);
    if amount < 1 || amount > left {
        return Err(AppError::bad_input(format!(
            "at most {left} of this spend's {} credits is left to refund",
            spend.amount
        )));
    }
    // Is the spend's period still the one that counts now?
    static CURRENT: PerBackend = PerBackend::new(|backend: DatabaseBackend| {
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS current FROM ({}) p WHERE p.period_start = :period",
            plan_sql(backend)
        )
    });
    let current = session
        .query(&CURRENT.get(backend).bind(value)?, &SHAPE)
        .await?
        .first()
        .map(|r| r.get::<i64>("current"))
        .transpose()?
        .unwrap_or(0)
        > 0;
    // Newest first: the grants in reverse burn order, then the allowance.
    let mut missing = amount;
    let mut returned = Vec::new();
    for bucket in buckets.iter_mut().rev() {
        let take = missing.min(bucket.paid - bucket.refunded);
        if take == 0 {
            continue;
        }
        missing -= take;
        bucket.refunded += take;
        let lapsed = match &bucket.grant {
            None => !current,
            Some(g) => {
                matches!(g.status, GrantStatus::Expired | GrantStatus::Voided)
                    || g.expires_at.is_some_and(|at| at <= now)
            }
        };
        returned.push(Returned {
            grant_id: bucket.grant.as_ref().map(|g| g.id),
            amount: take,
            lapsed,
        });
        if missing == 0 {
            break;
        }
    }
    let reason = request.reason.clone();
    let seq = feed::next(session, tenant_id).await?;
    let refund = credit::Model {
        id: refund_id,
        tenant_id,
        user_id: match actor {
            Actor::User(id) => Some(id),
            _ => None,
        },
        kind: spend.kind.clone(),
        amount,
        object_id: spend.object_id.clone(),
        idempotency_key: Some(request.idempotency_key.clone()).filter(|k| !k.is_empty()),
        feature: spend.feature.clone(),
        period_start: spend.period_start,
        created_at: now,
        subject: spend.subject.clone(),
        metadata: None,
        actor_type: actor.kind(),
        actor_id: actor.id(),
        movement: Movement::Refund,
        grant_id: None,
        refund_of: Some(spend.id),
        reason: reason.clone(),
        seq: Some(seq),
    };
    insert_row(session, &refund).await?;
    let allowance: i64 = returned
        .iter()
        .filter(|r| r.grant_id.is_none())
        .map(|r| r.amount)
        .sum();
    let granted: i64 = returned
        .iter()
        .filter(|r| r.grant_id.is_some())
        .map(|r| r.amount)
        .sum();
    if allowance > 0 || granted > 0 {
        static COUNTER: PerBackend = PerBackend::new(|_| {
            "UPDATE credit_usage SET used = used - :amount, grants_used = grants_used - :granted \
             WHERE tenant_id = :tenant AND feature = :feature AND period_start = :period"
                .to_owned()
        });
        let statement = COUNTER.get(backend).bind(|name| match name {
            "amount" => Some(allowance.into()),
            "granted" => Some(granted.into()),
            name => value(name),
        })?;
        session.execute(&statement).await?;
    }
    if allowance > 0 {
        usage_events::refund(session, tenant_id, spend.id, allowance, now).await?;
    }
    for r in &returned {
        let Some(grant_id) = r.grant_id else { continue };
        let grant = buckets
            .iter()
            .find_map(|b| b.grant.as_ref().filter(|g| g.id == grant_id))
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a refunded grant is gone")))?;
        static ALLOCATION: PerBackend = PerBackend::new(|_| {
            "INSERT INTO credit_allocation (tenant_id, credit_id, grant_id, amount) \
             VALUES (:tenant, :refund, :grant, :amount)"
                .to_owned()
        });
        static RESTORE: PerBackend = PerBackend::new(|_| {
            "UPDATE credit_grant SET remaining = remaining + :amount, status = 'ACTIVE' \
             WHERE tenant_id = :tenant AND id = :grant AND status IN ('ACTIVE', 'EXHAUSTED')"
                .to_owned()
        });
        let bound = |name: &str| -> Option<sea_orm::Value> {
            match name {
                "refund" => Some(refund_id.into()),
                "grant" => Some(grant_id.into()),
                "amount" => Some(r.amount.into()),
                name => value(name),
            }
        };
        session
            .execute(&ALLOCATION.get(backend).bind(bound)?)
            .await?;
        match grant.status {
            GrantStatus::Expired | GrantStatus::Voided => {
                // Restored for the record, and taken straight back as it was before.
                let mut moved = grant.clone();
                moved.actor_type = actor.kind();
                moved.actor_id = actor.id();
                moved.reason = Some(format!(
                    "refunded to a grant that is {}",
                    grant.status.to_value().to_lowercase()
                ));
                let kind = match grant.status {
                    GrantStatus::Voided => Movement::Void,
                    _ => Movement::Expiry,
                };
                grants::movement(session, &moved, kind, r.amount, now).await?;
            }
            _ => {
                session.execute(&RESTORE.get(backend).bind(bound)?).await?;
            }
        }
    }
    Ok(Refunded {
        credit: refund,
        returned,
        replayed: false,
    })
}

static SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::default()
        .with("current", ColumnType::BigInteger)
        .with("paid", ColumnType::BigInteger)
        .with("refunded", ColumnType::BigInteger)
});

/// A spend's buckets in the order they paid (the allowance, then its grants in burn order),
/// the grants locked (in that order: the guard's).
async fn buckets(
    session: &mut Session,
    spend: &credit::Model,
    value: impl Fn(&str) -> Option<sea_orm::Value>,
) -> Result<Vec<Bucket>, AppError> {
    static REFUNDED: PerBackend = PerBackend::new(|_| {
        "SELECT CAST(COALESCE(SUM(c.amount), 0) AS BIGINT) AS refunded FROM credit c \
         WHERE c.tenant_id = :tenant AND c.refund_of = :spend AND c.kind = 'REFUND'"
            .to_owned()
    });
    static GRANTS: PerBackend = PerBackend::new(|backend| {
        let lock = crate::db::row_lock(backend, " FOR UPDATE OF g");
        format!(
            "SELECT g.*, a.amount AS paid, CAST(COALESCE((SELECT SUM(r.amount) FROM credit_allocation r \
             JOIN credit c ON c.tenant_id = r.tenant_id AND c.id = r.credit_id \
             WHERE r.tenant_id = g.tenant_id AND r.grant_id = g.id AND c.refund_of = :spend), 0) \
             AS BIGINT) AS refunded \
             FROM credit_allocation a JOIN credit_grant g ON g.tenant_id = a.tenant_id \
             AND g.id = a.grant_id WHERE a.tenant_id = :tenant AND a.credit_id = :spend \
             ORDER BY {BURN_ORDER_SQL}{lock}"
        )
    });
    let backend = session.backend();
    let rows = session
        .query(
            &GRANTS.get(backend).bind(&value)?,
            &Shape::of::<credit_grant::Entity>()
                .with("paid", ColumnType::BigInteger)
                .with("refunded", ColumnType::BigInteger),
        )
        .await?;
    let mut grants = Vec::with_capacity(rows.len());
    for row in rows {
        let paid: i64 = row.get("paid")?;
        let refunded: i64 = row.get("refunded")?;
        grants.push(Bucket {
            grant: Some(row.model::<credit_grant::Entity>()?),
            paid,
            refunded,
        });
    }
    let all_refunded: i64 = session
        .query(&REFUNDED.get(backend).bind(&value)?, &SHAPE)
        .await?
        .first()
        .map(|r| r.get::<i64>("refunded"))
        .transpose()?
        .unwrap_or(0);
    let from_grants: i64 = grants.iter().map(|b| b.paid).sum();
    let to_grants: i64 = grants.iter().map(|b| b.refunded).sum();
    let mut buckets = vec![Bucket {
        grant: None,
        paid: spend.amount - from_grants,
        refunded: all_refunded - to_grants,
    }];
    buckets.extend(grants);
    Ok(buckets)
}

/// What a refund row gave back, from its allocations (a replay's answer).
async fn given_back(
    session: &mut Session,
    refund: &credit::Model,
    now: DateTime<Utc>,
) -> Result<Vec<Returned>, AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "SELECT g.*, a.amount AS paid FROM credit_allocation a JOIN credit_grant g \
         ON g.tenant_id = a.tenant_id AND g.id = a.grant_id \
         WHERE a.tenant_id = :tenant AND a.credit_id = :refund"
            .to_owned()
    });
    let statement = SQL.get(session.backend()).bind(|name| match name {
        "tenant" => Some(refund.tenant_id.into()),
        "refund" => Some(refund.id.into()),
        _ => None,
    })?;
    let rows = session
        .query(
            &statement,
            &Shape::of::<credit_grant::Entity>().with("paid", ColumnType::BigInteger),
        )
        .await?;
    let mut returned = Vec::new();
    let mut to_grants = 0;
    for row in rows {
        let amount: i64 = row.get("paid")?;
        let g = row.model::<credit_grant::Entity>()?;
        to_grants += amount;
        returned.push(Returned {
            grant_id: Some(g.id),
            amount,
            lapsed: matches!(g.status, GrantStatus::Expired | GrantStatus::Voided)
                || g.expires_at.is_some_and(|at| at <= now),
        });
    }
    if refund.amount > to_grants {
        returned.push(Returned {
            grant_id: None,
            amount: refund.amount - to_grants,
            lapsed: false,
        });
    }
    Ok(returned)
}

async fn row(
    session: &mut Session,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<credit::Model>, AppError> {
    Ok(session.find_owned::<credit::Entity>(tenant_id, id).await?)
}

async fn insert_row(session: &mut Session, c: &credit::Model) -> Result<(), AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "INSERT INTO credit (id, tenant_id, user_id, type, amount, object_id, idempotency_key, \
         feature, period_start, created_at, subject, actor_type, actor_id, kind, refund_of, \
         reason, seq) VALUES (:id, :tenant, :user, :type, :amount, :object, :key, :feature, \
         :period, :now, :subject, :actor_type, :actor_id, 'REFUND', :refund_of, :reason, :seq)"
            .to_owned()
    });
    let statement = SQL.get(session.backend()).bind(|name| {
        Some(match name {
            "id" => c.id.into(),
            "tenant" => c.tenant_id.into(),
            "user" => c.user_id.into(),
            "type" => c.kind.as_str().into(),
            "amount" => c.amount.into(),
            "object" => c.object_id.as_deref().into(),
            "key" => c.idempotency_key.as_deref().into(),
            "feature" => c.feature.as_str().into(),
            "period" => c.period_start.into(),
            "now" => c.created_at.into(),
            "subject" => c.subject.as_deref().into(),
            "actor_type" => c.actor_type.to_value().into(),
            "actor_id" => c.actor_id.into(),
            "refund_of" => c.refund_of.into(),
            "reason" => c.reason.as_deref().into(),
            "seq" => c.seq.into(),
            _ => return None,
        })
    })?;
    session.execute(&statement).await?;
    Ok(())
}
