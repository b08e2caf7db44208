use chrono::Datelike;
use serde_json::json;
use tollgate::credits::FeatureLimitType;

use crate::helpers::{error_code, plan, spawn_app, spawn_app_with, spawn_app_with_plan};

#[tokio::test]
async fn catalogue_queries_are_public_and_show_the_built_in_defaults() {
    let app = spawn_app().await;

    let body = app
        .gql(
            None,
            "{ creditTypes { value name description amount } usageBasedUnits { name title titlePlural } plans { slug title features { name title type value order } } }",
            json!({}),
        )
        .await;

    let data = &body["data"];
    assert_eq!(
        data["creditTypes"],
        json!([
            { "value": "credit-project-creation", "name": "Project Creation", "description": "When you create a new project.", "amount": 2 },
            { "value": "credit-task-creation", "name": "Task Creation", "description": "When you create a new task.", "amount": 1 },
        ])
    );
    let units: Vec<_> = data["usageBasedUnits"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["name"].as_str().expect("name"))
        .collect();
    assert_eq!(units, ["api", "project-credits", "task-credits"]);
    let plans: Vec<_> = data["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|p| {
            (
                p["slug"].as_str().expect("slug"),
                p["features"][0]["type"].as_str().expect("type"),
                p["features"][0]["value"].as_i64().expect("value"),
            )
        })
        .collect();
    assert_eq!(
        plans,
        [
            ("free", "MONTHLY", 10),
            ("pro", "MONTHLY", 1000),
            ("enterprise", "UNLIMITED", 0)
        ]
    );
}

#[tokio::test]
async fn configured_costs_are_what_the_guard_charges() {
    let app = spawn_app_with(|c| {
        c.credit_types[0].amount = 3;
        c.credit_types[0].name = "New project".into();
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let types = app
        .gql(None, "{ creditTypes { value name amount } }", json!({}))
        .await;
    app.project_id(&token, &tenant).await;

    assert_eq!(
        types["data"]["creditTypes"][0],
        json!({ "value": "credit-project-creation", "name": "New project", "amount": 3 })
    );
    assert_eq!(app.usage(&token, &tenant).await["used"], 3);
}

#[tokio::test]
async fn monthly_usage_reports_used_remaining_and_the_utc_calendar_month() {
    let app = spawn_app_with_plan(FeatureLimitType::Monthly, 10).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    app.project_id(&token, &tenant).await;

    let usage = app.usage(&token, &tenant).await;

    let now = chrono::Utc::now();
    let start = chrono::NaiveDate::from_ymd_opt(now.year(), now.month(), 1).expect("date");
    let end = start
        .checked_add_months(chrono::Months::new(1))
        .expect("date");
    assert_eq!(usage["type"], "MONTHLY");
    assert_eq!(usage["value"], 10);
    assert_eq!(usage["used"], 2);
    assert_eq!(usage["remaining"], 8);
    assert_eq!(usage["unlimited"], false);
    assert_eq!(usage["enabled"], true);
    assert!(usage["message"].is_null());
    assert_eq!(usage["period"]["start"], format!("{start}T00:00:00+00:00"));
    assert_eq!(usage["period"]["end"], format!("{end}T00:00:00+00:00"));
}

#[tokio::test]
async fn max_limits_count_over_the_lifetime_and_never_reset() {
    let app = spawn_app_with_plan(FeatureLimitType::Max, 3).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "one").await;

    let refused = app.create_task(&token, &project, "two").await;
    let usage = app.usage(&token, &tenant).await;

    assert_eq!(error_code(&refused), Some("INSUFFICIENT_CREDITS"));
    assert!(
        refused["errors"][0]["extensions"]["resetsAt"].is_null(),
        "{refused}"
    );
    assert_eq!(usage["type"], "MAX");
    assert_eq!(usage["used"], 3);
    assert_eq!(usage["remaining"], 0);
    assert_eq!(usage["enabled"], false);
    assert_eq!(usage["message"], "You've reached the limit (3/3).");
    assert!(usage["period"].is_null());
}

#[tokio::test]
async fn unlimited_plans_allow_everything_and_still_record_it() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let project = app.project_id(&token, &tenant).await;
    for i in 0..5 {
        let body = app.create_task(&token, &project, &format!("t{i}")).await;
        assert!(body["errors"].is_null(), "{body}");
    }

    let usage = app.usage(&token, &tenant).await;

    assert_eq!(usage["type"], "UNLIMITED");
    assert_eq!(usage["used"], 7);
    assert!(usage["remaining"].is_null());
    assert_eq!(usage["unlimited"], true);
    assert_eq!(usage["enabled"], true);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 6);
}

#[tokio::test]
async fn included_features_are_allowed_and_recorded() {
    let app = spawn_app_with_plan(FeatureLimitType::Included, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    app.project_id(&token, &tenant).await;
    let usage = app.usage(&token, &tenant).await;

    assert_eq!(usage["type"], "INCLUDED");
    assert_eq!(usage["used"], 2);
    assert_eq!(usage["unlimited"], true);
    assert_eq!(usage["enabled"], true);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 1);
}

#[tokio::test]
async fn not_included_features_are_refused_and_nothing_is_written() {
    let app = spawn_app_with_plan(FeatureLimitType::NotIncluded, 0).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let body = app.create_project(&token, &tenant, "P").await;
    let usage = app.usage(&token, &tenant).await;

    assert_eq!(error_code(&body), Some("FEATURE_NOT_INCLUDED"));
    assert_eq!(body["errors"][0]["extensions"]["feature"], "credits");
    assert!(body["data"].is_null());
    assert_eq!(usage["type"], "NOT_INCLUDED");
    assert_eq!(usage["enabled"], false);
    assert_eq!(usage["message"], "Your plan does not include Credits.");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM project").await, 0);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);
}

#[tokio::test]
async fn a_plan_without_the_feature_fails_closed() {
    let app = spawn_app_with(|c| {
        let mut bare = plan("bare", FeatureLimitType::Monthly, 0);
        bare.features.clear();
        c.plans = vec![bare, plan("other", FeatureLimitType::Monthly, 5)];
        c.default_plan = "bare".into();
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let body = app.create_project(&token, &tenant, "P").await;
    let usage = app.usage(&token, &tenant).await;
    let unknown = app
        .gql(
            Some(&token),
            "query($t: ID!) { planFeatureUsage(tenantId: $t, feature: \"seats\") { used } }",
            json!({ "t": tenant }),
        )
        .await;

    assert_eq!(error_code(&body), Some("FEATURE_NOT_INCLUDED"));
    assert_eq!(usage["type"], "NOT_INCLUDED");
    assert_eq!(usage["enabled"], false);
    assert!(unknown["errors"].is_null(), "{unknown}");
    assert!(unknown["data"]["planFeatureUsage"].is_null());
}

#[tokio::test]
async fn a_bad_config_file_stops_start_up_naming_the_key() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        ("default_plan = \"gold\"\n", "default_plan"),
        (
            "[[plans]]\nslug = \"x\"\ntitle = \"X\"\n[[plans.features]]\nname = \"credits\"\ntitle = \"C\"\ntype = \"WEEKLY\"\nvalue = 1\n",
            "type",
        ),
        ("token_ttl_seconds = \"soon\"\n", "token_ttl_seconds"),
        ("colour = \"blue\"\n", "colour"),
        (
            "[[credit_types]]\nvalue = \"credit-coffee\"\nname = \"C\"\ndescription = \"d\"\namount = 0\n",
            "credit_types[0].amount",
        ),
        (
            "[[usage_based_units]]\nname = \"a\"\ntitle = \"A\"\ntitle_plural = \"As\"\ncredit_types = [\"credit-task-creation\"]\n\
             [[usage_based_units]]\nname = \"b\"\ntitle = \"B\"\ntitle_plural = \"Bs\"\ncredit_types = [\"credit-task-creation\"]\n",
            "usage_based_units[1].credit_types",
        ),
        (
            "default_plan = \"x\"\n[[plans]]\nslug = \"x\"\ntitle = \"X\"\nstripe_price_ids = [\"price_1\"]\n\
             [[plans]]\nslug = \"y\"\ntitle = \"Y\"\nstripe_price_ids = [\"price_1\"]\n",
            "plans[1].stripe_price_ids",
        ),
        (
            "[stripe]\nrequest_timeout_ms = 90000\nclaim_seconds = 60\n",
            "stripe.claim_seconds",
        ),
        ("[stripe]\nsecret = \"sk_x\"\n", "secret"),
    ];
    for (i, (toml, key)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, toml).expect("written");
        let out = app.cli(&["migrate", "--config", path.to_str().expect("path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(stderr.contains(key), "{toml}: {stderr}");
    }
}

#[tokio::test]
async fn the_server_binary_serves_its_config_file_with_environment_overrides() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tollgate.toml");
    std::fs::write(
        &path,
        "default_plan = \"starter\"\n\
         [[plans]]\nslug = \"starter\"\ntitle = \"Starter\"\n\
         [[plans.features]]\nname = \"credits\"\ntitle = \"Credits\"\ntype = \"MAX\"\nvalue = 50\n\
         [[plans]]\nslug = \"team\"\ntitle = \"Team\"\n",
    )
    .expect("written");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut server = app
        .command(&[
            "serve",
            "--config",
            path.to_str().expect("path"),
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("TOLLGATE_DEFAULT_PLAN", "team")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("server starts");
    let url = format!("http://127.0.0.1:{port}");

    let mut ready = false;
    for _ in 0..100 {
        if app
            .client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let plans = app
        .client
        .post(format!("{url}/graphql"))
        .json(&json!({ "query": "{ plans { slug features { type value } } }" }))
        .send()
        .await;
    let token = app
        .client
        .post(format!("{url}/graphql"))
        .json(&json!({ "query": "mutation { signUp(input: {email: \"cli@example.com\", password: \"12345678\", name: \"C\"}) { token } }" }))
        .send()
        .await;
    let token = match token {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|b| b["data"]["signUp"]["token"].as_str().map(str::to_owned)),
        Err(_) => None,
    };
    let tenant = match &token {
        Some(token) => app
            .client
            .post(format!("{url}/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": "mutation { createTenant(input: {name: \"C\", slug: \"cli\"}) { plan { slug } } }" }))
            .send()
            .await
            .ok(),
        None => None,
    };
    let tenant: Option<serde_json::Value> = match tenant {
        Some(r) => r.json().await.ok(),
        None => None,
    };
    let _ = server.kill();
    let _ = server.wait();

    assert!(ready, "the server did not become ready");
    let body: serde_json::Value = plans.expect("sent").json().await.expect("json");
    let slugs: Vec<_> = body["data"]["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|p| p["slug"].clone())
        .collect();
    assert!(slugs.contains(&json!("starter")), "{body}");
    let starter = body["data"]["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .find(|p| p["slug"] == "starter")
        .expect("starter");
    assert_eq!(starter["features"], json!([{ "type": "MAX", "value": 50 }]));
    // TOLLGATE_DEFAULT_PLAN overrides the file's default_plan.
    let tenant = tenant.expect("createTenant answered");
    assert_eq!(
        tenant["data"]["createTenant"]["plan"]["slug"], "team",
        "{tenant}"
    );
}
