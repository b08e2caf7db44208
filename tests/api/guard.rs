//! The credits guard through the guarded mutations: costs, limits, periods, atomicity and
//! concurrency.

use chrono::{Datelike, Months, SubsecRound, TimeZone, Utc};
use futures::future::join_all;
use sea_orm::{ConnectionTrait, Statement, Value};
use serde_json::json;
use tollgate::credits::FeatureLimitType;

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with_plan};

/// Ledger sum == counter == number of resources × cost: invariant 3, read from the database.
async fn assert_books_balance(app: &TestApp) {
    let ledger = app
        .scalar("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM credit")
        .await;
    let counters = app
        .scalar("SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM credit_usage")
        .await;
    let resources = app.scalar("SELECT COUNT(*) FROM project").await * 2
        + app.scalar("SELECT COUNT(*) FROM task").await;
    let project_rows = app
        .scalar("SELECT COUNT(*) FROM credit WHERE type = 'credit-project-creation'")
        .await;
    let task_rows = app
        .scalar("SELECT COUNT(*) FROM credit WHERE type = 'credit-task-creation'")
        .await;
    let rows = app.scalar("SELECT COUNT(*) FROM credit").await;
    let distinct_objects = app
        .scalar("SELECT COUNT(DISTINCT object_id) FROM credit")
        .await;
    assert_eq!(ledger, counters, "ledger sum == credit_usage.used");
    assert_eq!(ledger, resources, "every resource paid exactly once");
    assert_eq!(
        project_rows,
        app.scalar("SELECT COUNT(*) FROM project").await
    );
    assert_eq!(task_rows, app.scalar("SELECT COUNT(*) FROM task").await);
    assert_eq!(distinct_objects, rows, "one ledger row per resource");
}

#[tokio::test]
async fn create_project_spends_two_credits_and_records_one_ledger_row() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let body = app.create_project(&token, &tenant, "  Website  ").await;
    let history = app
        .gql(
            Some(&token),
            "query($t: ID!) { creditHistory(tenantId: $t) { nodes { type amount objectId user { email } creditType { value amount } } } }",
            json!({ "t": tenant }),
        )
        .await;

    let project = &body["data"]["createProject"];
    assert_eq!(project["name"], "Website");
    assert_eq!(project["tenantId"], tenant.as_str());
    assert!(project["description"].is_null());
    assert_eq!(
        history["data"]["creditHistory"]["nodes"],
        json!([{
            "type": "credit-project-creation", "amount": 2, "objectId": project["id"],
            "user": { "email": "acme@example.com" },
            "creditType": { "value": "credit-project-creation", "amount": 2 }
        }])
    );
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn create_task_spends_one_credit_of_the_projects_tenant() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;

    let body = app.create_task(&token, &project, "Write tests").await;

    let task = &body["data"]["createTask"];
    assert_eq!(task["title"], "Write tests");
    assert_eq!(task["projectId"], project.as_str());
    assert_eq!(app.usage(&token, &tenant).await["used"], 3);
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn a_two_credit_action_with_one_credit_left_is_refused_and_writes_nothing() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 3).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    app.project_id(&token, &tenant).await;

    let body = app.create_project(&token, &tenant, "Second").await;

    assert_eq!(error_code(&body), Some("INSUFFICIENT_CREDITS"), "{body}");
    assert!(body["data"].is_null());
    let ext = &body["errors"][0]["extensions"];
    let now = Utc::now();
    let next_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .and_then(|d| d.checked_add_months(Months::new(1)))
        .expect("date");
    assert_eq!(ext["feature"], "credits");
    assert_eq!(ext["creditType"], "credit-project-creation");
    assert_eq!(ext["required"], 2);
    assert_eq!(ext["used"], 2);
    assert_eq!(ext["limit"], 3);
    assert_eq!(ext["remaining"], 1);
    assert_eq!(ext["resetsAt"], next_month.to_rfc3339());
    assert_eq!(app.scalar("SELECT COUNT(*) FROM project").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 1);
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(
        (
            usage["used"].clone(),
            usage["remaining"].clone(),
            usage["enabled"].clone()
        ),
        (json!(2), json!(1), json!(true))
    );
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn the_limit_can_be_reached_exactly_and_not_passed() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    for i in 0..8 {
        let body = app.create_task(&token, &project, &format!("t{i}")).await;
        assert!(body["errors"].is_null(), "task {i}: {body}");
    }

    let over = app.create_task(&token, &project, "one too many").await;
    let usage = app.usage(&token, &tenant).await;

    assert_eq!(error_code(&over), Some("INSUFFICIENT_CREDITS"));
    assert_eq!(usage["used"], 10);
    assert_eq!(usage["remaining"], 0);
    assert_eq!(usage["enabled"], false);
    assert_eq!(
        usage["message"],
        "You've reached the limit this month (10/10)."
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM task").await, 8);
    assert_books_balance(&app).await;
}

/// Rows as an earlier month's spending would have left them.
async fn back_date_usage(app: &TestApp, tenant: &str, used: i64) {
    let db = app.db().await;
    let backend = db.get_database_backend();
    let tenant = uuid::Uuid::parse_str(tenant).expect("uuid");
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("date");
    let last_month = this_month.checked_sub_months(Months::new(1)).expect("date");
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DatabaseBackend::Postgres => "INSERT INTO credit_usage (tenant_id, feature, period_start, used) VALUES ($1, 'credits', $2, $3)",
            _ => "INSERT INTO credit_usage (tenant_id, feature, period_start, used) VALUES (?, 'credits', ?, ?)",
        },
        [Value::from(tenant), Value::from(last_month), Value::from(used)],
    ))
    .await
    .expect("back-dated counter");
}

#[tokio::test]
async fn usage_of_last_month_does_not_count_this_month() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    back_date_usage(&app, &tenant, 10).await;

    let before = app.usage(&token, &tenant).await;
    let body = app.create_project(&token, &tenant, "New month").await;

    assert_eq!(before["used"], 0);
    assert_eq!(before["remaining"], 10);
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(app.usage(&token, &tenant).await["used"], 2);
}

#[tokio::test]
async fn a_known_subscription_period_replaces_the_calendar_month() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    // Stripe periods are whole seconds.
    let start = (Utc::now() - chrono::Duration::days(3)).trunc_subsecs(0);
    let end = start + chrono::Duration::days(30);
    let db = app.db().await;
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => {
            "UPDATE tenant_subscription SET current_period_start = $1, current_period_end = $2"
        }
        _ => "UPDATE tenant_subscription SET current_period_start = ?, current_period_end = ?",
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [Value::from(start), Value::from(end)],
    ))
    .await
    .expect("period set");

    app.project_id(&token, &tenant).await;
    let usage = app.usage(&token, &tenant).await;

    let parse = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("time")).expect("rfc3339")
    };
    assert_eq!(
        parse(&usage["period"]["start"]),
        start.with_timezone(&chrono::FixedOffset::east_opt(0).expect("utc"))
    );
    assert_eq!(
        parse(&usage["period"]["end"]),
        end.with_timezone(&chrono::FixedOffset::east_opt(0).expect("utc"))
    );
    assert_eq!(usage["used"], 2);
}

#[tokio::test]
async fn create_task_in_a_missing_project_is_not_found() {
    let app = spawn_app().await;
    let (token, _) = app.owner_with_tenant("acme").await;

    let body = app
        .create_task(&token, &uuid::Uuid::now_v7().to_string(), "x")
        .await;

    assert_eq!(error_code(&body), Some("NOT_FOUND"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);
}

#[tokio::test]
async fn concurrent_guards_never_overspend() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await; // 2 credits: 98 left

    let attempts = 220;
    let results = join_all((0..attempts).map(|i| {
        let (app, token, project) = (&app, &token, &project);
        async move { app.create_task(token, project, &format!("task {i}")).await }
    }))
    .await;

    let ok = results.iter().filter(|b| b["errors"].is_null()).count();
    let refused = results
        .iter()
        .filter(|b| error_code(b) == Some("INSUFFICIENT_CREDITS"))
        .count();
    assert_eq!(ok, 98, "exactly the affordable number succeed");
    assert_eq!(
        refused,
        attempts - 98,
        "every other request is refused with a code"
    );
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(usage["used"], 100);
    assert_eq!(usage["remaining"], 0);
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn concurrent_projects_and_tasks_on_an_odd_limit_never_overspend() {
    let app = spawn_app_with_plan(FeatureLimitType::Max, 51).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await; // 49 left

    let projects = (0..60).map(|i| {
        let app = &app;
        let (token, tenant) = (&token, &tenant);
        async move { app.create_project(token, tenant, &format!("p{i}")).await }
    });
    let tasks = (0..60).map(|i| {
        let app = &app;
        let (token, project) = (&token, &project);
        async move { app.create_task(token, project, &format!("t{i}")).await }
    });
    let (projects, tasks) = futures::join!(join_all(projects), join_all(tasks));

    let spent: i64 = projects.iter().filter(|b| b["errors"].is_null()).count() as i64 * 2
        + tasks.iter().filter(|b| b["errors"].is_null()).count() as i64;
    assert!(
        projects
            .iter()
            .chain(&tasks)
            .all(|b| b["errors"].is_null() || error_code(b) == Some("INSUFFICIENT_CREDITS")),
        "only INSUFFICIENT_CREDITS refusals"
    );
    // Some task was refused (60 > 49), so nothing was left then: the limit is met exactly.
    assert_eq!(2 + spent, 51);
    assert_eq!(app.usage(&token, &tenant).await["used"], 51);
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn spending_in_one_tenant_leaves_another_untouched() {
    let app = spawn_app().await;
    let (ann, ann_tenant) = app.owner_with_tenant("ann").await;
    let (bob, bob_tenant) = app.owner_with_tenant("bob").await;

    app.project_id(&ann, &ann_tenant).await;
    app.project_id(&ann, &ann_tenant).await;

    assert_eq!(app.usage(&ann, &ann_tenant).await["used"], 4);
    assert_eq!(app.usage(&bob, &bob_tenant).await["used"], 0);
}
