//! Guarding the SaaS's own actions: custom credit types in the catalogue, `consumeCredits`
//! (catalogue cost or explicit amount, idempotent, concurrent) and `checkCredits`.

use entity::plan_feature::FeatureLimitType;
use futures::future::join_all;
use serde_json::{Value, json};
use tollgate::config::{CreditTypeConfig, PlanFeatureConfig};

use crate::helpers::{TestApp, error_code, plan, spawn_app_with};

const CONSUME: &str = "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { \
    replayed credit { id type amount feature objectId subject metadata createdAt } \
    usage { name used remaining } } }";

const CHECK: &str = "query($t: ID!, $type: String, $amount: Int, $feature: String) { \
    checkCredits(tenantId: $t, creditType: $type, amount: $amount, feature: $feature) { \
    allowed required remaining reason resetsAt usage { used } } }";

/// A server whose plan gives `credits` (MONTHLY `limit`) and `ai-tokens` (MAX 1000), with a
/// custom `report-export` type (3 credits) and `ai-summary` (50 ai-tokens).
async fn app_with_catalogue(limit: i64) -> TestApp {
    spawn_app_with(|c| {
        let mut p = plan("test", FeatureLimitType::Monthly, limit);
        p.features.push(PlanFeatureConfig {
            name: "ai-tokens".into(),
            title: "AI tokens".into(),
            kind: FeatureLimitType::Max,
            value: 1000,
        });
        c.plans = vec![p];
        c.default_plan = "test".into();
        c.credit_types.push(CreditTypeConfig {
            value: "report-export".into(),
            name: "Report export".into(),
            description: "Exporting a report.".into(),
            amount: 3,
            feature: "credits".into(),
            meter: None,
        });
        c.credit_types.push(CreditTypeConfig {
            value: "ai-summary".into(),
            name: "AI summary".into(),
            description: "Summarising a document.".into(),
            amount: 50,
            feature: "ai-tokens".into(),
            meter: None,
        });
    })
    .await
}

async fn consume(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql(Some(token), CONSUME, json!({ "input": input }))
        .await
}

#[tokio::test]
async fn custom_credit_types_are_in_the_catalogue_with_their_feature() {
    let app = app_with_catalogue(10).await;

    let body = app
        .gql(None, "{ creditTypes { value amount feature } }", json!({}))
        .await;

    let types = body["data"]["creditTypes"].as_array().expect("types");
    let find = |v: &str| types.iter().find(|t| t["value"] == v).cloned();
    assert_eq!(
        find("report-export"),
        Some(json!({ "value": "report-export", "amount": 3, "feature": "credits" }))
    );
    assert_eq!(find("ai-summary").expect("ai")["feature"], "ai-tokens");
    assert_eq!(
        find("credit-task-creation").expect("built-in")["feature"],
        "credits"
    );
}

#[tokio::test]
async fn consume_credits_spends_a_custom_type_and_records_what_the_caller_sent() {
    let app = app_with_catalogue(10).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let body = consume(
        &app,
        &token,
        json!({ "tenantId": tenant, "creditType": "report-export", "objectId": "report_42",
                "subject": "cust-7", "idempotencyKey": "k1", "metadata": { "pages": 12 } }),
    )
    .await;

    assert!(body["errors"].is_null(), "{body}");
    let spend = &body["data"]["consumeCredits"];
    assert_eq!(spend["replayed"], false);
    assert_eq!(spend["credit"]["type"], "report-export");
    assert_eq!(spend["credit"]["amount"], 3);
    assert_eq!(spend["credit"]["feature"], "credits");
    assert_eq!(spend["credit"]["objectId"], "report_42");
    assert_eq!(spend["credit"]["subject"], "cust-7");
    assert_eq!(spend["credit"]["metadata"], json!({ "pages": 12 }));
    assert_eq!(
        spend["usage"],
        json!({ "name": "credits", "used": 3, "remaining": 7 })
    );
    // The history shows the same row, as stored.
    let history = app
        .gql(
            Some(&token),
            "query($t: ID!) { creditHistory(tenantId: $t) { nodes { id type amount objectId subject metadata createdAt } } }",
            json!({ "t": tenant }),
        )
        .await;
    let row = &history["data"]["creditHistory"]["nodes"][0];
    for field in [
        "id",
        "type",
        "amount",
        "objectId",
        "subject",
        "metadata",
        "createdAt",
    ] {
        assert_eq!(row[field], spend["credit"][field], "{field}: {history}");
    }
    let verify = app.cli(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test]
async fn an_explicit_amount_spends_the_feature_it_names() {
    let app = app_with_catalogue(10).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let tokens = consume(
        &app,
        &token,
        json!({ "tenantId": tenant, "amount": 400, "feature": "ai-tokens", "idempotencyKey": "a" }),
    )
    .await;
    let summary = consume(
        &app,
        &token,
        json!({ "tenantId": tenant, "creditType": "ai-summary", "idempotencyKey": "b" }),
    )
    .await;
    let too_much = consume(
        &app,
        &token,
        json!({ "tenantId": tenant, "amount": 600, "feature": "ai-tokens", "idempotencyKey": "c" }),
    )
    .await;
    let default_feature = consume(
        &app,
        &token,
        json!({ "tenantId": tenant, "amount": 4, "idempotencyKey": "d" }),
    )
    .await;

    assert_eq!(
        tokens["data"]["consumeCredits"]["credit"]["type"],
        "explicit"
    );
    assert_eq!(
        tokens["data"]["consumeCredits"]["usage"],
        json!({ "name": "ai-tokens", "used": 400, "remaining": 600 })
    );
    assert_eq!(
        summary["data"]["consumeCredits"]["usage"]["used"], 450,
        "{summary}"
    );
    assert_eq!(
        error_code(&too_much),
        Some("INSUFFICIENT_CREDITS"),
        "{too_much}"
    );
    let ext = &too_much["errors"][0]["extensions"];
    assert_eq!(ext["feature"], "ai-tokens");
    assert_eq!(ext["required"], 600);
    assert_eq!(ext["used"], 450);
    assert_eq!(ext["limit"], 1000);
    assert!(ext["resetsAt"].is_null(), "MAX never resets: {ext}");
    assert_eq!(
        default_feature["data"]["consumeCredits"]["usage"]["name"],
        "credits"
    );
}

#[tokio::test]
async fn a_replay_returns_the_first_spend_and_another_input_under_the_key_is_refused() {
    let app = app_with_catalogue(10).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let input = json!({ "tenantId": tenant, "creditType": "report-export", "objectId": "r1",
                        "idempotencyKey": "export-r1" });

    let first = consume(&app, &token, input.clone()).await;
    let again = consume(&app, &token, input.clone()).await;
    let mut other = input.clone();
    other["objectId"] = json!("r2");
    let reused = consume(&app, &token, other).await;

    assert_eq!(first["data"]["consumeCredits"]["replayed"], false);
    assert_eq!(again["data"]["consumeCredits"]["replayed"], true, "{again}");
    assert_eq!(
        again["data"]["consumeCredits"]["credit"],
        first["data"]["consumeCredits"]["credit"]
    );
    assert_eq!(again["data"]["consumeCredits"]["usage"]["used"], 3);
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 1);
}

#[tokio::test]
async fn concurrent_spends_take_exactly_what_the_plan_allows() {
    let app = app_with_catalogue(100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let results = join_all((0..220).map(|i| {
        let (app, token, tenant) = (&app, &token, &tenant);
        async move {
            consume(
                app,
                token,
                json!({ "tenantId": tenant, "amount": 1, "idempotencyKey": format!("k{i}") }),
            )
            .await
        }
    }))
    .await;

    let ok = results.iter().filter(|b| b["errors"].is_null()).count();
    let refused = results
        .iter()
        .filter(|b| error_code(b) == Some("INSUFFICIENT_CREDITS"))
        .count();
    assert_eq!((ok, refused), (100, 120));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 100);
    let verify = app.cli(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test]
async fn bad_input_and_strangers_are_refused_with_codes_and_nothing_written() {
    let app = app_with_catalogue(10).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let (stranger, _) = app.sign_up("eve@example.com").await;
    let base = json!({ "tenantId": tenant, "creditType": "report-export", "idempotencyKey": "k" });
    let with = |key: &str, value: Value| {
        let mut input = base.clone();
        input[key] = value;
        input
    };
    let cases = [
        ("unknown type", with("creditType", json!("credit-coffee"))),
        (
            "a type that pays for tasks",
            with("creditType", json!("credit-task-creation")),
        ),
        ("both costs", with("amount", json!(3))),
        ("no cost", {
            let mut i = base.clone();
            i.as_object_mut().unwrap().remove("creditType");
            i
        }),
        ("zero amount", {
            let mut i = with("amount", json!(0));
            i.as_object_mut().unwrap().remove("creditType");
            i
        }),
        (
            "feature of another type",
            with("feature", json!("ai-tokens")),
        ),
        ("empty key", with("idempotencyKey", json!(""))),
        ("metadata not an object", with("metadata", json!([1, 2]))),
        (
            "metadata too big",
            with("metadata", json!({ "x": "y".repeat(5000) })),
        ),
        ("long object id", with("objectId", json!("o".repeat(256)))),
        (
            "someone else's user id",
            with("userId", json!(uuid::Uuid::now_v7().to_string())),
        ),
    ];
    for (case, input) in cases {
        let body = consume(&app, &token, input).await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{case}: {body}");
    }
    let foreign = consume(&app, &stranger, base.clone()).await;
    let anonymous = app.gql(None, CONSUME, json!({ "input": base })).await;

    assert_eq!(error_code(&foreign), Some("FORBIDDEN"), "{foreign}");
    assert_eq!(error_code(&anonymous), Some("UNAUTHENTICATED"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);
}

#[tokio::test]
async fn check_credits_agrees_with_what_consume_credits_then_does() {
    let app = app_with_catalogue(10).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let check = |kind: Value, amount: Value, feature: Value| {
        let (app, token, tenant) = (&app, &token, &tenant);
        async move {
            let body = app
                .gql(
                    Some(token),
                    CHECK,
                    json!({ "t": tenant, "type": kind, "amount": amount, "feature": feature }),
                )
                .await;
            assert!(body["errors"].is_null(), "{body}");
            body["data"]["checkCredits"].clone()
        }
    };

    let fits = check(json!("report-export"), Value::Null, Value::Null).await;
    let too_much = check(Value::Null, json!(11), Value::Null).await;
    let missing = check(Value::Null, json!(1), json!("seats")).await;
    let built_in = check(json!("credit-task-creation"), Value::Null, Value::Null).await;
    assert_eq!(
        built_in["required"], 1,
        "what createTask would cost: {built_in}"
    );
    assert_eq!(fits["allowed"], true);
    assert_eq!(fits["required"], 3);
    assert_eq!(fits["remaining"], 10);
    assert!(fits["reason"].is_null());
    assert!(fits["resetsAt"].is_string(), "MONTHLY resets: {fits}");
    assert_eq!(too_much["allowed"], false);
    assert_eq!(too_much["reason"], "INSUFFICIENT_CREDITS");
    assert_eq!(missing["allowed"], false);
    assert_eq!(missing["reason"], "FEATURE_NOT_INCLUDED");
    assert!(missing["usage"].is_null());
    // Nothing was written by checking.
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);

    // Spend down to 1 left: the check and the spend agree on both sides of the line.
    for (i, expected) in [(0, true), (1, true), (2, true), (3, false)] {
        let checked = check(json!("report-export"), Value::Null, Value::Null).await;
        let spent = consume(
            &app,
            &token,
            json!({ "tenantId": tenant, "creditType": "report-export", "idempotencyKey": format!("s{i}") }),
        )
        .await;
        assert_eq!(checked["allowed"], expected, "check {i}: {checked}");
        assert_eq!(spent["errors"].is_null(), expected, "spend {i}: {spent}");
    }
    let last = check(json!("report-export"), Value::Null, Value::Null).await;
    assert_eq!(last["remaining"], 1);
    assert_eq!(last["reason"], "INSUFFICIENT_CREDITS");
}

#[tokio::test]
async fn a_bad_credit_catalogue_stops_start_up_naming_the_key() {
    let app = app_with_catalogue(10).await;
    let dir = tempfile::tempdir().expect("dir");
    let entry = |value: &str, amount: i64, feature: &str| {
        format!(
            "[[credit_types]]\nvalue = \"{value}\"\nname = \"N\"\ndescription = \"d\"\namount = {amount}\nfeature = \"{feature}\"\n"
        )
    };
    let cases = [
        (
            format!(
                "{}{}",
                entry("export", 1, "credits"),
                entry("export", 2, "credits")
            ),
            "credit_types[1].value",
        ),
        (entry("export", 0, "credits"), "credit_types[0].amount"),
        (entry("export", 1, "seats"), "credit_types[0].feature"),
        (entry("Bad Value", 1, "credits"), "credit_types[0].value"),
        (entry("explicit", 1, "credits"), "credit_types[0].value"),
    ];
    for (i, (toml, key)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, &toml).expect("written");
        let out = app.cli(&["migrate", "--config", path.to_str().expect("path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(stderr.contains(key), "{toml}: {stderr}");
    }
}
