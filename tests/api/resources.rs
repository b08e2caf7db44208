//! The example app a SPA uses: projects and tasks listed and paged (keyset), read one by one,
//! deleted (nothing refunded; the ledger keeps pointing at them), and isolated between
//! tenants.

use serde_json::{Value, json};
use tollgate::credits::FeatureLimitType;

use crate::helpers::{TestApp, error_code, spawn_app_with_plan};

const PROJECTS: &str = "query($t: ID!, $after: String) { tenant(id: $t) { projects(first: 2, after: $after) { \
    nodes { id name createdBy { email } } pageInfo { hasNextPage endCursor } } } }";

const TASKS: &str = "query($p: ID!, $after: String) { project(id: $p) { tasks(first: 2, after: $after) { \
    nodes { id title createdBy { email } } pageInfo { hasNextPage endCursor } } } }";

fn id(body: &Value, field: &str) -> String {
    body["data"][field]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

async fn delete(app: &TestApp, token: &str, what: &str, id: &str) -> Value {
    app.gql(
        Some(token),
        &format!("mutation($id: ID!) {{ delete{what}(id: $id) {{ id }} }}"),
        json!({ "id": id }),
    )
    .await
}

#[tokio::test]
async fn projects_and_tasks_are_listed_newest_first_a_page_at_a_time() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let mut projects = Vec::new();
    for name in ["one", "two", "three"] {
        projects.push(id(
            &app.create_project(&token, &tenant, name).await,
            "createProject",
        ));
    }
    for title in ["a", "b", "c"] {
        app.create_task(&token, &projects[0], title).await;
    }

    let first = app
        .gql(Some(&token), PROJECTS, json!({ "t": tenant }))
        .await;
    let page = &first["data"]["tenant"]["projects"];
    let rest = app
        .gql(
            Some(&token),
            PROJECTS,
            json!({ "t": tenant, "after": page["pageInfo"]["endCursor"] }),
        )
        .await;
    let tasks = app
        .gql(Some(&token), TASKS, json!({ "p": projects[0] }))
        .await;
    let tasks = &tasks["data"]["project"]["tasks"];
    let more_tasks = app
        .gql(
            Some(&token),
            TASKS,
            json!({ "p": projects[0], "after": tasks["pageInfo"]["endCursor"] }),
        )
        .await;

    let names: Vec<&str> = page["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["three", "two"], "{first}");
    assert_eq!(page["pageInfo"]["hasNextPage"], true);
    assert_eq!(page["nodes"][0]["createdBy"]["email"], "acme@example.com");
    assert_eq!(
        rest["data"]["tenant"]["projects"]["nodes"][0]["name"], "one",
        "{rest}"
    );
    assert_eq!(
        rest["data"]["tenant"]["projects"]["pageInfo"]["hasNextPage"],
        false
    );
    assert_eq!(tasks["nodes"][0]["title"], "c");
    assert_eq!(tasks["pageInfo"]["hasNextPage"], true);
    assert_eq!(
        more_tasks["data"]["project"]["tasks"]["nodes"][0]["title"], "a",
        "{more_tasks}"
    );
}

#[tokio::test]
async fn deleting_hides_the_resource_refunds_nothing_and_keeps_the_books_balanced() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = id(
        &app.create_project(&token, &tenant, "p").await,
        "createProject",
    );
    let task = id(&app.create_task(&token, &project, "t1").await, "createTask");
    let other = id(&app.create_task(&token, &project, "t2").await, "createTask");
    let used_before = app.usage(&token, &tenant).await["used"].clone();

    let deleted = delete(&app, &token, "Task", &task).await;
    let again = delete(&app, &token, "Task", &task).await;
    let read = app
        .gql(
            Some(&token),
            "query($id: ID!) { task(id: $id) { id } }",
            json!({ "id": task }),
        )
        .await;
    let listed = app.gql(Some(&token), TASKS, json!({ "p": project })).await;

    assert_eq!(
        deleted["data"]["deleteTask"]["id"],
        json!(task),
        "{deleted}"
    );
    assert_eq!(error_code(&again), Some("NOT_FOUND"), "{again}");
    assert!(read["data"]["task"].is_null(), "{read}");
    let ids: Vec<&Value> = listed["data"]["project"]["tasks"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| &n["id"])
        .collect();
    assert_eq!(ids, [&json!(other)]);
    assert_eq!(
        app.usage(&token, &tenant).await["used"],
        used_before,
        "no refund"
    );

    // Deleting the project takes its tasks with it; no task can be added to it any more,
    // whether or not the server has seen the project before, and nothing is charged.
    let deleted = delete(&app, &token, "Project", &project).await;
    let late = app.create_task(&token, &project, "late").await;
    let read = app
        .gql(
            Some(&token),
            "query($id: ID!) { task(id: $id) { id } }",
            json!({ "id": other }),
        )
        .await;
    let gone = app
        .gql(
            Some(&token),
            "query($id: ID!) { project(id: $id) { id } }",
            json!({ "id": project }),
        )
        .await;

    assert!(deleted["errors"].is_null(), "{deleted}");
    assert_eq!(error_code(&late), Some("NOT_FOUND"), "{late}");
    assert!(read["data"]["task"].is_null(), "{read}");
    assert!(gone["data"]["project"].is_null(), "{gone}");
    assert_eq!(app.usage(&token, &tenant).await["used"], used_before);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 3);
    let verify = app.cli(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test]
async fn verify_tells_a_deleted_resource_from_one_that_never_existed() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = id(
        &app.create_project(&token, &tenant, "p").await,
        "createProject",
    );
    let task = id(&app.create_task(&token, &project, "t").await, "createTask");
    id(&app.create_task(&token, &project, "u").await, "createTask");
    assert!(delete(&app, &token, "Task", &task).await["errors"].is_null());
    assert!(
        app.cli(&["verify"]).status.success(),
        "a deleted task is fine"
    );

    // A row removed behind the API's back: its ledger row now names nothing.
    let db = app.db().await;
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("DELETE FROM task WHERE deleted_at IS NULL")
        .await
        .expect("deleted");
    let out = app.cli(&["verify"]);

    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("name no existing task"), "{report}");
}

#[tokio::test]
async fn another_tenant_s_projects_and_tasks_are_out_of_reach() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let (eve, _) = app.owner_with_tenant("evil").await;
    let project = id(
        &app.create_project(&token, &tenant, "p").await,
        "createProject",
    );
    let task = id(&app.create_task(&token, &project, "t").await, "createTask");

    let read_project = app
        .gql(
            Some(&eve),
            "query($id: ID!) { project(id: $id) { id } }",
            json!({ "id": project }),
        )
        .await;
    let read_task = app
        .gql(
            Some(&eve),
            "query($id: ID!) { task(id: $id) { id } }",
            json!({ "id": task }),
        )
        .await;
    let listed = app.gql(Some(&eve), PROJECTS, json!({ "t": tenant })).await;
    let delete_project = delete(&app, &eve, "Project", &project).await;
    let delete_task = delete(&app, &eve, "Task", &task).await;

    assert!(read_project["data"]["project"].is_null(), "{read_project}");
    assert!(read_task["data"]["task"].is_null(), "{read_task}");
    assert_eq!(error_code(&listed), Some("FORBIDDEN"), "{listed}");
    assert_eq!(error_code(&delete_project), Some("NOT_FOUND"));
    assert_eq!(error_code(&delete_task), Some("NOT_FOUND"));
    let mine = app.gql(Some(&token), TASKS, json!({ "p": project })).await;
    assert_eq!(
        mine["data"]["project"]["tasks"]["nodes"][0]["id"],
        json!(task),
        "{mine}"
    );
}
