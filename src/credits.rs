//! THE DOMAIN: credit types, plans and their features, usage, and `consume` — the credits
//! guard. Its invariants (DESIGN.md), which every change here must keep:
//!
//! 1. Atomic: `consume` runs inside the caller's transaction, together with the insert of the
//!    resource it pays for; the counter increment is one conditional upsert
//!    (`INSERT … ON CONFLICT DO UPDATE SET used = used + cost WHERE used + cost <= limit`,
//!    the limit re-read from the tenant's plan in the same statement), never a read followed
//!    by a write.
//! 2. Never overspend: an action is allowed only if its *whole* cost fits; the database row
//!    lock, not anything in this process, decides between concurrent spenders.
//! 3. Ledger = counters = resources: each spend adds one ledger row and the same amount to the
//!    counter row of its period (`credit.period_start` names that row).
//! 4. Fail closed: no subscription, no feature or `NOT_INCLUDED` → `FEATURE_NOT_INCLUDED`;
//!    `INCLUDED` and `UNLIMITED` are allowed and still recorded.
//! 5. Periods in UTC: `MONTHLY` counts within the subscription's current period when known,
//!    else the calendar month; `MAX` is lifetime.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use entity::{credit, credit_usage, plan_feature, tenant_subscription};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, prelude::*,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::CreditTypeConfig,
    error::{AppError, Shortfall},
};

mod audit;
mod period;
mod plans;

pub use audit::{Report, verify};
pub use period::Period;
pub use plans::{PlanWithFeatures, plans, subscribe, sync_plans, tenant_plan};

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

/// How a plan limits a feature (SaasRock's SubscriptionFeatureLimitType).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeatureLimitType {
    NotIncluded,
    Included,
    Monthly,
    Max,
    Unlimited,
}

impl FeatureLimitType {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureLimitType::NotIncluded => "NOT_INCLUDED",
            FeatureLimitType::Included => "INCLUDED",
            FeatureLimitType::Monthly => "MONTHLY",
            FeatureLimitType::Max => "MAX",
            FeatureLimitType::Unlimited => "UNLIMITED",
        }
    }

    /// Whether `value` caps usage (`MONTHLY`, `MAX`).
    pub fn is_limited(self) -> bool {
        matches!(self, FeatureLimitType::Monthly | FeatureLimitType::Max)
    }
}

impl FromStr for FeatureLimitType {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FeatureLimitType::NotIncluded,
            FeatureLimitType::Included,
            FeatureLimitType::Monthly,
            FeatureLimitType::Max,
            FeatureLimitType::Unlimited,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("unknown feature limit type {s}")))
    }
}

/// What a tenant's plan allows of the `credits` feature now, read before the guard's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entitlement {
    pub kind: FeatureLimitType,
    /// The limit, for `MONTHLY` and `MAX`.
    pub value: i64,
    /// The period the spend counts in.
    pub period: Period,
}

/// The tenant's entitlement to spend credits at `now`; `FEATURE_NOT_INCLUDED` when it has
/// none (no subscription, no such feature, or `NOT_INCLUDED`). A read: it may run on any
/// connection, before the write transaction, because `consume` checks the plan again.
pub async fn entitlement(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Entitlement, AppError> {
    let not_included = || AppError::FeatureNotIncluded {
        feature: CREDITS_FEATURE.to_owned(),
    };
    let (Some(subscription), Some(feature)) =
        plan_feature(conn, tenant_id, CREDITS_FEATURE).await?
    else {
        return Err(not_included());
    };
    let kind: FeatureLimitType = feature.kind.parse()?;
    if kind == FeatureLimitType::NotIncluded {
        return Err(not_included());
    }
    Ok(Entitlement {
        kind,
        value: feature.value,
        period: Period::current(kind, &subscription, now),
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

/// The counter upsert: adds `cost` to the period's counter, creating it, only if the whole
/// cost fits the limit the tenant's plan has *now* (the subquery re-reads the plan, so a
/// plan changed since `entitlement` cannot be overspent). One statement: the row lock it
/// takes decides between concurrent spenders, on any number of replicas. Returns the new
/// `used`, or no row when refused. `$1` tenant, `$2` feature, `$3` period start, `$4` cost,
/// `$5` the plan feature's type as read.
const SPEND: &str = "INSERT INTO credit_usage (tenant_id, feature, period_start, used) \
SELECT $1, $2, $3, $4 WHERE $4 <= (LIMIT) \
ON CONFLICT (tenant_id, feature, period_start) DO UPDATE SET used = credit_usage.used + excluded.used \
WHERE credit_usage.used + excluded.used <= (LIMIT) \
RETURNING used";

/// The limit of the tenant's current plan for a feature of the given type: its value for
/// `MONTHLY`/`MAX`, no limit for `INCLUDED`/`UNLIMITED`, NULL (refused) otherwise.
const LIMIT: &str = "SELECT CASE WHEN pf.type IN ('MONTHLY', 'MAX') THEN pf.value \
WHEN pf.type IN ('INCLUDED', 'UNLIMITED') THEN 9223372036854775807 END \
FROM tenant_subscription ts JOIN plan_feature pf ON pf.plan_id = ts.plan_id \
WHERE ts.tenant_id = $1 AND pf.name = $2 AND pf.type = $5";

/// The credits guard. Inside the caller's open transaction, with the entitlement read
/// before: adds the cost to the period's counter only if it fits (one statement), and
/// appends the ledger row. On `Err` nothing was written by it.
pub async fn consume(
    txn: &impl ConnectionTrait,
    spend: &Spend<'_>,
    entitlement: &Entitlement,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let backend = txn.get_database_backend();
    let cost = spend.credit_type.amount;
    let period = entitlement.period;
    let sql = SPEND.replace("LIMIT", LIMIT);
    let sql = match backend {
        DatabaseBackend::Postgres => sql,
        // SQLite numbers its parameters ?N.
        _ => sql.replace('$', "?"),
    };
    let spent = txn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [
                spend.tenant_id.into(),
                CREDITS_FEATURE.into(),
                period.start.into(),
                cost.into(),
                entitlement.kind.as_str().into(),
            ],
        ))
        .await?;
    if spent.is_none() {
        return Err(refusal(txn, spend, entitlement).await);
    }
    let ledger_row = credit::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(spend.tenant_id),
        user_id: Set(spend.user_id),
        kind: Set(spend.credit_type.value.clone()),
        amount: Set(cost),
        object_id: Set(Some(spend.object_id.clone())),
        idempotency_key: Set(spend.idempotency_key.clone()),
        feature: Set(CREDITS_FEATURE.to_owned()),
        period_start: Set(period.start),
        created_at: Set(now),
    };
    credit::Entity::insert(ledger_row)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Why a spend was refused, for the client: the counter as it stands, or a plan that no
/// longer has the feature as read.
async fn refusal(
    txn: &impl ConnectionTrait,
    spend: &Spend<'_>,
    entitlement: &Entitlement,
) -> AppError {
    if !entitlement.kind.is_limited() {
        return AppError::FeatureNotIncluded {
            feature: CREDITS_FEATURE.to_owned(),
        };
    }
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

/// The tenant's subscription and its plan's `feature`, if any.
async fn plan_feature(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    feature: &str,
) -> Result<
    (
        Option<tenant_subscription::Model>,
        Option<plan_feature::Model>,
    ),
    AppError,
> {
    let Some(subscription) = tenant_subscription::Entity::find_by_id(tenant_id)
        .one(conn)
        .await?
    else {
        return Ok((None, None));
    };
    let feature = plan_feature::Entity::find()
        .filter(plan_feature::Column::PlanId.eq(subscription.plan_id))
        .filter(plan_feature::Column::Name.eq(feature))
        .one(conn)
        .await?;
    Ok((Some(subscription), feature))
}

/// Where a tenant stands on one feature of its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureUsage {
    pub name: String,
    pub title: String,
    pub kind: FeatureLimitType,
    pub value: i64,
    pub used: i64,
    /// Whether another unit of the feature may be used now.
    pub enabled: bool,
    /// Why not, when `enabled` is false.
    pub message: Option<String>,
    /// The counting period, for `MONTHLY` features.
    pub period: Option<Period>,
}

impl FeatureUsage {
    /// `None` when unlimited.
    pub fn remaining(&self) -> Option<i64> {
        self.kind
            .is_limited()
            .then(|| Ord::max(self.value - self.used, 0))
    }
}

/// The tenant's usage of `feature` at `now`; `None` when no plan defines the feature.
/// Reads one counter row: the cost does not grow with the ledger.
pub async fn usage(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Option<FeatureUsage>, AppError> {
    let (subscription, own) = plan_feature(db, tenant_id, feature).await?;
    let (Some(subscription), Some(own)) = (subscription, own) else {
        let Some(any) = plan_feature::Entity::find()
            .filter(plan_feature::Column::Name.eq(feature))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        return Ok(Some(FeatureUsage {
            name: any.name,
            message: Some(format!("Your plan does not include {}.", any.title)),
            title: any.title,
            kind: FeatureLimitType::NotIncluded,
            value: 0,
            used: 0,
            enabled: false,
            period: None,
        }));
    };
    let kind: FeatureLimitType = own.kind.parse()?;
    let period = Period::current(kind, &subscription, now);
    let used = credit_usage::Entity::find_by_id((tenant_id, own.name.clone(), period.start))
        .one(db)
        .await?
        .map_or(0, |c| c.used);
    let (enabled, message) = match kind {
        FeatureLimitType::NotIncluded => (
            false,
            Some(format!("Your plan does not include {}.", own.title)),
        ),
        FeatureLimitType::Monthly if used >= own.value => (
            false,
            Some(format!(
                "You've reached the limit this month ({used}/{}).",
                own.value
            )),
        ),
        FeatureLimitType::Max if used >= own.value => (
            false,
            Some(format!("You've reached the limit ({used}/{}).", own.value)),
        ),
        _ => (true, None),
    };
    Ok(Some(FeatureUsage {
        name: own.name,
        title: own.title,
        kind,
        value: own.value,
        used,
        enabled,
        message,
        period: (kind == FeatureLimitType::Monthly).then_some(period),
    }))
}

/// Which ledger rows a history page holds.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    pub credit_type: Option<String>,
    pub user_id: Option<Uuid>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
}

/// Ledger rows of a tenant, newest first, `first` after the row `after` (keyset: the cost
/// of a page does not depend on how deep it is). The bool says whether more follow.
pub async fn history(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    first: u64,
    after: Option<Uuid>,
    filter: &HistoryFilter,
) -> Result<(Vec<credit::Model>, bool), AppError> {
    let mut query = credit::Entity::find().filter(credit::Column::TenantId.eq(tenant_id));
    if let Some(after) = after {
        query = query.filter(credit::Column::Id.lt(after));
    }
    if let Some(kind) = &filter.credit_type {
        query = query.filter(credit::Column::Kind.eq(kind.as_str()));
    }
    if let Some(user_id) = filter.user_id {
        query = query.filter(credit::Column::UserId.eq(user_id));
    }
    if let Some(from) = filter.from {
        query = query.filter(credit::Column::CreatedAt.gte(from));
    }
    if let Some(to) = filter.to {
        query = query.filter(credit::Column::CreatedAt.lt(to));
    }
    let mut rows = query
        .order_by_desc(credit::Column::Id)
        .limit(first + 1)
        .all(db)
        .await?;
    let more = rows.len() as u64 > first;
    rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    Ok((rows, more))
}
