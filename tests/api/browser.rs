//! GraphiQL in a real browser: headless Chromium driven by playwright-core
//! (tests/browser/graphiql.mjs) opens `/graphql`, runs `{ creditTypes { value amount } }` and
//! reads the answer GraphiQL shows. The screenshot is kept in tests/browser/artifacts/.
//! What it needs (Debian's `chromium`, the npm packages) is installed when missing.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::helpers::spawn_app;

fn run(command: &mut Command) -> bool {
    command.status().is_ok_and(|s| s.success())
}

/// Chromium and the npm packages, installed when missing (`.ci/run` does the same first).
fn ensure_browser(dir: &Path) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        assert!(
            run(Command::new("apt-get").args(["install", "-y", "-q", "chromium"])),
            "Chromium is missing and could not be installed: `apt-get install chromium` (or set CHROMIUM)"
        );
    }
    if !dir.join("node_modules/playwright-core").exists() {
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || ensure_browser(&dir)
    })
    .await
    .unwrap();
    let app = spawn_app().await;
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("graphiql.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = dir.join("graphiql.mjs");
    let (address, shot) = (app.address.clone(), screenshot.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(address)
            .arg(shot)
            .env("CHROMIUM", &chromium)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let shown: Value = serde_json::from_str(&stdout).expect("GraphiQL shows JSON");
    let values: Vec<_> = shown["data"]["creditTypes"]
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
    let png = std::fs::read(&screenshot).expect("screenshot kept");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
