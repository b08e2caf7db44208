//! `creditHistory`: keyset pages, filters, and users loaded in one batch.

use serde_json::{Value, json};
use tollgate::credits::FeatureLimitType;

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with_plan};

const PAGE: &str = "query($t: ID!, $first: Int, $after: String, $filter: CreditHistoryFilter) {
  creditHistory(tenantId: $t, first: $first, after: $after, filter: $filter) {
    edges { cursor node { id type amount objectId createdAt } }
    pageInfo { hasNextPage endCursor }
  }
}";

async fn page(
    app: &TestApp,
    token: &str,
    tenant: &str,
    first: i64,
    after: Option<&str>,
    filter: serde_json::Value,
) -> serde_json::Value {
    let body = app
        .gql(
            Some(token),
            PAGE,
            json!({ "t": tenant, "first": first, "after": after, "filter": filter }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["creditHistory"].clone()
}

#[tokio::test]
async fn credit_history_pages_newest_first_without_gaps_or_repeats() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    let mut created = vec![project.clone()];
    for i in 0..6 {
        let body = app.create_task(&token, &project, &format!("t{i}")).await;
        created.push(
            body["data"]["createTask"]["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = page(&app, &token, &tenant, 3, after.as_deref(), json!(null)).await;
        pages += 1;
        for edge in page["edges"].as_array().expect("edges") {
            seen.push(
                edge["node"]["objectId"]
                    .as_str()
                    .expect("objectId")
                    .to_owned(),
            );
        }
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = Some(
            page["pageInfo"]["endCursor"]
                .as_str()
                .expect("cursor")
                .to_owned(),
        );
    }

    created.reverse();
    assert_eq!(seen, created, "every row once, newest first");
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn credit_history_filters_by_type_user_and_time() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "a").await;
    app.create_task(&token, &project, "b").await;
    let all = page(&app, &token, &tenant, 10, None, json!(null)).await;
    let newest = all["edges"][0]["node"]["createdAt"]
        .as_str()
        .expect("time")
        .to_owned();
    let me = app.gql(Some(&token), "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();

    let tasks = page(
        &app,
        &token,
        &tenant,
        10,
        None,
        json!({ "type": "credit-task-creation" }),
    )
    .await;
    let mine = page(&app, &token, &tenant, 10, None, json!({ "userId": me })).await;
    let someone_else = page(
        &app,
        &token,
        &tenant,
        10,
        None,
        json!({ "userId": uuid::Uuid::now_v7().to_string() }),
    )
    .await;
    let before_newest = page(&app, &token, &tenant, 10, None, json!({ "to": newest })).await;
    let from_newest = page(&app, &token, &tenant, 10, None, json!({ "from": newest })).await;

    assert_eq!(all["edges"].as_array().map(Vec::len), Some(3));
    assert_eq!(tasks["edges"].as_array().map(Vec::len), Some(2));
    assert!(
        tasks["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .all(|e| e["node"]["type"] == "credit-task-creation")
    );
    assert_eq!(mine["edges"].as_array().map(Vec::len), Some(3));
    assert_eq!(someone_else["edges"].as_array().map(Vec::len), Some(0));
    assert_eq!(before_newest["edges"].as_array().map(Vec::len), Some(2));
    assert_eq!(from_newest["edges"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn credit_history_rejects_foreign_cursors_and_oversized_pages() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    for (first, after) in [(20, Some("not-a-cursor")), (101, None), (-1, None)] {
        let body = app
            .gql(
                Some(&token),
                PAGE,
                json!({ "t": tenant, "first": first, "after": after }),
            )
            .await;
        assert_eq!(
            error_code(&body),
            Some("BAD_USER_INPUT"),
            "first {first}, after {after:?}: {body}"
        );
    }
}

#[tokio::test]
async fn credit_users_are_loaded_in_one_query_for_the_whole_page() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&owner, &tenant).await;
    // Four more members, each spending.
    for i in 0..4 {
        let (token, user) = app.sign_up(&format!("member{i}@example.com")).await;
        app.add_member(&tenant, &user, "MEMBER").await;
        for _ in 0..2 {
            let body = app.create_task(&token, &project, "mine").await;
            assert!(body["errors"].is_null(), "{body}");
        }
    }
    let without_users =
        "query($t: ID!) { creditHistory(tenantId: $t, first: 50) { nodes { id } } }";
    let with_users = "query($t: ID!) { creditHistory(tenantId: $t, first: 50) { nodes { id user { id email } } } }";

    // The fewest statements of three tries each: the server's background work (the webhook
    // sender's round) may count one more now and then, never fewer.
    let (mut plain, mut loaded, mut body) = (u64::MAX, u64::MAX, Value::Null);
    for _ in 0..3 {
        let before = app.database.statements();
        app.gql(Some(&owner), without_users, json!({ "t": tenant }))
            .await;
        plain = plain.min(app.database.statements() - before);
        let before = app.database.statements();
        body = app
            .gql(Some(&owner), with_users, json!({ "t": tenant }))
            .await;
        loaded = loaded.min(app.database.statements() - before);
    }

    let emails: std::collections::BTreeSet<_> = body["data"]["creditHistory"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["user"]["email"].as_str().expect("email").to_owned())
        .collect();
    assert_eq!(emails.len(), 5, "9 rows by 5 users: {body}");
    assert_eq!(loaded, plain + 1, "one extra statement loads all 5 users");
}
