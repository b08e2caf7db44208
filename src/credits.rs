//! THE DOMAIN: credit types, plans and their features, usage, and `consume` — the credits
//! guard. Its invariants (DESIGN.md), which every change here must keep:
//!
//! 1. Atomic: `consume` runs inside the caller's transaction, together with the insert of the
//!    resource it pays for; the counter increment is one conditional UPDATE
//!    (`used = used + cost WHERE used + cost <= limit`), never a read followed by a write.
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
    ActiveValue::Set,
    ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    prelude::*,
    sea_query::{Expr, ExprTrait, OnConflict},
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

/// One guarded action's spend, as the caller describes it.
pub struct Spend<'a> {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub credit_type: &'a CreditTypeConfig,
    /// The id of the resource the credits pay for.
    pub object_id: String,
    pub idempotency_key: Option<String>,
}

/// The credits guard. Inside the caller's open transaction: checks the tenant's plan,
/// increments the period's counter only if the whole cost fits, and appends the ledger row.
/// On `Err` the caller must roll back (dropping the transaction does).
pub async fn consume(
    txn: &impl ConnectionTrait,
    spend: &Spend<'_>,
    now: DateTime<Utc>,
) -> Result<credit::Model, AppError> {
    let (subscription, feature) = entitlement(txn, spend.tenant_id, CREDITS_FEATURE).await?;
    let not_included = || AppError::FeatureNotIncluded {
        feature: CREDITS_FEATURE.to_owned(),
    };
    let (Some(subscription), Some(feature)) = (subscription, feature) else {
        return Err(not_included());
    };
    let kind: FeatureLimitType = feature.kind.parse()?;
    if kind == FeatureLimitType::NotIncluded {
        return Err(not_included());
    }
    let period = Period::current(kind, &subscription, now);
    let cost = spend.credit_type.amount;

    // The counter row must exist before the conditional UPDATE can lock it.
    let counter = credit_usage::ActiveModel {
        tenant_id: Set(spend.tenant_id),
        feature: Set(CREDITS_FEATURE.to_owned()),
        period_start: Set(period.start),
        used: Set(0),
    };
    credit_usage::Entity::insert(counter)
        .on_conflict(
            OnConflict::columns([
                credit_usage::Column::TenantId,
                credit_usage::Column::Feature,
                credit_usage::Column::PeriodStart,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;

    let this_counter = credit_usage::Column::TenantId
        .eq(spend.tenant_id)
        .and(credit_usage::Column::Feature.eq(CREDITS_FEATURE))
        .and(credit_usage::Column::PeriodStart.eq(period.start));
    let mut increment = credit_usage::Entity::update_many()
        .col_expr(
            credit_usage::Column::Used,
            Expr::col(credit_usage::Column::Used).add(cost),
        )
        .filter(this_counter.clone());
    if kind.is_limited() {
        increment = increment.filter(
            Expr::col(credit_usage::Column::Used)
                .add(cost)
                .lte(feature.value),
        );
    }
    if increment.exec(txn).await?.rows_affected == 0 {
        let used = credit_usage::Entity::find()
            .filter(this_counter)
            .one(txn)
            .await?
            .map_or(0, |c| c.used);
        return Err(AppError::InsufficientCredits(Box::new(Shortfall {
            feature: CREDITS_FEATURE.to_owned(),
            credit_type: spend.credit_type.value.clone(),
            required: cost,
            used,
            limit: feature.value,
            resets_at: period.end,
        })));
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
    Ok(ledger_row.insert(txn).await?)
}

/// The tenant's subscription and its plan's `feature`, if any.
async fn entitlement(
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
    let (subscription, own) = entitlement(db, tenant_id, feature).await?;
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
