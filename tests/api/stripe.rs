//! Stripe, against the in-process fake (fake_stripe.rs): usage reported exactly once through
//! Billing Meters whatever Stripe does, signed webhooks, Checkout and the billing portal.

use std::{future::Future, time::Duration};

use secrecy::SecretString;
use serde_json::{Value, json};
use stripe_webhook::Webhook;
use tollgate::{clock::Clock, config::Config};

use crate::{
    fake_stripe::{Answer, FakeStripe, fixture},
    helpers::{TestApp, error_code, spawn_app_with_clock},
    resilience::verify,
};

const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
pub(crate) const SECRET_KEY: &str = "sk_test_fake_key";
pub(crate) const PRO_PRICE: &str = "price_pro_monthly";

/// A server reporting to `fake` quickly (50 ms rounds, short backoff), with webhooks on and
/// the `pro` plan sold at `PRO_PRICE`.
pub(crate) async fn stripe_app(fake: &FakeStripe, configure: impl FnOnce(&mut Config)) -> TestApp {
    stripe_app_with_clock(fake, Clock::default(), configure).await
}

/// `stripe_app`, its credits running on `clock` (the reporter runs on the system clock).
pub(crate) async fn stripe_app_with_clock(
    fake: &FakeStripe,
    clock: Clock,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let url = fake.url.clone();
    spawn_app_with_clock(clock, move |c| {
        c.stripe.secret_key = Some(SecretString::from(SECRET_KEY));
        c.stripe.webhook_secret = Some(SecretString::from(WEBHOOK_SECRET));
        c.stripe.api_base = url;
        c.stripe.worker_interval_ms = 50;
        c.stripe.request_timeout_ms = 400;
        c.stripe.claim_seconds = 1;
        c.stripe.backoff_base_ms = 50;
        c.stripe.backoff_max_ms = 200;
        if let Some(pro) = c.plans.iter_mut().find(|p| p.slug == "pro") {
            pro.stripe_price_ids = vec![PRO_PRICE.into()];
        }
        configure(c);
    })
    .await
}

/// Adds credit type `value` costing `amount`, metered as unit `unit` to the meter
/// `event_name`.
pub(crate) fn metered_type(c: &mut Config, value: &str, amount: i64, unit: &str, event_name: &str) {
    c.credit_types.push(tollgate::config::CreditTypeConfig {
        value: value.into(),
        name: value.into(),
        description: format!("One {value}."),
        amount,
        feature: "credits".into(),
        meter: None,
    });
    c.usage_based_units
        .push(tollgate::config::UsageBasedUnitConfig {
            name: unit.into(),
            title: unit.into(),
            title_plural: unit.into(),
            event_name: Some(event_name.into()),
            credit_types: vec![value.into()],
            stripe_price_id: None,
        });
}

/// Waits (up to 20 s) until `check` holds.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Stripe event (Stripe's fixture) of `kind` about `object`.
pub(crate) fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
    let mut event = fixture("event");
    event["id"] = json!(id);
    event["type"] = json!(kind);
    event["created"] = json!(created);
    event["data"] = json!({ "object": object });
    event.to_string()
}

/// A subscription (Stripe's fixture) of `customer` to `price`, for `period`.
pub(crate) fn subscription(
    customer: &str,
    tenant: Option<&str>,
    price: &str,
    status: &str,
    period: (i64, i64),
) -> Value {
    let mut s = fixture("subscription");
    s["id"] = json!("sub_test_1");
    s["customer"] = json!(customer);
    s["status"] = json!(status);
    s["cancel_at_period_end"] = json!(false);
    s["metadata"] = match tenant {
        Some(t) => json!({ "tollgate_tenant_id": t }),
        None => json!({}),
    };
    let item = &mut s["items"]["data"][0];
    item["price"]["id"] = json!(price);
    item["current_period_start"] = json!(period.0);
    item["current_period_end"] = json!(period.1);
    s
}

pub(crate) fn checkout_completed(tenant: &str, customer: &str) -> Value {
    let mut s = fixture("checkout.session");
    s["id"] = json!("cs_test_done");
    s["mode"] = json!("subscription");
    s["status"] = json!("complete");
    s["client_reference_id"] = json!(tenant);
    s["customer"] = json!(customer);
    s
}

/// POSTs a webhook body with the given `Stripe-Signature` (none when `None`).
async fn deliver(app_url: &str, body: &str, signature: Option<String>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{app_url}/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn sign(body: &str, at: i64) -> String {
    Webhook::generate_test_header(body, WEBHOOK_SECRET, Some(at))
}

pub(crate) async fn deliver_signed(app: &TestApp, body: &str) -> (u16, Value) {
    deliver(&app.address, body, Some(sign(body, now()))).await
}

/// Makes `customer` the tenant's Stripe customer, as a completed Checkout does.
pub(crate) async fn link_customer(app: &TestApp, tenant: &str, customer: &str) {
    let body = event(
        &format!("evt_link_{tenant}"),
        "checkout.session.completed",
        now(),
        checkout_completed(tenant, customer),
    );
    let (status, answer) = deliver_signed(app, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["effect"], "customer linked to tenant");
}

const REPORTS: &str = "query($t: ID!, $first: Int, $after: String) {
    usageReports(tenantId: $t, first: $first, after: $after) {
        nodes { id unit quantity status attempts lastError reportedAt createdAt }
        pageInfo { hasNextPage endCursor }
    } }";

pub(crate) async fn reports(app: &TestApp, token: &str, tenant: &str) -> Vec<Value> {
    let body = app
        .gql(Some(token), REPORTS, json!({ "t": tenant, "first": 100 }))
        .await;
    body["data"]["usageReports"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("usageReports: {body}"))
        .clone()
}

async fn all_delivered(app: &TestApp, token: &str, tenant: &str, n: usize) -> bool {
    let r = reports(app, token, tenant).await;
    r.len() == n && r.iter().all(|r| r["status"] == "DELIVERED")
}

#[tokio::test]
async fn a_custom_credit_type_feeds_its_meter_through_the_same_outbox() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |c| {
        metered_type(c, "report-export", 3, "exports", "report_exports")
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("metered").await;
    link_customer(&app, &tenant, "cus_exports").await;

    let spent = app
        .gql(
            Some(&token),
            "mutation($t: ID!) { consumeCredits(input: { tenantId: $t, creditType: \"report-export\", idempotencyKey: \"r1\" }) { credit { id } } }",
            json!({ "t": tenant }),
        )
        .await;
    let explicit = app
        .gql(
            Some(&token),
            "mutation($t: ID!) { consumeCredits(input: { tenantId: $t, amount: 2, idempotencyKey: \"r2\" }) { credit { id } } }",
            json!({ "t": tenant }),
        )
        .await;
    assert!(spent["errors"].is_null(), "{spent}");
    assert!(explicit["errors"].is_null(), "{explicit}");
    eventually("the export is delivered", || {
        all_delivered(&app, &token, &tenant, 1)
    })
    .await;

    let reports = reports(&app, &token, &tenant).await;
    assert_eq!(reports[0]["unit"], "exports");
    assert_eq!(reports[0]["quantity"], 3);
    let accepted = fake.with(|r| r.accepted.clone());
    let form = accepted.values().next().expect("one meter event");
    assert_eq!(form["event_name"], "report_exports");
    assert_eq!(form["payload[value]"], "3");
    // An explicit amount belongs to no unit: it is not billed.
    assert_eq!(app.scalar("SELECT COUNT(*) FROM usage_event").await, 1);
}

#[tokio::test]
async fn each_guarded_spend_is_one_meter_event_with_stripes_form_fields() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("metered").await;
    // Before the tenant has a Stripe customer, nothing is billable.
    let early = app.create_project(&token, &tenant, "Before").await;
    assert!(early["errors"].is_null(), "{early}");
    link_customer(&app, &tenant, "cus_metered").await;
    let project = app.create_project(&token, &tenant, "After").await;
    let project_id = project["data"]["createProject"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        let task = app.create_task(&token, &project_id, &format!("t{i}")).await;
        assert!(task["errors"].is_null(), "{task}");
    }
    eventually("4 usage events are delivered", || {
        all_delivered(&app, &token, &tenant, 4)
    })
    .await;

    let reports = reports(&app, &token, &tenant).await;
    let units: Vec<_> = reports
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    assert_eq!(
        units,
        [
            "task-credits",
            "task-credits",
            "task-credits",
            "project-credits"
        ]
    );
    assert_eq!(reports[3]["quantity"], 2);
    assert!(
        reports
            .iter()
            .all(|r| r["attempts"] == 1 && r["lastError"].is_null())
    );
    assert!(reports.iter().all(|r| r["reportedAt"].is_string()));

    let (requests, accepted) = fake.with(|r| (r.meter_requests.clone(), r.accepted.clone()));
    assert_eq!(requests.len(), 4, "one request per event");
    assert_eq!(accepted.len(), 4, "four distinct identifiers");
    for report in &reports {
        let identifier = format!("tollgate-{}", report["id"].as_str().unwrap());
        let form = accepted
            .get(&identifier)
            .unwrap_or_else(|| panic!("{identifier} not sent"));
        let (event_name, value) = match report["unit"].as_str() {
            Some("project-credits") => ("project-credits", "2"),
            _ => ("task-credits", "1"),
        };
        assert_eq!(form["event_name"], event_name);
        assert_eq!(form["payload[stripe_customer_id]"], "cus_metered");
        assert_eq!(form["payload[value]"], value);
        let timestamp: i64 = form["timestamp"].parse().unwrap();
        let created = chrono::DateTime::parse_from_rfc3339(report["createdAt"].as_str().unwrap())
            .unwrap()
            .timestamp();
        assert_eq!(timestamp, created, "the event's time is the usage's time");
        assert!((now() - timestamp).abs() < 60);
    }
    // The ledger and the outbox agree: 1 + 3 billable spends, the first project not billed.
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 5);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM usage_event").await, 4);
}

#[tokio::test]
async fn failures_timeouts_and_throttling_are_retried_until_stripe_has_each_event_once() {
    let fake = FakeStripe::start().await;
    fake.script([
        Answer::Fail(500, None),
        Answer::Fail(429, Some("true")),
        // Stripe keeps the event but the answer comes after the client's 400 ms timeout:
        // the retry gets the duplicate-identifier 400, which means delivered.
        Answer::AcceptSlowly(Duration::from_millis(900)),
        Answer::Fail(503, None),
        Answer::Stall(Duration::from_millis(900)),
        Answer::Fail(409, Some("true")),
    ]);
    let app = stripe_app(&fake, |c| c.stripe.concurrency = 1).await;
    let (token, tenant) = app.owner_with_tenant("flaky").await;
    link_customer(&app, &tenant, "cus_flaky").await;
    let project_id = app.project_id(&token, &tenant).await;
    for i in 0..6 {
        let task = app.create_task(&token, &project_id, &format!("t{i}")).await;
        assert!(task["errors"].is_null(), "{task}");
    }
    eventually("7 usage events are delivered", || {
        all_delivered(&app, &token, &tenant, 7)
    })
    .await;
    let (requests, accepted, duplicates) =
        fake.with(|r| (r.meter_requests.len(), r.accepted.clone(), r.duplicates));
    assert_eq!(accepted.len(), 7, "each event kept exactly once");
    assert_eq!(
        duplicates, 1,
        "the timed-out send was resent and refused as a duplicate"
    );
    assert_eq!(requests, 7 + 6, "one resend per failure");
    let reports = reports(&app, &token, &tenant).await;
    let retried = reports
        .iter()
        .filter(|r| r["attempts"].as_i64() > Some(1))
        .count();
    assert!(retried >= 1, "{reports:?}");
    assert!(
        reports
            .iter()
            .filter(|r| r["attempts"].as_i64() > Some(1))
            .all(|r| r["lastError"].is_string()),
        "the last error of a retried event is kept"
    );
}

#[tokio::test]
async fn undeliverable_events_are_marked_failed_with_their_error_never_dropped() {
    let fake = FakeStripe::start().await;
    fake.script([
        // A permanent refusal.
        Answer::Fail(400, None),
        // Stripe says a retry cannot help, whatever the status.
        Answer::Fail(500, Some("false")),
        // Retryable, but only two attempts are allowed.
        Answer::Fail(500, None),
        Answer::Fail(502, None),
    ]);
    let app = stripe_app(&fake, |c| {
        c.stripe.concurrency = 1;
        c.stripe.max_attempts = 2;
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("doomed").await;
    link_customer(&app, &tenant, "cus_doomed").await;
    let project_id = app.project_id(&token, &tenant).await;
    for i in 0..2 {
        app.create_task(&token, &project_id, &format!("t{i}")).await;
    }
    eventually("no usage event is pending", || async {
        let r = reports(&app, &token, &tenant).await;
        r.len() == 3 && r.iter().all(|r| r["status"] != "PENDING")
    })
    .await;
    let reports = reports(&app, &token, &tenant).await;
    let failed: Vec<_> = reports.iter().filter(|r| r["status"] == "FAILED").collect();
    assert_eq!(failed.len(), 3, "{reports:?}");
    let errors: Vec<_> = failed
        .iter()
        .map(|r| r["lastError"].as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("400")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("gave up after 2 attempts")),
        "{errors:?}"
    );
    assert_eq!(fake.with(|r| r.meter_requests.len()), 4);
    assert!(fake.with(|r| r.accepted.is_empty()));
}

#[tokio::test]
async fn usage_older_than_stripe_accepts_is_marked_failed_without_sending() {
    let fake = FakeStripe::start().await;
    fake.script([Answer::Fail(500, None)]);
    let app = stripe_app(&fake, |c| {
        // The first failure schedules the retry far away, so the test can age the row.
        c.stripe.backoff_base_ms = 600_000;
        c.stripe.backoff_max_ms = 600_000;
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("stale").await;
    let project_id = app.project_id(&token, &tenant).await;
    link_customer(&app, &tenant, "cus_stale").await;
    app.create_task(&token, &project_id, "late").await;
    eventually("the first send failed", || async {
        reports(&app, &token, &tenant)
            .await
            .iter()
            .any(|r| r["attempts"] == 1 && r["status"] == "PENDING")
    })
    .await;
    let db = app.db().await;
    let old = chrono::Utc::now() - chrono::Duration::days(36);
    let due = chrono::Utc::now() - chrono::Duration::seconds(1);
    use sea_orm::ConnectionTrait;
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        db.get_database_backend(),
        match db.get_database_backend() {
            sea_orm::DatabaseBackend::Postgres => {
                "UPDATE usage_event SET created_at = $1, next_attempt_at = $2 WHERE status = 'PENDING'"
            }
            _ => "UPDATE usage_event SET created_at = ?, next_attempt_at = ? WHERE status = 'PENDING'",
        },
        [old.into(), due.into()],
    ))
    .await
    .unwrap();
    eventually("the stale event is failed", || async {
        reports(&app, &token, &tenant)
            .await
            .iter()
            .any(|r| r["status"] == "FAILED")
    })
    .await;
    let reports = reports(&app, &token, &tenant).await;
    let stale = reports.iter().find(|r| r["status"] == "FAILED").unwrap();
    assert!(
        stale["lastError"].as_str().unwrap().contains("35 days"),
        "{stale}"
    );
    assert_eq!(stale["attempts"], 1, "not sent again");
    assert_eq!(fake.with(|r| r.meter_requests.len()), 1);
}

/// Server-process settings for the reporter tests: Stripe at `fake`, quick rounds.
pub(crate) fn reporter_env(fake: &FakeStripe, claim_seconds: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TOLLGATE_STRIPE__SECRET_KEY", SECRET_KEY.to_owned()),
        ("TOLLGATE_STRIPE__API_BASE", fake.url.clone()),
        ("TOLLGATE_STRIPE__WORKER_INTERVAL_MS", "50".to_owned()),
        // Long enough that a loaded test machine does not time sends out (a timed-out send
        // that Stripe did take is resent and counted as a duplicate), short of the claim.
        ("TOLLGATE_STRIPE__REQUEST_TIMEOUT_MS", "1500".to_owned()),
        ("TOLLGATE_STRIPE__CLAIM_SECONDS", claim_seconds.to_owned()),
        ("TOLLGATE_STRIPE__BATCH_SIZE", "5".to_owned()),
        ("TOLLGATE_STRIPE__BACKOFF_BASE_MS", "50".to_owned()),
        ("TOLLGATE_STRIPE__BACKOFF_MAX_MS", "200".to_owned()),
    ]
}

/// A server without a reporter: webhooks and GraphQL only (the reporters run in processes).
pub(crate) async fn webhook_only_app(
    fake: &FakeStripe,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    stripe_app(fake, |c| {
        c.stripe.secret_key = None;
        configure(c);
    })
    .await
}

#[tokio::test]
async fn a_reporter_killed_between_sending_and_marking_is_resent_and_stripe_keeps_one() {
    let fake = FakeStripe::start().await;
    // Stripe keeps the event; the answer never comes back before the process dies.
    fake.script([Answer::AcceptSlowly(Duration::from_secs(30))]);
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("crashy").await;
    let project_id = app.project_id(&token, &tenant).await;
    link_customer(&app, &tenant, "cus_crashy").await;
    let mut env = reporter_env(&fake, "2");
    // Verbose logs, to show the keys are not in them.
    env.push(("RUST_LOG", "debug".to_owned()));
    env.push(("TOLLGATE_STRIPE__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut reporter = app.start_server(&env).await;
    app.create_task(&token, &project_id, "in flight").await;
    eventually("Stripe has the event", || async {
        fake.with(|r| r.accepted.len() == 1)
    })
    .await;
    reporter.kill();
    let pending = reports(&app, &token, &tenant).await;
    assert!(
        pending.iter().any(|r| r["status"] == "PENDING"),
        "the outcome was never recorded: {pending:?}"
    );
    let restarted = app.start_server(&env).await;
    eventually("the event is delivered", || {
        all_delivered(&app, &token, &tenant, 1)
    })
    .await;
    for log in [&reporter.log, &restarted.log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("Stripe usage reporting is on"), "{text}");
        assert!(
            !text.contains(SECRET_KEY) && !text.contains(WEBHOOK_SECRET),
            "a key was logged"
        );
    }
    let (accepted, duplicates) = fake.with(|r| (r.accepted.len(), r.duplicates));
    assert_eq!(accepted, 1, "Stripe keeps one copy");
    assert_eq!(
        duplicates, 1,
        "the resend was refused as a duplicate and marked delivered"
    );
}

#[tokio::test]
async fn two_reporters_on_one_database_never_send_an_event_twice() {
    let fake = FakeStripe::start().await;
    fake.with(|r| r.latency = Some(Duration::from_millis(15)));
    let app = webhook_only_app(&fake, |_| {}).await;
    let env = reporter_env(&fake, "30");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _a = app.start_server(&env).await;
    let _b = app.start_server(&env).await;
    // Eight tenants (the default plan has 10 credits a month), each a project and 8 tasks.
    let mut work = Vec::new();
    for t in 0..8 {
        let (token, tenant) = app.owner_with_tenant(&format!("busy{t}")).await;
        link_customer(&app, &tenant, &format!("cus_busy{t}")).await;
        let project_id = app.project_id(&token, &tenant).await;
        work.push((token, project_id));
    }
    let app = &app;
    let spends = work.iter().flat_map(|(token, project_id)| {
        (0..8).map(move |i| async move {
            let task = app.create_task(token, project_id, &format!("t{i}")).await;
            assert!(task["errors"].is_null(), "{task}");
        })
    });
    let events = futures::future::join_all(spends).await.len() as i64 + 8;
    eventually("every event is delivered", || async {
        app.scalar("SELECT COUNT(*) FROM usage_event WHERE status = 'DELIVERED'")
            .await
            == events
    })
    .await;
    let (requests, accepted, duplicates) =
        fake.with(|r| (r.meter_requests.len(), r.accepted.len(), r.duplicates));
    assert_eq!(accepted as i64, events);
    assert_eq!(duplicates, 0, "no event was sent twice");
    assert_eq!(requests as i64, events);
    // The books and the outbox agree; a tampered usage event is found.
    let (sound, report) = verify(app);
    assert!(
        sound && report.contains(&format!("{events} usage events")),
        "{report}"
    );
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db().await,
        "UPDATE usage_event SET quantity = 99 WHERE quantity = 2",
    )
    .await
    .unwrap();
    let (sound, report) = verify(app);
    assert!(!sound, "{report}");
    assert!(
        report.contains("8 usage events match no ledger row"),
        "{report}"
    );
}

const SUBSCRIPTION: &str = "query($t: ID!) { tenant(id: $t) { subscription {
    plan { slug } status currentPeriodStart currentPeriodEnd cancelAtPeriodEnd } } }";

pub(crate) async fn subscription_of(app: &TestApp, token: &str, tenant: &str) -> Value {
    let body = app
        .gql(Some(token), SUBSCRIPTION, json!({ "t": tenant }))
        .await;
    body["data"]["tenant"]["subscription"].clone()
}

#[tokio::test]
async fn subscription_webhooks_move_the_tenant_between_plans_and_periods() {
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("subscriber").await;
    let before = subscription_of(&app, &token, &tenant).await;
    assert_eq!(before["plan"]["slug"], "free");
    assert!(before["currentPeriodStart"].is_null());

    // Stripe sends the subscription before the completed Checkout: the metadata Checkout
    // put on it names the tenant.
    let start = now() - 3600;
    let end = start + 30 * 86400;
    let created = event(
        "evt_sub_created",
        "customer.subscription.created",
        now() - 10,
        subscription("cus_sub", Some(&tenant), PRO_PRICE, "active", (start, end)),
    );
    let (status, answer) = deliver_signed(&app, &created).await;
    assert_eq!(
        (status, answer["effect"].as_str()),
        (200, Some("subscription updated"))
    );
    let after = subscription_of(&app, &token, &tenant).await;
    assert_eq!(after["plan"]["slug"], "pro");
    assert_eq!(after["status"], "active");
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    assert_eq!(time(&after["currentPeriodStart"]), start);
    assert_eq!(time(&after["currentPeriodEnd"]), end);
    // MONTHLY usage follows Stripe's period.
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(usage["value"], 1000, "{usage}");
    assert_eq!(usage["period"]["start"], after["currentPeriodStart"]);
    assert_eq!(usage["period"]["end"], after["currentPeriodEnd"]);
    // The customer was linked from the metadata: the tenant's usage is now billable.
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM tenant WHERE stripe_customer_id = 'cus_sub'")
            .await,
        1
    );

    // A newer update: cancels at the period's end.
    let mut cancelling = subscription("cus_sub", None, PRO_PRICE, "active", (start, end));
    cancelling["cancel_at_period_end"] = json!(true);
    let updated = event(
        "evt_sub_updated",
        "customer.subscription.updated",
        now() - 5,
        cancelling,
    );
    assert_eq!(deliver_signed(&app, &updated).await.0, 200);
    assert_eq!(
        subscription_of(&app, &token, &tenant).await["cancelAtPeriodEnd"],
        true
    );

    // An older event arriving late changes nothing.
    let stale = event(
        "evt_sub_stale",
        "customer.subscription.updated",
        now() - 60,
        subscription("cus_sub", None, PRO_PRICE, "past_due", (0, 1)),
    );
    let (status, answer) = deliver_signed(&app, &stale).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["effect"],
        "older than the subscription's state; ignored"
    );
    let unchanged = subscription_of(&app, &token, &tenant).await;
    assert_eq!(unchanged["status"], "active");
    assert_eq!(unchanged["cancelAtPeriodEnd"], true);

    // A replay of an processed event is acknowledged and changes nothing.
    let (status, answer) = deliver_signed(&app, &created).await;
    assert_eq!(
        (status, answer["effect"].as_str()),
        (200, Some("replay ignored"))
    );
    assert_eq!(
        subscription_of(&app, &token, &tenant).await["cancelAtPeriodEnd"],
        true
    );

    // Deleted: back to the default plan and calendar months.
    let deleted = event(
        "evt_sub_deleted",
        "customer.subscription.deleted",
        now(),
        subscription("cus_sub", None, PRO_PRICE, "canceled", (start, end)),
    );
    let (status, answer) = deliver_signed(&app, &deleted).await;
    assert_eq!(
        (status, answer["effect"].as_str()),
        (200, Some("subscription ended; back on the default plan"))
    );
    let ended = subscription_of(&app, &token, &tenant).await;
    assert_eq!(ended["plan"]["slug"], "free");
    assert_eq!(ended["status"], "canceled");
    assert!(ended["currentPeriodEnd"].is_null());
    assert_eq!(app.usage(&token, &tenant).await["value"], 10);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM stripe_event").await, 4);
}

#[tokio::test]
async fn webhooks_that_are_not_genuine_change_nothing() {
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("guarded").await;
    let body = event(
        "evt_forged",
        "customer.subscription.updated",
        now(),
        subscription(
            "cus_x",
            Some(&tenant),
            PRO_PRICE,
            "active",
            (now(), now() + 86400),
        ),
    );
    let cases = [
        ("no signature", None),
        (
            "signed with another secret",
            Some(Webhook::generate_test_header(
                &body,
                "whsec_other",
                Some(now()),
            )),
        ),
        ("signed 10 minutes ago", Some(sign(&body, now() - 600))),
        ("signed 10 minutes ahead", Some(sign(&body, now() + 600))),
        ("a signature of another body", Some(sign("{}", now()))),
        ("garbage", Some("t=abc,v1=zz".to_owned())),
    ];
    for (case, signature) in cases {
        let (status, answer) = deliver(&app.address, &body, signature).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(answer["error"]["code"], "BAD_USER_INPUT", "{case}");
    }
    // Signed, but not an event.
    for malformed in ["{not json", "[]", r#"{"id": "evt_1"}"#] {
        let (status, answer) = deliver_signed(&app, malformed).await;
        assert_eq!(status, 400, "{malformed}: {answer}");
    }
    assert_eq!(
        subscription_of(&app, &token, &tenant).await["plan"]["slug"],
        "free"
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM stripe_event").await, 0);

    // Genuine but of a type Tollgate does not handle: acknowledged, ignored.
    let mut price = fixture("event");
    price["id"] = json!("evt_other");
    price["created"] = json!(now());
    let other = price.to_string();
    let (status, answer) = deliver_signed(&app, &other).await;
    assert_eq!(
        (status, answer["effect"].as_str()),
        (200, Some("event type ignored"))
    );
}

#[tokio::test]
async fn webhooks_are_off_without_a_webhook_secret() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |c| c.stripe.webhook_secret = None).await;
    let body = event("evt_1", "customer.subscription.updated", now(), json!({}));
    let (status, answer) = deliver_signed(&app, &body).await;
    assert_eq!(status, 404, "{answer}");
}

pub(crate) const CHECKOUT: &str = "mutation($t: ID!, $p: String!) {
    createCheckoutSession(tenantId: $t, planSlug: $p) { url } }";
const PORTAL: &str = "mutation($t: ID!) { createBillingPortalSession(tenantId: $t) { url } }";

#[tokio::test]
async fn checkout_and_the_billing_portal_are_stripe_pages_for_owners_and_admins() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |c| {
        if let Some(unit) = c
            .usage_based_units
            .iter_mut()
            .find(|u| u.name == "task-credits")
        {
            unit.stripe_price_id = Some("price_task_metered".into());
        }
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("buyer").await;
    let body = app
        .gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": "pro" }))
        .await;
    assert_eq!(
        body["data"]["createCheckoutSession"]["url"],
        "https://checkout.stripe.test/c/pay/cs_test_1",
        "{body}"
    );
    let form = fake.with(|r| r.checkout_requests[0].clone());
    assert_eq!(form["mode"], "subscription");
    assert_eq!(form["line_items[0][price]"], PRO_PRICE);
    assert_eq!(form["line_items[0][quantity]"], "1");
    assert_eq!(form["line_items[1][price]"], "price_task_metered");
    assert!(!form.contains_key("line_items[1][quantity]"));
    assert_eq!(form["client_reference_id"], tenant);
    assert_eq!(
        form["subscription_data[metadata][tollgate_tenant_id]"],
        tenant
    );
    assert!(form["customer_email"].ends_with("@example.com"), "{form:?}");

    // Plans that cannot be bought.
    for plan in ["free", "nope"] {
        let body = app
            .gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": plan }))
            .await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{plan}: {body}");
    }
    // The portal needs a Stripe customer.
    let body = app.gql(Some(&token), PORTAL, json!({ "t": tenant })).await;
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    link_customer(&app, &tenant, "cus_buyer").await;
    let body = app.gql(Some(&token), PORTAL, json!({ "t": tenant })).await;
    assert_eq!(
        body["data"]["createBillingPortalSession"]["url"],
        "https://billing.stripe.test/p/session/1",
        "{body}"
    );
    let form = fake.with(|r| r.portal_requests[0].clone());
    assert_eq!(form["customer"], "cus_buyer");
    assert_eq!(form["return_url"], "http://localhost:3000/billing");
    // A second Checkout reuses the customer.
    app.gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": "pro" }))
        .await;
    let form = fake.with(|r| r.checkout_requests[1].clone());
    assert_eq!(form["customer"], "cus_buyer");
    assert!(!form.contains_key("customer_email"));

    // Stripe failing is an opaque internal error: nothing of Stripe's answer leaks.
    fake.with(|r| r.checkout_failure = Some(500));
    let body = app
        .gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": "pro" }))
        .await;
    assert_eq!(error_code(&body), Some("INTERNAL_SERVER_ERROR"), "{body}");
    assert!(!body.to_string().contains("sk_live_leak"), "{body}");
}

#[tokio::test]
async fn billing_fields_are_for_owners_and_admins_of_the_tenant() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |_| {}).await;
    let (owner, tenant) = app.owner_with_tenant("private").await;
    let (member, member_id) = app.sign_up("member@example.com").await;
    let (admin, admin_id) = app.sign_up("admin@example.com").await;
    let (outsider, _) = app.sign_up("outsider@example.com").await;
    app.add_member(&tenant, &member_id, "MEMBER").await;
    app.add_member(&tenant, &admin_id, "ADMIN").await;
    link_customer(&app, &tenant, "cus_private").await;
    let cases: [(&str, Option<&str>, Option<&str>); 5] = [
        ("owner", Some(&owner), None),
        ("admin", Some(&admin), None),
        ("member", Some(&member), Some("FORBIDDEN")),
        ("outsider", Some(&outsider), Some("FORBIDDEN")),
        ("anonymous", None, Some("UNAUTHENTICATED")),
    ];
    for (who, token, expected) in cases {
        for (query, variables) in [
            (CHECKOUT, json!({ "t": tenant, "p": "pro" })),
            (PORTAL, json!({ "t": tenant })),
            (REPORTS, json!({ "t": tenant })),
        ] {
            let body = app.gql(token, query, variables).await;
            assert_eq!(error_code(&body), expected, "{who}: {query}: {body}");
        }
    }
    // The subscription is visible to every member, as the tenant is.
    let body = app
        .gql(Some(&member), SUBSCRIPTION, json!({ "t": tenant }))
        .await;
    assert_eq!(
        body["data"]["tenant"]["subscription"]["plan"]["slug"], "free",
        "{body}"
    );
    let body = app
        .gql(Some(&outsider), SUBSCRIPTION, json!({ "t": tenant }))
        .await;
    assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");
}

#[tokio::test]
async fn without_stripe_keys_billing_is_off_and_everything_else_works() {
    let app = crate::helpers::spawn_app_with(|_| {}).await;
    let (token, tenant) = app.owner_with_tenant("plain").await;
    let body = app
        .gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": "pro" }))
        .await;
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert!(
        body.to_string().contains("billing is not configured"),
        "{body}"
    );
    let (status, _) = deliver(&app.address, "{}", Some(sign("{}", now()))).await;
    assert_eq!(status, 404);
    let project = app.create_project(&token, &tenant, "P").await;
    assert!(project["errors"].is_null(), "{project}");
    assert!(reports(&app, &token, &tenant).await.is_empty());
    // And it says so, once, when it starts.
    let server = app.start_server(&[("RUST_LOG", "info")]).await;
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert_eq!(log.matches("Stripe is not configured").count(), 1, "{log}");
}
