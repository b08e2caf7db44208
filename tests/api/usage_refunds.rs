//! What a refund does to usage Stripe bills: reduced or cancelled in the outbox while unsent;
//! within a day of Stripe receiving it, cancelled there by a meter event adjustment and what
//! stands of the spend reported again; later, or when the cancel fails, left on the invoice
//! and marked. Checked against the fake's own bill, and by `tollgate verify`.

use chrono::{Duration, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use tollgate::clock::Clock;

use crate::{
    fake_stripe::{Answer, FakeStripe},
    grants::{assert_sound, refund},
    helpers::TestApp,
    resilience::verify,
    stripe::{eventually, link_customer, metered_type, stripe_app, stripe_app_with_clock},
};

const REPORTS: &str = "query($t: ID!) { usageReports(tenantId: $t, first: 100) { nodes { \
    id kind creditId adjusts quantity status refundedQuantity attempts lastError reportedAt \
    createdAt } } }";

async fn reports(app: &TestApp, token: &str, tenant: &str) -> Vec<Value> {
    let body = app.gql(Some(token), REPORTS, json!({ "t": tenant })).await;
    body["data"]["usageReports"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("usageReports: {body}"))
        .clone()
}

/// Waits until `n` reports exist and none is pending or waiting; returns them.
async fn settled(app: &TestApp, token: &str, tenant: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} usage reports are settled"), || async {
        let r = reports(app, token, tenant).await;
        r.len() == n
            && r.iter()
                .all(|r| r["status"] != "PENDING" && r["status"] != "WAITING")
    })
    .await;
    reports(app, token, tenant).await
}

/// The one report of `kind` that adjusts `adjusts` (`None`: the original).
fn find<'a>(reports: &'a [Value], kind: &str, adjusts: Option<&Value>) -> &'a Value {
    reports
        .iter()
        .find(|r| r["kind"] == kind && adjusts.is_none_or(|a| &r["adjusts"] == a))
        .unwrap_or_else(|| panic!("a {kind} adjusting {adjusts:?} in {reports:?}"))
}

/// The tenant's only spend.
async fn spend(app: &TestApp, token: &str, tenant: &str) -> String {
    let history = app
        .gql(
            Some(token),
            "query($t: ID!) { creditHistory(tenantId: $t, filter: { kind: SPEND }) { nodes { id } } }",
            json!({ "t": tenant }),
        )
        .await;
    let nodes = history["data"]["creditHistory"]["nodes"]
        .as_array()
        .unwrap();
    assert_eq!(nodes.len(), 1, "{history}");
    nodes[0]["id"].as_str().unwrap().to_owned()
}

/// A tenant billed through `customer`, with one project (2 credits, metered) delivered.
async fn delivered_project(app: &TestApp, slug: &str, customer: &str) -> (String, String) {
    let (owner, tenant) = app.owner_with_tenant(slug).await;
    link_customer(app, &tenant, customer).await;
    app.project_id(&owner, &tenant).await;
    settled(app, &owner, &tenant, 1).await;
    (owner, tenant)
}

fn ok(body: Value) {
    assert!(body["errors"].is_null(), "{body}");
}

#[tokio::test]
async fn a_refund_of_metered_usage_not_yet_sent_reduces_or_cancels_it_in_the_outbox() {
    let fake = FakeStripe::start().await;
    // The reporter never comes round during the test: the usage stays unsent.
    let app = stripe_app(&fake, |c| c.stripe.worker_interval_ms = 3_600_000).await;
    let (owner, tenant) = app.owner_with_tenant("metered").await;
    link_customer(&app, &tenant, "cus_refund").await;
    let project = app.project_id(&owner, &tenant).await;
    assert!(app.create_task(&owner, &project, "t").await["errors"].is_null());
    let history = app
        .gql(
            Some(&owner),
            "query($t: ID!) { creditHistory(tenantId: $t) { nodes { id type } } }",
            json!({ "t": tenant }),
        )
        .await;
    let id_of = |kind: &str| {
        history["data"]["creditHistory"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == kind)
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{kind} in {history}"))
    };
    let (task_spend, project_spend) = (
        id_of("credit-task-creation"),
        id_of("credit-project-creation"),
    );
    ok(refund(&app, &owner, &tenant, &task_spend, "t", None).await);
    ok(refund(&app, &owner, &tenant, &project_spend, "p", Some(1)).await);
    let mut reports = reports(&app, &owner, &tenant).await;
    reports.sort_by_key(|r| r["quantity"].as_i64());
    let seen: Vec<(i64, &str, &str)> = reports
        .iter()
        .map(|r| {
            (
                r["quantity"].as_i64().unwrap(),
                r["status"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, "CANCELLED", "METER_EVENT"),
            (1, "PENDING", "METER_EVENT")
        ],
        "{reports:?}"
    );
    assert!(fake.with(|r| r.adjustment_requests.is_empty()));
    assert_sound(&app);
}

#[tokio::test]
async fn a_refund_within_a_day_of_stripe_receiving_usage_cancels_it_there_and_re_reports_the_rest()
{
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |_| {}).await;
    let (owner, tenant) = delivered_project(&app, "cancel", "cus_cancel").await;
    assert_eq!(fake.billed("cus_cancel"), 2);
    let spent = spend(&app, &owner, &tenant).await;

    ok(refund(&app, &owner, &tenant, &spent, "r1", Some(1)).await);
    let reports = settled(&app, &owner, &tenant, 3).await;
    let original = find(&reports, "METER_EVENT", Some(&Value::Null));
    let cancel = find(&reports, "CANCEL", Some(&original["id"]));
    let again = find(&reports, "METER_EVENT", Some(&original["id"]));
    // Sent, then cancelled at Stripe: not billed.
    assert_eq!(original["status"], "CANCELLED", "{reports:?}");
    assert!(original["reportedAt"].is_string());
    assert_eq!(original["refundedQuantity"], 1);
    assert_eq!(
        (&cancel["status"], &cancel["quantity"]),
        (&json!("DELIVERED"), &json!(2))
    );
    // What stands, reported again at the usage's own time.
    assert_eq!(
        (&again["status"], &again["quantity"]),
        (&json!("DELIVERED"), &json!(1))
    );
    assert_eq!(again["createdAt"], original["createdAt"]);
    for r in [cancel, again] {
        assert_eq!(r["creditId"], spent);
    }
    let (form, key) = fake.with(|r| r.adjustment_requests[0].clone());
    assert_eq!(form["type"], "cancel");
    assert_eq!(
        form["cancel[identifier]"],
        format!("tollgate-{}", original["id"].as_str().unwrap())
    );
    assert_eq!(
        key,
        Some(format!("tollgate-{}", cancel["id"].as_str().unwrap()))
    );
    let accepted = fake.with(|r| r.accepted.clone());
    let reported = |r: &Value| accepted[&format!("tollgate-{}", r["id"].as_str().unwrap())].clone();
    assert_eq!(
        reported(again)["timestamp"],
        reported(original)["timestamp"]
    );
    assert_eq!(reported(again)["payload[value]"], "1");
    assert_eq!(fake.billed("cus_cancel"), 1);
    assert_sound(&app);

    // The rest: the re-report is cancelled in turn, and nothing is reported again.
    let again_id = again["id"].clone();
    ok(refund(&app, &owner, &tenant, &spent, "r2", None).await);
    let reports = settled(&app, &owner, &tenant, 4).await;
    let second = find(&reports, "CANCEL", Some(&again_id));
    assert_eq!(second["status"], "DELIVERED");
    assert_eq!(
        find(&reports, "METER_EVENT", Some(&Value::Null))["status"],
        "CANCELLED"
    );
    assert_eq!(fake.billed("cus_cancel"), 0);
    assert_sound(&app);

    // Had both cancels failed with both events delivered, Stripe would bill what was refunded.
    let db = app.db().await;
    for tamper in [
        "UPDATE usage_event SET status = 'DELIVERED' WHERE kind = 'METER_EVENT'",
        "UPDATE usage_event SET status = 'FAILED' WHERE kind = 'CANCEL'",
    ] {
        sea_orm::ConnectionTrait::execute_unprepared(&db, tamper)
            .await
            .expect("tampered");
    }
    let (sound, report) = verify(&app);
    assert!(!sound, "{report}");
    assert!(
        report.contains("1 ledger rows' standing usage events do not report what stands of them"),
        "{report}"
    );
}

#[tokio::test]
async fn a_cancel_stripe_refuses_leaves_the_usage_on_the_invoice_marked_and_re_reports_nothing() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |_| {}).await;
    let (owner, tenant) = delivered_project(&app, "refused", "cus_refused").await;
    let spent = spend(&app, &owner, &tenant).await;
    fake.with(|r| {
        r.adjustment_script
            .push_back(Answer::Fail(400, Some("false")))
    });

    ok(refund(&app, &owner, &tenant, &spent, "r", Some(1)).await);
    let reports = settled(&app, &owner, &tenant, 3).await;
    let original = find(&reports, "METER_EVENT", Some(&Value::Null));
    let cancel = find(&reports, "CANCEL", Some(&original["id"]));
    let again = find(&reports, "METER_EVENT", Some(&original["id"]));
    assert_eq!(cancel["status"], "FAILED", "{reports:?}");
    assert!(
        cancel["lastError"]
            .as_str()
            .unwrap()
            .contains("refused the cancel")
    );
    assert_eq!(
        (&again["status"], &again["reportedAt"]),
        (&json!("CANCELLED"), &Value::Null)
    );
    assert_eq!(
        (&original["status"], &original["refundedQuantity"]),
        (&json!("DELIVERED"), &json!(1))
    );
    assert_eq!(fake.billed("cus_refused"), 2);
    assert_eq!(fake.with(|r| r.accepted.len()), 1, "nothing re-reported");
    assert_sound(&app);
}

#[tokio::test]
async fn refunds_while_a_cancel_waits_to_go_out_come_off_the_waiting_re_report() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |_| {}).await;
    let (owner, tenant) = delivered_project(&app, "waiting", "cus_waiting").await;
    let spent = spend(&app, &owner, &tenant).await;
    // Stripe refuses the cancel for now: it is kept pending, the re-report waits behind it.
    fake.with(|r| r.refuse_adjustments = true);
    ok(refund(&app, &owner, &tenant, &spent, "r1", Some(1)).await);
    eventually("the cancel was tried", || async {
        !fake.with(|r| r.adjustment_requests.is_empty())
    })
    .await;
    let reports = reports(&app, &owner, &tenant).await;
    let original = find(&reports, "METER_EVENT", Some(&Value::Null)).clone();
    let again = find(&reports, "METER_EVENT", Some(&original["id"]));
    assert_eq!(
        (&again["status"], &again["quantity"]),
        (&json!("WAITING"), &json!(1))
    );

    ok(refund(&app, &owner, &tenant, &spent, "r2", Some(1)).await);
    let reports = self::reports(&app, &owner, &tenant).await;
    let again = find(&reports, "METER_EVENT", Some(&original["id"]));
    assert_eq!(
        (&again["status"], &again["quantity"]),
        (&json!("CANCELLED"), &json!(0))
    );
    assert_sound(&app);

    fake.with(|r| r.refuse_adjustments = false);
    let reports = settled(&app, &owner, &tenant, 3).await;
    assert_eq!(
        find(&reports, "CANCEL", Some(&original["id"]))["status"],
        "DELIVERED"
    );
    assert_eq!(
        find(&reports, "METER_EVENT", Some(&Value::Null))["status"],
        "CANCELLED"
    );
    assert_eq!(fake.billed("cus_waiting"), 0);
    assert_eq!(fake.with(|r| r.accepted.len()), 1, "nothing re-reported");
    assert_sound(&app);
}

#[tokio::test]
async fn a_refund_while_the_usage_is_on_its_way_cancels_it_once_stripe_has_it() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |c| {
        c.stripe.request_timeout_ms = 10_000;
        c.stripe.claim_seconds = 30;
    })
    .await;
    // Stripe takes a second to answer: the event is on its way while the refund comes.
    fake.with(|r| r.latency = Some(std::time::Duration::from_secs(1)));
    let (owner, tenant) = app.owner_with_tenant("inflight").await;
    link_customer(&app, &tenant, "cus_inflight").await;
    app.project_id(&owner, &tenant).await;
    eventually("the event is on its way", || async {
        !fake.with(|r| r.meter_requests.is_empty())
    })
    .await;
    let spent = spend(&app, &owner, &tenant).await;
    ok(refund(&app, &owner, &tenant, &spent, "r", Some(1)).await);
    let reports = self::reports(&app, &owner, &tenant).await;
    let original = find(&reports, "METER_EVENT", Some(&Value::Null)).clone();
    let cancel = find(&reports, "CANCEL", Some(&original["id"]));
    assert_eq!(
        (&original["status"], &cancel["status"]),
        (&json!("PENDING"), &json!("WAITING")),
        "{reports:?}"
    );

    let reports = settled(&app, &owner, &tenant, 3).await;
    assert_eq!(
        find(&reports, "METER_EVENT", Some(&Value::Null))["status"],
        "CANCELLED"
    );
    assert_eq!(
        find(&reports, "CANCEL", Some(&original["id"]))["status"],
        "DELIVERED"
    );
    let again = find(&reports, "METER_EVENT", Some(&original["id"]));
    assert_eq!(
        (&again["status"], &again["quantity"]),
        (&json!("DELIVERED"), &json!(1))
    );
    assert_eq!(fake.billed("cus_inflight"), 1);
    assert_sound(&app);
}

#[tokio::test]
async fn a_refund_a_day_after_stripe_received_the_usage_leaves_it_on_the_invoice_marked() {
    let fake = FakeStripe::start().await;
    let clock = Clock::manual(Utc::now());
    let app = stripe_app_with_clock(&fake, clock.clone(), |_| {}).await;
    let (owner, tenant) = delivered_project(&app, "late", "cus_late").await;
    let spent = spend(&app, &owner, &tenant).await;
    // Stripe received it 23½ hours ago: too late to be sure a cancel gets there in time.
    clock.set(Utc::now() + Duration::minutes(23 * 60 + 30));

    ok(refund(&app, &owner, &tenant, &spent, "r", Some(1)).await);
    let reports = reports(&app, &owner, &tenant).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (
            &reports[0]["status"],
            &reports[0]["quantity"],
            &reports[0]["refundedQuantity"]
        ),
        (&json!("DELIVERED"), &json!(2), &json!(1))
    );
    assert!(fake.with(|r| r.adjustment_requests.is_empty()));
    assert_eq!(fake.billed("cus_late"), 2);
    assert_sound(&app);
}

#[tokio::test]
async fn concurrent_refunds_racing_the_reporter_bill_exactly_what_stands() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |c| {
        metered_type(c, "ai-job", 6, "ai-jobs", "ai_jobs")
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("racing").await;
    link_customer(&app, &tenant, "cus_racing").await;
    ok(app
        .gql(
            Some(&owner),
            "mutation($t: ID!) { consumeCredits(input: { tenantId: $t, creditType: \"ai-job\", idempotencyKey: \"job\" }) { credit { id } } }",
            json!({ "t": tenant }),
        )
        .await);
    settled(&app, &owner, &tenant, 1).await;
    let spent = spend(&app, &owner, &tenant).await;
    // Eight refunds of one credit at a spend of six, while the reporter cancels and
    // re-reports behind them: exactly six succeed, and Stripe ends up billing nothing.
    let answers = join_all((0..8).map(|i| {
        let (app, owner, tenant, spent) = (&app, &owner, &tenant, &spent);
        async move { refund(app, owner, tenant, spent, &format!("r{i}"), Some(1)).await }
    }))
    .await;
    let succeeded = answers.iter().filter(|a| a["errors"].is_null()).count();
    assert_eq!(succeeded, 6, "{answers:?}");
    eventually("Stripe bills nothing of the spend", || async {
        let r = reports(&app, &owner, &tenant).await;
        fake.billed("cus_racing") == 0
            && r.iter()
                .all(|r| r["status"] != "PENDING" && r["status"] != "WAITING")
    })
    .await;
    let reports = reports(&app, &owner, &tenant).await;
    let cancels = reports.iter().filter(|r| r["kind"] == "CANCEL").count();
    assert!(
        cancels >= 1,
        "the delivered event was cancelled: {reports:?}"
    );
    assert_sound(&app);
}
