//! Prometheus metrics, served as text at `GET /metrics`: requests and their latency by
//! operation, errors by code (denials included), credits consumed by credit type, the Stripe
//! outbox (pending events, the oldest one's age, failed events), the database pools, and the
//! statements sent. Counters live in this process; the outbox figures are read from the
//! database at each scrape, so every replica reports the same ones.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement};

use crate::db::Database;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    errors: IntCounterVec,
    credits: IntCounterVec,
    stripe: IntCounterVec,
    webhooks: IntCounterVec,
    outbox: IntGaugeVec,
    pool: IntGaugeVec,
    statements: IntCounter,
    round_trips: IntCounter,
    /// Held while `statements` and `round_trips` catch up with the database's own count, so two scrapes at
    /// once do not both add the same difference.
    catching_up: Arc<Mutex<()>>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("tollgate".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("graphql_requests_total", "GraphQL operations, by operation"),
            &["operation"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "graphql_request_duration_seconds",
                "Time to answer a GraphQL operation, by operation",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["operation"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "graphql_errors_total",
                "Errors answered, by code (INSUFFICIENT_CREDITS, RATE_LIMITED, …)",
            ),
            &["code"],
        )?;
        let credits = IntCounterVec::new(
            Opts::new("credits_consumed_total", "Credits spent, by credit type"),
            &["credit_type"],
        )?;
        let stripe = IntCounterVec::new(
            Opts::new(
                "stripe_meter_events_total",
                "Meter events sent to Stripe by this process, by outcome (delivered, retry, unauthorized, failed)",
            ),
            &["outcome"],
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Webhook delivery attempts made by this process, by outcome (delivered, retry, failed, dropped)",
            ),
            &["outcome"],
        )?;
        let outbox = IntGaugeVec::new(
            Opts::new(
                "usage_events",
                "Stripe outbox: `pending`, `failed`, and `oldest_pending_age_seconds`",
            ),
            &["measure"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Database connections, by pool and state",
            ),
            &["pool", "state"],
        )?;
        let statements = IntCounter::new("db_statements_total", "SQL statements sent")?;
        let round_trips = IntCounter::new(
            "db_round_trips_total",
            "Round trips to the database: statements, BEGIN/COMMIT, the pool's pings \
             (a network round trip to PostgreSQL, a trip to a SQLite connection's thread)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(credits.clone()))?;
        registry.register(Box::new(stripe.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        registry.register(Box::new(outbox.clone()))?;
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(statements.clone()))?;
        registry.register(Box::new(round_trips.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            errors,
            credits,
            stripe,
            webhooks,
            outbox,
            pool,
            statements,
            round_trips,
            catching_up: Arc::default(),
        })
    }

    /// One GraphQL operation answered in `elapsed`.
    pub fn request(&self, operation: &str, elapsed: Duration) {
        self.requests.with_label_values(&[operation]).inc();
        self.latency
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }

    /// One error answered with `code`.
    pub fn error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    /// `amount` credits of `credit_type` spent.
    pub fn credits(&self, credit_type: &str, amount: i64) {
        self.credits
            .with_label_values(&[credit_type])
            .inc_by(u64::try_from(amount).unwrap_or(0));
    }

    /// One meter event sent to Stripe, and what came of it.
    pub fn stripe_meter_event(&self, outcome: &str) {
        self.stripe.with_label_values(&[outcome]).inc();
    }

    /// One attempt at a webhook delivery, and what came of it.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhooks.with_label_values(&[outcome]).inc();
    }

    /// The text exposition, with the database figures read now.
    pub async fn render(&self, db: &Database) -> Result<String, DbErr> {
        let (pending, failed, oldest) = outbox_figures(&db.read).await?;
        self.outbox.with_label_values(&["pending"]).set(pending);
        self.outbox.with_label_values(&["failed"]).set(failed);
        let age = oldest.map_or(0, |t| (Utc::now() - t).num_seconds().max(0));
        self.outbox
            .with_label_values(&["oldest_pending_age_seconds"])
            .set(age);
        for (name, conn) in [("read", &db.read), ("write", &db.write)] {
            let (size, idle) = pool_figures(conn);
            self.pool.with_label_values(&[name, "open"]).set(size);
            self.pool.with_label_values(&[name, "idle"]).set(idle);
        }
        {
            let _alone = self
                .catching_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sent = db.statements();
            self.statements
                .inc_by(sent.saturating_sub(self.statements.get()));
            let trips = db.round_trips();
            self.round_trips
                .inc_by(trips.saturating_sub(self.round_trips.get()));
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| DbErr::Custom(e.to_string()))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Pending and failed usage events, and when the oldest pending one was created: one query.
async fn outbox_figures(
    db: &DatabaseConnection,
) -> Result<(i64, i64, Option<DateTime<Utc>>), DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(SUM(CASE WHEN status = 'PENDING' THEN 1 ELSE 0 END) AS BIGINT) AS pending, \
             CAST(SUM(CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END) AS BIGINT) AS failed, \
             MIN(CASE WHEN status = 'PENDING' THEN created_at END) AS oldest \
             FROM usage_event WHERE status IN ('PENDING', 'FAILED')",
        ))
        .await?;
    let Some(row) = row else {
        return Ok((0, 0, None));
    };
    Ok((
        row.try_get::<Option<i64>>("", "pending")?.unwrap_or(0),
        row.try_get::<Option<i64>>("", "failed")?.unwrap_or(0),
        row.try_get::<Option<DateTime<Utc>>>("", "oldest")?,
    ))
}

fn pool_figures(conn: &DatabaseConnection) -> (i64, i64) {
    let (size, idle) = match conn.get_database_backend() {
        DatabaseBackend::Postgres => {
            let pool = conn.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = conn.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    (i64::from(size), i64::try_from(idle).unwrap_or(i64::MAX))
}
