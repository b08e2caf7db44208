//! Idempotency keys: a replay returns the first result and charges nothing.

use futures::future::join_all;
use serde_json::json;
use tollgate::credits::FeatureLimitType;

use crate::helpers::{error_code, plan, spawn_app, spawn_app_with, spawn_app_with_plan};

const CREATE_PROJECT: &str = "mutation($t: ID!, $name: String!, $k: String) {
  createProject(tenantId: $t, input: {name: $name}, idempotencyKey: $k) { id name }
}";
const CREATE_TASK: &str = "mutation($p: ID!, $k: String) {
  createTask(projectId: $p, input: {title: \"t\"}, idempotencyKey: $k) { id }
}";

#[tokio::test]
async fn a_replayed_key_returns_the_original_project_and_charges_nothing() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let vars = json!({ "t": tenant, "name": "Website", "k": "order-1" });

    let first = app.gql(Some(&token), CREATE_PROJECT, vars.clone()).await;
    let second = app.gql(Some(&token), CREATE_PROJECT, vars).await;

    assert!(first["errors"].is_null(), "{first}");
    assert_eq!(second["data"], first["data"]);
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM project").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 1);
}

#[tokio::test]
async fn the_same_key_with_other_input_is_refused_and_charges_nothing() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app
        .gql(
            Some(&token),
            CREATE_PROJECT,
            json!({ "t": tenant, "name": "A", "k": "k1" }),
        )
        .await["data"]["createProject"]["id"]
        .clone();

    let other_name = app
        .gql(
            Some(&token),
            CREATE_PROJECT,
            json!({ "t": tenant, "name": "B", "k": "k1" }),
        )
        .await;
    let other_operation = app
        .gql(
            Some(&token),
            CREATE_TASK,
            json!({ "p": project, "k": "k1" }),
        )
        .await;

    assert_eq!(
        error_code(&other_name),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{other_name}"
    );
    assert_eq!(error_code(&other_operation), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
}

#[tokio::test]
async fn keys_belong_to_one_tenant() {
    let app = spawn_app().await;
    let (ann, ann_tenant) = app.owner_with_tenant("ann").await;
    let (bob, bob_tenant) = app.owner_with_tenant("bob").await;

    let a = app
        .gql(
            Some(&ann),
            CREATE_PROJECT,
            json!({ "t": ann_tenant, "name": "P", "k": "same" }),
        )
        .await;
    let b = app
        .gql(
            Some(&bob),
            CREATE_PROJECT,
            json!({ "t": bob_tenant, "name": "P", "k": "same" }),
        )
        .await;

    assert!(a["errors"].is_null() && b["errors"].is_null(), "{a} {b}");
    assert_ne!(
        a["data"]["createProject"]["id"],
        b["data"]["createProject"]["id"]
    );
    assert_eq!(app.usage(&bob, &bob_tenant).await["used"], 2);
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_make_one_task_and_one_charge() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;

    let answers = join_all((0..20).map(|_| {
        let (app, token, project) = (&app, &token, &project);
        async move {
            app.gql(
                Some(token),
                CREATE_TASK,
                json!({ "p": project, "k": "burst" }),
            )
            .await
        }
    }))
    .await;

    let first = &answers[0];
    assert!(first["errors"].is_null(), "{first}");
    assert!(
        answers.iter().all(|a| a == first),
        "every caller gets the same answer"
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM task").await, 1);
    assert_eq!(app.usage(&token, &tenant).await["used"], 3);
}

#[tokio::test]
async fn the_idempotency_key_header_works_like_the_argument() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let send = || {
        app.client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&token)
            .header("Idempotency-Key", "header-key-1")
            .json(&json!({ "query": CREATE_PROJECT, "variables": { "t": tenant, "name": "H" } }))
            .send()
    };

    let first: serde_json::Value = send().await.expect("sent").json().await.expect("json");
    let second: serde_json::Value = send().await.expect("sent").json().await.expect("json");

    assert!(first["errors"].is_null(), "{first}");
    assert_eq!(first, second);
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
}

#[tokio::test]
async fn a_refused_request_does_not_use_up_its_key() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 3).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    app.project_id(&token, &tenant).await;

    let vars = json!({ "t": tenant, "name": "Too much", "k": "k" });
    let refused = app.gql(Some(&token), CREATE_PROJECT, vars.clone()).await;
    let again = app.gql(Some(&token), CREATE_PROJECT, vars).await;

    assert_eq!(error_code(&refused), Some("INSUFFICIENT_CREDITS"));
    assert_eq!(error_code(&again), Some("INSUFFICIENT_CREDITS"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM idempotency_key").await, 0);
}

#[tokio::test]
async fn keys_are_forgotten_after_the_retention_and_purged() {
    let app = spawn_app_with(|c| {
        c.plans = vec![plan("test", FeatureLimitType::Unlimited, 0)];
        c.default_plan = "test".into();
        c.idempotency.retention_seconds = 1;
        c.idempotency.purge_interval_seconds = 1;
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let vars = json!({ "t": tenant, "name": "P", "k": "short-lived" });
    let first = app.gql(Some(&token), CREATE_PROJECT, vars.clone()).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM idempotency_key").await, 1);

    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let purged = app.scalar("SELECT COUNT(*) FROM idempotency_key").await;
    let later = app.gql(Some(&token), CREATE_PROJECT, vars).await;

    assert_eq!(purged, 0, "the purger deleted the expired key");
    assert!(later["errors"].is_null(), "{later}");
    assert_ne!(
        later["data"]["createProject"]["id"],
        first["data"]["createProject"]["id"]
    );
    assert_eq!(app.usage(&token, &tenant).await["used"], 4);
}
