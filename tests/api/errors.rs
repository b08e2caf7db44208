//! Bad input of every kind gets a coded error, never a 500, and a GET never runs a mutation.

use serde_json::json;

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn a_body_that_is_not_json_is_a_parse_error_not_a_500() {
    let app = spawn_app().await;
    for body in ["{not json", "", "[]", "{\"query\": 5}", "\u{0}\u{1}binary"] {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let json: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(status, 400, "{body:?}");
        assert_eq!(
            error_code(&json),
            Some("GRAPHQL_PARSE_FAILED"),
            "{body:?}: {json}"
        );
    }
}

#[tokio::test]
async fn documents_that_do_not_parse_or_validate_carry_codes() {
    let app = spawn_app().await;
    let cases = [
        ("{ creditTypes { value ", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ creditTypes }", "GRAPHQL_VALIDATION_FAILED"),
        ("query { tenant { id } }", "GRAPHQL_VALIDATION_FAILED"),
        // A required variable left out is the client's input, as Apollo classes it.
        ("query($t: ID!) { tenant(id: $t) { id } }", "BAD_USER_INPUT"),
    ];
    for (query, code) in cases {
        let body = app.gql(None, query, json!({})).await;
        assert_eq!(error_code(&body), Some(code), "{query}: {body}");
    }
}

#[tokio::test]
async fn every_error_has_a_code() {
    let app = spawn_app().await;
    let (token, _) = app.owner_with_tenant("acme").await;
    let queries = [
        (
            "query($n: Int) { creditHistory(tenantId: \"x\", first: $n) { nodes { id } } }",
            json!({ "n": "ten" }),
        ),
        (
            "{ creditHistory(tenantId: \"x\", first: 99999999999) { nodes { id } } }",
            json!({}),
        ),
        (
            "mutation { createTask(projectId: 5, input: {}) { id } }",
            json!({}),
        ),
    ];
    for (query, variables) in queries {
        let body = app.gql(Some(&token), query, variables).await;
        let errors = body["errors"].as_array().expect("errors");
        assert!(!errors.is_empty());
        for e in errors {
            assert!(e["extensions"]["code"].is_string(), "{query}: {e}");
        }
    }
}

#[tokio::test]
async fn invalid_ids_are_bad_user_input() {
    let app = spawn_app().await;
    let (token, _) = app.owner_with_tenant("acme").await;
    let cases = [
        "{ tenant(id: \"42\") { id } }",
        "{ planFeatureUsage(tenantId: \"../etc\") { used } }",
        "{ creditHistory(tenantId: \"x\") { nodes { id } } }",
        "mutation { createProject(tenantId: \"nope\", input: {name: \"p\"}) { id } }",
        "mutation { createTask(projectId: \"nope\", input: {title: \"t\"}) { id } }",
    ];
    for query in cases {
        let body = app.gql(Some(&token), query, json!({})).await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{query}: {body}");
    }
}

#[tokio::test]
async fn empty_or_overlong_names_are_bad_user_input_and_cost_nothing() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    let long = "x".repeat(201);

    for name in ["", "   ", long.as_str()] {
        let p = app.create_project(&token, &tenant, name).await;
        let t = app.create_task(&token, &project, name).await;
        assert_eq!(error_code(&p), Some("BAD_USER_INPUT"), "project {name:?}");
        assert_eq!(error_code(&t), Some("BAD_USER_INPUT"), "task {name:?}");
    }
    let description = app
        .gql(
            Some(&token),
            "mutation($t: ID!, $d: String) { createProject(tenantId: $t, input: {name: \"p\", description: $d}) { id } }",
            json!({ "t": tenant, "d": "d".repeat(2001) }),
        )
        .await;
    let key = app
        .gql(
            Some(&token),
            "mutation($t: ID!, $k: String) { createProject(tenantId: $t, input: {name: \"p\"}, idempotencyKey: $k) { id } }",
            json!({ "t": tenant, "k": "k".repeat(256) }),
        )
        .await;

    assert_eq!(error_code(&description), Some("BAD_USER_INPUT"));
    assert_eq!(error_code(&key), Some("BAD_USER_INPUT"));
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
}

#[tokio::test]
async fn a_mutation_sent_by_get_never_runs() {
    let app = spawn_app().await;
    let (token, _) = app.sign_up("ann@example.com").await;

    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .bearer_auth(&token)
        .query(&[(
            "query",
            "mutation { createTenant(input: {name: \"Via GET\", slug: \"via-get\"}) { id } }",
        )])
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status().as_u16(), 405);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM tenant").await, 0);
}

#[tokio::test]
async fn a_query_sent_by_get_runs_and_a_bare_get_serves_graphiql() {
    let app = spawn_app().await;

    let query = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", "{ creditTypes { value amount } }")])
        .send()
        .await
        .expect("sent");
    let page = app
        .client
        .get(format!("{}/graphql", app.address))
        .send()
        .await
        .expect("sent");

    let body: serde_json::Value = query.json().await.expect("json");
    assert_eq!(
        body["data"]["creditTypes"][1],
        json!({ "value": "credit-task-creation", "amount": 1 })
    );
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.expect("html").contains("graphiql"));
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;

    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("sent");
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("sent");

    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(ready.status().as_u16(), 200);
    let ready: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(ready["database"], "ok");
}

#[tokio::test]
async fn internal_errors_reach_the_client_opaque_and_write_nothing() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    // Break the database under the server: the task insert can only fail.
    sea_orm::ConnectionTrait::execute_unprepared(&app.db().await, "DROP TABLE task")
        .await
        .expect("table dropped");

    let body = app.create_task(&token, &project, "doomed").await;

    assert_eq!(error_code(&body), Some("INTERNAL_SERVER_ERROR"), "{body}");
    let error = format!(
        "{} {}",
        body["errors"][0]["message"], body["errors"][0]["extensions"]
    )
    .to_lowercase();
    assert_eq!(body["errors"][0]["message"], "internal server error");
    for leak in ["task", "sql", "table", "insert", "relation"] {
        assert!(!error.contains(leak), "{leak} leaked: {error}");
    }
    // The guard's spend rolled back with the failed insert.
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
}
