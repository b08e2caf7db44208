//! What a tenant has used and spent: its usage of a plan feature (one counter row, O(1)) and
//! its ledger, paged by keyset (O(page), whatever the depth).

use chrono::{DateTime, Datelike, Utc};
use entity::{credit, plan_feature};
use sea_orm::{ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, prelude::*};

use super::{
    FeatureLimitType, Period,
    limit::{fits, period_start_sql},
};
use crate::{db, error::AppError};

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
/// One query (plan, period and counter row): the cost does not grow with the ledger.
pub async fn usage(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Option<FeatureUsage>, AppError> {
    let Some(PlanFeatureRow {
        period: subscription_period,
        feature: Some(own),
    }) = subscribed_feature(db, tenant_id, feature, now).await?
    else {
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
    let kind = own.kind;
    let period = Period::current(kind, subscription_period, now);
    let used = own.used;
    // "May one more unit be used": the guard's own rule, for a cost of 1.
    let enabled = fits(kind, own.value, used, 1);
    let message = match kind {
        _ if enabled => None,
        FeatureLimitType::NotIncluded => Some(format!("Your plan does not include {}.", own.title)),
        FeatureLimitType::Monthly => Some(format!(
            "You've reached the limit this month ({used}/{}).",
            own.value
        )),
        _ => Some(format!("You've reached the limit ({used}/{}).", own.value)),
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
    for (name, date) in [("filter.from", filter.from), ("filter.to", filter.to)] {
        if date.is_some_and(|d| !(1..=9999).contains(&d.year())) {
            return Err(AppError::bad_input(format!(
                "{name} must be between the years 1 and 9999"
            )));
        }
    }
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
    let rows = query
        .order_by_desc(credit::Column::Id)
        .limit(first + 1)
        .all(db)
        .await?;
    Ok(db::page(rows, first))
}

/// `subscribed_feature`'s query: the plan feature, the subscription's period and the counter
/// of the period that counts now (`limit::period_start_sql`).
static FEATURE_SQL: db::PerBackend = db::PerBackend::new(|backend| {
    format!(
        "SELECT ts.current_period_start, ts.current_period_end, pf.name, pf.title, pf.type, \
         pf.value, cu.used FROM tenant_subscription ts \
         LEFT JOIN plan_feature pf ON pf.plan_id = ts.plan_id AND pf.name = :feature \
         LEFT JOIN credit_usage cu ON cu.tenant_id = ts.tenant_id AND cu.feature = pf.name \
         AND cu.period_start = {} \
         WHERE ts.tenant_id = :tenant",
        period_start_sql(backend)
    )
});

/// The tenant's plan's `feature`, with the subscription's current period and what is used in
/// the period that counts now: one query.
/// `None` when the tenant has no subscription; `Some` with no feature when its plan lacks it.
pub(super) async fn subscribed_feature(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Option<PlanFeatureRow>, AppError> {
    let now_month = Period::calendar_month(now).start;
    let statement = FEATURE_SQL.get(conn.get_database_backend()).bind(|name| {
        Some(match name {
            "tenant" => tenant_id.into(),
            "feature" => feature.into(),
            "now" => now.into(),
            "month" => now_month.into(),
            "lifetime" => Period::lifetime().start.into(),
            _ => return None,
        })
    })?;
    let Some(row) = conn.query_one_raw(statement).await? else {
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
