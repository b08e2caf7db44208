//! Round trips to the database per request, as the server counts them
//! (`tollgate_db_round_trips_total`): a signed-in read makes one, authentication included; a
//! lone guarded mutation one statement (and, on PostgreSQL, its BEGIN and COMMIT); under load
//! the writer shares those between requests.

use serde_json::{Value, json};

use tollgate::credits::FeatureLimitType;

use crate::{
    helpers::{TestApp, spawn_app, spawn_app_with_plan},
    operability::{metrics_page, sample},
};

/// The round trips the server made while answering `query`.
async fn trips(
    app: &TestApp,
    token: &str,
    query: &str,
    variables: impl Fn(usize) -> Value,
) -> (u64, Value) {
    // The process's background work (the webhook sender's look for work, a change notified
    // after a commit) counts in the same total now and then: the fewest of three runs is the
    // request's own.
    let mut fewest = None;
    let mut first = Value::Null;
    for run in 0..3 {
        // The last request's change notification (PostgreSQL, 10 ms after its commit) is out.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let before = app.database.round_trips();
        let body = app.gql(Some(token), query, variables(run)).await;
        let counted = app.database.round_trips() - before;
        fewest = Some(fewest.map_or(counted, |f: u64| f.min(counted)));
        if run == 0 {
            first = body;
        }
    }
    (fewest.unwrap_or_default(), first)
}

#[tokio::test]
async fn a_signed_in_read_makes_one_round_trip_authentication_included() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "a task").await;
    let reads = [
        (
            "planFeatureUsage",
            "query($t: ID!) { planFeatureUsage(tenantId: $t) { used value enabled } }",
            1,
        ),
        (
            "creditHistory",
            "query($t: ID!) { creditHistory(tenantId: $t, first: 20) { nodes { id amount type } } }",
            1,
        ),
        (
            "tenant",
            "query($t: ID!) { tenant(id: $t) { id name slug } }",
            1,
        ),
        ("me", "{ me { id email } }", 1),
        ("creditTypes", "{ creditTypes { value amount } }", 0),
    ];
    for (name, query, expected) in reads {
        let (counted, body) = trips(&app, &token, query, |_| json!({ "t": tenant })).await;
        assert!(body["errors"].is_null(), "{name}: {body}");
        assert_eq!(counted, expected, "{name}: {body}");
    }
    // What /metrics reports is the same count.
    let metrics = metrics_page(&app).await;
    let reported = sample(&metrics, "tollgate_db_round_trips_total")
        .expect("tollgate_db_round_trips_total") as u64;
    assert!(reported >= app.database.round_trips() - 2, "{reported}");
}

#[tokio::test]
async fn a_lone_guarded_create_task_is_one_statement_with_its_begin_and_commit() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    // The first task reads the project (its tenant is known from then on).
    app.create_task(&token, &project, "first").await;
    let (counted, body) = trips(
        &app,
        &token,
        "mutation($p: ID!) { createTask(projectId: $p, input: { title: \"t\" }) { id } }",
        |_| json!({ "p": project }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    // PostgreSQL: BEGIN, the guard's one statement, COMMIT. SQLite: one hand-off of the batch
    // to the writer's thread, where its statements are calls, not trips.
    let expected = if app.is_postgres() { 3 } else { 1 };
    assert_eq!(counted, expected, "{body}");
}

#[tokio::test]
async fn a_lone_keyed_consume_credits_is_one_statement_with_its_begin_and_commit() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let spend =
        |key: &str| json!({ "i": { "tenantId": tenant, "amount": 1, "idempotencyKey": key } });
    const CONSUME: &str =
        "mutation($i: ConsumeCreditsInput!) { consumeCredits(input: $i) { replayed } }";

    // As in the test above: a first request, so that start-up's own work is done.
    app.gql(Some(&token), CONSUME, spend("warm-up")).await;
    let (counted, body) = trips(&app, &token, CONSUME, |run| spend(&format!("new-{run}"))).await;
    assert_eq!(body["data"]["consumeCredits"]["replayed"], false, "{body}");
    // PostgreSQL: BEGIN, the guard's one statement (the key claimed in it), COMMIT. SQLite:
    // one hand-off to the writer.
    let expected = if app.is_postgres() { 3 } else { 1 };
    assert_eq!(counted, expected, "{body}");
    // A replay takes the long way (the claim found), and is still answered.
    let (_, again) = trips(&app, &token, CONSUME, |_| spend("new-0")).await;
    assert_eq!(again["data"]["consumeCredits"]["replayed"], true, "{again}");
}

#[tokio::test]
async fn under_load_the_writer_shares_begin_and_commit_between_requests() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "first").await;
    let requests = 64u64;
    let titles: Vec<String> = (0..requests).map(|i| format!("task {i}")).collect();
    let before = app.database.round_trips();
    let answers = futures::future::join_all(
        titles
            .iter()
            .map(|title| app.create_task(&token, &project, title)),
    )
    .await;
    let counted = app.database.round_trips() - before;
    for body in &answers {
        assert!(body["errors"].is_null(), "{body}");
    }
    let alone = if app.is_postgres() { 3 } else { 1 };
    assert!(
        counted < alone * requests,
        "{counted} round trips for {requests} guarded requests: no batch was shared"
    );
}
