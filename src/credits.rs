//! THE DOMAIN: credit types, plans and their features, usage, and `consume` — the credits
//! guard. Its invariants (DESIGN.md), which every change here must keep:
//!
//! 1. Atomic: `consume` runs inside the caller's transaction, together with the insert of the
//!    resource it pays for; the plan is read and the counter incremented by one conditional
//!    upsert (`INSERT … ON CONFLICT DO UPDATE SET used = used + cost WHERE used + cost <=
//!    limit`), never a read followed by a write.
//! 2. Never overspend: an action is allowed only if its *whole* cost fits; the database row
//!    lock, not anything in this process, decides between concurrent spenders.
//! 3. Ledger = counters = resources: each spend adds one ledger row and the same amount to the
//!    counter row of its period (`credit.period_start` names that row).
//! 4. Fail closed: no subscription, no feature or `NOT_INCLUDED` → `FEATURE_NOT_INCLUDED`;
//!    `INCLUDED` and `UNLIMITED` are allowed and still recorded.
//! 5. Periods in UTC: `MONTHLY` counts within the subscription's current period when known,
//!    else the calendar month; `MAX` is lifetime.

use chrono::{DateTime, Utc};
use entity::credit_usage;
use sea_orm::{ConnectionTrait, DatabaseBackend, EntityTrait, prelude::*};

use crate::{
    config::CreditTypeConfig,
    db,
    error::{AppError, Shortfall},
};

mod audit;
mod period;
mod plans;
mod usage;

pub use audit::{Report, verify};
pub use period::Period;
pub use plans::{
    PlanWithFeatures, StripeSubscriptionChange, plans, record_stripe_subscription, subscribe,
    sync_plans, tenant_subscriptions,
};
pub use usage::{FeatureUsage, HistoryFilter, history, usage};

/// The plan feature every credit type spends from.
pub const CREDITS_FEATURE: &str = "credits";

/// The kinds of guarded action. Their `value`s are fixed here; what they cost is config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditKind {
    ProjectCreation,
    TaskCreation,
}

impl CreditKind {
    pub const ALL: [CreditKind; 2] = [CreditKind::ProjectCreation, CreditKind::TaskCreation];

    pub fn value(self) -> &'static str {
        match self {
            CreditKind::ProjectCreation => "credit-project-creation",
            CreditKind::TaskCreation => "credit-task-creation",
        }
    }

    pub fn from_value(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.value() == value)
    }
}

pub use entity::plan_feature::FeatureLimitType;

/// What a tenant's plan allows of the `credits` feature now.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entitlement {
    kind: FeatureLimitType,
    /// The limit, for `MONTHLY` and `MAX`.
    value: i64,
    /// The period a spend now counts in.
    period: Period,
}

/// The tenant's entitlement to spend credits at `now`; `FEATURE_NOT_INCLUDED` when it has
/// none (no subscription, no such feature, or `NOT_INCLUDED`).
async fn entitlement(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Entitlement, AppError> {
    let not_included = || AppError::FeatureNotIncluded {
        feature: CREDITS_FEATURE.to_owned(),
    };
    let Some(PlanFeatureRow {
        period,
        feature: Some(feature),
    }) = subscribed_feature(conn, tenant_id, CREDITS_FEATURE, now).await?
    else {
        return Err(not_included());
    };
    if feature.kind == FeatureLimitType::NotIncluded {
        return Err(not_included());
    }
    Ok(Entitlement {
        kind: feature.kind,
        value: feature.value,
        period: Period::current(feature.kind, period, now),
    })
}

/// One guarded action's spend, as the caller describes it.
pub struct Spend<'a> {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub credit_type: &'a CreditTypeConfig,
    /// The id of the resource the credits pay for.
    pub object_id: String,
    pub idempotency_key: Option<String>,
}

/// A row the credits pay for, inserted by `consume` only if the spend is allowed: its table,
/// columns and values.
pub struct Paid {
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub values: Vec<sea_orm::Value>,
}

/// The tenant's plan for the feature, read inside the guard's own statement: the limit
/// (its value for `MONTHLY`/`MAX`, none for `INCLUDED`/`UNLIMITED`, NULL — refused — for
/// anything else) and the period the spend counts in (lifetime for `MAX`; the subscription's
/// current period when `now` is in it; else the calendar month). No row: no subscription or
/// no such feature. `$1` tenant, `$2` feature, `$3` start of the calendar month, `$5` start of
/// lifetime, `$6` now.
const PLAN: &str = "SELECT CASE WHEN pf.type IN ('MONTHLY', 'MAX') THEN pf.value \
WHEN pf.type IN ('INCLUDED', 'UNLIMITED') THEN 9223372036854775807 END AS lim, \
PERIOD_START AS period_start \
FROM tenant_subscription ts JOIN plan_feature pf ON pf.plan_id = ts.plan_id \
WHERE ts.tenant_id = $1 AND pf.name = $2";

/// The start of the period a spend of plan feature `pf` of subscription `ts` counts in at
/// `$6` (now), given `$3` (the calendar month's start) and `$5` (lifetime's): the same rule
/// as `Period::current`, in SQL — `ROLLED` is the subscription's period rolled forward by
/// whole lengths, written exactly as the driver writes a timestamp (so that the renewal's
/// `current_period_start`, which Stripe sets to the old end, names the same counter row).
const PERIOD_START: &str = "CASE WHEN pf.type = 'MAX' THEN $5 \
WHEN ts.current_period_start <= $6 AND $6 < ts.current_period_end THEN ts.current_period_start \
WHEN ts.current_period_start <= $6 AND ts.current_period_start < ts.current_period_end THEN ROLLED \
ELSE $3 END";

/// `ROLLED` of `PERIOD_START`: start + ⌊(now − start) / length⌋ × length, in whole seconds.
fn period_start_sql(backend: DatabaseBackend) -> String {
    let rolled = match backend {
        DatabaseBackend::Postgres => {
            "to_timestamp(extract(epoch from ts.current_period_start) + \
             floor((extract(epoch from $6) - extract(epoch from ts.current_period_start)) / \
             (extract(epoch from ts.current_period_end) - extract(epoch from ts.current_period_start))) * \
             (extract(epoch from ts.current_period_end) - extract(epoch from ts.current_period_start)))"
        }
        _ => {
            "strftime('%Y-%m-%dT%H:%M:%S+00:00', unixepoch(ts.current_period_start) + \
             (unixepoch($6) - unixepoch(ts.current_period_start)) / \
             (unixepoch(ts.current_period_end) - unixepoch(ts.current_period_start)) * \
             (unixepoch(ts.current_period_end) - unixepoch(ts.current_period_start)), 'unixepoch')"
        }
    };
    PERIOD_START.replace("ROLLED", rolled)
}

/// The counter upsert: adds `$4` (the cost) to the period's counter, creating it, only if
/// the whole cost fits the plan's limit. Its row lock decides between concurrent spenders,
/// on any number of replicas.
const SPEND: &str = "INSERT INTO credit_usage (tenant_id, feature, period_start, used) \
SELECT $1, $2, p.period_start, $4 FROM (PLAN) p WHERE $4 <= p.lim \
ON CONFLICT (tenant_id, feature, period_start) DO UPDATE SET used = credit_usage.used + excluded.used \
WHERE credit_usage.used + excluded.used <= (SELECT p.lim FROM (PLAN) p)";

/// The ledger row: `$7` its id, `$8` user, `$9` type, `$10` object, `$11` idempotency key;
/// `PERIOD` is where the period start comes from.
const LEDGER: &str = "INSERT INTO credit (id, tenant_id, user_id, type, amount, object_id, \
idempotency_key, feature, period_start, created_at) SELECT $7, $1, $8, $9, $4, $10, $11, $2, PERIOD, $6";

/// The Stripe outbox row of a spend of a metered credit type, written only for a tenant with
/// a Stripe customer. Its parameters are named here and numbered by the caller; `PAID` is
/// how it learns the resource was inserted.
const OUTBOX: &str = "INSERT INTO usage_event (id, tenant_id, credit_id, unit, event_name, \
stripe_customer_id, quantity, identifier, status, attempts, next_attempt_at, created_at) \
SELECT USAGE_ID, TENANT, LEDGER_ID, UNIT, EVENT_NAME, t.stripe_customer_id, QUANTITY, IDENTIFIER, \
'PENDING', 0, NOW, NOW FROM tenant t WHERE t.id = TENANT AND t.stripe_customer_id IS NOT NULL AND PAID";

/// `OUTBOX` with its parameters numbered: `[tenant, ledger id, quantity, now, usage id]`
/// (unit, event name and identifier follow the usage id).
fn outbox_sql(numbers: [usize; 5], paid: &str) -> String {
    let [tenant, ledger, quantity, now, usage] = numbers;
    OUTBOX
        .replace("USAGE_ID", &format!("${usage}"))
        .replace("UNIT", &format!("${}", usage + 1))
        .replace("EVENT_NAME", &format!("${}", usage + 2))
        .replace("IDENTIFIER", &format!("${}", usage + 3))
        .replace("TENANT", &format!("${tenant}"))
        .replace("LEDGER_ID", &format!("${ledger}"))
        .replace("QUANTITY", &format!("${quantity}"))
        .replace("NOW", &format!("${now}"))
        .replace("PAID", paid)
}

/// The credits guard, in ONE database call inside the caller's open transaction: reads the
/// tenant's plan, adds the cost to the period's counter only if it fits, and then — only
/// then — appends the ledger row, inserts `paid` and, when the credit type is metered and
/// the tenant has a Stripe customer, the usage event the reporter will send to Stripe (the
/// outbox). On `Err` nothing was written. On
/// Postgres that is one statement (data-modifying CTEs, each feeding the next); on SQLite one
/// call of three statements, each later one conditional on the one before having written its
/// row (`changes()`).
pub async fn consume(
    txn: &impl ConnectionTrait,
    spend: &Spend<'_>,
    now: DateTime<Utc>,
    paid: Paid,
) -> Result<(), AppError> {
    let backend = txn.get_database_backend();
    let first_paid = 12;
    let placeholders = (first_paid..first_paid + paid.columns.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let columns = paid.columns.join(", ");
    let table = paid.table;
    let plan = PLAN.replace("PERIOD_START", &period_start_sql(backend));
    let spend_sql = SPEND.replace("PLAN", &plan);
    let meter = spend.credit_type.meter.as_ref();
    let first_outbox = first_paid + paid.columns.len();
    let sql = match backend {
        DatabaseBackend::Postgres => {
            let outbox = match meter {
                Some(_) => format!(
                    ", outbox AS ({})",
                    outbox_sql([1, 7, 4, 6, first_outbox], "EXISTS (SELECT 1 FROM paid)")
                ),
                None => String::new(),
            };
            format!(
                "WITH spent AS ({spend_sql} RETURNING period_start), \
                 ledger AS ({} FROM spent RETURNING id), \
                 paid AS (INSERT INTO {table} ({columns}) SELECT {placeholders} FROM ledger RETURNING 1){outbox} \
                 SELECT CAST(1 AS BIGINT) AS created FROM paid",
                LEDGER.replace("PERIOD", "spent.period_start")
            )
        }
        _ => format!(
            "{spend_sql}; {} WHERE changes() = 1; \
             INSERT INTO {table} ({columns}) SELECT {placeholders} WHERE changes() = 1; \
             SELECT changes() AS created, EXISTS (SELECT 1 FROM tenant \
             WHERE id = $1 AND stripe_customer_id IS NOT NULL) AS billable",
            LEDGER.replace(
                "PERIOD",
                &format!("(SELECT p.period_start FROM ({plan}) p)")
            )
        ),
    };
    let ledger_id = Uuid::now_v7();
    let mut values: Vec<sea_orm::Value> = vec![
        spend.tenant_id.into(),
        CREDITS_FEATURE.into(),
        Period::calendar_month(now).start.into(),
        spend.credit_type.amount.into(),
        Period::lifetime().start.into(),
        now.into(),
        ledger_id.into(),
        spend.user_id.into(),
        spend.credit_type.value.as_str().into(),
        Some(spend.object_id.clone()).into(),
        spend.idempotency_key.clone().into(),
    ];
    values.extend(paid.values);
    let usage_id = Uuid::now_v7();
    let usage_values = |meter: &crate::config::Meter| -> [sea_orm::Value; 4] {
        [
            usage_id.into(),
            meter.unit.as_str().into(),
            meter.event_name.as_str().into(),
            crate::billing::identifier(usage_id).into(),
        ]
    };
    if let (Some(meter), DatabaseBackend::Postgres) = (meter, backend) {
        values.extend(usage_values(meter));
    }
    let rows = txn
        .query_all_raw(db::statement(backend, &sql, values))
        .await?;
    let (created, billable) = match rows.last() {
        Some(row) if backend == DatabaseBackend::Sqlite => (
            row.try_get_by_index::<i64>(0)? == 1,
            row.try_get_by_index::<bool>(1)?,
        ),
        Some(row) => (row.try_get_by_index::<i64>(0)? == 1, false),
        None => (false, false),
    };
    if !created {
        return Err(refusal(txn, spend, now).await);
    }
    // SQLite: the outbox row is a second call, made only when the first said the tenant is
    // billable. (In one call it would follow statements that skip parameter numbers, and
    // sqlx-sqlite then binds its parameters to the wrong values.)
    if let (Some(meter), true) = (meter, billable) {
        let mut values: Vec<sea_orm::Value> = vec![
            spend.tenant_id.into(),
            ledger_id.into(),
            spend.credit_type.amount.into(),
            now.into(),
        ];
        values.extend(usage_values(meter));
        let sql = outbox_sql([1, 2, 3, 4, 5], "1 = 1");
        txn.execute_raw(db::statement(backend, &sql, values))
            .await?;
    }
    Ok(())
}

/// Why a spend was refused, for the client: no entitlement, or the counter as it stands.
async fn refusal(txn: &impl ConnectionTrait, spend: &Spend<'_>, now: DateTime<Utc>) -> AppError {
    let entitlement = match entitlement(txn, spend.tenant_id, now).await {
        Ok(entitlement) if entitlement.kind.is_limited() => entitlement,
        Ok(_) => {
            return AppError::Internal(anyhow::anyhow!(
                "an unlimited spend of {} was refused",
                spend.credit_type.amount
            ));
        }
        Err(e) => return e,
    };
    let used = credit_usage::Entity::find_by_id((
        spend.tenant_id,
        CREDITS_FEATURE.to_owned(),
        entitlement.period.start,
    ))
    .one(txn)
    .await;
    match used {
        Ok(counter) => AppError::InsufficientCredits(Box::new(Shortfall {
            feature: CREDITS_FEATURE.to_owned(),
            credit_type: spend.credit_type.value.clone(),
            required: spend.credit_type.amount,
            used: counter.map_or(0, |c| c.used),
            limit: entitlement.value,
            resets_at: entitlement.period.end,
        })),
        Err(e) => e.into(),
    }
}

/// The tenant's plan's `feature`, with the subscription's current period and what is used in
/// the period that counts now: one query.
/// `None` when the tenant has no subscription; `Some` with no feature when its plan lacks it.
pub(super) async fn subscribed_feature(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Option<PlanFeatureRow>, AppError> {
    let backend = conn.get_database_backend();
    let sql = "SELECT ts.current_period_start, ts.current_period_end, pf.name, pf.title, \
               pf.type, pf.value, cu.used FROM tenant_subscription ts \
               LEFT JOIN plan_feature pf ON pf.plan_id = ts.plan_id AND pf.name = $2 \
               LEFT JOIN credit_usage cu ON cu.tenant_id = ts.tenant_id AND cu.feature = pf.name \
               AND cu.period_start = PERIOD_START \
               WHERE ts.tenant_id = $1"
        .replace(
            "PERIOD_START",
            &period_start_sql(backend).replace("$6", "$4"),
        );
    let values = [
        tenant_id.into(),
        feature.into(),
        Period::calendar_month(now).start.into(),
        now.into(),
        Period::lifetime().start.into(),
    ];
    let Some(row) = conn
        .query_one_raw(db::statement(backend, &sql, values))
        .await?
    else {
        return Ok(None);
    };
    let period = (
        row.try_get("", "current_period_start")?,
        row.try_get("", "current_period_end")?,
    );
    let name: Option<String> = row.try_get("", "name")?;
    let feature = match name {
        Some(name) => Some(Feature {
            name,
            title: row.try_get("", "title")?,
            kind: row.try_get("", "type")?,
            value: row.try_get("", "value")?,
            used: row.try_get::<Option<i64>>("", "used")?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Some(PlanFeatureRow { period, feature }))
}

/// A tenant's subscription period and its plan's feature, as `subscribed_feature` reads them.
pub(super) struct PlanFeatureRow {
    pub(super) period: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    pub(super) feature: Option<Feature>,
}

pub(super) struct Feature {
    pub(super) name: String,
    pub(super) title: String,
    pub(super) kind: FeatureLimitType,
    pub(super) value: i64,
    /// Used in the period the feature counts in now.
    pub(super) used: i64,
}
