//! Threshold alerts through GraphQL over HTTP: rules set and read (the platform's defaults until
//! a tenant sets its own), thresholds crossed by one spend and by many concurrent spends on
//! three replicas (each alert exactly once), a refused spend's `limit_reached` once, resolution
//! after a refund, a grant and a released reservation, and a new period re-arming every rule.
//! What fired is read back with `creditAlerts` and as the webhook events recorded with it. And
//! spends, refunds and grants of one tenant at once on four replicas: every event numbered
//! 1, 2, 3, … (`creditEvents.sequence`) without a gap, and none deadlocked.

use chrono::{TimeZone, Utc};
use entity::plan_feature::FeatureLimitType;
use futures::future::join_all;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tollgate::clock::Clock;

use crate::{
    helpers::{TestApp, error_code, plan, spawn_app_with_clock},
    resilience::verify,
};

const ADMIN: &str = "root@example.com";

const SET: &str = "mutation($t: ID!, $rules: [CreditAlertRuleInput!]!) { \
    setCreditAlertRules(tenantId: $t, rules: $rules) { feature isDefault \
    rules { kind threshold notifyResolved } } }";

const RESET: &str = "mutation($t: ID!) { resetCreditAlertRules(tenantId: $t) { isDefault \
    rules { kind threshold } } }";

const RULES: &str = "query($t: ID!) { creditAlertRules(tenantId: $t) { feature isDefault \
    rules { kind threshold notifyResolved } } }";

const ALERTS: &str = "query($t: ID!, $p: DateTime) { creditAlerts(tenantId: $t, periodStart: $p) { \
    id feature periodStart kind threshold state timesReached reachedAt resolvedAt used limit \
    available } }";

const SPEND: &str = "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { \
    credit { id amount } } }";

const REFUND: &str = "mutation($input: RefundCreditInput!) { refundCredit(input: $input) { \
    credit { id amount } } }";

const GRANT: &str = "mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { \
    grant { id } } }";

/// A server whose plan gives `limit` credits a month on `clock`; an OWNER with a tenant, and a
/// platform admin's token.
async fn setup(limit: i64, clock: Clock) -> (TestApp, String, String, String) {
    let app = spawn_app_with_clock(clock, |c| {
        c.plans = vec![plan("test", FeatureLimitType::Monthly, limit)];
        c.default_plan = "test".into();
        c.platform_admins = vec![ADMIN.into()];
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (admin, _) = app.sign_up(ADMIN).await;
    (app, owner, tenant, admin)
}

async fn spend(app: &TestApp, token: &str, tenant: &str, amount: i64, key: &str) -> Value {
    let input = json!({ "tenantId": tenant, "amount": amount, "idempotencyKey": key });
    app.gql(Some(token), SPEND, json!({ "input": input })).await
}

/// A spend that must succeed: its ledger row's id.
async fn spent(app: &TestApp, token: &str, tenant: &str, amount: i64, key: &str) -> String {
    let body = spend(app, token, tenant, amount, key).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["consumeCredits"]["credit"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn refund(app: &TestApp, token: &str, tenant: &str, credit: &str, key: &str) {
    let input = json!({ "tenantId": tenant, "creditId": credit, "idempotencyKey": key });
    let body = app
        .gql(Some(token), REFUND, json!({ "input": input }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
}

async fn set_rules(app: &TestApp, token: &str, tenant: &str, rules: Value) -> Value {
    app.gql(Some(token), SET, json!({ "t": tenant, "rules": rules }))
        .await
}

async fn alerts(app: &TestApp, token: &str, tenant: &str) -> Vec<Value> {
    let body = app.gql(Some(token), ALERTS, json!({ "t": tenant })).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["creditAlerts"].as_array().unwrap().clone()
}

/// `(kind, threshold, state, timesReached)` of each alert, oldest first.
async fn fired(app: &TestApp, token: &str, tenant: &str) -> Vec<(String, i64, String, i64)> {
    alerts(app, token, tenant)
        .await
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_owned(),
                a["threshold"].as_i64().unwrap(),
                a["state"].as_str().unwrap().to_owned(),
                a["timesReached"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn alert(kind: &str, threshold: i64, state: &str, times: i64) -> (String, i64, String, i64) {
    (kind.to_owned(), threshold, state.to_owned(), times)
}

/// The webhook events of `kind` recorded, oldest first: their `data`.
async fn events(app: &TestApp, kind: &str) -> Vec<Value> {
    let db = app.db().await;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT payload FROM webhook_event WHERE type = '{kind}' ORDER BY id"),
        ))
        .await
        .expect("events read");
    rows.iter()
        .map(|row| {
            let payload: String = row.try_get("", "payload").unwrap();
            serde_json::from_str::<Value>(&payload).unwrap()["data"].clone()
        })
        .collect()
}

fn assert_sound(app: &TestApp) {
    let (sound, report) = verify(app);
    assert!(sound, "{report}");
}

#[tokio::test]
async fn thresholds_fire_once_per_period_resolve_after_refunds_and_fire_again() {
    let (app, owner, tenant, _) = setup(10, Clock::default()).await;
    let rules = json!([
        { "kind": "PERCENT_USED", "threshold": 50, "notifyResolved": true },
        { "kind": "REMAINING_BELOW", "threshold": 2 },
    ]);
    let set = set_rules(&app, &owner, &tenant, rules).await;
    assert!(set["errors"].is_null(), "{set}");
    assert_eq!(set["data"]["setCreditAlertRules"]["isDefault"], false);

    let four = spent(&app, &owner, &tenant, 4, "a").await;
    assert!(fired(&app, &owner, &tenant).await.is_empty());
    // 5 of 10: half used.
    spent(&app, &owner, &tenant, 1, "b").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [alert("PERCENT_USED", 50, "ACTIVE", 1)]
    );
    spent(&app, &owner, &tenant, 1, "c").await;
    // 9 of 10: one left, fewer than 2.
    let three = spent(&app, &owner, &tenant, 3, "d").await;
    // 10 of 10: depleted.
    spent(&app, &owner, &tenant, 1, "e").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [
            alert("PERCENT_USED", 50, "ACTIVE", 1),
            alert("REMAINING_BELOW", 2, "ACTIVE", 1),
            alert("DEPLETED", 0, "ACTIVE", 1),
        ]
    );
    // Refused twice: the period's limit_reached once.
    for key in ["f", "g"] {
        let refused = spend(&app, &owner, &tenant, 1, key).await;
        assert_eq!(
            error_code(&refused),
            Some("INSUFFICIENT_CREDITS"),
            "{refused}"
        );
    }
    let reached = events(&app, "credits.threshold_reached").await;
    assert_eq!(reached.len(), 2);
    let first = &reached[0];
    assert_eq!(first["tenantId"], tenant);
    assert_eq!(first["feature"], "credits");
    assert_eq!(
        (
            &first["used"],
            &first["limit"],
            &first["available"],
            &first["percentUsed"]
        ),
        (&json!(5), &json!(10), &json!(5), &json!(50))
    );
    assert_eq!(
        first["rule"],
        json!({ "kind": "PERCENT_USED", "threshold": 50, "notifyResolved": true })
    );
    assert!(first["periodStart"].is_string(), "{first}");
    assert_eq!(events(&app, "credits.depleted").await.len(), 1);
    let limit = events(&app, "credits.limit_reached").await;
    assert_eq!(limit.len(), 1);
    assert_eq!(
        (&limit[0]["required"], &limit[0]["available"]),
        (&json!(1), &json!(0))
    );

    // 3 back: 7 used, 3 available — no longer below 2, no longer depleted; still half used.
    refund(&app, &owner, &tenant, &three, "r1").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [
            alert("PERCENT_USED", 50, "ACTIVE", 1),
            alert("REMAINING_BELOW", 2, "RESOLVED", 1),
            alert("DEPLETED", 0, "RESOLVED", 1),
            alert("LIMIT_REACHED", 0, "ACTIVE", 1),
        ]
    );
    // Only the rule that asked is told of its resolution.
    assert!(events(&app, "credits.threshold_resolved").await.is_empty());
    // 4 more back: 3 used, below half — resolved, and told.
    refund(&app, &owner, &tenant, &four, "r2").await;
    let resolved = events(&app, "credits.threshold_resolved").await;
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(
        (&resolved[0]["used"], &resolved[0]["rule"]["threshold"]),
        (&json!(3), &json!(50))
    );
    // Crossed again in the same period: it fires again, once.
    spent(&app, &owner, &tenant, 2, "h").await;
    spent(&app, &owner, &tenant, 1, "i").await;
    let half = alerts(&app, &owner, &tenant)
        .await
        .into_iter()
        .find(|a| a["kind"] == "PERCENT_USED")
        .unwrap();
    assert_eq!(
        (&half["state"], &half["timesReached"]),
        (&json!("ACTIVE"), &json!(2))
    );
    assert!(half["resolvedAt"].is_null());
    assert_eq!(events(&app, "credits.threshold_reached").await.len(), 3);
    assert_sound(&app);
}

#[tokio::test]
async fn the_platform_defaults_apply_until_a_tenant_sets_its_own_rules() {
    let (app, owner, tenant, _) = setup(10, Clock::default()).await;
    let body = app.gql(Some(&owner), RULES, json!({ "t": tenant })).await;
    assert_eq!(
        body["data"]["creditAlertRules"],
        json!({ "feature": "credits", "isDefault": true, "rules": [
            { "kind": "PERCENT_USED", "threshold": 80, "notifyResolved": false },
            { "kind": "PERCENT_USED", "threshold": 100, "notifyResolved": false },
        ] }),
        "{body}"
    );
    spent(&app, &owner, &tenant, 8, "a").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [alert("PERCENT_USED", 80, "ACTIVE", 1)]
    );
    // Its own rules, even none, replace the defaults: the 80 % alert, its rule gone, resolves
    // (silently).
    let none = set_rules(&app, &owner, &tenant, json!([])).await;
    assert_eq!(
        none["data"]["setCreditAlertRules"],
        json!({ "feature": "credits", "isDefault": false, "rules": [] }),
        "{none}"
    );
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [alert("PERCENT_USED", 80, "RESOLVED", 1)]
    );
    spent(&app, &owner, &tenant, 1, "b").await;
    assert_eq!(events(&app, "credits.threshold_reached").await.len(), 1);
    // Back on the defaults, the 80 % rule holds at once and fires again.
    let reset = app.gql(Some(&owner), RESET, json!({ "t": tenant })).await;
    assert_eq!(
        reset["data"]["resetCreditAlertRules"]["isDefault"], true,
        "{reset}"
    );
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [alert("PERCENT_USED", 80, "ACTIVE", 2)]
    );
    assert_eq!(events(&app, "credits.threshold_reached").await.len(), 2);
    assert!(events(&app, "credits.threshold_resolved").await.is_empty());

    // Bad rules are refused whole.
    for (rules, needle) in [
        (
            json!([{ "kind": "PERCENT_USED", "threshold": 0 }]),
            "1 to 100",
        ),
        (
            json!([{ "kind": "PERCENT_USED", "threshold": 101 }]),
            "1 to 100",
        ),
        (
            json!([{ "kind": "REMAINING_BELOW", "threshold": -1 }]),
            "REMAINING_BELOW",
        ),
        (
            json!([{ "kind": "DEPLETED", "threshold": 0 }]),
            "always watched",
        ),
        (
            json!([{ "kind": "PERCENT_USED", "threshold": 50 }, { "kind": "PERCENT_USED", "threshold": 50, "notifyResolved": true }]),
            "the same rule twice",
        ),
    ] {
        let body = set_rules(&app, &owner, &tenant, rules).await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}"
        );
    }
    let many: Vec<Value> = (1..=21)
        .map(|t| json!({ "kind": "PERCENT_USED", "threshold": t }))
        .collect();
    let body = set_rules(&app, &owner, &tenant, json!(many)).await;
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");

    // A MEMBER reads them but may not set them; another tenant's owner neither.
    let (member, member_id) = app.sign_up("member@example.com").await;
    app.add_member(&tenant, &member_id, "MEMBER").await;
    let read = app.gql(Some(&member), RULES, json!({ "t": tenant })).await;
    assert!(read["errors"].is_null(), "{read}");
    let body = set_rules(&app, &member, &tenant, json!([])).await;
    assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");
    let (stranger, _) = app.owner_with_tenant("other").await;
    let body = set_rules(&app, &stranger, &tenant, json!([])).await;
    assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");
    let body = app
        .gql(Some(&stranger), ALERTS, json!({ "t": tenant }))
        .await;
    assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");
}

#[tokio::test]
async fn a_new_period_re_arms_every_rule() {
    let november = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
    let clock = Clock::manual(november);
    let (app, owner, tenant, _) = setup(10, clock.clone()).await;
    spent(&app, &owner, &tenant, 10, "a").await;
    let refused = spend(&app, &owner, &tenant, 1, "b").await;
    assert_eq!(
        error_code(&refused),
        Some("INSUFFICIENT_CREDITS"),
        "{refused}"
    );
    assert_eq!(
        fired(&app, &owner, &tenant).await.len(),
        4,
        "80 %, 100 %, depleted, limit"
    );

    clock.set(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 1).unwrap());
    assert!(
        fired(&app, &owner, &tenant).await.is_empty(),
        "December has fired nothing"
    );
    spent(&app, &owner, &tenant, 10, "c").await;
    let refused = spend(&app, &owner, &tenant, 1, "d").await;
    assert_eq!(
        error_code(&refused),
        Some("INSUFFICIENT_CREDITS"),
        "{refused}"
    );
    let december = alerts(&app, &owner, &tenant).await;
    assert_eq!(december.len(), 4, "{december:?}");
    assert!(
        december
            .iter()
            .all(|a| a["periodStart"] == "2026-12-01T00:00:00+00:00" && a["timesReached"] == 1),
        "{december:?}"
    );
    // November's, by its period start.
    let body = app
        .gql(
            Some(&owner),
            ALERTS,
            json!({ "t": tenant, "p": "2026-11-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(
        body["data"]["creditAlerts"].as_array().unwrap().len(),
        4,
        "{body}"
    );
    assert_eq!(events(&app, "credits.limit_reached").await.len(), 2);
    assert_eq!(events(&app, "credits.depleted").await.len(), 2);
}

#[tokio::test]
async fn grants_count_in_percent_used_and_a_grant_or_a_released_hold_resolves_alerts() {
    const RESERVE: &str =
        "mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }";
    const RELEASE: &str =
        "mutation($t: ID!, $id: ID!) { releaseReservation(tenantId: $t, id: $id) { status } }";
    let (app, owner, tenant, admin) = setup(10, Clock::default()).await;
    let rules = json!([{ "kind": "PERCENT_USED", "threshold": 80, "notifyResolved": true }]);
    assert!(set_rules(&app, &owner, &tenant, rules).await["errors"].is_null());
    // A hold of 9 of 10: 90 % used.
    let input = json!({ "tenantId": tenant, "amount": 9, "idempotencyKey": "h" });
    let held = app
        .gql(Some(&owner), RESERVE, json!({ "input": input }))
        .await;
    assert!(held["errors"].is_null(), "{held}");
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [alert("PERCENT_USED", 80, "ACTIVE", 1)]
    );
    let id = held["data"]["reserveCredits"]["id"].as_str().unwrap();
    let released = app
        .gql(Some(&owner), RELEASE, json!({ "t": tenant, "id": id }))
        .await;
    assert!(released["errors"].is_null(), "{released}");
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [alert("PERCENT_USED", 80, "RESOLVED", 1)]
    );
    assert_eq!(events(&app, "credits.threshold_resolved").await.len(), 1);

    // All 10 spent: 80 % again, and depleted.
    spent(&app, &owner, &tenant, 10, "a").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [
            alert("PERCENT_USED", 80, "ACTIVE", 2),
            alert("DEPLETED", 0, "ACTIVE", 1)
        ]
    );
    // A grant of 10: 10 of 20 used — both resolve.
    let input = json!({ "tenantId": tenant, "amount": 10, "idempotencyKey": "g" });
    let granted = app
        .gql(Some(&admin), GRANT, json!({ "input": input }))
        .await;
    assert!(granted["errors"].is_null(), "{granted}");
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [
            alert("PERCENT_USED", 80, "RESOLVED", 2),
            alert("DEPLETED", 0, "RESOLVED", 1)
        ]
    );
    // 6 of the grant spent: 16 of 20 — the grants drawn count as used.
    spent(&app, &owner, &tenant, 5, "b").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await[0].2,
        "RESOLVED",
        "15 of 20"
    );
    spent(&app, &owner, &tenant, 1, "c").await;
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [
            alert("PERCENT_USED", 80, "ACTIVE", 3),
            alert("DEPLETED", 0, "RESOLVED", 1)
        ]
    );
    let last = events(&app, "credits.threshold_reached")
        .await
        .pop()
        .unwrap();
    assert_eq!(
        (
            &last["grantsUsed"],
            &last["grantsRemaining"],
            &last["available"],
            &last["percentUsed"]
        ),
        (&json!(6), &json!(4), &json!(4), &json!(80))
    );
    assert_sound(&app);
}

#[tokio::test]
async fn concurrent_spends_on_three_replicas_fire_each_alert_exactly_once() {
    let (app, owner, tenant, _) = setup(100, Clock::default()).await;
    let env = app.replica_env(100);
    let replicas = [
        app.start_server(&env).await,
        app.start_server(&env).await,
        app.start_server(&env).await,
    ];
    // 200 spends of 1 against 100 credits, from three processes at once.
    let answers = join_all((0..200).map(|i| {
        let (app, owner, tenant) = (&app, &owner, &tenant);
        let url = replicas[i % 3].url.clone();
        async move {
            let input =
                json!({ "tenantId": tenant, "amount": 1, "idempotencyKey": format!("k{i}") });
            app.gql_at(&url, owner, SPEND, json!({ "input": input }))
                .await
                .expect("answered")
        }
    }))
    .await;
    let ok = answers.iter().filter(|a| a["errors"].is_null()).count();
    let refused = answers
        .iter()
        .filter(|a| error_code(a) == Some("INSUFFICIENT_CREDITS"))
        .count();
    assert_eq!(
        (ok, refused),
        (100, 100),
        "{:?}",
        answers
            .iter()
            .find(|a| !a["errors"].is_null() && error_code(a) != Some("INSUFFICIENT_CREDITS"))
    );
    assert_eq!(
        fired(&app, &owner, &tenant).await,
        [
            alert("PERCENT_USED", 80, "ACTIVE", 1),
            alert("PERCENT_USED", 100, "ACTIVE", 1),
            alert("DEPLETED", 0, "ACTIVE", 1),
            alert("LIMIT_REACHED", 0, "ACTIVE", 1),
        ]
    );
    let reached = events(&app, "credits.threshold_reached").await;
    let thresholds: Vec<&Value> = reached.iter().map(|e| &e["rule"]["threshold"]).collect();
    assert_eq!(thresholds, [&json!(80), &json!(100)]);
    // Each recorded with the spend that crossed it: 80 at exactly 80 used, 100 at 100.
    assert_eq!(
        (&reached[0]["used"], &reached[1]["used"]),
        (&json!(80), &json!(100))
    );
    assert_eq!(events(&app, "credits.depleted").await.len(), 1);
    assert_eq!(events(&app, "credits.limit_reached").await.len(), 1);
    for replica in &replicas {
        let log = replica.log_text();
        assert!(!log.contains("ERROR"), "{log}");
    }
    assert_sound(&app);
}

#[tokio::test]
async fn spends_refunds_and_grants_at_once_on_four_replicas_are_numbered_without_a_gap() {
    let (app, owner, tenant, admin) = setup(40, Clock::default()).await;
    // Spends to refund, made first.
    let mut earlier = Vec::new();
    for i in 0..10 {
        earlier.push(spent(&app, &owner, &tenant, 1, &format!("e{i}")).await);
    }
    let env = app.replica_env(40);
    let replicas = [
        app.start_server(&env).await,
        app.start_server(&env).await,
        app.start_server(&env).await,
    ];
    // Every kind of event-writing transaction of one tenant at once, on four processes:
    // spends (some crossing thresholds, some refused), refunds and grants — each takes the
    // tenant's next numbers, none may deadlock another.
    let spends = (0..60).map(|i| {
        let input = json!({ "tenantId": tenant, "amount": 1, "idempotencyKey": format!("s{i}") });
        (&owner, SPEND, input)
    });
    let refunds = earlier.iter().enumerate().map(|(i, credit)| {
        let input =
            json!({ "tenantId": tenant, "creditId": credit, "idempotencyKey": format!("r{i}") });
        (&owner, REFUND, input)
    });
    let grants = (0..5).map(|i| {
        let input = json!({ "tenantId": tenant, "amount": 2, "idempotencyKey": format!("g{i}") });
        (&admin, GRANT, input)
    });
    let work: Vec<_> = spends.chain(refunds).chain(grants).collect();
    let answers = join_all(
        work.iter()
            .enumerate()
            .map(|(i, (token, document, input))| {
                // The replicas' configuration names no platform admin: grants go to the first server.
                let url = match *document == GRANT {
                    true => app.address.clone(),
                    false => replicas[i % 3].url.clone(),
                };
                let app = &app;
                async move {
                    app.gql_at(&url, token, document, json!({ "input": input }))
                        .await
                        .expect("answered")
                }
            }),
    )
    .await;
    let failed: Vec<&Value> = answers
        .iter()
        .filter(|a| !a["errors"].is_null() && error_code(a) != Some("INSUFFICIENT_CREDITS"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let refused = answers
        .iter()
        .filter(|a| error_code(a) == Some("INSUFFICIENT_CREDITS"))
        .count();
    // 30 left of the allowance fit whatever the order; 10 granted and 10 refunded fit only
    // after they land.
    assert!((10..=30).contains(&refused), "{refused} refused");
    // Every ledger row and alert event numbered 1, 2, 3, … without a gap or a repeat.
    let db = app.db().await;
    let numbers = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT seq FROM credit WHERE seq IS NOT NULL UNION ALL \
             SELECT seq FROM webhook_event WHERE seq IS NOT NULL ORDER BY seq"
                .to_owned(),
        ))
        .await
        .expect("numbers read");
    let numbers: Vec<i64> = numbers
        .iter()
        .map(|row| row.try_get("", "seq").unwrap())
        .collect();
    // 10 first spends, at least 30 more, 10 refunds, 5 grants, and the alert events.
    assert!(numbers.len() > 55, "{numbers:?}");
    assert_eq!(numbers, (1..=numbers.len() as i64).collect::<Vec<_>>());
    for replica in &replicas {
        let log = replica.log_text();
        assert!(!log.contains("ERROR"), "{log}");
    }
    assert_sound(&app);
}

#[tokio::test]
async fn a_bad_default_rule_stops_start_up_naming_the_key() {
    let (app, _, _, _) = setup(10, Clock::default()).await;
    for (rules, key) in [
        (
            "[{ kind = \"PERCENT_USED\", threshold = 0 }]",
            "alerts.default_rules[0]",
        ),
        (
            "[{ kind = \"PERCENT_USED\", threshold = 80 }, { kind = \"SOMETIMES\", threshold = 1 }]",
            "alerts.default_rules[1].kind",
        ),
        (
            "[{ kind = \"REMAINING_BELOW\", threshold = 5 }, { kind = \"REMAINING_BELOW\", threshold = 5 }]",
            "alerts.default_rules[1]",
        ),
    ] {
        let out = app
            .command(&["serve", "--addr", "127.0.0.1:0"])
            .env("TOLLGATE_ALERTS__DEFAULT_RULES", rules)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rules} was accepted");
        assert!(stderr.contains(key), "{rules}: {stderr}");
    }
    // None at all is a choice: no threshold alerts, depleted still sent.
    let none = app
        .start_server(&[("TOLLGATE_ALERTS__DEFAULT_RULES", "[]")])
        .await;
    let (owner, tenant) = app.owner_with_tenant("quiet").await;
    let rules = app
        .gql_at(&none.url, &owner, RULES, json!({ "t": tenant }))
        .await
        .expect("answered");
    assert_eq!(
        rules["data"]["creditAlertRules"]["rules"],
        json!([]),
        "{rules}"
    );
}

#[tokio::test]
async fn api_keys_read_and_set_alert_rules_by_scope_for_their_own_tenant_only() {
    let (app, owner, tenant, _) = setup(10, Clock::default()).await;
    let (other_owner, other) = app.owner_with_tenant("other").await;
    let key = |token: &str, tenant: &str, scopes: &str| {
        let (app, token, tenant) = (&app, token.to_owned(), tenant.to_owned());
        let scopes = scopes.to_owned();
        async move {
            let body = app
                .gql(
                    Some(&token),
                    &format!(
                        "mutation($t: ID) {{ createApiKey(tenantId: $t, name: \"k\", scopes: [{scopes}]) {{ secret }} }}"
                    ),
                    json!({ "t": tenant }),
                )
                .await;
            body["data"]["createApiKey"]["secret"]
                .as_str()
                .unwrap_or_else(|| panic!("{body}"))
                .to_owned()
        }
    };
    let writer = key(&owner, &tenant, "WEBHOOKS_WRITE").await;
    let reader = key(&owner, &tenant, "CREDITS_READ").await;
    let theirs = key(&other_owner, &other, "WEBHOOKS_WRITE, CREDITS_READ").await;
    let rules = json!([{ "kind": "REMAINING_BELOW", "threshold": 3 }]);
    let set = set_rules(&app, &writer, &tenant, rules.clone()).await;
    assert!(set["errors"].is_null(), "{set}");
    let read = app.gql(Some(&reader), RULES, json!({ "t": tenant })).await;
    assert_eq!(
        read["data"]["creditAlertRules"]["rules"][0]["threshold"], 3,
        "{read}"
    );
    assert!(app.gql(Some(&reader), ALERTS, json!({ "t": tenant })).await["errors"].is_null());
    // The wrong scope, and another tenant's key.
    let body = set_rules(&app, &reader, &tenant, rules.clone()).await;
    assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");
    let body = set_rules(&app, &theirs, &tenant, rules).await;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
    let body = app.gql(Some(&theirs), ALERTS, json!({ "t": tenant })).await;
    assert_eq!(error_code(&body), Some("NOT_FOUND"), "{body}");
}
