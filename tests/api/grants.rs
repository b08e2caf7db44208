//! Credits beyond the plan: grants, their burn order after the allowance, a cost that fits only
//! allowance and grants together, expiry at the exact instant (with and without the sweeper),
//! voids, who may grant, many spenders on three replicas, and refunds with provenance.

use chrono::{DateTime, Duration, TimeZone, Utc};
use entity::plan_feature::FeatureLimitType;
use futures::future::join_all;
use serde_json::{Value, json};
use tollgate::clock::Clock;

use crate::{
    helpers::{TestApp, error_code, plan, spawn_app_with, spawn_app_with_clock},
    resilience::verify,
};

const ADMIN: &str = "root@example.com";

const GRANT: &str = "mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { \
    replayed grant { id feature category source sourceRef amount remaining priority effectiveAt \
    expiresAt status reason actor { type id } } } }";

const SPEND: &str = "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { \
    credit { id amount kind allocations { bucket grantId amount } } } }";

const USAGE: &str = "query($t: ID!) { planFeatureUsage(tenantId: $t) { used remaining \
    grantsRemaining available enabled nextExpiry { amount at } } }";

const GRANTS: &str = "query($t: ID!) { tenant(id: $t) { creditGrants { id amount remaining \
    status category priority } } }";

/// A server whose plan gives `limit` credits a month, `root@example.com` a platform admin;
/// an OWNER with a tenant, and the admin's token.
async fn setup(limit: i64, clock: Clock, sweep_seconds: u64) -> (TestApp, String, String, String) {
    let app = spawn_app_with_clock(clock, |c| {
        c.plans = vec![plan("test", FeatureLimitType::Monthly, limit)];
        c.default_plan = "test".into();
        c.platform_admins = vec![ADMIN.into()];
        c.grants.sweep_interval_seconds = sweep_seconds;
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (admin, _) = app.sign_up(ADMIN).await;
    (app, owner, tenant, admin)
}

async fn grant(app: &TestApp, admin: &str, tenant: &str, key: &str, more: Value) -> Value {
    let mut input = json!({ "tenantId": tenant, "idempotencyKey": key });
    input
        .as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    app.gql(Some(admin), GRANT, json!({ "input": input })).await
}

/// A granted grant's id.
async fn granted(app: &TestApp, admin: &str, tenant: &str, key: &str, more: Value) -> String {
    let body = grant(app, admin, tenant, key, more).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["grantCredits"]["grant"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn spend(app: &TestApp, token: &str, tenant: &str, amount: i64, key: &str) -> Value {
    let input = json!({ "tenantId": tenant, "amount": amount, "idempotencyKey": key });
    app.gql(Some(token), SPEND, json!({ "input": input })).await
}

async fn usage(app: &TestApp, token: &str, tenant: &str) -> Value {
    let body = app.gql(Some(token), USAGE, json!({ "t": tenant })).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["planFeatureUsage"].clone()
}

/// Remaining of each grant by id.
async fn remaining(app: &TestApp, token: &str, tenant: &str) -> Vec<(String, i64, String)> {
    let body = app.gql(Some(token), GRANTS, json!({ "t": tenant })).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["tenant"]["creditGrants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap().to_owned(),
                g["remaining"].as_i64().unwrap(),
                g["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn of(grants: &[(String, i64, String)], id: &str) -> (i64, String) {
    let (_, r, s) = grants.iter().find(|(g, ..)| g == id).expect("grant listed");
    (*r, s.clone())
}

pub(crate) fn assert_sound(app: &TestApp) {
    let (sound, report) = verify(app);
    assert!(sound, "{report}");
}

#[tokio::test]
async fn spends_take_the_allowance_first_then_grants_in_burn_order() {
    let (app, owner, tenant, admin) = setup(2, Clock::default(), 60).await;
    let in_a_week = (Utc::now() + Duration::days(7)).to_rfc3339();
    let in_a_month = (Utc::now() + Duration::days(30)).to_rfc3339();
    // Created in this order; the burn order is: low priority number first, then soonest
    // expiry, then promotional before paid, then the oldest.
    let paid = granted(
        &app,
        &admin,
        &tenant,
        "paid",
        json!({ "amount": 4, "category": "PAID", "expiresAt": in_a_month }),
    )
    .await;
    let promo = granted(
        &app,
        &admin,
        &tenant,
        "promo",
        json!({ "amount": 4, "expiresAt": in_a_month }),
    )
    .await;
    let soon = granted(
        &app,
        &admin,
        &tenant,
        "soon",
        json!({ "amount": 1, "expiresAt": in_a_week }),
    )
    .await;
    let never = granted(
        &app,
        &admin,
        &tenant,
        "never",
        json!({ "amount": 3, "category": "PAID" }),
    )
    .await;
    let first = granted(
        &app,
        &admin,
        &tenant,
        "first",
        json!({ "amount": 2, "priority": 10 }),
    )
    .await;

    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(u["grantsRemaining"], 14);
    assert_eq!(u["available"], 16);
    assert_eq!(u["nextExpiry"]["amount"], 1, "{u}");

    // 2 from the allowance, then 2 (priority 10), 1 (soonest expiry), 1 of the promotional.
    let body = spend(&app, &owner, &tenant, 6, "s1").await;
    assert!(body["errors"].is_null(), "{body}");
    let allocations = &body["data"]["consumeCredits"]["credit"]["allocations"];
    assert_eq!(
        allocations,
        &json!([
            { "bucket": "ALLOWANCE", "grantId": null, "amount": 2 },
            { "bucket": "GRANT", "grantId": first, "amount": 2 },
            { "bucket": "GRANT", "grantId": soon, "amount": 1 },
            { "bucket": "GRANT", "grantId": promo, "amount": 1 },
        ])
    );
    let grants = remaining(&app, &owner, &tenant).await;
    assert_eq!(of(&grants, &first), (0, "EXHAUSTED".into()));
    assert_eq!(of(&grants, &soon), (0, "EXHAUSTED".into()));
    assert_eq!(of(&grants, &promo), (3, "ACTIVE".into()));
    assert_eq!(of(&grants, &paid), (4, "ACTIVE".into()));
    assert_eq!(of(&grants, &never), (3, "ACTIVE".into()));

    // The rest of the promotional one, then the paid one that expires, then the one that never does.
    let body = spend(&app, &owner, &tenant, 8, "s2").await;
    assert!(body["errors"].is_null(), "{body}");
    let grants = remaining(&app, &owner, &tenant).await;
    assert_eq!(of(&grants, &promo).0, 0);
    assert_eq!(of(&grants, &paid).0, 0);
    assert_eq!(of(&grants, &never).0, 2);
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(
        (u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        (u["grantsRemaining"].as_i64(), u["available"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(u["enabled"], true);
    assert_sound(&app);
}

#[tokio::test]
async fn a_cost_is_paid_only_when_allowance_and_grants_together_cover_all_of_it() {
    let (app, owner, tenant, admin) = setup(3, Clock::default(), 60).await;
    let body = spend(&app, &owner, &tenant, 2, "a").await;
    assert!(body["errors"].is_null(), "{body}");
    let g = granted(&app, &admin, &tenant, "g", json!({ "amount": 2 })).await;

    // 1 left of the allowance + 2 granted = 3: a cost of 4 is refused whole, nothing taken.
    let refused = spend(&app, &owner, &tenant, 4, "b").await;
    assert_eq!(
        error_code(&refused),
        Some("INSUFFICIENT_CREDITS"),
        "{refused}"
    );
    let ext = &refused["errors"][0]["extensions"];
    assert_eq!(
        (ext["remaining"].as_i64(), ext["grantsRemaining"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(ext["available"], 3);
    assert_eq!(of(&remaining(&app, &owner, &tenant).await, &g).0, 2);

    // A cost of 3 fits them together: 1 from the allowance, 2 from the grant.
    let body = spend(&app, &owner, &tenant, 3, "c").await;
    assert!(body["errors"].is_null(), "{body}");
    let allocations = &body["data"]["consumeCredits"]["credit"]["allocations"];
    assert_eq!(allocations[0]["amount"], 1);
    assert_eq!(allocations[1]["amount"], 2);

    // A refused keyed spend forgets its key: the same key spends once credits are there.
    let refused = spend(&app, &owner, &tenant, 1, "d").await;
    assert_eq!(error_code(&refused), Some("INSUFFICIENT_CREDITS"));
    let check = app
        .gql(
            Some(&owner),
            "query($t: ID!) { checkCredits(tenantId: $t, amount: 1) { allowed remaining available reason } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(check["data"]["checkCredits"]["allowed"], false, "{check}");
    granted(&app, &admin, &tenant, "g2", json!({ "amount": 1 })).await;
    let check = app
        .gql(
            Some(&owner),
            "query($t: ID!) { checkCredits(tenantId: $t, amount: 1) { allowed remaining available } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(
        check["data"]["checkCredits"],
        json!({ "allowed": true, "remaining": 0, "available": 1 })
    );
    let body = spend(&app, &owner, &tenant, 1, "d").await;
    assert!(body["errors"].is_null(), "{body}");
    assert_sound(&app);
}

#[tokio::test]
async fn guarded_resources_are_paid_from_grants_too() {
    let (app, owner, tenant, admin) = setup(0, Clock::default(), 60).await;
    let created = app.create_project(&owner, &tenant, "p").await;
    assert_eq!(
        error_code(&created),
        Some("INSUFFICIENT_CREDITS"),
        "{created}"
    );
    granted(&app, &admin, &tenant, "g", json!({ "amount": 3 })).await;
    let project = app.project_id(&owner, &tenant).await;
    let task = app.create_task(&owner, &project, "t").await;
    assert!(task["errors"].is_null(), "{task}");
    let task = app.create_task(&owner, &project, "t2").await;
    assert_eq!(error_code(&task), Some("INSUFFICIENT_CREDITS"), "{task}");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM project").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM task").await, 1);
    assert_sound(&app);
}

#[tokio::test]
async fn grants_are_frozen_while_the_plan_does_not_include_the_feature() {
    let app = spawn_app_with(|c| {
        c.plans = vec![plan("test", FeatureLimitType::NotIncluded, 0)];
        c.default_plan = "test".into();
        c.platform_admins = vec![ADMIN.into()];
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (admin, _) = app.sign_up(ADMIN).await;
    let g = granted(&app, &admin, &tenant, "g", json!({ "amount": 5 })).await;
    let refused = spend(&app, &owner, &tenant, 1, "s").await;
    assert_eq!(
        error_code(&refused),
        Some("FEATURE_NOT_INCLUDED"),
        "{refused}"
    );
    assert_eq!(
        of(&remaining(&app, &owner, &tenant).await, &g),
        (5, "ACTIVE".into())
    );
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(
        (u["grantsRemaining"].as_i64(), u["available"].as_i64()),
        (Some(5), Some(0))
    );
}

fn at(s: u32, micros: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 10, 12, 0, s).unwrap() + Duration::microseconds(micros.into())
}

#[tokio::test]
async fn a_grant_is_spendable_until_the_instant_it_expires_sweeper_or_not() {
    let clock = Clock::manual(at(0, 0));
    // No sweep while the test runs: the guard itself must tell.
    let (app, owner, tenant, admin) = setup(0, clock.clone(), 3600).await;
    let expires = at(30, 0);
    let g = granted(
        &app,
        &admin,
        &tenant,
        "g",
        json!({ "amount": 5, "expiresAt": expires.to_rfc3339() }),
    )
    .await;
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(u["nextExpiry"]["amount"], 5);
    assert_eq!(
        DateTime::parse_from_rfc3339(u["nextExpiry"]["at"].as_str().unwrap()).unwrap(),
        expires
    );

    // A microsecond before: spendable.
    clock.set(expires - Duration::microseconds(1));
    let body = spend(&app, &owner, &tenant, 2, "before").await;
    assert!(body["errors"].is_null(), "{body}");
    // At the instant: not, though no sweeper has marked it.
    clock.set(expires);
    let refused = spend(&app, &owner, &tenant, 1, "at").await;
    assert_eq!(
        error_code(&refused),
        Some("INSUFFICIENT_CREDITS"),
        "{refused}"
    );
    assert_eq!(refused["errors"][0]["extensions"]["grantsRemaining"], 0);
    assert_eq!(
        of(&remaining(&app, &owner, &tenant).await, &g),
        (3, "ACTIVE".into())
    );
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(
        (u["grantsRemaining"].as_i64(), u["nextExpiry"].is_null()),
        (Some(0), true)
    );
    assert_sound(&app);
}

#[tokio::test]
async fn the_sweeper_expires_a_due_grant_once_with_what_it_held() {
    let clock = Clock::manual(at(0, 0));
    let (app, owner, tenant, admin) = setup(0, clock.clone(), 1).await;
    let g = granted(
        &app,
        &admin,
        &tenant,
        "g",
        json!({ "amount": 5, "expiresAt": at(30, 0).to_rfc3339() }),
    )
    .await;
    let body = spend(&app, &owner, &tenant, 2, "s").await;
    assert!(body["errors"].is_null(), "{body}");
    clock.set(at(30, 0));
    let mut status = String::new();
    for _ in 0..100 {
        status = of(&remaining(&app, &owner, &tenant).await, &g).1;
        if status == "EXPIRED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "EXPIRED");
    // A second server sweeping the same database changes nothing more.
    let second = app
        .start_server(&[("TOLLGATE_GRANTS__SWEEP_INTERVAL_SECONDS", "1")])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(second);
    let history = app
        .gql(
            Some(&owner),
            "query($t: ID!) { creditHistory(tenantId: $t, filter: { kind: EXPIRY }) { nodes { kind amount grantId actor { type } } } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(
        history["data"]["creditHistory"]["nodes"],
        json!([{ "kind": "EXPIRY", "amount": 3, "grantId": g, "actor": { "type": "SYSTEM" } }]),
        "{history}"
    );
    assert_sound(&app);
}

#[tokio::test]
async fn a_void_takes_back_only_what_is_left_and_the_history_shows_every_movement() {
    let (app, owner, tenant, admin) = setup(0, Clock::default(), 60).await;
    let g = granted(
        &app,
        &admin,
        &tenant,
        "g",
        json!({ "amount": 5, "reason": "launch promo" }),
    )
    .await;
    assert!(spend(&app, &owner, &tenant, 2, "s").await["errors"].is_null());
    let void = "mutation($t: ID!, $id: ID!) { voidCreditGrant(tenantId: $t, id: $id, reason: \"abuse\") { status remaining amount } }";
    let body = app
        .gql(Some(&admin), void, json!({ "t": tenant, "id": g }))
        .await;
    assert_eq!(
        body["data"]["voidCreditGrant"],
        json!({ "status": "VOIDED", "remaining": 0, "amount": 5 }),
        "{body}"
    );
    let again = app
        .gql(Some(&admin), void, json!({ "t": tenant, "id": g }))
        .await;
    assert_eq!(error_code(&again), Some("BAD_USER_INPUT"), "{again}");
    let by_owner = app
        .gql(Some(&owner), void, json!({ "t": tenant, "id": g }))
        .await;
    assert_eq!(error_code(&by_owner), Some("FORBIDDEN"), "{by_owner}");
    let refused = spend(&app, &owner, &tenant, 1, "after").await;
    assert_eq!(error_code(&refused), Some("INSUFFICIENT_CREDITS"));

    let history = app
        .gql(
            Some(&owner),
            "query($t: ID!) { creditHistory(tenantId: $t) { nodes { kind type amount grantId reason actor { type } allocations { bucket amount } } } }",
            json!({ "t": tenant }),
        )
        .await;
    let nodes = &history["data"]["creditHistory"]["nodes"];
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "{history}");
    assert_eq!(nodes[0]["kind"], "VOID");
    assert_eq!(
        (nodes[0]["amount"].as_i64(), nodes[0]["reason"].as_str()),
        (Some(3), Some("abuse"))
    );
    assert_eq!(nodes[1]["kind"], "SPEND");
    assert_eq!(
        nodes[1]["allocations"],
        json!([{ "bucket": "GRANT", "amount": 2 }])
    );
    assert_eq!(nodes[2]["kind"], "GRANT");
    assert_eq!(
        (nodes[2]["amount"].as_i64(), nodes[2]["grantId"].as_str()),
        (Some(5), Some(g.as_str()))
    );
    assert_eq!(nodes[2]["actor"]["type"], "USER");
    assert_sound(&app);
}

#[tokio::test]
async fn grants_are_idempotent_and_only_the_platform_may_grant() {
    let (app, owner, tenant, admin) = setup(0, Clock::default(), 60).await;
    let first = grant(&app, &admin, &tenant, "k", json!({ "amount": 5 })).await;
    let again = grant(&app, &admin, &tenant, "k", json!({ "amount": 5 })).await;
    assert_eq!(again["data"]["grantCredits"]["replayed"], true, "{again}");
    assert_eq!(
        again["data"]["grantCredits"]["grant"]["id"],
        first["data"]["grantCredits"]["grant"]["id"]
    );
    let other = grant(&app, &admin, &tenant, "k", json!({ "amount": 6 })).await;
    assert_eq!(error_code(&other), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit_grant").await, 1);

    // The tenant's own OWNER may neither grant nor make a key that grants.
    let by_owner = grant(&app, &owner, &tenant, "o", json!({ "amount": 5 })).await;
    assert_eq!(error_code(&by_owner), Some("FORBIDDEN"), "{by_owner}");
    let make_key = "mutation($t: ID) { createApiKey(tenantId: $t, name: \"k\", scopes: [CREDITS_GRANT]) { secret } }";
    let key = app
        .gql(Some(&owner), make_key, json!({ "t": tenant }))
        .await;
    assert_eq!(error_code(&key), Some("FORBIDDEN"), "{key}");
    // A platform admin makes one for the tenant; it grants there, and nowhere else.
    let key = app
        .gql(Some(&admin), make_key, json!({ "t": tenant }))
        .await;
    let key = key["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("key")
        .to_owned();
    let by_key = grant(&app, &key, &tenant, "kk", json!({ "amount": 1 })).await;
    assert!(by_key["errors"].is_null(), "{by_key}");
    assert_eq!(
        by_key["data"]["grantCredits"]["grant"]["actor"]["type"],
        "API_KEY"
    );
    let (_, elsewhere) = app.owner_with_tenant("other").await;
    let there = grant(&app, &key, &elsewhere, "x", json!({ "amount": 1 })).await;
    assert_eq!(error_code(&there), Some("NOT_FOUND"), "{there}");

    for bad in [
        json!({ "amount": 0 }),
        json!({ "amount": 1, "priority": 101 }),
        json!({ "amount": 1, "expiresAt": "2020-01-01T00:00:00Z" }),
    ] {
        let body = grant(&app, &admin, &tenant, "bad", bad).await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    }
    assert_sound(&app);
}

#[tokio::test]
async fn many_spenders_on_three_replicas_never_take_more_than_allowance_and_grants() {
    let (app, owner, tenant, admin) = setup(50, Clock::default(), 60).await;
    granted(&app, &admin, &tenant, "a", json!({ "amount": 60 })).await;
    granted(
        &app,
        &admin,
        &tenant,
        "b",
        json!({ "amount": 40, "priority": 20, "category": "PAID" }),
    )
    .await;
    let env = app.replica_env(50);
    let replicas = [
        app.start_server(&env).await,
        app.start_server(&env).await,
        app.start_server(&env).await,
    ];
    // 240 spends of 1 or 2 credits: 150 credits to share.
    let answers = join_all((0..240).map(|i| {
        let (app, owner, tenant) = (&app, &owner, &tenant);
        let url = replicas[i % 3].url.clone();
        async move {
            let input = json!({ "tenantId": tenant, "amount": 1 + (i % 2), "idempotencyKey": format!("k{i}") });
            let body = app
                .gql_at(&url, owner, SPEND, json!({ "input": input }))
                .await
                .expect("answered");
            (1 + (i % 2) as i64, body)
        }
    }))
    .await;
    let spent: i64 = answers
        .iter()
        .filter(|(_, a)| a["errors"].is_null())
        .map(|(n, _)| n)
        .sum();
    let refused = answers
        .iter()
        .filter(|(_, a)| error_code(a) == Some("INSUFFICIENT_CREDITS"))
        .count();
    let ok = answers
        .iter()
        .filter(|(_, a)| a["errors"].is_null())
        .count();
    assert_eq!(ok + refused, 240, "every spend was paid or refused");
    assert!(
        spent <= 150,
        "never more than allowance and grants: {spent}"
    );
    assert!(
        spent >= 149,
        "what fits is spent (a 2 may not fit the last 1): {spent}"
    );
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(u["used"], 50);
    assert_eq!(u["grantsRemaining"].as_i64(), Some(150 - spent));
    assert_sound(&app);
}

const REFUND: &str = "mutation($input: RefundCreditInput!) { refundCredit(input: $input) { \
    replayed credit { id kind amount refundOf reason } buckets { bucket grantId amount lapsed } } }";

pub(crate) async fn refund(
    app: &TestApp,
    token: &str,
    tenant: &str,
    credit: &str,
    key: &str,
    amount: Option<i64>,
) -> Value {
    let input = json!({ "tenantId": tenant, "creditId": credit, "amount": amount, "idempotencyKey": key, "reason": "sorry" });
    app.gql(Some(token), REFUND, json!({ "input": input }))
        .await
}

fn spend_id(body: &Value) -> String {
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["consumeCredits"]["credit"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_refund_gives_back_exactly_the_buckets_that_paid_newest_first() {
    let (app, owner, tenant, admin) = setup(3, Clock::default(), 60).await;
    let a = granted(
        &app,
        &admin,
        &tenant,
        "a",
        json!({ "amount": 2, "priority": 10 }),
    )
    .await;
    let b = granted(&app, &admin, &tenant, "b", json!({ "amount": 5 })).await;
    // 3 from the allowance, 2 from a, 1 from b.
    let spent = spend_id(&spend(&app, &owner, &tenant, 6, "s").await);

    let body = refund(&app, &owner, &tenant, &spent, "r1", Some(2)).await;
    assert!(body["errors"].is_null(), "{body}");
    let made = &body["data"]["refundCredit"];
    assert_eq!(made["credit"]["kind"], "REFUND");
    assert_eq!(made["credit"]["refundOf"], spent);
    assert_eq!(made["credit"]["reason"], "sorry");
    assert_eq!(
        made["buckets"],
        json!([
            { "bucket": "GRANT", "grantId": b, "amount": 1, "lapsed": false },
            { "bucket": "GRANT", "grantId": a, "amount": 1, "lapsed": false },
        ])
    );
    let grants = remaining(&app, &owner, &tenant).await;
    assert_eq!(
        of(&grants, &a),
        (1, "ACTIVE".into()),
        "an exhausted grant is active again"
    );
    assert_eq!(of(&grants, &b).0, 5);

    // The rest by default: 1 to a, then 3 to the allowance.
    let body = refund(&app, &owner, &tenant, &spent, "r2", None).await;
    assert_eq!(
        body["data"]["refundCredit"]["credit"]["amount"], 4,
        "{body}"
    );
    assert_eq!(
        body["data"]["refundCredit"]["buckets"][1],
        json!({ "bucket": "ALLOWANCE", "grantId": null, "amount": 3, "lapsed": false })
    );
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(
        (u["used"].as_i64(), u["grantsRemaining"].as_i64()),
        (Some(0), Some(7))
    );

    // Nothing left: refused, nothing written. A replay still answers the first refund.
    let more = refund(&app, &owner, &tenant, &spent, "r3", Some(1)).await;
    assert_eq!(error_code(&more), Some("BAD_USER_INPUT"), "{more}");
    let replay = refund(&app, &owner, &tenant, &spent, "r1", Some(2)).await;
    assert_eq!(replay["data"]["refundCredit"]["replayed"], true, "{replay}");
    assert_eq!(
        replay["data"]["refundCredit"]["buckets"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let reused = refund(&app, &owner, &tenant, &spent, "r1", Some(1)).await;
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM credit WHERE kind = 'REFUND'")
            .await,
        2
    );
    assert_sound(&app);
}

#[tokio::test]
async fn concurrent_refunds_never_give_back_more_than_was_spent() {
    let (app, owner, tenant, _admin) = setup(10, Clock::default(), 60).await;
    let spent = spend_id(&spend(&app, &owner, &tenant, 5, "s").await);
    let answers = join_all((0..12).map(|i| {
        let (app, owner, tenant, spent) = (&app, &owner, &tenant, &spent);
        async move { refund(app, owner, tenant, spent, &format!("r{i}"), Some(1)).await }
    }))
    .await;
    let ok = answers.iter().filter(|a| a["errors"].is_null()).count();
    let refused = answers
        .iter()
        .filter(|a| error_code(a) == Some("BAD_USER_INPUT"))
        .count();
    assert_eq!((ok, refused), (5, 7), "{answers:?}");
    assert_eq!(usage(&app, &owner, &tenant).await["used"], 0);
    assert_sound(&app);
}

#[tokio::test]
async fn who_may_refund_and_what_is_not_a_spend() {
    let (app, owner, tenant, admin) = setup(10, Clock::default(), 60).await;
    let spent = spend_id(&spend(&app, &owner, &tenant, 2, "s").await);
    let (member, member_id) = app.sign_up("member@example.com").await;
    app.add_member(&tenant, &member_id, "MEMBER").await;
    let by_member = refund(&app, &member, &tenant, &spent, "m", Some(1)).await;
    assert_eq!(error_code(&by_member), Some("FORBIDDEN"), "{by_member}");
    let (stranger, _) = app.owner_with_tenant("elsewhere").await;
    let by_stranger = refund(&app, &stranger, &tenant, &spent, "x", Some(1)).await;
    assert_eq!(error_code(&by_stranger), Some("FORBIDDEN"), "{by_stranger}");
    // A grant's movement is no spend.
    granted(&app, &admin, &tenant, "g", json!({ "amount": 1 })).await;
    let history = app
        .gql(Some(&owner), "query($t: ID!) { creditHistory(tenantId: $t, filter: { kind: GRANT }) { nodes { id } } }", json!({ "t": tenant }))
        .await;
    let grant_row = history["data"]["creditHistory"]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let not_spend = refund(&app, &owner, &tenant, &grant_row, "not-a-spend", Some(1)).await;
    assert_eq!(error_code(&not_spend), Some("NOT_FOUND"), "{not_spend}");
}

#[tokio::test]
async fn refunds_to_expired_voided_and_closed_buckets_are_lapsed_never_spendable() {
    let clock = Clock::manual(at(0, 0));
    let (app, owner, tenant, admin) = setup(2, clock.clone(), 3600).await;
    let expiring = granted(
        &app,
        &admin,
        &tenant,
        "e",
        json!({ "amount": 3, "priority": 1, "expiresAt": at(30, 0).to_rfc3339() }),
    )
    .await;
    let voided = granted(
        &app,
        &admin,
        &tenant,
        "v",
        json!({ "amount": 3, "priority": 2 }),
    )
    .await;
    // 2 from the allowance, 3 from the expiring grant, 1 from the one to be voided.
    let spent = spend_id(&spend(&app, &owner, &tenant, 6, "s").await);
    let void = "mutation($t: ID!, $id: ID!) { voidCreditGrant(tenantId: $t, id: $id) { status } }";
    let body = app
        .gql(Some(&admin), void, json!({ "t": tenant, "id": voided }))
        .await;
    assert_eq!(
        body["data"]["voidCreditGrant"]["status"], "VOIDED",
        "{body}"
    );
    // The next month: the allowance's period has closed, the grant has expired (unswept).
    clock.set(Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap());
    let body = refund(&app, &owner, &tenant, &spent, "r", None).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["refundCredit"]["buckets"],
        json!([
            { "bucket": "GRANT", "grantId": voided, "amount": 1, "lapsed": true },
            { "bucket": "GRANT", "grantId": expiring, "amount": 3, "lapsed": true },
            { "bucket": "ALLOWANCE", "grantId": null, "amount": 2, "lapsed": true },
        ])
    );
    // Nothing of it can be spent: not this month's allowance, nor the dead grants.
    let u = usage(&app, &owner, &tenant).await;
    assert_eq!(
        (
            u["used"].as_i64(),
            u["grantsRemaining"].as_i64(),
            u["available"].as_i64()
        ),
        (Some(0), Some(0), Some(2))
    );
    let grants = remaining(&app, &owner, &tenant).await;
    assert_eq!(of(&grants, &voided), (0, "VOIDED".into()));
    assert_sound(&app);
}
