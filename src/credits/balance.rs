//! Where a tenant stands on a feature, read inside the transaction of a change, for the events
//! that tell of it (webhooks carry it): the period that counts now, what is used of the
//! allowance, the allowance, the spendable grants, and what is available in all.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnType, DbErr};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{grants::SPENDABLE_SQL, limit::plan_sql, usage::feature_value};
use crate::db::{PerBackend, Shape, Tx};

/// The largest ceiling: an `UNLIMITED` (or `INCLUDED`) feature.
const UNLIMITED: i64 = i64::MAX;

/// A tenant's standing on one feature at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    pub feature: String,
    /// `None`: the tenant's plan lacks the feature (grants are frozen).
    pub period_start: Option<DateTime<Utc>>,
    pub used: i64,
    /// What grants paid in the period.
    pub grants_used: i64,
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

    /// What the period has consumed: the allowance used and what grants paid.
    pub fn consumed(&self) -> i128 {
        i128::from(self.used) + i128::from(self.grants_used)
    }

    /// What the period offers — the allowance, the grants drawn in it and the grants still
    /// spendable; `None` when unlimited or not included. Spends leave it as it is.
    pub fn offered(&self) -> Option<i128> {
        self.period_start?;
        Some(
            i128::from(self.limit?)
                + i128::from(self.grants_used)
                + i128::from(self.grants_remaining),
        )
    }

    /// How much of what the period offers is consumed, in percent (rounded down); `None` when
    /// unlimited.
    pub fn percent_used(&self) -> Option<i64> {
        Some(match self.offered()? {
            0 => 100,
            offered => i64::try_from(self.consumed() * 100 / offered).unwrap_or(i64::MAX),
        })
    }

    /// As an event's `data` carries it.
    fn to_json(&self) -> Value {
        json!({
            "feature": self.feature,
            "periodStart": self.period_start,
            "used": self.used,
            "limit": self.limit,
            "grantsRemaining": self.grants_remaining,
            "grantsUsed": self.grants_used,
            "available": self.available(),
            "percentUsed": self.percent_used(),
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
        "SELECT p.lim, p.period_start, \
         COALESCE(u.used, 0) AS used, COALESCE(u.grants_used, 0) AS grants_used, \
         CAST(COALESCE((SELECT SUM(g.remaining) FROM credit_grant g WHERE g.tenant_id = :tenant \
         AND g.feature = :feature AND {SPENDABLE_SQL}), 0) AS BIGINT) AS grants \
         FROM (SELECT 1 AS one) one LEFT JOIN ({plan}) p ON 1 = 1 \
         LEFT JOIN credit_usage u ON u.tenant_id = :tenant AND u.feature = :feature \
         AND u.period_start = p.period_start",
        plan = plan_sql(backend)
    )
});

static SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::default()
        .with("lim", ColumnType::BigInteger)
        .with("period_start", ColumnType::TimestampWithTimeZone)
        .with("used", ColumnType::BigInteger)
        .with("grants_used", ColumnType::BigInteger)
        .with("grants", ColumnType::BigInteger)
});

fn balance_of(
    feature: &str,
    lim: Option<i64>,
    period_start: Option<DateTime<Utc>>,
    used: i64,
    grants_used: i64,
    grants: i64,
) -> Balance {
    let included = period_start.is_some();
    Balance {
        feature: feature.to_owned(),
        period_start,
        used: if included { used } else { 0 },
        grants_used: if included { grants_used } else { 0 },
        limit: lim.filter(|l| *l != UNLIMITED),
        grants_remaining: grants,
    }
}

/// The balance, in `tx`'s open transaction.
pub async fn balance(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<Balance, DbErr> {
    let statement = SQL
        .get(tx.backend())
        .bind(|name| feature_value(name, tenant_id, feature, now))?;
    let rows = tx.rows(&statement, &SHAPE).await?;
    let row = rows
        .first()
        .ok_or_else(|| DbErr::RecordNotFound("a balance row".into()))?;
    Ok(balance_of(
        feature,
        row.get("lim")?,
        row.get("period_start")?,
        row.get::<Option<i64>>("used")?.unwrap_or(0),
        row.get::<Option<i64>>("grants_used")?.unwrap_or(0),
        row.get::<Option<i64>>("grants")?.unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_is_the_allowance_rest_and_the_grants() {
        let now = Utc::now();
        let b = balance_of("credits", Some(10), Some(now), 12, 0, 5);
        assert_eq!(
            b.available(),
            Some(5),
            "an overdrawn allowance counts as none left"
        );
        let b = balance_of("credits", Some(10), Some(now), 4, 0, 5);
        assert_eq!(b.available(), Some(11));
        let unlimited = balance_of("credits", Some(UNLIMITED), Some(now), 4, 0, 5);
        assert_eq!((unlimited.limit, unlimited.available()), (None, None));
        let frozen = balance_of("credits", None, None, 4, 0, 5);
        assert_eq!(
            frozen.available(),
            Some(0),
            "grants are frozen without the feature"
        );
    }
}
