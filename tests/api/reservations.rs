//! Reservations: credits held like a spend, then exactly one of confirm (the rest given back),
//! release, or expiry — raced on three replicas.

use chrono::{Duration, TimeZone, Utc};
use entity::plan_feature::FeatureLimitType;
use futures::future::join_all;
use serde_json::{Value, json};
use tollgate::clock::Clock;

use crate::{
    helpers::{TestApp, error_code, plan, spawn_app_with_clock},
    resilience::verify,
};

const RESERVE: &str = "mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { \
    id status amount confirmedAmount feature creditType objectId expiresAt replayed } }";
const CONFIRM: &str = "mutation($t: ID!, $id: ID!, $amount: Int!) { confirmReservation(tenantId: $t, id: $id, amount: $amount) { status amount confirmedAmount settledAt } }";
const RELEASE: &str =
    "mutation($t: ID!, $id: ID!) { releaseReservation(tenantId: $t, id: $id) { status } }";

async fn setup(limit: i64, clock: Clock, sweep: u64) -> (TestApp, String, String) {
    let app = spawn_app_with_clock(clock, |c| {
        c.plans = vec![plan("test", FeatureLimitType::Monthly, limit)];
        c.default_plan = "test".into();
        c.platform_admins = vec!["root@example.com".into()];
        c.grants.sweep_interval_seconds = sweep;
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    (app, owner, tenant)
}

async fn reserve(
    app: &TestApp,
    token: &str,
    tenant: &str,
    amount: i64,
    key: &str,
    ttl: Option<i64>,
) -> Value {
    let input = json!({ "tenantId": tenant, "amount": amount, "idempotencyKey": key, "objectId": "job-1", "ttlSeconds": ttl });
    app.gql(Some(token), RESERVE, json!({ "input": input }))
        .await
}

fn id(body: &Value) -> String {
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["reserveCredits"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn used(app: &TestApp, token: &str, tenant: &str) -> i64 {
    app.usage(token, tenant).await["used"].as_i64().unwrap()
}

fn assert_sound(app: &TestApp) {
    let (sound, report) = verify(app);
    assert!(sound, "{report}");
}

#[tokio::test]
async fn a_hold_counts_like_a_spend_until_confirmed_and_the_rest_comes_back() {
    let (app, owner, tenant) = setup(10, Clock::default(), 60).await;
    let body = reserve(&app, &owner, &tenant, 6, "r", None).await;
    let r = id(&body);
    assert_eq!(body["data"]["reserveCredits"]["status"], "PENDING");
    assert_eq!(body["data"]["reserveCredits"]["creditType"], "explicit");
    assert_eq!(used(&app, &owner, &tenant).await, 6);
    // Held is spent: a spend of 5 does not fit beside it.
    let spend = app
        .gql(
            Some(&owner),
            "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { credit { id } } }",
            json!({ "input": { "tenantId": tenant, "amount": 5, "idempotencyKey": "c" } }),
        )
        .await;
    assert_eq!(error_code(&spend), Some("INSUFFICIENT_CREDITS"), "{spend}");
    // A retry of the reservation is the same one.
    let again = reserve(&app, &owner, &tenant, 6, "r", None).await;
    assert_eq!(
        (
            again["data"]["reserveCredits"]["id"].as_str(),
            again["data"]["reserveCredits"]["replayed"].as_bool()
        ),
        (Some(r.as_str()), Some(true))
    );
    assert_eq!(used(&app, &owner, &tenant).await, 6);

    let too_much = app
        .gql(
            Some(&owner),
            CONFIRM,
            json!({ "t": tenant, "id": r, "amount": 7 }),
        )
        .await;
    assert_eq!(error_code(&too_much), Some("BAD_USER_INPUT"), "{too_much}");
    let confirmed = app
        .gql(
            Some(&owner),
            CONFIRM,
            json!({ "t": tenant, "id": r, "amount": 4 }),
        )
        .await;
    assert_eq!(
        confirmed["data"]["confirmReservation"]["status"], "CONFIRMED",
        "{confirmed}"
    );
    assert_eq!(
        confirmed["data"]["confirmReservation"]["confirmedAmount"],
        4
    );
    assert_eq!(used(&app, &owner, &tenant).await, 4);
    for (query, vars) in [
        (RELEASE, json!({ "t": tenant, "id": r })),
        (CONFIRM, json!({ "t": tenant, "id": r, "amount": 1 })),
    ] {
        let late = app.gql(Some(&owner), query, vars).await;
        assert_eq!(error_code(&late), Some("RESERVATION_NOT_PENDING"), "{late}");
    }
    let missing = app
        .gql(Some(&owner), RELEASE, json!({ "t": tenant, "id": tenant }))
        .await;
    assert_eq!(error_code(&missing), Some("NOT_FOUND"), "{missing}");
    assert_sound(&app);
}

/// The ledger row of a reservation's hold.
async fn hold_of(app: &TestApp, token: &str, tenant: &str, reservation: &str) -> String {
    let history = app
        .gql(
            Some(token),
            "query($t: ID!, $o: String) { creditHistory(tenantId: $t, filter: { kind: SPEND, objectId: $o }) { nodes { id } } }",
            json!({ "t": tenant, "o": reservation }),
        )
        .await;
    history["data"]["creditHistory"]["nodes"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{history}"))
        .to_owned()
}

#[tokio::test]
async fn a_pending_hold_is_not_refunded_beside_but_a_confirmed_spend_may_be() {
    let (app, owner, tenant) = setup(10, Clock::default(), 60).await;
    let r = id(&reserve(&app, &owner, &tenant, 6, "r", None).await);
    let hold = hold_of(&app, &owner, &tenant, &r).await;
    let refund = "mutation($t: ID!, $c: ID!, $k: String!) { refundCredit(input: { tenantId: $t, creditId: $c, idempotencyKey: $k }) { credit { amount } } }";
    let pending = app
        .gql(
            Some(&owner),
            refund,
            json!({ "t": tenant, "c": hold, "k": "p" }),
        )
        .await;
    assert_eq!(error_code(&pending), Some("BAD_USER_INPUT"), "{pending}");
    let confirmed = app
        .gql(
            Some(&owner),
            CONFIRM,
            json!({ "t": tenant, "id": r, "amount": 4 }),
        )
        .await;
    assert!(confirmed["errors"].is_null(), "{confirmed}");
    // The 4 spent may be refunded like any spend (the 2 released are not there to refund).
    let body = app
        .gql(
            Some(&owner),
            refund,
            json!({ "t": tenant, "c": hold, "k": "c" }),
        )
        .await;
    assert_eq!(
        body["data"]["refundCredit"]["credit"]["amount"], 4,
        "{body}"
    );
    assert_eq!(used(&app, &owner, &tenant).await, 0);
    assert_sound(&app);
}

#[tokio::test]
async fn a_release_gives_all_back_to_the_buckets_that_held_it() {
    let (app, owner, tenant) = setup(2, Clock::default(), 60).await;
    let (admin, _) = app.sign_up("root@example.com").await;
    let grant = app
        .gql(
            Some(&admin),
            "mutation($t: ID!) { grantCredits(input: { tenantId: $t, amount: 5, idempotencyKey: \"g\" }) { grant { id } } }",
            json!({ "t": tenant }),
        )
        .await;
    assert!(grant["errors"].is_null(), "{grant}");
    // 2 from the allowance, 2 from the grant.
    let r = id(&reserve(&app, &owner, &tenant, 4, "r", None).await);
    let u = app
        .gql(
            Some(&owner),
            "query($t: ID!) { planFeatureUsage(tenantId: $t) { used grantsRemaining } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(
        u["data"]["planFeatureUsage"],
        json!({ "used": 2, "grantsRemaining": 3 })
    );
    // Confirming 1 gives back the grant's 2 first, then 1 of the allowance.
    let confirmed = app
        .gql(
            Some(&owner),
            CONFIRM,
            json!({ "t": tenant, "id": r, "amount": 1 }),
        )
        .await;
    assert!(confirmed["errors"].is_null(), "{confirmed}");
    let u = app
        .gql(
            Some(&owner),
            "query($t: ID!) { planFeatureUsage(tenantId: $t) { used grantsRemaining } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(
        u["data"]["planFeatureUsage"],
        json!({ "used": 1, "grantsRemaining": 5 })
    );

    let other = id(&reserve(&app, &owner, &tenant, 3, "r2", None).await);
    let released = app
        .gql(Some(&owner), RELEASE, json!({ "t": tenant, "id": other }))
        .await;
    assert_eq!(
        released["data"]["releaseReservation"]["status"], "RELEASED",
        "{released}"
    );
    assert_eq!(used(&app, &owner, &tenant).await, 1);
    let read = app
        .gql(Some(&owner), "query($t: ID!, $id: ID!) { reservation(tenantId: $t, id: $id) { status confirmedAmount } }", json!({ "t": tenant, "id": r }))
        .await;
    assert_eq!(
        read["data"]["reservation"],
        json!({ "status": "CONFIRMED", "confirmedAmount": 1 })
    );
    assert_sound(&app);
}

#[tokio::test]
async fn an_expired_hold_cannot_be_confirmed_and_the_sweeper_gives_it_back() {
    let start = Utc.with_ymd_and_hms(2026, 11, 10, 12, 0, 0).unwrap();
    let clock = Clock::manual(start);
    let (app, owner, tenant) = setup(10, clock.clone(), 1).await;
    let r = id(&reserve(&app, &owner, &tenant, 5, "r", Some(60)).await);
    clock.set(start + Duration::seconds(60));
    let late = app
        .gql(
            Some(&owner),
            CONFIRM,
            json!({ "t": tenant, "id": r, "amount": 5 }),
        )
        .await;
    assert_eq!(error_code(&late), Some("RESERVATION_NOT_PENDING"), "{late}");
    let mut status = Value::Null;
    for _ in 0..100 {
        let read = app
            .gql(
                Some(&owner),
                "query($t: ID!, $id: ID!) { reservation(tenantId: $t, id: $id) { status } }",
                json!({ "t": tenant, "id": r }),
            )
            .await;
        status = read["data"]["reservation"]["status"].clone();
        if status == "EXPIRED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "EXPIRED");
    assert_eq!(used(&app, &owner, &tenant).await, 0);
    assert_sound(&app);
}

#[tokio::test]
async fn confirm_release_and_expiry_raced_on_three_replicas_settle_each_hold_once() {
    let (app, owner, tenant) = setup(1000, Clock::default(), 1).await;
    let mut env = app.replica_env(1000);
    env.push(("TOLLGATE_GRANTS__SWEEP_INTERVAL_SECONDS", "1".to_owned()));
    let replicas = [app.start_server(&env).await, app.start_server(&env).await];
    let holds: Vec<String> = join_all((0..24).map(|i| {
        let (app, owner, tenant) = (&app, &owner, &tenant);
        async move { id(&reserve(app, owner, tenant, 3, &format!("h{i}"), Some(2)).await) }
    }))
    .await;
    // Just before the holds expire: a confirm on one replica, a release on another, and the
    // sweepers of all three.
    tokio::time::sleep(std::time::Duration::from_millis(1900)).await;
    let answers = join_all(holds.iter().enumerate().flat_map(|(i, r)| {
        let (app, owner, tenant) = (&app, &owner, &tenant);
        [
            (
                replicas[i % 2].url.clone(),
                CONFIRM,
                json!({ "t": tenant, "id": r, "amount": 2 }),
            ),
            (
                replicas[(i + 1) % 2].url.clone(),
                RELEASE,
                json!({ "t": tenant, "id": r }),
            ),
        ]
        .map(|(url, query, vars)| async move {
            app.gql_at(&url, owner, query, vars)
                .await
                .expect("answered")
        })
    }))
    .await;
    for pair in answers.chunks(2) {
        let won = pair.iter().filter(|a| a["errors"].is_null()).count();
        assert!(won <= 1, "at most one settles a hold: {pair:?}");
        for lost in pair.iter().filter(|a| !a["errors"].is_null()) {
            assert_eq!(
                error_code(lost),
                Some("RESERVATION_NOT_PENDING"),
                "{lost}\nreplica logs:\n{}\n{}",
                replicas[0].log_text(),
                replicas[1].log_text()
            );
        }
    }
    // Whatever was not settled expires.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut confirmed = 0;
    for r in &holds {
        let read = app
            .gql(
                Some(&owner),
                "query($t: ID!, $id: ID!) { reservation(tenantId: $t, id: $id) { status } }",
                json!({ "t": tenant, "id": r }),
            )
            .await;
        let status = read["data"]["reservation"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            ["CONFIRMED", "RELEASED", "EXPIRED"].contains(&status.as_str()),
            "{read}"
        );
        confirmed += i64::from(status == "CONFIRMED");
    }
    assert_eq!(used(&app, &owner, &tenant).await, 2 * confirmed);
    assert_sound(&app);
}
