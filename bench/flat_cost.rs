//! Cost flat in data size: p50/p99 of `planFeatureUsage` and `creditHistory` for a tenant
//! with 1,000 and with 1,000,000 ledger rows (plus 10,000 other tenants), over HTTP against
//! the real server, on SQLite and on PostgreSQL.
//!
//!     cargo bench --bench flat_cost
//!
//! PostgreSQL is used when BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
//! answers; set BENCH_DATABASE_URL=none to skip it. Rows are seeded with bulk inserts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gql;

use std::time::{Duration, Instant};

use chrono::{Datelike, TimeZone, Utc};
use entity::{credit, credit_usage, tenant, tenant_subscription};
use sea_orm::{
    ActiveValue::Set, Database as SeaDatabase, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait, prelude::*,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use tollgate::{config::Config, startup::Application};

const OTHER_TENANTS: usize = 10_000;
const ROWS_PER_OTHER_TENANT: usize = 10;
const SIZES: [usize; 2] = [1_000, 1_000_000];
const SAMPLES: usize = 2_000;
const BATCH: usize = 1_000;

#[tokio::main]
async fn main() {
    let mut lines = vec![
        "| database | ledger rows (tenant) | query | p50 µs | p99 µs |".to_owned(),
        "| --- | ---: | --- | ---: | ---: |".to_owned(),
    ];
    let mut ratios = Vec::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    run("SQLite", &sqlite, &mut lines, &mut ratios).await;
    let pg = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if pg != "none" {
        let name = format!("tollgate_bench_{}", std::process::id());
        match common::create_pg_database(&pg, &name).await {
            Some((url, dropper)) => {
                run("PostgreSQL", &url, &mut lines, &mut ratios).await;
                dropper.drop_database().await;
            }
            None => eprintln!("PostgreSQL at {pg} not reachable: skipped"),
        }
    }
    println!("\n{}\n", lines.join("\n"));
    println!("| database | query | p50 at 1M ÷ p50 at 1k |\n| --- | --- | ---: |");
    for (db, query, ratio) in ratios {
        println!("| {db} | {query} | {ratio:.2} |");
    }
}

async fn run(
    label: &str,
    url: &str,
    lines: &mut Vec<String>,
    ratios: &mut Vec<(String, String, f64)>,
) {
    eprintln!("== {label}");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::defaults().expect("built-in configuration");
    config.addr = "127.0.0.1:0".into();
    config.database_url = url.to_owned();
    config.jwt_secret = Some(SecretString::from(
        "bench-secret-bench-secret-bench-secret-0123",
    ));
    config.data_dir = dir.path().to_path_buf();
    common::on_unlimited_plan(&mut config);
    config.rate_limit.enabled = false;
    config.validate().expect("config");
    let app = Application::build(config).await.expect("server");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let db = SeaDatabase::connect(url).await.expect("seed connection");

    let token = gql(&client, &base, None, "mutation { signUp(input: {email: \"bench@example.com\", password: \"benchmark\", name: \"Bench\"}) { token } }", json!({})).await["data"]["signUp"]["token"].as_str().expect("token").to_owned();
    let tenant_id = gql(
        &client,
        &base,
        Some(&token),
        "mutation { createTenant(input: {name: \"Big\", slug: \"big\"}) { id } }",
        json!({}),
    )
    .await["data"]["createTenant"]["id"]
        .as_str()
        .expect("tenant")
        .to_owned();
    let tenant = Uuid::parse_str(&tenant_id).expect("uuid");

    let started = Instant::now();
    seed_other_tenants(&db).await;
    eprintln!(
        "seeded {OTHER_TENANTS} other tenants in {:?}",
        started.elapsed()
    );

    let mut seeded = 0;
    let mut p50s = Vec::new();
    for size in SIZES {
        let started = Instant::now();
        seed_ledger(&db, tenant, seeded, size).await;
        seeded = size;
        eprintln!(
            "tenant ledger at {size} rows (seeding took {:?})",
            started.elapsed()
        );

        let usage = "query($t: ID!) { planFeatureUsage(tenantId: $t) { used remaining } }";
        let first = "query($t: ID!) { creditHistory(tenantId: $t, first: 20) { nodes { id amount createdAt } pageInfo { endCursor } } }";
        let page = "query($t: ID!, $a: String) { creditHistory(tenantId: $t, first: 20, after: $a) { nodes { id amount createdAt } pageInfo { endCursor } } }";
        let walk = "query($t: ID!, $a: String) { creditHistory(tenantId: $t, first: 100, after: $a) { pageInfo { endCursor } } }";
        let vars = json!({ "t": tenant_id });
        let check = gql(&client, &base, Some(&token), usage, vars.clone()).await;
        assert_eq!(
            check["data"]["planFeatureUsage"]["used"], size as i64,
            "{check}"
        );

        // A cursor half-way down the ledger, reached by walking it as a client would.
        let mut cursor: Option<String> = None;
        for _ in 0..(size / 2 / 100) {
            let body = gql(
                &client,
                &base,
                Some(&token),
                walk,
                json!({ "t": tenant_id, "a": cursor }),
            )
            .await;
            cursor = body["data"]["creditHistory"]["pageInfo"]["endCursor"]
                .as_str()
                .map(str::to_owned);
        }
        let deep_vars = json!({ "t": tenant_id, "a": cursor });

        for (name, query, vars) in [
            ("planFeatureUsage", usage, &vars),
            ("creditHistory(first: 20)", first, &vars),
            ("creditHistory(first: 20, after: middle)", page, &deep_vars),
        ] {
            let (p50, p99) = measure(&client, &base, &token, query, vars).await;
            lines.push(format!(
                "| {label} | {size} | `{name}` | {} | {} |",
                p50.as_micros(),
                p99.as_micros()
            ));
            p50s.push((name, size, p50));
        }
    }
    for name in [
        "planFeatureUsage",
        "creditHistory(first: 20)",
        "creditHistory(first: 20, after: middle)",
    ] {
        let at = |size| {
            p50s.iter()
                .find(|(n, s, _)| *n == name && *s == size)
                .map(|(_, _, d)| d.as_secs_f64())
                .expect("measured")
        };
        ratios.push((
            label.to_owned(),
            format!("`{name}`"),
            at(SIZES[1]) / at(SIZES[0]),
        ));
    }
}

async fn measure(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    vars: &Value,
) -> (Duration, Duration) {
    for _ in 0..200 {
        gql(client, base, Some(token), query, vars.clone()).await;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let body = gql(client, base, Some(token), query, vars.clone()).await;
        samples.push(started.elapsed());
        assert!(body["errors"].is_null(), "{body}");
    }
    samples.sort();
    (samples[SAMPLES / 2], samples[SAMPLES * 99 / 100])
}

fn month_start() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("date")
}

fn ledger_row(tenant: Uuid) -> credit::ActiveModel {
    credit::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant),
        user_id: Set(None),
        kind: Set("credit-task-creation".into()),
        amount: Set(1),
        object_id: Set(Some(Uuid::now_v7().to_string())),
        idempotency_key: Set(None),
        feature: Set("credits".into()),
        period_start: Set(month_start()),
        created_at: Set(Utc::now()),
        subject: Set(None),
        metadata: Set(None),
        actor_type: Set(credit::ActorType::System),
        actor_id: Set(None),
        movement: Set(credit::Movement::Spend),
        grant_id: Set(None),
        refund_of: Set(None),
        reason: Set(None),
        // Seeded rows take no number among the tenant's events: this bench reads no feed.
        seq: Set(None),
    }
}

/// Other tenants with a subscription, a counter and a few ledger rows each.
async fn seed_other_tenants(db: &DatabaseConnection) {
    let plan_id = tenant_subscription::Entity::find()
        .one(db)
        .await
        .expect("query")
        .expect("the big tenant's subscription")
        .plan_id;
    let ids: Vec<Uuid> = (0..OTHER_TENANTS).map(|_| Uuid::now_v7()).collect();
    for chunk in ids.chunks(BATCH / ROWS_PER_OTHER_TENANT) {
        let txn = db.begin().await.expect("begin");
        tenant::Entity::insert_many(chunk.iter().map(|id| tenant::ActiveModel {
            id: Set(*id),
            slug: Set(format!("t-{}", id.simple())),
            name: Set("Other".into()),
            stripe_customer_id: Set(None),
            created_at: Set(Utc::now()),
            external_id: Set(None),
        }))
        .exec_without_returning(&txn)
        .await
        .expect("tenants");
        tenant_subscription::Entity::insert_many(chunk.iter().map(|id| {
            tenant_subscription::ActiveModel {
                tenant_id: Set(*id),
                plan_id: Set(plan_id),
                status: Set("active".into()),
                current_period_start: Set(None),
                current_period_end: Set(None),
                stripe_subscription_id: Set(None),
                updated_at: Set(Utc::now()),
                cancel_at_period_end: Set(false),
                stripe_event_at: Set(None),
            }
        }))
        .exec_without_returning(&txn)
        .await
        .expect("subscriptions");
        credit_usage::Entity::insert_many(chunk.iter().map(|id| credit_usage::ActiveModel {
            tenant_id: Set(*id),
            feature: Set("credits".into()),
            period_start: Set(month_start()),
            used: Set(ROWS_PER_OTHER_TENANT as i64),
            grants_used: Set(0),
            alert_at: Set(None),
        }))
        .exec_without_returning(&txn)
        .await
        .expect("counters");
        credit::Entity::insert_many(
            chunk
                .iter()
                .flat_map(|id| (0..ROWS_PER_OTHER_TENANT).map(|_| ledger_row(*id))),
        )
        .exec_without_returning(&txn)
        .await
        .expect("ledger");
        txn.commit().await.expect("commit");
    }
}

/// Grows the tenant's ledger from `from` to `to` rows, keeping its counter equal to the sum.
async fn seed_ledger(db: &DatabaseConnection, tenant: Uuid, from: usize, to: usize) {
    let mut done = from;
    while done < to {
        let txn = db.begin().await.expect("begin");
        for _ in 0..50 {
            let n = BATCH.min(to - done);
            if n == 0 {
                break;
            }
            credit::Entity::insert_many((0..n).map(|_| ledger_row(tenant)))
                .exec_without_returning(&txn)
                .await
                .expect("ledger");
            done += n;
        }
        txn.commit().await.expect("commit");
    }
    let counter = credit_usage::ActiveModel {
        tenant_id: Set(tenant),
        feature: Set("credits".into()),
        period_start: Set(month_start()),
        used: Set(to as i64),
        grants_used: Set(0),
        alert_at: Set(None),
    };
    credit_usage::Entity::delete_many()
        .filter(credit_usage::Column::TenantId.eq(tenant))
        .exec(db)
        .await
        .expect("old counter");
    credit_usage::Entity::insert(counter)
        .exec_without_returning(db)
        .await
        .expect("counter");
}
