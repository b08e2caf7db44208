//! The credits guard: one spend, decided and written by the database in one call. The
//! statement reads the tenant's plan (`limit::plan_sql`), adds the cost to the period's
//! counter only if the whole of it fits, and then — only then — appends the ledger row,
//! inserts the row the credits pay for and, for a metered credit type of a tenant with a
//! Stripe customer, the outbox row. The statements are built once per paid table
//! (`Statements`); a spend only binds its values.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use sea_orm::{DatabaseBackend, prelude::*};

use super::{
    CREDITS_FEATURE, FeatureLimitType, Period,
    limit::{self, plan_sql},
    usage::{PlanFeatureRow, subscribed_feature},
};
use crate::{
    auth,
    billing::outbox,
    config::CreditTypeConfig,
    db::{Session, Shape, Sql},
    error::{AppError, Shortfall},
    idempotency::{self, Claim, Fingerprint},
};

/// A table whose rows a credit type pays for, as the guarded resource describes it. The first
/// column is the row's id, which the ledger records as the spend's `object_id`.
#[derive(Debug)]
pub struct PaidTable {
    pub credit_type: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
}

impl PaidTable {
    /// The values of `model`'s row in `columns`' order: what a `Spend` inserts.
    pub fn row<M: ModelTrait>(&self, model: &M) -> Result<Vec<sea_orm::Value>, AppError> {
        self.columns
            .iter()
            .map(|name| {
                let column = name
                    .parse::<<M::Entity as EntityTrait>::Column>()
                    .map_err(|_| {
                        AppError::Internal(anyhow::anyhow!("{} has no column {name}", self.table))
                    })?;
                Ok(model.get(column))
            })
            .collect()
    }
}

/// One guarded action's spend, as the caller describes it.
pub struct Spend {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub credit_type: CreditTypeConfig,
    /// Where the row the credits pay for goes …
    pub paid: &'static PaidTable,
    /// … and its values, in `paid.columns`' order; the first is `object_id`.
    pub row: Vec<sea_orm::Value>,
    pub object_id: Uuid,
    pub key: Option<IdempotencyKey>,
}

/// Makes a spend idempotent: a repeat of the same request under `value` returns the first
/// result and charges nothing; another request under it is `IDEMPOTENCY_KEY_REUSED`.
pub struct IdempotencyKey {
    pub value: String,
    pub fingerprint: Fingerprint,
    /// How long the key is remembered.
    pub retention: Duration,
}

/// What a spend did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spent {
    /// Charged now, and the row inserted.
    Charged,
    /// An idempotent replay: nothing charged; the first request's object is this one.
    Replayed(Uuid),
}

/// The guard's statements for one paid table.
#[derive(Debug)]
enum GuardSql {
    /// One statement: data-modifying CTEs, each feeding the next.
    Postgres(Sql),
    /// Statements run one after the other on the writer's own thread (no round trip is a
    /// hand-off): the counter upsert, returning its period when it wrote its row, then —
    /// only then — the ledger row in that period (`:period`), the paid row and, for a metered
    /// type, the outbox row.
    Sqlite {
        spend: Sql,
        ledger: Sql,
        paid: Sql,
        outbox: Sql,
    },
}

/// Every guard statement this process can run, built once at start-up: per paid table, and
/// whether the credit type is metered.
#[derive(Debug)]
pub struct Statements {
    by_table: HashMap<(&'static str, bool), GuardSql>,
}

impl Statements {
    pub fn build(backend: DatabaseBackend, tables: &[&'static PaidTable]) -> Self {
        let by_table = tables
            .iter()
            .flat_map(|paid| {
                [false, true].map(|metered| ((paid.table, metered), build(backend, paid, metered)))
            })
            .collect();
        Statements { by_table }
    }

    fn get(&self, spend: &Spend) -> Result<&GuardSql, AppError> {
        let metered = spend.credit_type.meter.is_some();
        self.by_table
            .get(&(spend.paid.table, metered))
            .ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!(
                    "no guard statement for table {}",
                    spend.paid.table
                ))
            })
    }
}

/// The counter upsert: adds `:cost` to the period's counter, creating it, only if the whole
/// cost fits the plan's ceiling and `:user` (when given) is a member of the tenant. Its row
/// lock decides between concurrent spenders, on any number of replicas.
fn spend_sql(backend: DatabaseBackend) -> String {
    let plan = plan_sql(backend);
    format!(
        "INSERT INTO credit_usage (tenant_id, feature, period_start, used) \
         SELECT :tenant, :feature, p.period_start, :cost FROM ({plan}) p WHERE :cost <= p.lim \
         AND (:user IS NULL OR EXISTS (SELECT 1 FROM tenant_user tu \
         WHERE tu.tenant_id = :tenant AND tu.user_id = :user)) \
         ON CONFLICT (tenant_id, feature, period_start) DO UPDATE SET used = credit_usage.used + excluded.used \
         WHERE credit_usage.used + excluded.used <= (SELECT p.lim FROM ({plan}) p)"
    )
}

/// The ledger row, its period start taken from `period`.
fn ledger_sql(period: &str) -> String {
    format!(
        "INSERT INTO credit (id, tenant_id, user_id, type, amount, object_id, idempotency_key, \
         feature, period_start, created_at) \
         SELECT :ledger_id, :tenant, :user, :credit_type, :cost, :object, :key, :feature, {period}, :now"
    )
}

fn build(backend: DatabaseBackend, paid: &PaidTable, metered: bool) -> GuardSql {
    let table = paid.table;
    let columns = paid.columns.join(", ");
    let values = (0..paid.columns.len())
        .map(|i| format!(":paid_{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let spend = spend_sql(backend);
    match backend {
        DatabaseBackend::Postgres => {
            let outbox = match metered {
                true => format!(
                    ", outbox AS ({})",
                    outbox::spend_event_sql("EXISTS (SELECT 1 FROM paid)")
                ),
                false => String::new(),
            };
            GuardSql::Postgres(Sql::new(
                backend,
                &format!(
                    "WITH spent AS ({spend} RETURNING period_start), \
                     ledger AS ({} FROM spent RETURNING id), \
                     paid AS (INSERT INTO {table} ({columns}) SELECT {values} FROM ledger RETURNING 1){outbox} \
                     SELECT CAST(1 AS BIGINT) AS created FROM paid",
                    ledger_sql("spent.period_start")
                ),
            ))
        }
        _ => GuardSql::Sqlite {
            spend: Sql::new(backend, &format!("{spend} RETURNING period_start")),
            ledger: Sql::new(backend, &ledger_sql(":period")),
            paid: Sql::new(
                backend,
                &format!("INSERT INTO {table} ({columns}) VALUES ({values})"),
            ),
            outbox: Sql::new(backend, &outbox::spend_event_sql("1 = 1")),
        },
    }
}

/// The spend's writes inside the session's open transaction: claim its key, then the guard's
/// statement. On a refusal (`INSUFFICIENT_CREDITS`, `FEATURE_NOT_INCLUDED`, `FORBIDDEN`) it
/// has written nothing, except a key claim, which its caller must undo.
pub(super) async fn write(
    session: &mut Session,
    statements: &Statements,
    spend: &Spend,
) -> Result<Spent, AppError> {
    let now = Utc::now();
    if let Some(key) = &spend.key {
        let claim = idempotency::claim(
            session,
            spend.tenant_id,
            &key.value,
            &key.fingerprint,
            spend.object_id,
            now,
            key.retention,
        )
        .await?;
        if let Claim::Replay(original) = claim {
            // A replay writes nothing, so the guard's statement did not check the spender:
            // only a member may see what the key made.
            if let Some(user_id) = spend.user_id {
                auth::standing_in(session, user_id, spend.tenant_id).await?;
            }
            return Ok(Spent::Replayed(original));
        }
    }
    consume(session, statements.get(spend)?, spend, now).await?;
    Ok(Spent::Charged)
}

/// The guard's statements, bound and run; `Err` (a refusal, explained) when they wrote
/// nothing.
async fn consume(
    session: &mut Session,
    sql: &GuardSql,
    spend: &Spend,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let ledger_id = Uuid::now_v7();
    let usage_id = Uuid::now_v7();
    let object_id = spend.object_id.to_string();
    let value = |name: &str| -> Option<sea_orm::Value> {
        Some(match name {
            "tenant" => spend.tenant_id.into(),
            "feature" => CREDITS_FEATURE.into(),
            "cost" => spend.credit_type.amount.into(),
            "now" => now.into(),
            "month" => Period::calendar_month(now).start.into(),
            "lifetime" => Period::lifetime().start.into(),
            "ledger_id" => ledger_id.into(),
            "user" => spend.user_id.into(),
            "credit_type" => spend.credit_type.value.as_str().into(),
            "object" => Some(object_id.as_str()).into(),
            "key" => spend.key.as_ref().map(|k| k.value.as_str()).into(),
            name => match name.strip_prefix("paid_") {
                Some(i) => spend.row.get(i.parse::<usize>().ok()?)?.clone(),
                None => {
                    outbox::spend_event_value(name, usage_id, spend.credit_type.meter.as_ref()?)?
                }
            },
        })
    };
    let created = match sql {
        GuardSql::Postgres(sql) => !session
            .query(&sql.bind(value)?, &Shape::default())
            .await?
            .is_empty(),
        GuardSql::Sqlite {
            spend: counter,
            ledger,
            paid,
            outbox,
        } => {
            // The period the counter took the cost in, as its row keeps it: the plan is
            // read once per spend.
            let rows = session
                .query(&counter.bind(value)?, &Shape::default())
                .await?;
            match rows.first() {
                Some(row) => {
                    let period: Option<String> = row.get("period_start")?;
                    let value = |name: &str| match name {
                        "period" => Some(period.clone().into()),
                        name => value(name),
                    };
                    session.execute(&ledger.bind(value)?).await?;
                    session.execute(&paid.bind(value)?).await?;
                    if spend.credit_type.meter.is_some() {
                        session.execute(&outbox.bind(value)?).await?;
                    }
                    true
                }
                None => false,
            }
        }
    };
    match created {
        true => Ok(()),
        false => Err(refusal(session, spend, now).await),
    }
}

/// Why a spend was refused, for the client: the spender is not a member (`FORBIDDEN`; its
/// user gone: `UNAUTHENTICATED`), no entitlement, or the counter as it stands.
async fn refusal(session: &mut Session, spend: &Spend, now: DateTime<Utc>) -> AppError {
    if let Some(user_id) = spend.user_id {
        match auth::standing_in(session, user_id, spend.tenant_id).await {
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    let row = match subscribed_feature(session, spend.tenant_id, CREDITS_FEATURE, now).await {
        Ok(row) => row,
        Err(e) => return e,
    };
    let Some(PlanFeatureRow {
        period,
        feature: Some(feature),
    }) = row
    else {
        return AppError::FeatureNotIncluded {
            feature: CREDITS_FEATURE.to_owned(),
        };
    };
    let cost = spend.credit_type.amount;
    match feature.kind {
        FeatureLimitType::NotIncluded => AppError::FeatureNotIncluded {
            feature: CREDITS_FEATURE.to_owned(),
        },
        // Unlimited never refuses; a limited plan that fits now changed since (a concurrent
        // plan change): the figures as they stand still explain the refusal.
        kind if limit::ceiling(kind, feature.value) == Some(i64::MAX) => {
            AppError::Internal(anyhow::anyhow!("an unlimited spend of {cost} was refused"))
        }
        kind => AppError::InsufficientCredits(Box::new(Shortfall {
            feature: CREDITS_FEATURE.to_owned(),
            credit_type: spend.credit_type.value.clone(),
            required: cost,
            used: feature.used,
            limit: feature.value,
            resets_at: Period::current(kind, period, now).end,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static WIDGET: PaidTable = PaidTable {
        credit_type: "credit-widget",
        table: "widget",
        columns: &["id", "tenant_id", "label"],
    };

    /// The statement, a clause a line, and its parameters in number order.
    fn readable(sql: &Sql) -> String {
        let mut text = sql.text().to_owned();
        for clause in [
            " WITH ",
            "), ",
            " SELECT ",
            " FROM ",
            " WHERE ",
            " ON CONFLICT ",
            " INSERT ",
            "; ",
        ] {
            text = text.replace(clause, &format!("\n{}", clause.trim_start()));
        }
        format!("{text}\n-- parameters: {}", sql.names().join(", "))
    }

    fn snapshot(backend: DatabaseBackend, metered: bool) -> String {
        match build(backend, &WIDGET, metered) {
            GuardSql::Postgres(sql) => readable(&sql),
            GuardSql::Sqlite {
                spend,
                ledger,
                paid,
                outbox,
            } => [spend, ledger, paid, outbox]
                .iter()
                .map(readable)
                .collect::<Vec<_>>()
                .join("\n\n-- then, if the counter took the cost:\n"),
        }
    }

    #[test]
    fn postgres_guard_is_one_statement_of_chained_ctes() {
        insta::assert_snapshot!(snapshot(DatabaseBackend::Postgres, true));
        let unmetered = snapshot(DatabaseBackend::Postgres, false);
        assert!(!unmetered.contains("usage_event"), "{unmetered}");
    }

    #[test]
    fn sqlite_guard_is_the_counter_upsert_then_the_rows_it_pays_for() {
        insta::assert_snapshot!(snapshot(DatabaseBackend::Sqlite, true));
    }

    #[test]
    fn statements_are_built_for_every_paid_table_metered_or_not() {
        let statements = Statements::build(DatabaseBackend::Postgres, &[&WIDGET]);
        assert_eq!(statements.by_table.len(), 2);
        assert!(statements.by_table.contains_key(&("widget", true)));
    }
}
