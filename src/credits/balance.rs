//! Where a tenant stands on a feature, read inside the transaction of a change, for the events
//! that tell of it (webhooks carry it): the period that counts now, what is used of the
//! allowance, the allowance, the spendable grants, and what is available in all.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnType, ConnectionTrait, DbErr, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{grants::SPENDABLE_SQL, limit::plan_sql, usage::feature_value};
use crate::db::{PerBackend, Session, Shape};

/// The largest ceiling: an `UNLIMITED` (or `INCLUDED`) feature.
const UNLIMITED: i64 = i64::MAX;

/// A tenant's standing on one feature at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    pub feature: String,
    /// `None`: the tenant's plan lacks the feature (grants are frozen).
    pub period_start: Option<DateTime<Utc>>,
    pub used: i64,
    /// `None`: unlimited.
    pub limit: Option<i64>,
    pub grants_remaining: i64,
}

impl Balance {
    /// The allowance's rest and the grants; `None` when unlimited.
    pub fn available(&self) -> Option<i64> {
        match (self.period_start, self.limit) {
            (None, _) => Some(0),
            (Some(_), Some(limit)) => Some(
                (limit - self.used)
                    .max(0)
                    .saturating_add(self.grants_remaining),
            ),
            (Some(_), None) => None,
        }
    }

    /// As an event's `data` carries it.
    fn to_json(&self) -> Value {
        json!({
            "feature": self.feature,
            "periodStart": self.period_start,
            "used": self.used,
            "limit": self.limit,
            "grantsRemaining": self.grants_remaining,
            "available": self.available(),
        })
    }
}

/// An event's `data`: `fields` and the balance's (`feature`, `periodStart`, `used`, `limit`,
/// `grantsRemaining`, `available`).
pub fn with_balance(mut fields: Value, balance: &Balance) -> Value {
    if let (Value::Object(own), Value::Object(more)) = (&mut fields, balance.to_json()) {
        own.extend(more);
    }
    fields
}

static SQL: PerBackend = PerBackend::new(|backend| {
    format!(
        "SELECT (SELECT p.lim FROM ({plan}) p) AS lim, \
         (SELECT p.period_start FROM ({plan}) p) AS period_start, \
         COALESCE((SELECT u.used FROM credit_usage u WHERE u.tenant_id = :tenant \
         AND u.feature = :feature AND u.period_start = (SELECT p.period_start FROM ({plan}) p)), 0) \
         AS used, \
         CAST(COALESCE((SELECT SUM(g.remaining) FROM credit_grant g WHERE g.tenant_id = :tenant \
         AND g.feature = :feature AND {SPENDABLE_SQL}), 0) AS BIGINT) AS grants",
        plan = plan_sql(backend)
    )
});

static SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::default()
        .with("lim", ColumnType::BigInteger)
        .with("period_start", ColumnType::TimestampWithTimeZone)
        .with("used", ColumnType::BigInteger)
        .with("grants", ColumnType::BigInteger)
});

fn statement(
    backend: sea_orm::DatabaseBackend,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Statement, DbErr> {
    SQL.get(backend)
        .bind(|name| feature_value(name, tenant_id, feature, now))
}

fn balance_of(
    feature: &str,
    lim: Option<i64>,
    period_start: Option<DateTime<Utc>>,
    used: i64,
    grants: i64,
) -> Balance {
    Balance {
        feature: feature.to_owned(),
        period_start,
        used: if period_start.is_some() { used } else { 0 },
        limit: lim.filter(|l| *l != UNLIMITED),
        grants_remaining: grants,
    }
}

/// The balance, in the credits writer's open transaction.
pub async fn balance_in(
    session: &mut Session,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Balance, DbErr> {
    let statement = statement(session.backend(), tenant_id, feature, now)?;
    let rows = session.query(&statement, &SHAPE).await?;
    let row = rows
        .first()
        .ok_or_else(|| DbErr::RecordNotFound("a balance row".into()))?;
    Ok(balance_of(
        feature,
        row.get("lim")?,
        row.get("period_start")?,
        row.get::<Option<i64>>("used")?.unwrap_or(0),
        row.get::<Option<i64>>("grants")?.unwrap_or(0),
    ))
}

/// The balance, in `conn`'s open transaction.
pub async fn balance(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Balance, DbErr> {
    let statement = statement(conn.get_database_backend(), tenant_id, feature, now)?;
    let row = conn
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("a balance row".into()))?;
    Ok(balance_of(
        feature,
        row.try_get("", "lim")?,
        row.try_get("", "period_start")?,
        row.try_get::<Option<i64>>("", "used")?.unwrap_or(0),
        row.try_get::<Option<i64>>("", "grants")?.unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_is_the_allowance_rest_and_the_grants() {
        let now = Utc::now();
        let b = balance_of("credits", Some(10), Some(now), 12, 5);
        assert_eq!(
            b.available(),
            Some(5),
            "an overdrawn allowance counts as none left"
        );
        let b = balance_of("credits", Some(10), Some(now), 4, 5);
        assert_eq!(b.available(), Some(11));
        let unlimited = balance_of("credits", Some(UNLIMITED), Some(now), 4, 5);
        assert_eq!((unlimited.limit, unlimited.available()), (None, None));
        let frozen = balance_of("credits", None, None, 4, 5);
        assert_eq!(
            frozen.available(),
            Some(0),
            "grants are frozen without the feature"
        );
    }
}
