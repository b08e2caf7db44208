//! GraphiQL in a real browser: headless Chromium driven by playwright-core
//! (tests/browser/graphiql.mjs) opens `/graphql` with every other host blocked, reads Query's
//! fields in the Docs explorer, gets `creditTypes` from autocompletion, runs
//! `{ creditTypes { value amount } }` and reads the answer GraphiQL shows; then, signed in by
//! its Headers tab, runs a `creditBalance` subscription over `/graphql/ws` and sees the result
//! pane change when a project is created. The screenshot is kept in tests/browser/artifacts/. Also graphql-js's own introspection (introspect.mjs).
//! What it needs (Debian's `chromium`, the npm packages) is installed when missing.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::helpers::spawn_app;

fn run(command: &mut Command) -> bool {
    command.status().is_ok_and(|s| s.success())
}

/// Chromium and the npm packages, installed when missing (`.ci/run` does the same first).
pub(crate) fn ensure_browser(dir: &Path) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        assert!(
            run(Command::new("apt-get").args(["install", "-y", "-q", "chromium"])),
            "Chromium is missing and could not be installed: `apt-get install chromium` (or set CHROMIUM)"
        );
    }
    if !dir.join("node_modules/playwright-core").exists()
        || !dir.join("node_modules/graphql-ws").exists()
    {
        assert!(
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir)),
            "`npm ci` in tests/browser failed"
        );
    }
    chromium
}

#[tokio::test]
async fn graphiql_runs_a_query_in_headless_chromium() {
    let app = spawn_app().await;
    let (owner, tenant) = app.owner_with_tenant("browser").await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("graphiql.png");
    let _ = std::fs::remove_file(&screenshot);
    let stdout = node(
        "graphiql.mjs",
        vec![
            app.address.clone(),
            screenshot.display().to_string(),
            owner,
            tenant,
        ],
    )
    .await;
    let shown: Value = serde_json::from_str(&stdout).expect("the script prints JSON");
    // Offline: the page asked nothing of any other host, and broke no policy.
    assert_eq!(shown["blocked"], serde_json::json!([]), "{shown}");
    assert_eq!(shown["cspViolations"], serde_json::json!([]), "{shown}");
    assert_eq!(shown["pageErrors"], serde_json::json!([]), "{shown}");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{shown}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let docs = strings(&shown["docsFields"]);
    for field in ["creditTypes", "plans", "planFeatureUsage", "creditHistory"] {
        assert!(
            docs.iter().any(|f| f == field),
            "Docs explorer shows {field}: {docs:?}"
        );
    }
    let completions = strings(&shown["completions"]);
    assert!(
        completions.iter().any(|c| c == "creditTypes"),
        "autocompletion offers creditTypes: {completions:?}"
    );
    let values: Vec<_> = shown["result"]["data"]["creditTypes"]
        .as_array()
        .unwrap_or_else(|| panic!("{shown}"))
        .iter()
        .map(|t| {
            (
                t["value"].as_str().unwrap().to_owned(),
                t["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        [
            ("credit-project-creation".to_owned(), 2),
            ("credit-task-creation".to_owned(), 1)
        ]
    );
    // The live balance in GraphiQL's result pane, signed in by its Headers tab: the value,
    // then the change a project made.
    let live = &shown["subscription"];
    assert_eq!(
        live["first"]["data"]["creditBalance"],
        serde_json::json!({ "used": 0, "remaining": 10 }),
        "{shown}"
    );
    assert_eq!(
        live["changed"]["data"]["creditBalance"],
        serde_json::json!({ "used": 2, "remaining": 8 }),
        "{shown}"
    );
    let png = std::fs::read(&screenshot).expect("screenshot kept");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}

/// Runs `node tests/browser/<script> <args>` (npm packages installed when missing); its
/// stdout, or a panic with its output.
async fn node(script: &str, args: Vec<String>) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || ensure_browser(&dir)
    })
    .await
    .unwrap();
    let script = dir.join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .env("CHROMIUM", &chromium)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn graphql_js_standard_introspection_passes_the_limits_and_builds_the_schema() {
    // The default limits: depth 12, which the introspection query (ofType 9 deep) exceeds.
    let app = spawn_app().await;
    let shown: Value =
        serde_json::from_str(&node("introspect.mjs", vec![app.address.clone()]).await)
            .expect("JSON");
    let query: Vec<&str> = shown["query"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for field in [
        "creditTypes",
        "plans",
        "planFeatureUsage",
        "creditHistory",
        "me",
    ] {
        assert!(query.contains(&field), "{field} in {query:?}");
    }
    assert!(
        shown["mutation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "createTask")
    );
    // The allowance is for introspection alone: the same depth on the API's own fields is
    // refused, and so is a query that mixes both.
    let deep = "{ me { memberships { tenant { plan { features { name } } } } } __schema { types { name } } }";
    let body = app.gql(None, deep, serde_json::json!({})).await;
    assert!(body["errors"].is_null(), "within depth 12: {body}");
    let mixed = format!(
        "{{ creditTypes {{ value }} __schema {{ types {{ fields {{ type {} }} }} }} }}",
        "{ ofType ".repeat(9) + "{ name }" + &"}".repeat(9)
    );
    let body = app.gql(None, &mixed, serde_json::json!({})).await;
    assert_eq!(
        crate::helpers::error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
}

#[test]
fn the_served_graphiql_assets_are_the_pinned_npm_releases_unmodified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("tests/browser/node_modules");
    if !modules.join("graphiql").exists() {
        assert!(
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(root.join("tests/browser"))),
            "`npm ci` in tests/browser failed"
        );
    }
    for (vendored, published) in [
        ("graphiql.min.js", "graphiql/graphiql.min.js"),
        ("graphiql.min.css", "graphiql/graphiql.min.css"),
        (
            "react.production.min.js",
            "react/umd/react.production.min.js",
        ),
        (
            "react-dom.production.min.js",
            "react-dom/umd/react-dom.production.min.js",
        ),
    ] {
        let ours = std::fs::read(root.join("assets/graphiql/vendor").join(vendored)).unwrap();
        let theirs = std::fs::read(modules.join(published)).unwrap();
        assert!(ours == theirs, "{vendored} differs from npm's {published}");
    }
}
