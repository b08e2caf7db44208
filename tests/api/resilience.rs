//! What must hold when things go wrong: `tollgate verify`, SIGKILL under write load, and
//! several replicas on one database.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::future::join_all;
use serde_json::{Value, json};
use tollgate::credits::FeatureLimitType;

use crate::helpers::{TestApp, error_code, spawn_app_with_plan};

const CREATE_TASK: &str =
    "mutation($p: ID!) { createTask(projectId: $p, input: {title: \"load\"}) { id } }";

pub fn verify(app: &TestApp) -> (bool, String) {
    let out = app.cli(&["verify"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn verify_passes_on_sound_books_and_names_what_is_broken() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "t").await;

    let (sound, sound_report) = verify(&app);
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db().await,
        "UPDATE credit_usage SET used = used + 5",
    )
    .await
    .expect("tampered");
    let (broken, broken_report) = verify(&app);

    assert!(sound, "{sound_report}");
    assert!(
        sound_report.contains("ok: ledger = counters = resources"),
        "{sound_report}"
    );
    assert!(
        sound_report.contains("checked 2 ledger rows"),
        "{sound_report}"
    );
    assert!(!broken, "{broken_report}");
    assert!(
        broken_report.contains(&format!("tenant {tenant}")),
        "{broken_report}"
    );
    assert!(
        broken_report.contains("counter says 8 used, ledger sums to 3"),
        "{broken_report}"
    );
}

#[tokio::test]
async fn verify_names_a_tenant_whose_events_are_not_numbered_one_to_the_last() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "t").await;
    let (sound, report) = verify(&app);
    assert!(sound, "{report}");
    // A number skipped: the project's spend renumbered past the task's.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db().await,
        "UPDATE credit SET seq = seq + 10 WHERE seq = 1",
    )
    .await
    .expect("tampered");
    let (sound, report) = verify(&app);
    assert!(!sound, "{report}");
    assert!(
        report.contains(&format!(
            "tenant {tenant}'s events are not numbered 1 to its last number: 2 events numbered 2..11"
        )),
        "{report}"
    );
}

#[tokio::test]
async fn verify_finds_resources_without_exactly_one_ledger_row() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    let task = app.create_task(&token, &project, "t").await["data"]["createTask"]["id"]
        .as_str()
        .expect("task")
        .to_owned();

    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db().await,
        &format!("DELETE FROM credit WHERE object_id = '{task}'"),
    )
    .await
    .expect("tampered");
    let (ok, report) = verify(&app);

    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "task {task} has 0 credit-task-creation ledger rows"
        )),
        "{report}"
    );
}

#[tokio::test]
async fn a_server_killed_under_write_load_restarts_with_sound_books() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    let mut server = app.start_server::<&str, &str>(&[]).await;
    let url = server.url.clone();

    // Eight writers hammer the server until it is killed mid-flight.
    let stop = AtomicBool::new(false);
    let writers = join_all((0..8).map(|_| {
        let (app, token, project, url, stop) = (&app, &token, &project, &url, &stop);
        async move {
            let mut acknowledged = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match app
                    .gql_at(url, token, CREATE_TASK, json!({ "p": project }))
                    .await
                {
                    Ok(body) => match body["data"]["createTask"]["id"].as_str() {
                        Some(id) => acknowledged.push(id.to_owned()),
                        None => assert!(body["errors"].is_array(), "{body}"),
                    },
                    Err(_) => break, // the connection died with the server
                }
            }
            acknowledged
        }
    }));
    let killer = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
    };
    let (acknowledged, ()) = futures::join!(writers, killer);
    let acknowledged: Vec<String> = acknowledged.into_iter().flatten().collect();

    let restarted = app.start_server::<&str, &str>(&[]).await;
    let after = app
        .gql_at(&restarted.url, &token, CREATE_TASK, json!({ "p": project }))
        .await
        .expect("answered");
    let (sound, report) = verify(&app);

    assert!(
        acknowledged.len() > 10,
        "the load ran: {} tasks",
        acknowledged.len()
    );
    assert!(
        after["errors"].is_null(),
        "the restarted server works: {after}"
    );
    assert!(sound, "{report}");
    // Everything acknowledged before the kill survived it, with its ledger row.
    let ids = acknowledged
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let survived = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM credit WHERE object_id IN ({ids})"
        ))
        .await;
    assert_eq!(survived, acknowledged.len() as i64);
}

#[tokio::test]
async fn three_replicas_on_one_database_never_overspend() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await; // 98 credits left
    // The replicas need the same plans as the in-process app that made the tenant.
    let env = app.replica_env(100);
    let replicas = [
        app.start_server(&env).await,
        app.start_server(&env).await,
        app.start_server(&env).await,
    ];

    let answers = join_all((0..600).map(|i| {
        let (app, token, project) = (&app, &token, &project);
        let url = replicas[i % 3].url.clone();
        async move {
            app.gql_at(&url, token, CREATE_TASK, json!({ "p": project }))
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
    let failed: Vec<&Value> = answers
        .iter()
        .filter(|a| !a["errors"].is_null() && error_code(a) != Some("INSUFFICIENT_CREDITS"))
        .take(3)
        .collect();
    assert_eq!(ok, 98, "exactly the affordable number succeed");
    assert_eq!(
        refused,
        600 - 98,
        "all others are refused, none fail: {failed:?}"
    );
    let usage = app.usage(&token, &tenant).await;
    assert_eq!(usage["used"], 100);
    let (sound, report) = verify(&app);
    assert!(sound, "{report}");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM task").await, 98);
}

#[tokio::test]
async fn verify_on_a_database_not_migrated_says_to_migrate_first() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 100).await;
    let config = app.write_config("");
    let empty = std::path::Path::new(&config).with_file_name("not-migrated.db");
    let out = app
        .command(&["verify"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", empty.display()),
        )
        .output()
        .expect("tollgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("migration(s) not applied yet: run `tollgate migrate`"),
        "{stderr}"
    );
}
