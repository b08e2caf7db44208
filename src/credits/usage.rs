//! What a tenant has used and spent: its usage of a plan feature (one counter row, O(1)) and
//! its ledger, paged by keyset (O(page), whatever the depth).

use std::sync::LazyLock;

use chrono::{DateTime, Datelike, Utc};
use entity::credit::{self, ActorType, Movement};
use sea_orm::{ColumnType, DatabaseBackend, prelude::*};

use super::{
    FeatureLimitType, Period,
    grants::SPENDABLE_SQL,
    limit::{fits, period_start_sql},
};
use crate::{
    auth::{self, ApiScope, KEY_STANDING, PerViewer, STANDING, Viewer},
    db::{self, Database, Row, Session, Shape, Variants},
    error::AppError,
};

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
    /// What the tenant's spendable grants of the feature hold (frozen while the plan does not
    /// include it).
    pub grants_remaining: i64,
    /// The soonest a spendable grant expires, and how much expires then.
    pub next_expiry: Option<(i64, DateTime<Utc>)>,
}

impl FeatureUsage {
    /// Left of the period's allowance; `None` when unlimited.
    pub fn remaining(&self) -> Option<i64> {
        self.kind
            .is_limited()
            .then(|| Ord::max(self.value - self.used, 0))
    }

    /// All a spend may take now: the allowance's rest and the grants; `None` when unlimited,
    /// 0 when the plan does not include the feature.
    pub fn available(&self) -> Option<i64> {
        match self.kind {
            FeatureLimitType::NotIncluded => Some(0),
            _ => self
                .remaining()
                .map(|r| r.saturating_add(self.grants_remaining)),
        }
    }

    /// Whether a spend of `cost` would be paid now: by the allowance, or with the grants.
    pub fn fits(&self, cost: i64) -> bool {
        fits(self.kind, self.value, self.used, cost) || self.available().is_some_and(|a| a >= cost)
    }
}

/// The tenant's usage of `feature` at `now`, for a member of it (`auth::standing`); `None`
/// when no plan defines the feature. One query — the viewer's user and membership, plan,
/// period and counter row: the cost does not grow with the ledger.
pub async fn usage(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
    scope: ApiScope,
) -> Result<Option<FeatureUsage>, AppError> {
    let user_id = viewer.standing_id(&[scope])?;
    let statement = FEATURE_SQL
        .get(db.backend(), viewer)
        .bind(|name| match name {
            "user" => Some(user_id.into()),
            name => feature_value(name, tenant_id, feature, now),
        })?;
    let row = db.query_one(&statement, &FEATURE_SHAPE).await?;
    auth::standing_of(viewer, row.as_ref())?;
    let Some(row) = row else {
        return Err(viewer.user_gone());
    };
    let plan_row = plan_feature_row(&row)?;
    let grants_remaining = plan_row.as_ref().map_or(0, |r| r.grants_remaining);
    let next_expiry = match (
        row.get::<Option<i64>>("next_expiry_amount")?,
        row.get::<Option<DateTime<Utc>>>("next_expiry_at")?,
    ) {
        (Some(amount), Some(at)) => Some((amount, at)),
        _ => None,
    };
    let Some(PlanFeatureRow {
        period: subscription_period,
        feature: Some(own),
        ..
    }) = plan_row
    else {
        // The tenant's plan lacks it: not included, if any plan has it.
        let Some(title) = row.get::<Option<String>>("any_title")? else {
            return Ok(None);
        };
        return Ok(Some(FeatureUsage {
            name: feature.to_owned(),
            message: Some(format!("Your plan does not include {title}.")),
            title,
            kind: FeatureLimitType::NotIncluded,
            value: 0,
            used: 0,
            enabled: false,
            period: None,
            grants_remaining,
            next_expiry,
        }));
    };
    let kind = own.kind;
    let period = Period::current(kind, subscription_period, now);
    let used = own.used;
    let mut usage = FeatureUsage {
        name: own.name,
        title: own.title,
        kind,
        value: own.value,
        used,
        enabled: false,
        message: None,
        period: (kind == FeatureLimitType::Monthly).then_some(period),
        grants_remaining,
        next_expiry,
    };
    // "May one more unit be used": the guard's own rule, for a cost of 1.
    usage.enabled = usage.fits(1);
    usage.message = match kind {
        _ if usage.enabled => None,
        FeatureLimitType::NotIncluded => {
            Some(format!("Your plan does not include {}.", usage.title))
        }
        FeatureLimitType::Monthly => Some(format!(
            "You've reached the limit this month ({used}/{}).",
            usage.value
        )),
        _ => Some(format!(
            "You've reached the limit ({used}/{}).",
            usage.value
        )),
    };
    Ok(Some(usage))
}

/// Which ledger rows a history page holds.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    pub movement: Option<Movement>,
    pub credit_type: Option<String>,
    pub user_id: Option<Uuid>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub actor_type: Option<ActorType>,
    pub actor_id: Option<Uuid>,
    pub object_id: Option<String>,
}

/// Ledger rows of a tenant, newest first, `first` after the row `after` (keyset: the cost
/// of a page does not depend on how deep it is), for a member of it (`auth::standing`). The
/// bool says whether more follow. One query, the viewer's check included.
pub async fn history(
    db: &Database,
    viewer: &Viewer,
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
    if first > 100 {
        // Also bounds the statement texts kept below.
        return Err(AppError::bad_input("first must be between 0 and 100"));
    }
    let user_id = viewer.standing_id(&[ApiScope::CreditsRead])?;
    let filters = [
        (after.is_some(), " AND id < :after"),
        (filter.credit_type.is_some(), " AND type = :credit_type"),
        (filter.user_id.is_some(), " AND user_id = :filter_user"),
        (filter.from.is_some(), " AND created_at >= :from"),
        (filter.to.is_some(), " AND created_at < :to"),
        (filter.actor_type.is_some(), " AND actor_type = :actor_type"),
        (filter.actor_id.is_some(), " AND actor_id = :actor_id"),
        (filter.object_id.is_some(), " AND object_id = :object_id"),
        (filter.movement.is_some(), " AND kind = :movement"),
    ];
    let present = filters
        .iter()
        .enumerate()
        .fold(0u16, |mask, (i, (on, _))| mask | (u16::from(*on) << i));
    // The page size is a literal (at most 101 texts): a bound LIMIT makes SQLite re-prepare.
    static SQL: LazyLock<Variants<(bool, u16, u64)>> = LazyLock::new(Variants::default);
    let key = viewer.key().is_some();
    let sql = SQL.get(db.backend(), (key, present, first), || {
        let standing = if key { KEY_STANDING } else { STANDING };
        let conditions: String = filters
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, condition)| *condition)
            .collect();
        format!(
            "SELECT tu.role AS viewer_role, c.* FROM {standing} \
             LEFT JOIN (SELECT * FROM credit WHERE tenant_id = :tenant{conditions} \
             ORDER BY id DESC LIMIT {}) c ON tu.role IS NOT NULL \
             WHERE u.id = :user ORDER BY c.id DESC",
            first + 1
        )
    });
    let statement = sql.bind(|name| {
        Some(match name {
            "user" => user_id.into(),
            "tenant" => tenant_id.into(),
            "after" => after.into(),
            "credit_type" => filter.credit_type.clone().into(),
            "filter_user" => filter.user_id.into(),
            "from" => filter.from.into(),
            "to" => filter.to.into(),
            "actor_type" => filter.actor_type.map(|a| a.to_value()).into(),
            "actor_id" => filter.actor_id.into(),
            "object_id" => filter.object_id.clone().into(),
            "movement" => filter.movement.map(|m| m.to_value()).into(),
            _ => return None,
        })
    })?;
    static SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<credit::Entity>);
    let rows = db.query(&statement, &SHAPE).await?;
    auth::standing_of(viewer, rows.first())?;
    let mut page = Vec::with_capacity(rows.len());
    for row in rows {
        if row.get::<Option<Uuid>>("id")?.is_some() {
            page.push(row.model::<credit::Entity>()?);
        }
    }
    Ok(db::page(page, first))
}

/// One ledger row of a tenant by its id, for a member of it (`auth::standing`); `None` when
/// the tenant has no such row. One query, the viewer's check included.
pub async fn ledger_row(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    id: Uuid,
    scope: ApiScope,
) -> Result<Option<credit::Model>, AppError> {
    static SQL: PerViewer = PerViewer::new(|_, standing| {
        format!(
            "SELECT tu.role AS viewer_role, c.* FROM {standing} \
             LEFT JOIN credit c ON c.tenant_id = tu.tenant_id AND c.id = :id WHERE u.id = :user"
        )
    });
    let user_id = viewer.standing_id(&[scope])?;
    let statement = SQL.get(db.backend(), viewer).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "id" => Some(id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    auth::member_row::<credit::Entity>(db, viewer, &statement).await
}

/// The plan feature `:feature` of a tenant's subscription, the subscription's period and the
/// counter of the period that counts now (`limit::period_start_sql`), joined onto `from`,
/// which names the subscription `ts`.
fn feature_sql(backend: DatabaseBackend, columns: &str, from: &str, filter: &str) -> String {
    format!(
        "SELECT {columns}ts.tenant_id AS subscribed, ts.current_period_start, \
         ts.current_period_end, pf.name, pf.title, pf.type, pf.value, cu.used FROM {from} \
         LEFT JOIN plan_feature pf ON pf.plan_id = ts.plan_id AND pf.name = :feature \
         LEFT JOIN credit_usage cu ON cu.tenant_id = ts.tenant_id AND cu.feature = pf.name \
         AND cu.period_start = {} \
         WHERE {filter}",
        period_start_sql(backend)
    )
}

/// `usage`'s query: the viewer's standing, the feature, and — only when the tenant's plan
/// lacks it — the title some plan gives it.
static FEATURE_SQL: PerViewer = PerViewer::new(|backend, standing| {
    let soonest = grants("MIN(g.expires_at)", "");
    feature_sql(
        backend,
        &format!(
            "tu.role AS viewer_role, CASE WHEN pf.name IS NULL THEN \
             (SELECT a.title FROM plan_feature a WHERE a.name = :feature LIMIT 1) END AS any_title, \
             {} AS grants_remaining, {soonest} AS next_expiry_at, {} AS next_expiry_amount, ",
            grants("CAST(SUM(g.remaining) AS BIGINT)", ""),
            grants(
                "CAST(SUM(g.remaining) AS BIGINT)",
                &format!(" AND g.expires_at = {soonest}")
            ),
        ),
        &format!("{standing} LEFT JOIN tenant_subscription ts ON ts.tenant_id = tu.tenant_id"),
        "u.id = :user",
    )
});

/// The types of `feature_sql`'s columns, for SQLite.
static FEATURE_SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::default()
        .with("grants_remaining", ColumnType::BigInteger)
        .with("next_expiry_at", ColumnType::TimestampWithTimeZone)
        .with("next_expiry_amount", ColumnType::BigInteger)
        .with("subscribed", ColumnType::Uuid)
        .with("current_period_start", ColumnType::TimestampWithTimeZone)
        .with("current_period_end", ColumnType::TimestampWithTimeZone)
        .with("value", ColumnType::BigInteger)
        .with("used", ColumnType::BigInteger)
});

/// `subscribed_feature`'s query.
static SUBSCRIBED_SQL: db::PerBackend = db::PerBackend::new(|backend| {
    feature_sql(
        backend,
        &format!(
            "{} AS grants_remaining, ",
            grants("CAST(SUM(g.remaining) AS BIGINT)", "")
        ),
        "tenant_subscription ts",
        "ts.tenant_id = :tenant",
    )
});

/// A scalar over the tenant's spendable grants of `:feature` at `:now`, in SQL.
fn grants(select: &str, more: &str) -> String {
    format!(
        "(SELECT {select} FROM credit_grant g WHERE g.tenant_id = :tenant \
         AND g.feature = :feature AND {SPENDABLE_SQL}{more})"
    )
}

/// The value of the feature queries' parameter `name`.
pub(super) fn feature_value(
    name: &str,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Option<sea_orm::Value> {
    Some(match name {
        "tenant" => tenant_id.into(),
        "feature" => feature.into(),
        "now" => now.into(),
        "month" => Period::calendar_month(now).start.into(),
        "lifetime" => Period::lifetime().start.into(),
        _ => return None,
    })
}

/// The tenant's plan's `feature`, with the subscription's current period and what is used in
/// the period that counts now: one query.
/// `None` when the tenant has no subscription; `Some` with no feature when its plan lacks it.
pub(super) async fn subscribed_feature(
    session: &mut Session,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Option<PlanFeatureRow>, AppError> {
    let statement = SUBSCRIBED_SQL
        .get(session.backend())
        .bind(|name| feature_value(name, tenant_id, feature, now))?;
    match session.query(&statement, &FEATURE_SHAPE).await?.first() {
        Some(row) => plan_feature_row(row),
        None => Ok(None),
    }
}

/// A `feature_sql` row: `None` when the tenant has no subscription.
fn plan_feature_row(row: &Row) -> Result<Option<PlanFeatureRow>, AppError> {
    if row.get::<Option<Uuid>>("subscribed")?.is_none() {
        return Ok(None);
    }
    let period = (
        row.get("current_period_start")?,
        row.get("current_period_end")?,
    );
    let name: Option<String> = row.get("name")?;
    let feature = match name {
        Some(name) => Some(Feature {
            name,
            title: row.get("title")?,
            kind: row.get("type")?,
            value: row.get("value")?,
            used: row.get::<Option<i64>>("used")?.unwrap_or(0),
        }),
        None => None,
    };
    let grants_remaining = row.get::<Option<i64>>("grants_remaining")?.unwrap_or(0);
    Ok(Some(PlanFeatureRow {
        period,
        feature,
        grants_remaining,
    }))
}
/// A tenant's subscription period and its plan's feature, as `subscribed_feature` reads them.
pub(super) struct PlanFeatureRow {
    pub(super) period: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    pub(super) feature: Option<Feature>,
    /// What the tenant's spendable grants of the feature hold.
    pub(super) grants_remaining: i64,
}

pub(super) struct Feature {
    pub(super) name: String,
    pub(super) title: String,
    pub(super) kind: FeatureLimitType,
    pub(super) value: i64,
    /// Used in the period the feature counts in now.
    pub(super) used: i64,
}
