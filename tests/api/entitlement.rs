//! Entitlement follows payment (DESIGN invariant 9): only entitled Stripe statuses grant a
//! paid plan, a tenant on Stripe periods keeps counting in its last known period rolled
//! forward until the renewal arrives, and only the plan's own subscription moves a tenant.

use serde_json::{Value, json};

use crate::{
    fake_stripe::FakeStripe,
    helpers::{TestApp, error_code},
    resilience::verify,
    stripe::{
        CHECKOUT, PRO_PRICE, deliver_signed, event, now, stripe_app, subscription, subscription_of,
        webhook_only_app,
    },
};

const DAY: i64 = 86_400;

fn seconds(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
        .unwrap()
        .timestamp()
}

async fn deliver(app: &TestApp, id: &str, kind: &str, created: i64, object: Value) -> Value {
    let (status, answer) = deliver_signed(app, &event(id, kind, created, object)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn only_entitled_subscription_statuses_grant_the_paid_plan() {
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("payer").await;
    let period = (now() - 3600, now() + 29 * DAY);
    let statuses = [
        ("incomplete", "free"),
        ("active", "pro"),
        ("past_due", "pro"),
        ("unpaid", "free"),
        ("trialing", "pro"),
        ("paused", "free"),
        ("canceled", "free"),
        ("incomplete_expired", "free"),
    ];
    for (i, (status, plan)) in statuses.into_iter().enumerate() {
        let created = now() - 100 + i64::try_from(i).unwrap();
        let object = subscription("cus_pay", Some(&tenant), PRO_PRICE, status, period);
        deliver(
            &app,
            &format!("evt_status_{i}"),
            "customer.subscription.updated",
            created,
            object,
        )
        .await;
        let shown = subscription_of(&app, &token, &tenant).await;
        assert_eq!(shown["status"], status, "the real status is shown");
        assert_eq!(shown["plan"]["slug"], plan, "{status}: {shown}");
        let usage = app.usage(&token, &tenant).await;
        let limit = if plan == "pro" { 1000 } else { 10 };
        assert_eq!(usage["value"], limit, "{status}: {usage}");
    }
}

#[tokio::test]
async fn entitled_statuses_are_configurable() {
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |c| {
        c.stripe.entitled_statuses = vec!["active".into()];
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("strict").await;
    let object = subscription(
        "cus_s",
        Some(&tenant),
        PRO_PRICE,
        "past_due",
        (now(), now() + DAY),
    );
    deliver(
        &app,
        "evt_strict",
        "customer.subscription.updated",
        now(),
        object,
    )
    .await;
    assert_eq!(
        subscription_of(&app, &token, &tenant).await["plan"]["slug"],
        "free"
    );
}

/// A server whose `pro` plan gives 20 credits a month (10 projects).
async fn small_pro(fake: &FakeStripe) -> TestApp {
    webhook_only_app(fake, |c| {
        if let Some(pro) = c.plans.iter_mut().find(|p| p.slug == "pro") {
            pro.features[0].value = 20;
        }
    })
    .await
}

#[tokio::test]
async fn after_a_period_ends_spends_count_in_it_rolled_forward_and_the_renewal_carries_them() {
    let fake = FakeStripe::start().await;
    let app = small_pro(&fake).await;
    let (token, tenant) = app.owner_with_tenant("renewing").await;
    // A 30-day period that ended 10 days ago; Stripe's renewal webhook has not arrived.
    let (start, end) = (now() - 40 * DAY, now() - 10 * DAY);
    let object = subscription("cus_r", Some(&tenant), PRO_PRICE, "active", (start, end));
    deliver(
        &app,
        "evt_r1",
        "customer.subscription.created",
        now() - 50,
        object,
    )
    .await;
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(seconds(&usage["period"]["start"]), end, "{usage}");
    assert_eq!(seconds(&usage["period"]["end"]), end + 30 * DAY, "{usage}");
    for i in 0..10 {
        let project = app.create_project(&token, &tenant, &format!("p{i}")).await;
        assert!(project["errors"].is_null(), "{project}");
    }
    let refused = app.create_project(&token, &tenant, "one too many").await;
    assert_eq!(
        error_code(&refused),
        Some("INSUFFICIENT_CREDITS"),
        "{refused}"
    );
    let extensions = &refused["errors"][0]["extensions"];
    assert_eq!(
        (extensions["used"].as_i64(), extensions["limit"].as_i64()),
        (Some(20), Some(20))
    );
    assert_eq!(seconds(&extensions["resetsAt"]), end + 30 * DAY);

    // The renewal arrives: Stripe's new period starts where the old one ended (and is 31 days
    // long). What was spent since then counts in it: the budget is not granted twice.
    let renewed = subscription(
        "cus_r",
        Some(&tenant),
        PRO_PRICE,
        "active",
        (end, end + 31 * DAY),
    );
    deliver(
        &app,
        "evt_r2",
        "customer.subscription.updated",
        now() - 10,
        renewed,
    )
    .await;
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(usage["used"], 20, "{usage}");
    assert_eq!(seconds(&usage["period"]["end"]), end + 31 * DAY);
    let refused = app.create_project(&token, &tenant, "still too many").await;
    assert_eq!(
        error_code(&refused),
        Some("INSUFFICIENT_CREDITS"),
        "{refused}"
    );
    assert_eq!(
        app.scalar("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM credit")
            .await,
        20
    );
    let (clean, report) = verify(&app);
    assert!(clean, "{report}");
}

#[tokio::test]
async fn a_period_long_past_rolls_forward_by_as_many_lengths_as_it_takes() {
    let fake = FakeStripe::start().await;
    let app = small_pro(&fake).await;
    let (token, tenant) = app.owner_with_tenant("late").await;
    let (start, end) = (now() - 70 * DAY, now() - 40 * DAY);
    let object = subscription("cus_l", Some(&tenant), PRO_PRICE, "active", (start, end));
    deliver(
        &app,
        "evt_l1",
        "customer.subscription.created",
        now(),
        object,
    )
    .await;
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(
        seconds(&usage["period"]["start"]),
        end + 30 * DAY,
        "{usage}"
    );
    assert_eq!(seconds(&usage["period"]["end"]), end + 60 * DAY, "{usage}");
    let project = app.create_project(&token, &tenant, "counted").await;
    assert!(project["errors"].is_null(), "{project}");
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
}

#[tokio::test]
async fn a_subscription_without_a_plan_price_neither_resets_the_budget_nor_blocks_cancellation() {
    let fake = FakeStripe::start().await;
    let app = webhook_only_app(&fake, |_| {}).await;
    let (token, tenant) = app.owner_with_tenant("addons").await;
    let period = (now() - DAY, now() + 29 * DAY);
    let plan_sub = subscription("cus_a", Some(&tenant), PRO_PRICE, "active", period);
    deliver(
        &app,
        "evt_a1",
        "customer.subscription.created",
        now() - 30,
        plan_sub.clone(),
    )
    .await;
    // An add-on made in the Dashboard, on the same customer, with a period of its own.
    let mut addon = subscription(
        "cus_a",
        None,
        "price_addon_seats",
        "active",
        (now(), now() + 7 * DAY),
    );
    addon["id"] = json!("sub_addon");
    let answer = deliver(
        &app,
        "evt_a2",
        "customer.subscription.created",
        now() - 20,
        addon.clone(),
    )
    .await;
    assert_eq!(
        answer["effect"],
        "subscription without a plan price ignored"
    );
    let shown = subscription_of(&app, &token, &tenant).await;
    assert_eq!(shown["plan"]["slug"], "pro");
    assert_eq!(
        seconds(&shown["currentPeriodStart"]),
        period.0,
        "the period is the plan's"
    );
    // The add-on's deletion changes nothing either…
    deliver(
        &app,
        "evt_a3",
        "customer.subscription.deleted",
        now() - 10,
        addon,
    )
    .await;
    assert_eq!(
        subscription_of(&app, &token, &tenant).await["plan"]["slug"],
        "pro"
    );
    // …nor does the deletion of a plan subscription that is not the tenant's.
    let mut other = plan_sub.clone();
    other["id"] = json!("sub_someone_elses");
    deliver(
        &app,
        "evt_a4",
        "customer.subscription.deleted",
        now() - 5,
        other,
    )
    .await;
    assert_eq!(
        subscription_of(&app, &token, &tenant).await["plan"]["slug"],
        "pro"
    );
    // The plan subscription's own deletion ends the paid plan.
    deliver(
        &app,
        "evt_a5",
        "customer.subscription.deleted",
        now(),
        plan_sub,
    )
    .await;
    let ended = subscription_of(&app, &token, &tenant).await;
    assert_eq!(ended["plan"]["slug"], "free", "{ended}");
}

#[tokio::test]
async fn checkout_is_refused_to_a_tenant_that_already_pays() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, |c| {
        c.stripe.secret_key = Some("sk_test_fake_key".into())
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("paying").await;
    let object = subscription(
        "cus_p",
        Some(&tenant),
        PRO_PRICE,
        "active",
        (now(), now() + 30 * DAY),
    );
    deliver(
        &app,
        "evt_p1",
        "customer.subscription.created",
        now() - 10,
        object.clone(),
    )
    .await;
    let body = app
        .gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": "pro" }))
        .await;
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("billing portal"), "{message}");
    assert_eq!(
        fake.with(|r| r.checkout_requests.len()),
        0,
        "no second subscription opened"
    );
    // Once the subscription has ended, buying again is fine.
    deliver(
        &app,
        "evt_p2",
        "customer.subscription.deleted",
        now(),
        object,
    )
    .await;
    let body = app
        .gql(Some(&token), CHECKOUT, json!({ "t": tenant, "p": "pro" }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
}
