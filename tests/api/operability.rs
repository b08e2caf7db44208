//! Running it: Prometheus metrics, a graceful stop, and what happens while the database is
//! away.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    fake_stripe::{Answer, FakeStripe},
    helpers::{empty_database, error_code, spawn_app, spawn_app_with, spawn_app_with_plan},
    stripe::{
        CHECKOUT, PRO_PRICE, SECRET_KEY, eventually, link_customer, reporter_env, reports,
        webhook_only_app,
    },
};
use tollgate::credits::FeatureLimitType;

pub(crate) async fn metrics_page(app: &crate::helpers::TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name{labels}` in a Prometheus text page.
pub(crate) fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_operations_credits_denials_and_the_outbox() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 4).await;
    let (token, tenant) = app.owner_with_tenant("measured").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "one").await;
    app.create_task(&token, &project, "two").await;
    let refused = app.create_task(&token, &project, "three").await;
    assert_eq!(error_code(&refused), Some("INSUFFICIENT_CREDITS"));
    app.gql(None, "{ nope }", json!({})).await;
    let page = metrics_page(&app).await;
    let at = |series: &str| sample(&page, series).unwrap_or_else(|| panic!("{series} in\n{page}"));
    assert_eq!(
        at("tollgate_graphql_requests_total{operation=\"mutation createTask\"}"),
        3.0
    );
    assert_eq!(
        at("tollgate_graphql_requests_total{operation=\"mutation createProject\"}"),
        1.0
    );
    assert_eq!(
        at("tollgate_graphql_requests_total{operation=\"invalid\"}"),
        1.0
    );
    assert_eq!(
        at("tollgate_graphql_request_duration_seconds_count{operation=\"mutation createTask\"}"),
        3.0
    );
    assert_eq!(
        at("tollgate_credits_consumed_total{credit_type=\"credit-task-creation\"}"),
        2.0
    );
    assert_eq!(
        at("tollgate_credits_consumed_total{credit_type=\"credit-project-creation\"}"),
        2.0
    );
    assert_eq!(
        at("tollgate_graphql_errors_total{code=\"INSUFFICIENT_CREDITS\"}"),
        1.0
    );
    assert_eq!(
        at("tollgate_graphql_errors_total{code=\"GRAPHQL_VALIDATION_FAILED\"}"),
        1.0
    );
    assert_eq!(at("tollgate_usage_events{measure=\"pending\"}"), 0.0);
    assert_eq!(
        at("tollgate_usage_events{measure=\"oldest_pending_age_seconds\"}"),
        0.0
    );
    assert!(at("tollgate_db_pool_connections{pool=\"read\",state=\"open\"}") >= 1.0);
    assert!(at("tollgate_db_statements_total") > 0.0);
}

#[tokio::test]
async fn the_outbox_backlog_shows_in_the_metrics() {
    // Webhooks only: no reporter drains the outbox here.
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("backlog").await;
    link_customer(&app, &tenant, "cus_backlog").await;
    app.project_id(&token, &tenant).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = metrics_page(&app).await;
    assert_eq!(
        sample(&page, "tollgate_usage_events{measure=\"pending\"}"),
        Some(1.0)
    );
    assert!(
        sample(
            &page,
            "tollgate_usage_events{measure=\"oldest_pending_age_seconds\"}"
        )
        .is_some_and(|age| age >= 1.0),
        "{page}"
    );
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_and_the_reporters_round_then_exits_cleanly() {
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("stopping").await;
    let project = app.project_id(&token, &tenant).await;
    link_customer(&app, &tenant, "cus_stopping").await;
    // The process sells `pro` like the in-process app, and reports to the fake.
    let config = app.write_config(&format!(
        "[[plans]]\nslug = \"free\"\ntitle = \"Free\"\n[[plans.features]]\nname = \"credits\"\n\
         title = \"Credits\"\ntype = \"MONTHLY\"\nvalue = 10\n\
         [[plans]]\nslug = \"pro\"\ntitle = \"Pro\"\nstripe_price_ids = [\"{PRO_PRICE}\"]\n\
         [[plans.features]]\nname = \"credits\"\ntitle = \"Credits\"\ntype = \"MONTHLY\"\nvalue = 1000\n"
    ));
    let mut env = reporter_env(&fake, "30");
    env.push(("TOLLGATE_CONFIG", config));
    env.push(("TOLLGATE_STRIPE__REQUEST_TIMEOUT_MS", "10000".to_owned()));
    env.push(("RUST_LOG", "info".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = app.start_server(&env).await;
    assert!(SECRET_KEY.starts_with("sk_"));

    // A meter event Stripe answers slowly, and a Checkout request Stripe answers slowly.
    fake.script([Answer::AcceptSlowly(Duration::from_millis(1500))]);
    fake.with(|r| r.checkout_latency = Some(Duration::from_millis(1500)));
    app.create_task(&token, &project, "billable").await;
    eventually("the meter event is in flight", || async {
        fake.with(|r| r.accepted.len() == 1)
    })
    .await;
    let checkout = {
        let (client, url, token, tenant) = (
            app.client.clone(),
            server.url.clone(),
            token.clone(),
            tenant.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{url}/graphql"))
                .bearer_auth(token)
                .json(&json!({ "query": CHECKOUT, "variables": { "t": tenant, "p": "pro" } }))
                .send()
                .await
                .expect("answered")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    eventually("Checkout is in flight", || async {
        fake.with(|r| r.checkout_requests.len() == 1)
    })
    .await;

    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    assert!(status.success(), "clean exit: {status:?}");
    let answer = checkout.await.unwrap();
    assert_eq!(
        answer["data"]["createCheckoutSession"]["url"],
        "https://checkout.stripe.test/c/pay/cs_test_1",
        "the request in flight was answered: {answer}"
    );
    let reports = reports(&app, &token, &tenant).await;
    assert_eq!(reports[0]["status"], "DELIVERED", "{reports:?}");
    assert_eq!(reports[0]["attempts"], 1);
    assert_eq!(fake.with(|r| r.duplicates), 0);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("usage reporter stopped"), "{log}");
    assert!(log.contains("Tollgate stopped"), "{log}");
}

#[tokio::test]
async fn without_the_database_requests_fail_opaquely_and_service_comes_back_by_itself() {
    let app = spawn_app_with(|c| {
        c.database.acquire_timeout_ms = 1_000;
        c.database.sqlite_busy_timeout_ms = 200;
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("outage").await;
    let project = app.project_id(&token, &tenant).await;
    let ready = |app_url: String| async move {
        reqwest::get(format!("{app_url}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready(app.address.clone()).await, 200);

    let outage = app.database_outage().await;
    for _ in 0..3 {
        let body = app.create_task(&token, &project, "during").await;
        assert_eq!(error_code(&body), Some("INTERNAL_SERVER_ERROR"), "{body}");
        let text = body.to_string().to_lowercase();
        assert!(
            !text.contains("sql") && !text.contains("database") && !text.contains("connection"),
            "opaque: {body}"
        );
    }
    // Postgres is gone: not ready. (SQLite only lost its write lock: reads still work.)
    let expected = if app.is_postgres() { 503 } else { 200 };
    assert_eq!(ready(app.address.clone()).await, expected);
    let health = reqwest::get(format!("{}/healthz", app.address))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "alive, just not ready");
    outage.end().await;

    eventually("the service is back", || async {
        ready(app.address.clone()).await == 200
    })
    .await;
    let body = app.create_task(&token, &project, "after").await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM task").await,
        1,
        "nothing half-written"
    );
}

#[tokio::test]
async fn five_replicas_started_at_once_on_a_fresh_database_all_come_up() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (url, _dropped) = empty_database(dir.path()).await;
    let ports: Vec<u16> = (0..5)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port()
        })
        .collect();
    // All five at the same moment, as a first deploy or a rollout starts them.
    let mut replicas: Vec<std::process::Child> = ports
        .iter()
        .map(|port| {
            app.command(&["serve", "--addr", &format!("127.0.0.1:{port}")])
                .env("DATABASE_URL", &url)
                .spawn()
                .expect("tollgate serve starts")
        })
        .collect();
    for (i, port) in ports.iter().enumerate() {
        let mut ready = false;
        for _ in 0..300 {
            if let Ok(Some(status)) = replicas[i].try_wait() {
                let output = replicas.remove(i).wait_with_output().unwrap();
                panic!(
                    "replica {i} exited ({status}): {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let answer = app
                .client
                .post(format!("http://127.0.0.1:{port}/graphql"))
                .json(&json!({ "query": "{ plans { slug } }" }))
                .send()
                .await;
            if let Ok(answer) = answer {
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["data"]["plans"][0]["slug"], "free", "{body}");
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "replica {i} never answered");
    }
    for mut replica in replicas {
        assert!(
            replica.try_wait().unwrap().is_none(),
            "every replica still runs"
        );
        let _ = replica.kill();
        let _ = replica.wait();
    }
}

#[tokio::test]
async fn metrics_can_have_an_address_of_their_own_or_a_token_and_labels_stay_bounded() {
    let apart = spawn_app_with(|c| c.metrics.addr = Some("127.0.0.1:0".into())).await;
    let public = apart
        .client
        .get(format!("{}/metrics", apart.address))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status().as_u16(), 404, "not on the public listener");
    let own = apart.metrics_address.clone().expect("a metrics address");
    let private = apart
        .client
        .get(format!("{own}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status().as_u16(), 200);
    assert!(
        private
            .text()
            .await
            .unwrap()
            .contains("tollgate_usage_events")
    );
    // Only /metrics there: no API on the private address.
    let api = apart
        .client
        .get(format!("{own}/graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 404);

    let token = "metrics-token-0123456789";
    let guarded = spawn_app_with(|c| c.metrics.bearer_token = Some(token.into())).await;
    let url = format!("{}/metrics", guarded.address);
    for presented in [None, Some("wrong-token-0123456789")] {
        let mut request = guarded.client.get(&url);
        if let Some(t) = presented {
            request = request.bearer_auth(t);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    let allowed = guarded
        .client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status().as_u16(), 200);

    // 40 orders of the same root fields make one series, not 40.
    let fields = [
        "plans { slug }",
        "creditTypes { value }",
        "usageBasedUnits { name }",
        "me { id }",
    ];
    for i in 0..40 {
        let mut order: Vec<&str> = fields.to_vec();
        order.rotate_left(i % 4);
        if i % 8 >= 4 {
            order.reverse();
        }
        guarded
            .gql(None, &format!("{{ {} }}", order.join(" ")), json!({}))
            .await;
    }
    let page = guarded
        .client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("tollgate_graphql_requests_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(
        series[0].contains("operation=\"query creditTypes+me+plans\""),
        "{series:?}"
    );
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_refused_at_start_with_a_reason() {
    let app = spawn_app().await;
    // Every connection to `:memory:` is a database of its own: the request path's readers and
    // the guard writer would not see each other's rows.
    let out = app
        .command(&["migrate"])
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .expect("tollgate runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in-memory SQLite"), "{stderr}");
}
