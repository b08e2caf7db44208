//! Invariant 3 checked over a whole database (`tollgate verify`): for every tenant, feature
//! and period, the ledger sums to the counter; every guarded resource has exactly one ledger
//! row, and every ledger row names a resource that exists. And for Stripe's outbox: every
//! usage event is of one ledger row, of the same tenant and amount, and no ledger row is
//! reported twice. Read-only; safe on a live database.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use entity::{credit, credit_usage};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QuerySelect, Statement, sea_query::Expr,
};
use uuid::Uuid;

use super::PaidTable;

/// Lines of detail a check reports before it only counts.
const SHOWN: usize = 20;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub ledger_rows: i64,
    pub counters: usize,
    pub resources: i64,
    pub usage_events: i64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} ledger rows, {} usage counters, {} guarded resources, {} usage events",
            self.ledger_rows, self.counters, self.resources, self.usage_events
        )?;
        if self.is_clean() {
            return writeln!(f, "ok: ledger = counters = resources");
        }
        writeln!(f, "BROKEN: {} problem(s)", self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

type CounterKey = (Uuid, String, DateTime<Utc>);

/// Checks invariant 3 over the whole database, for the rows of every table in `paid`.
pub async fn verify(db: &impl ConnectionTrait, paid: &[&PaidTable]) -> Result<Report, DbErr> {
    // Fresh statistics first: planned on a table's stale row count (just after a burst of
    // writes), PostgreSQL merges ledger and resources on the tenant alone — quadratic for a
    // busy tenant — instead of looking each ledger row up by (tenant, object). Best effort:
    // a role that may not analyze still verifies.
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let tables: Vec<&str> = paid.iter().map(|p| p.table).collect();
        let sql = format!(
            "ANALYZE credit, credit_usage, usage_event, {}",
            tables.join(", ")
        );
        if let Err(e) = db.execute_unprepared(&sql).await {
            tracing::warn!(error.cause = %e, "could not refresh statistics before verifying");
        }
    }
    let mut report = Report::default();
    check_counters(db, &mut report).await?;
    for paid in paid {
        check_resources(db, paid, &mut report).await?;
    }
    check_outbox(db, &mut report).await?;
    Ok(report)
}

async fn check_outbox(db: &impl ConnectionTrait, report: &mut Report) -> Result<(), DbErr> {
    report.usage_events = scalar(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM usage_event").await?;
    let unmatched = scalar(
        db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM usage_event u LEFT JOIN credit c \
         ON c.tenant_id = u.tenant_id AND c.id = u.credit_id \
         WHERE c.id IS NULL OR c.amount <> u.quantity",
    )
    .await?;
    if unmatched > 0 {
        report.problems.push(format!(
            "{unmatched} usage events match no ledger row of their tenant and amount"
        ));
    }
    let twice = scalar(
        db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT credit_id FROM usage_event \
         GROUP BY credit_id HAVING COUNT(*) > 1) d",
    )
    .await?;
    if twice > 0 {
        report.problems.push(format!(
            "{twice} ledger rows have more than one usage event"
        ));
    }
    Ok(())
}

async fn check_counters(db: &impl ConnectionTrait, report: &mut Report) -> Result<(), DbErr> {
    let sums: Vec<(Uuid, String, DateTime<Utc>, i64, i64)> = credit::Entity::find()
        .select_only()
        .column(credit::Column::TenantId)
        .column(credit::Column::Feature)
        .column(credit::Column::PeriodStart)
        .column_as(Expr::cust("CAST(SUM(amount) AS BIGINT)"), "total")
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "rows")
        .group_by(credit::Column::TenantId)
        .group_by(credit::Column::Feature)
        .group_by(credit::Column::PeriodStart)
        .into_tuple()
        .all(db)
        .await?;
    let mut ledger: BTreeMap<CounterKey, i64> = BTreeMap::new();
    for (tenant, feature, period, total, rows) in sums {
        report.ledger_rows += rows;
        ledger.insert((tenant, feature, period), total);
    }
    let counters = credit_usage::Entity::find().all(db).await?;
    report.counters = counters.len();
    let mut mismatches = Vec::new();
    for c in counters {
        let total = ledger
            .remove(&(c.tenant_id, c.feature.clone(), c.period_start))
            .unwrap_or(0);
        if total != c.used {
            mismatches.push(format!(
                "tenant {} {} period {}: counter says {} used, ledger sums to {}",
                c.tenant_id,
                c.feature,
                c.period_start.to_rfc3339(),
                c.used,
                total
            ));
        }
    }
    for ((tenant, feature, period), total) in ledger {
        mismatches.push(format!(
            "tenant {tenant} {feature} period {}: no counter, ledger sums to {total}",
            period.to_rfc3339()
        ));
    }
    push_limited(report, mismatches);
    Ok(())
}

async fn check_resources(
    db: &impl ConnectionTrait,
    paid: &PaidTable,
    report: &mut Report,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let (table, id) = (paid.table, paid.columns.first().copied().unwrap_or("id"));
    // The resource id as the ledger's `object_id` spells it (ids are blobs on SQLite).
    let id_text = match backend {
        DatabaseBackend::Postgres => format!("CAST(r.{id} AS TEXT)"),
        _ => format!(
            "lower(substr(hex(r.{id}),1,8)||'-'||substr(hex(r.{id}),9,4)||'-'||substr(hex(r.{id}),13,4)||'-'||substr(hex(r.{id}),17,4)||'-'||substr(hex(r.{id}),21))"
        ),
    };
    let value = paid.credit_type;
    let resources = scalar(db, &format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}")).await?;
    let ledger_rows = scalar(
        db,
        &format!("SELECT CAST(COUNT(*) AS BIGINT) FROM credit WHERE type = '{value}'"),
    )
    .await?;
    let matched = scalar(
        db,
        &format!(
            // A LEFT JOIN, counting the matches, keeps SQLite walking the resources and
            // looking each ledger row up by (tenant, object), never the other way round.
            "SELECT CAST(COUNT(c.id) AS BIGINT) FROM {table} r \
             LEFT JOIN credit c ON c.tenant_id = r.tenant_id AND c.object_id = {id_text} \
             AND c.type = '{value}'"
        ),
    )
    .await?;
    let wrong = db
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT {id_text} AS id, CAST(COUNT(c.id) AS BIGINT) AS n FROM {table} r \
                 LEFT JOIN credit c ON c.tenant_id = r.tenant_id AND c.object_id = {id_text} \
                 AND c.type = '{value}' \
                 GROUP BY r.tenant_id, r.{id} HAVING COUNT(c.id) <> 1"
            ),
        ))
        .await?;
    report.resources += resources;
    let mut problems = Vec::new();
    for row in wrong {
        let id: String = row.try_get("", "id")?;
        let n: i64 = row.try_get("", "n")?;
        problems.push(format!("{table} {id} has {n} {value} ledger rows, not 1"));
    }
    push_limited(report, problems);
    if ledger_rows > matched {
        report.problems.push(format!(
            "{} {value} ledger rows name no existing {table}",
            ledger_rows - matched
        ));
    }
    Ok(())
}

async fn scalar(db: &impl ConnectionTrait, sql: &str) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(sql.to_owned()))?;
    row.try_get_by_index(0)
}

fn push_limited(report: &mut Report, problems: Vec<String>) {
    let total = problems.len();
    report.problems.extend(problems.into_iter().take(SHOWN));
    if total > SHOWN {
        report
            .problems
            .push(format!("… and {} more like the above", total - SHOWN));
    }
}
