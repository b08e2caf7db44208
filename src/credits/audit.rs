//! Invariants 3 and 7 checked over a whole database (`tollgate verify`): for every tenant,
//! feature and period, the spends' allowance parts (amount less what grants paid) sum to the
//! counter; every guarded resource has exactly one ledger row, and every ledger row names a
//! resource that exists; every grant's amount is what it holds plus what spends took from it
//! plus what expired or was voided, no spend took more from grants than it cost, and none took
//! from a grant outside its effective time. And for Stripe's outbox: every usage event is of
//! one ledger row, of the same tenant and of its allowance part, and no ledger row is reported
//! twice. Every ledger row and alert event carries its number among its tenant's events, the
//! numbers 1 to the last one taken, each once. Read-only; safe on a live database.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use entity::{
    credit::{self, Movement},
    credit_usage,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter, QuerySelect,
    Statement, sea_query::Expr,
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
    pub grants: i64,
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
            "checked {} ledger rows, {} usage counters, {} guarded resources, {} usage events, {} grants",
            self.ledger_rows, self.counters, self.resources, self.usage_events, self.grants
        )?;
        if self.is_clean() {
            return writeln!(f, "ok: ledger = counters = resources = grants");
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
            "ANALYZE credit, credit_usage, usage_event, credit_grant, credit_allocation, {}",
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
    check_grants(db, &mut report).await?;
    check_reservations(db, &mut report).await?;
    check_feed(db, &mut report).await?;
    Ok(report)
}

/// A row id as the ledger's `object_id` spells it, for row `r` (ids are blobs on SQLite).
fn id_text(backend: DatabaseBackend, column: &str) -> String {
    match backend {
        DatabaseBackend::Postgres => format!("CAST(r.{column} AS TEXT)"),
        _ => format!(
            "lower(substr(hex(r.{column}),1,8)||'-'||substr(hex(r.{column}),9,4)||'-'||substr(hex(r.{column}),13,4)||'-'||substr(hex(r.{column}),17,4)||'-'||substr(hex(r.{column}),21))"
        ),
    }
}

/// Invariant 8: every reservation holds exactly one spend, and has given back nothing while
/// pending, at least the rest once confirmed, all once released or expired.
async fn check_reservations(db: &impl ConnectionTrait, report: &mut Report) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let id = id_text(backend, "id");
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT r.id, r.status, r.amount, r.confirmed_amount, \
                 CAST((SELECT COUNT(*) FROM credit c WHERE c.tenant_id = r.tenant_id \
                 AND c.object_id = {id} AND c.kind = 'SPEND' AND c.amount = r.amount) AS BIGINT) AS holds, \
                 CAST(COALESCE((SELECT SUM(f.amount) FROM credit c JOIN credit f \
                 ON f.tenant_id = c.tenant_id AND f.refund_of = c.id WHERE c.tenant_id = r.tenant_id \
                 AND c.object_id = {id} AND c.kind = 'SPEND'), 0) AS BIGINT) AS back \
                 FROM credit_reservation r"
            ),
        ))
        .await?;
    let mut problems = Vec::new();
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let status: String = row.try_get("", "status")?;
        let amount: i64 = row.try_get("", "amount")?;
        let confirmed: Option<i64> = row.try_get("", "confirmed_amount")?;
        let (holds, back): (i64, i64) = (row.try_get("", "holds")?, row.try_get("", "back")?);
        // Given back: nothing while pending, all once released or expired; once confirmed at
        // least the rest (a refund of the confirmed spend may give back more, never all twice).
        let owed = match status.as_str() {
            "PENDING" => 0..=0,
            "CONFIRMED" => amount - confirmed.unwrap_or(0)..=amount,
            _ => amount..=amount,
        };
        if holds != 1 || !owed.contains(&back) {
            problems.push(format!(
                "reservation {id} ({status}, {amount} held): {holds} holds, {back} given back, \
                 not 1 and {owed:?}"
            ));
        }
    }
    push_limited(report, problems);
    Ok(())
}

/// What grants paid of ledger row `c`, in SQL.
const FROM_GRANTS_SQL: &str = "COALESCE((SELECT SUM(a.amount) FROM credit_allocation a \
WHERE a.tenant_id = c.tenant_id AND a.credit_id = c.id), 0)";

async fn check_grants(db: &impl ConnectionTrait, report: &mut Report) -> Result<(), DbErr> {
    report.grants = scalar(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM credit_grant").await?;
    let backend = db.get_database_backend();
    let unbalanced = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT * FROM (SELECT g.id, g.status, g.amount, g.remaining, \
             CAST(COALESCE((SELECT SUM(CASE WHEN s.kind = 'REFUND' THEN -a.amount ELSE a.amount END) \
             FROM credit_allocation a JOIN credit s ON s.tenant_id = a.tenant_id AND s.id = a.credit_id \
             WHERE a.tenant_id = g.tenant_id AND a.grant_id = g.id), 0) AS BIGINT) AS spent, \
             CAST(COALESCE((SELECT SUM(c.amount) FROM credit c WHERE c.tenant_id = g.tenant_id \
             AND c.grant_id = g.id AND c.kind IN ('EXPIRY', 'VOID')), 0) AS BIGINT) AS closed, \
             CAST((SELECT COUNT(*) FROM credit c WHERE c.tenant_id = g.tenant_id \
             AND c.grant_id = g.id AND c.kind = 'GRANT' AND c.amount = g.amount) AS BIGINT) AS granted \
             FROM credit_grant g) b \
             WHERE b.amount <> b.remaining + b.spent + b.closed OR b.granted <> 1 \
             OR b.remaining < 0 OR (b.status <> 'ACTIVE' AND b.remaining <> 0)",
        ))
        .await?;
    let mut problems = Vec::new();
    for row in unbalanced {
        let id: Uuid = row.try_get("", "id")?;
        let (amount, remaining, spent, closed, granted): (i64, i64, i64, i64, i64) = (
            row.try_get("", "amount")?,
            row.try_get("", "remaining")?,
            row.try_get("", "spent")?,
            row.try_get("", "closed")?,
            row.try_get("", "granted")?,
        );
        let status: String = row.try_get("", "status")?;
        problems.push(format!(
            "grant {id} ({status}): amount {amount} ≠ remaining {remaining} + spent {spent} + \
             expired or voided {closed}, or {granted} GRANT rows of its amount, not 1"
        ));
    }
    push_limited(report, problems);
    let overdrawn = scalar(
        db,
        &format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM credit c WHERE {FROM_GRANTS_SQL} > c.amount \
             OR (c.kind NOT IN ('SPEND', 'REFUND') AND {FROM_GRANTS_SQL} <> 0)"
        ),
    )
    .await?;
    if overdrawn > 0 {
        report.problems.push(format!(
            "{overdrawn} ledger rows took more from grants than they spent (or are not spends)"
        ));
    }
    let untimely = scalar(
        db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM credit_allocation a \
         JOIN credit c ON c.tenant_id = a.tenant_id AND c.id = a.credit_id \
         JOIN credit_grant g ON g.tenant_id = a.tenant_id AND g.id = a.grant_id \
         WHERE a.amount <= 0 OR (c.kind = 'SPEND' AND (c.created_at < g.effective_at \
         OR (g.expires_at IS NOT NULL AND c.created_at >= g.expires_at)))",
    )
    .await?;
    if untimely > 0 {
        report.problems.push(format!(
            "{untimely} allocations took from a grant outside its effective time (or took nothing)"
        ));
    }
    Ok(())
}

/// The refunds of spend `c`: their allowance part, which comes off its metered usage.
const REFUNDED_ALLOWANCE_SQL: &str = "COALESCE((SELECT SUM(r.amount - \
COALESCE((SELECT SUM(a.amount) FROM credit_allocation a WHERE a.tenant_id = r.tenant_id \
AND a.credit_id = r.id), 0)) FROM credit r WHERE r.tenant_id = c.tenant_id \
AND r.refund_of = c.id), 0)";

/// A usage event `u` that stands: a meter event not cancelled, and not being cancelled (no
/// cancel of it that has not failed).
const STANDING_SQL: &str = "u.kind = 'METER_EVENT' AND u.status <> 'CANCELLED' AND NOT EXISTS \
(SELECT 1 FROM usage_event x WHERE x.tenant_id = u.tenant_id AND x.credit_id = u.credit_id \
AND x.kind = 'CANCEL' AND x.adjusts = u.id AND x.status <> 'FAILED')";

async fn check_outbox(db: &impl ConnectionTrait, report: &mut Report) -> Result<(), DbErr> {
    report.usage_events = scalar(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM usage_event").await?;
    // Every event belongs to a spend of its tenant and reports at most its allowance part;
    // a cancel cancels a meter event of the same spend.
    let unmatched = scalar(
        db,
        &format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM usage_event u LEFT JOIN credit c \
             ON c.tenant_id = u.tenant_id AND c.id = u.credit_id \
             WHERE c.id IS NULL OR u.quantity < 0 OR u.quantity > c.amount - {FROM_GRANTS_SQL} \
             OR (u.kind = 'CANCEL' AND NOT EXISTS (SELECT 1 FROM usage_event t \
             WHERE t.tenant_id = u.tenant_id AND t.id = u.adjusts AND t.credit_id = u.credit_id \
             AND t.kind = 'METER_EVENT'))"
        ),
    )
    .await?;
    if unmatched > 0 {
        report.problems.push(format!(
            "{unmatched} usage events match no ledger row of their tenant and allowance part"
        ));
    }
    // What stands of a spend's usage is one event, whose quantity less what was refunded
    // after it was sent is the spend's allowance part less its refunds.
    let wrong = scalar(
        db,
        &format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM credit c WHERE EXISTS (SELECT 1 \
             FROM usage_event u WHERE u.tenant_id = c.tenant_id AND u.credit_id = c.id) AND (\
             (SELECT COUNT(*) FROM usage_event u WHERE u.tenant_id = c.tenant_id \
             AND u.credit_id = c.id AND {STANDING_SQL}) > 1 \
             OR COALESCE((SELECT SUM(u.quantity - u.refunded_quantity) FROM usage_event u \
             WHERE u.tenant_id = c.tenant_id AND u.credit_id = c.id AND {STANDING_SQL}), 0) \
             <> c.amount - {FROM_GRANTS_SQL} - {REFUNDED_ALLOWANCE_SQL})"
        ),
    )
    .await?;
    if wrong > 0 {
        report.problems.push(format!(
            "{wrong} ledger rows' standing usage events do not report what stands of them"
        ));
    }
    Ok(())
}

/// Every ledger row and alert event is numbered, and each tenant's numbers are exactly 1 to
/// the last one taken (`feed`: dense, none twice — an index forbids the same number twice
/// within a table; on PostgreSQL the last one taken is `credit_feed.last_seq`).
async fn check_feed(db: &impl ConnectionTrait, report: &mut Report) -> Result<(), DbErr> {
    let alerts = format!("('{}')", super::feed::ALERT_TYPES.join("', '"));
    let unnumbered = scalar(
        db,
        &format!(
            "SELECT CAST((SELECT COUNT(*) FROM credit WHERE seq IS NULL) + (SELECT COUNT(*) \
             FROM webhook_event WHERE type IN {alerts} AND seq IS NULL) AS BIGINT)"
        ),
    )
    .await?;
    if unnumbered > 0 {
        report.problems.push(format!(
            "{unnumbered} ledger rows or alert events have no number among their tenant's events"
        ));
    }
    let numbered = "SELECT tenant_id, seq FROM credit WHERE seq IS NOT NULL UNION ALL \
                    SELECT tenant_id, seq FROM webhook_event WHERE seq IS NOT NULL";
    let backend = db.get_database_backend();
    // The last number taken: PostgreSQL keeps it (`credit_feed`); SQLite's is the highest.
    let committed = match backend {
        DatabaseBackend::Postgres => "COALESCE(MAX(f.last_seq), -1)",
        _ => "MAX(e.seq)",
    };
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT e.tenant_id, CAST(COUNT(*) AS BIGINT) AS events, \
                 CAST(MIN(e.seq) AS BIGINT) AS first, CAST(MAX(e.seq) AS BIGINT) AS last, \
                 CAST({committed} AS BIGINT) AS committed \
                 FROM ({numbered}) e LEFT JOIN credit_feed f ON f.tenant_id = e.tenant_id \
                 GROUP BY e.tenant_id HAVING COUNT(*) <> MAX(e.seq) OR MIN(e.seq) <> 1 \
                 OR {committed} <> MAX(e.seq)"
            ),
        ))
        .await?;
    for row in rows.iter().take(SHOWN) {
        let tenant: Uuid = row.try_get("", "tenant_id")?;
        let [events, first, last, committed] =
            ["events", "first", "last", "committed"].map(|c| row.try_get::<i64>("", c));
        report.problems.push(format!(
            "tenant {tenant}'s events are not numbered 1 to its last number: {} events \
             numbered {}..{}, last number taken {}",
            events?, first?, last?, committed?
        ));
    }
    if rows.len() > SHOWN {
        report.problems.push(format!(
            "… and {} more tenants with misnumbered events",
            rows.len() - SHOWN
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
        .column_as(
            Expr::cust(
                "CAST(SUM(CASE WHEN credit.kind = 'REFUND' THEN -1 ELSE 1 END * (credit.amount - \
                 COALESCE((SELECT SUM(a.amount) FROM credit_allocation a \
                 WHERE a.tenant_id = credit.tenant_id AND a.credit_id = credit.id), 0))) AS BIGINT)",
            ),
            "total",
        )
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "rows")
        .filter(credit::Column::Movement.is_in([Movement::Spend, Movement::Refund]))
        .group_by(credit::Column::TenantId)
        .group_by(credit::Column::Feature)
        .group_by(credit::Column::PeriodStart)
        .into_tuple()
        .all(db)
        .await?;
    let mut ledger: BTreeMap<CounterKey, i64> = BTreeMap::new();
    report.ledger_rows = scalar(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM credit").await?;
    for (tenant, feature, period, total, _rows) in sums {
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
    // What grants paid in each period, as the counter keeps it for alerts.
    let grants_used = scalar(
        db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM credit_usage u WHERE u.grants_used <> \
         COALESCE((SELECT SUM(CASE WHEN c.kind = 'REFUND' THEN -a.amount ELSE a.amount END) \
         FROM credit c JOIN credit_allocation a ON a.tenant_id = c.tenant_id AND a.credit_id = c.id \
         WHERE c.tenant_id = u.tenant_id AND c.feature = u.feature \
         AND c.period_start = u.period_start AND c.kind IN ('SPEND', 'REFUND')), 0)",
    )
    .await?;
    if grants_used > 0 {
        report.problems.push(format!(
            "{grants_used} counters' grants_used differ from what the ledger says grants paid"
        ));
    }
    Ok(())
}

async fn check_resources(
    db: &impl ConnectionTrait,
    paid: &PaidTable,
    report: &mut Report,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let (table, id) = (paid.table, paid.columns.first().copied().unwrap_or("id"));
    let id_text = id_text(backend, id);
    let value = paid.credit_type;
    let resources = scalar(db, &format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}")).await?;
    let ledger_rows = scalar(
        db,
        &format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM credit WHERE type = '{value}' AND kind = 'SPEND'"
        ),
    )
    .await?;
    let matched = scalar(
        db,
        &format!(
            // A LEFT JOIN, counting the matches, keeps SQLite walking the resources and
            // looking each ledger row up by (tenant, object), never the other way round.
            "SELECT CAST(COUNT(c.id) AS BIGINT) FROM {table} r \
             LEFT JOIN credit c ON c.tenant_id = r.tenant_id AND c.object_id = {id_text} \
             AND c.type = '{value}' AND c.kind = 'SPEND'"
        ),
    )
    .await?;
    let wrong = db
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT {id_text} AS id, CAST(COUNT(c.id) AS BIGINT) AS n FROM {table} r \
                 LEFT JOIN credit c ON c.tenant_id = r.tenant_id AND c.object_id = {id_text} \
                 AND c.type = '{value}' AND c.kind = 'SPEND' \
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
