//! Requests an attacker sends to take the server down or slip past its checks: nesting that
//! would overflow a parser's stack, control characters, odd headers, slow bodies, fragment
//! tricks against the limits.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

const LEVELS: usize = 10_000;

/// `open` × n, then `inner`, then `close` × n (the fuzz test uses it too).
pub(crate) fn nest(open: &str, inner: &str, close: &str, n: usize) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// Documents that nest 10,000 levels deep: lists, objects and input objects, in arguments,
/// in a variable's default value, and selection sets.
pub(crate) fn deep_documents(n: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "lists in an argument",
            format!(
                "{{ planFeatureUsage(tenantId: {}) {{ used }} }}",
                nest("[", "1", "]", n)
            ),
        ),
        (
            "objects in an argument",
            format!(
                "{{ planFeatureUsage(tenantId: {}) {{ used }} }}",
                nest("{a: ", "1", "}", n)
            ),
        ),
        (
            "input objects in a mutation's input",
            format!(
                "mutation {{ signUp(input: {{email: {}, password: \"p\", name: \"n\"}}) {{ token }} }}",
                nest("{email: ", "\"x\"", "}", n)
            ),
        ),
        (
            "lists in a variable's default value",
            format!(
                "query($x: [ID] = {}) {{ creditTypes {{ value }} }}",
                nest("[", "1", "]", n)
            ),
        ),
        (
            "objects in a variable's default value",
            format!(
                "query($x: CreditHistoryFilter = {}) {{ creditTypes {{ value }} }}",
                nest("{type: ", "\"a\"", "}", n)
            ),
        ),
        (
            "selection sets",
            format!("{}{}", "{ a ".repeat(n), "}".repeat(n)),
        ),
    ]
}

async fn get(app: &TestApp, query: &str) -> (u16, Value) {
    let response = match app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", query)])
        .send()
        .await
    {
        Ok(response) => response,
        // Not the error itself: it holds the whole URL.
        Err(e) => panic!("GET failed: {:?}", e.status()),
    };
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn nesting_ten_thousand_levels_deep_is_refused_by_post_and_get_and_the_server_lives() {
    let app = spawn_app_with(|c| c.http.max_body_bytes = 256 * 1024).await;
    for (case, document) in deep_documents(LEVELS) {
        let (status, body) = post(&app, &json!({ "query": document })).await;
        assert_eq!(status, 200, "POST {case}: {body}");
        assert_eq!(
            error_code(&body),
            Some("GRAPHQL_PARSE_FAILED"),
            "POST {case}: {body}"
        );
        app.assert_still_answering().await;
    }
    // A URL holds at most 64 KiB: lists 10,000 deep fit, the wordier forms 2,500 deep (the
    // old parser overflowed at ~1,500).
    let by_get = deep_documents(LEVELS)
        .into_iter()
        .take(1)
        .chain(deep_documents(2_500).into_iter().skip(1));
    for (case, document) in by_get {
        let (status, body) = get(&app, &document).await;
        assert_eq!(status, 400, "GET {case}: {body}");
        assert_eq!(
            error_code(&body),
            Some("GRAPHQL_PARSE_FAILED"),
            "GET {case}: {body}"
        );
        app.assert_still_answering().await;
    }
    // Variables: 10,000 levels do not even read as JSON; 100 read, and are refused all the
    // same, before the document is looked at.
    let query = "query($x: [ID]) { creditTypes { value } }";
    for levels in [LEVELS, 100] {
        let get_levels = levels.min(5_000);
        let variables: Value =
            serde_json::from_str(&nest("[", "1", "]", levels)).unwrap_or(Value::Null);
        let raw = format!(
            "{{\"query\": {}, \"variables\": {{\"x\": {}}}}}",
            json!(query),
            nest("[", "1", "]", levels)
        );
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert!(
            [200, 400].contains(&status),
            "{levels} levels of variables: {status} {body}"
        );
        assert_eq!(error_code(&body), Some("GRAPHQL_PARSE_FAILED"), "{body}");
        drop(variables);
        let (status, body) = app
            .client
            .get(format!("{}/graphql", app.address))
            .query(&[
                ("query", query.to_owned()),
                (
                    "variables",
                    format!("{{\"x\": {}}}", nest("[", "1", "]", get_levels)),
                ),
            ])
            .send()
            .await
            .map(|r| (r.status().as_u16(), r))
            .unwrap();
        let body: Value = body.json().await.unwrap();
        assert_eq!(status, 400, "GET {levels} levels of variables: {body}");
        assert_eq!(error_code(&body), Some("GRAPHQL_PARSE_FAILED"), "{body}");
    }
    // Brackets inside strings and comments are text, and 64 levels are still fine.
    let (_, body) = post(
        &app,
        &json!({ "query": format!("{{ creditTypes {{ value }} }} # {}", "[".repeat(5000)) }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = post(
        &app,
        &json!({ "query": format!("{{ planFeatureUsage(tenantId: {}) {{ used }} }}", nest("[", "\"x\"", "]", 60)) }),
    )
    .await;
    // Parsed, and refused by validation (an ID is no list): not by the nesting limit.
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    app.assert_still_answering().await;
}

#[tokio::test]
async fn the_nesting_limit_is_configurable() {
    let app = spawn_app_with(|c| c.graphql.max_nesting = 8).await;
    let query = |n| {
        format!(
            "query($x: [ID] = {}) {{ creditTypes {{ value }} }}",
            nest("[", "1", "]", n)
        )
    };
    // The operation's braces and the variable list's parenthesis count too.
    let (_, body) = post(&app, &json!({ "query": query(6) })).await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    let (_, body) = post(&app, &json!({ "query": query(9) })).await;
    assert_eq!(error_code(&body), Some("GRAPHQL_PARSE_FAILED"), "{body}");
}

#[tokio::test]
async fn control_characters_in_any_text_input_are_bad_user_input_on_every_database() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("ctl").await;
    let cases: Vec<(&str, Option<&str>, &str, Value)> = vec![
        (
            "signIn email (anonymous), variable",
            None,
            "mutation($e: String!) { signIn(email: $e, password: \"password1\") { token } }",
            json!({ "e": "ann\u{0}@example.com" }),
        ),
        (
            "signUp, literal escape",
            None,
            "mutation { signUp(input: {email: \"ann\\u0000@example.com\", password: \"password1\", name: \"Ann\"}) { token } }",
            json!({}),
        ),
        (
            "createTenant name",
            Some(&token),
            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id } }",
            json!({ "i": { "name": "bad\u{1b}[31m", "slug": "bad-one" } }),
        ),
        (
            "createProject description",
            Some(&token),
            "mutation($t: ID!) { createProject(tenantId: $t, input: {name: \"p\", description: \"x\\u007f\"}) { id } }",
            json!({ "t": tenant }),
        ),
        (
            "idempotency key argument",
            Some(&token),
            "mutation($t: ID!, $k: String) { createProject(tenantId: $t, input: {name: \"p\"}, idempotencyKey: $k) { id } }",
            json!({ "t": tenant, "k": "k\u{0}" }),
        ),
        (
            "history filter",
            Some(&token),
            "query($t: ID!) { creditHistory(tenantId: $t, filter: {type: \"a\\u0000\"}) { nodes { id } } }",
            json!({ "t": tenant }),
        ),
        (
            "a variable's default",
            Some(&token),
            "query($t: ID!, $f: String = \"\\u0000\") { planFeatureUsage(tenantId: $t, feature: $f) { used } }",
            json!({ "t": tenant }),
        ),
    ];
    for (case, token, query, variables) in cases {
        let body = app.gql(token, query, variables).await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{case}: {body}");
    }
    assert_eq!(app.scalar("SELECT COUNT(*) FROM \"user\"").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM tenant").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM project").await, 0);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);
    // Line breaks and tabs are text.
    let body = app
        .gql(
            Some(&token),
            "mutation($t: ID!) { createProject(tenantId: $t, input: {name: \"p\", description: \"two\\nlines\\tok\"}) { description } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(
        body["data"]["createProject"]["description"], "two\nlines\tok",
        "{body}"
    );
    // Dates PostgreSQL cannot store are the client's error, not an outage.
    for date in ["-5000-01-01T00:00:00Z", "+300000-01-01T00:00:00Z"] {
        let body = app
            .gql(
                Some(&token),
                "query($t: ID!, $from: DateTime) { creditHistory(tenantId: $t, filter: {from: $from}) { nodes { id } } }",
                json!({ "t": tenant, "from": date }),
            )
            .await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{date}: {body}");
    }
    let metrics = crate::operability::metrics_page(&app).await;
    assert!(
        !metrics.contains("code=\"INTERNAL_SERVER_ERROR\""),
        "no outage counted: {metrics}"
    );
}

#[tokio::test]
async fn a_non_ascii_idempotency_key_header_is_refused_not_ignored() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("idem").await;
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&token)
        .header("Idempotency-Key", reqwest::header::HeaderValue::from_bytes("clé-1".as_bytes()).unwrap())
        .json(&json!({
            "query": "mutation($t: ID!) { createProject(tenantId: $t, input: {name: \"p\"}) { id } }",
            "variables": { "t": tenant },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    let app = spawn_app_with(|c| c.http.body_timeout_seconds = 1).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = r#"{"query": "{ creditTypes { value } }"}"#;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..5]).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered well before 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    app.assert_still_answering().await;
}

#[tokio::test]
async fn aliases_and_root_fields_are_counted_after_expanding_fragments() {
    let app = spawn_app().await;
    // 3 levels of fragments, each using the one below 3 times: 27 × 10 aliased root fields.
    let leaf: Vec<String> = (0..10)
        .map(|i| format!("a{i}: creditTypes {{ value }}"))
        .collect();
    let document = format!(
        "query {{ ...F3 }} fragment F3 on Query {{ ...F2 ...F2 ...F2 }} \
         fragment F2 on Query {{ ...F1 ...F1 ...F1 }} fragment F1 on Query {{ ...F0 ...F0 ...F0 }} \
         fragment F0 on Query {{ {} }}",
        leaf.join(" ")
    );
    let (_, body) = post(&app, &json!({ "query": document })).await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("270"), "{message}");
    // Reused fragments of root fields without aliases are counted in full too.
    let document = format!(
        "query {{ ...R ...R }} fragment R on Query {{ {} }}",
        (0..12)
            .map(|_| "plans { slug }")
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (_, body) = post(&app, &json!({ "query": document })).await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
}

#[tokio::test]
async fn with_introspection_off_errors_suggest_no_field_names() {
    let app = spawn_app_with(|c| c.graphql.introspection = false).await;
    let (_, body) = post(&app, &json!({ "query": "{ creditType { value } }" })).await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    assert!(!body.to_string().contains("Did you mean"), "{body}");
    let on = spawn_app().await;
    let (_, body) = post(&on, &json!({ "query": "{ creditType { value } }" })).await;
    assert!(body.to_string().contains("Did you mean"), "{body}");
}

#[tokio::test]
async fn a_thousand_concurrent_sign_ins_from_a_thousand_addresses_keep_memory_bounded() {
    let app = spawn_app().await;
    app.sign_up("victim@example.com").await;
    let server = app
        .start_server(&[
            ("TOLLGATE_RATE_LIMIT__ENABLED", "true"),
            ("TOLLGATE_HTTP__TRUST_FORWARDED_FOR", "true"),
        ])
        .await;
    let url = format!("{}/graphql", server.url);
    eprintln!("before: peak RSS {} KiB", server.memory_kib("VmHWM"));
    let attempts = (0..1000).map(|i| {
        app.client
            .post(&url)
            .header("X-Forwarded-For", format!("198.18.{}.{}", i / 250, i % 250))
            .json(&json!({
                "query": "mutation($e: String!, $p: String!) { signIn(email: $e, password: $p) { token } }",
                "variables": { "e": "victim@example.com", "p": format!("guess number {i}") },
            }))
            .send()
    });
    // Meanwhile, another client reads the plans: it keeps being answered.
    let reader = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = std::time::Instant::now();
            let body: Value = app
                .client
                .post(&url)
                .json(&json!({ "query": "{ plans { slug } }" }))
                .send()
                .await
                .expect("answered")
                .json()
                .await
                .unwrap();
            assert!(body["errors"].is_null(), "{body}");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    };
    let (answers, slowest) = tokio::join!(futures::future::join_all(attempts), reader);
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for answer in answers {
        let body: Value = answer.expect("answered").json().await.unwrap();
        *codes
            .entry(error_code(&body).unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    assert_eq!(codes.values().sum::<usize>(), 1000, "{codes:?}");
    assert!(
        codes.get("UNAUTHENTICATED").is_some_and(|&n| n > 0),
        "{codes:?}"
    );
    assert!(
        codes.get("RATE_LIMITED").is_some_and(|&n| n > 0),
        "{codes:?}"
    );
    assert_eq!(
        codes.len(),
        2,
        "only wrong passwords and refusals: {codes:?}"
    );
    let peak = server.memory_kib("VmHWM");
    eprintln!("peak RSS {peak} KiB, answers {codes:?}, slowest read {slowest:?}");
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    // Not a timing assertion on a shared machine: a generous bound that an unbounded pool
    // of 1,000 argon2 runs would blow through.
    assert!(slowest < Duration::from_secs(20), "{slowest:?}");
}

#[tokio::test]
async fn list_fan_out_is_in_the_cost_and_a_users_tenants_are_capped() {
    let app = spawn_app().await;
    let (token, _) = app.sign_up("farmer@example.com").await;
    for i in 0..20 {
        app.create_tenant(&token, &format!("farm-{i}")).await;
    }
    // The 21st tenant is refused: no free-credit farming, no slug squatting.
    let body = app
        .gql(
            Some(&token),
            "mutation { createTenant(input: {name: \"One more\", slug: \"farm-20\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM tenant").await, 20);

    // The fan-out document: a batch of 10 × 20 aliases is refused before it runs.
    let selection =
        "me { memberships { tenant { plan { features { name } } subscription { status } } } }";
    let aliased: Vec<String> = (0..20).map(|i| format!("m{i}: {selection}")).collect();
    let document = format!("{{ {} }}", aliased.join(" "));
    let batch = Value::Array(vec![json!({ "query": document }); 10]);
    let before = app.database.statements();
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    let answers: Vec<Value> = response.json().await.unwrap();
    assert_eq!(answers.len(), 10);
    for answer in &answers {
        assert_eq!(
            error_code(answer),
            Some("GRAPHQL_VALIDATION_FAILED"),
            "{answer}"
        );
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("complex"),
            "{answer}"
        );
    }
    assert!(
        app.database.statements() - before <= 10,
        "refused documents ran no queries beyond authentication"
    );
    // One such selection is fine, and its tenants' plans and subscriptions are loaded in a
    // bounded number of statements (not 3 per tenant).
    let before = app.database.statements();
    let body = app
        .gql(Some(&token), &format!("{{ {selection} }}"), json!({}))
        .await;
    let ran = app.database.statements() - before;
    let memberships = body["data"]["me"]["memberships"].as_array().unwrap();
    assert_eq!(memberships.len(), 20, "{body}");
    assert!(
        memberships
            .iter()
            .all(|m| m["tenant"]["plan"]["features"][0]["name"] == "credits"
                && m["tenant"]["subscription"]["status"] == "active")
    );
    assert!(ran <= 8, "{ran} statements for 20 tenants");
    // A page of the ledger counts once per row it may hold.
    let (_, tenant) = app.owner_with_tenant("pages").await;
    let deep_page = format!(
        "{{ {} }}",
        (0..3)
            .map(|i| format!("h{i}: creditHistory(tenantId: \"{tenant}\", first: 100) {{ nodes {{ id type amount user {{ id email }} }} }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let body = app.gql(Some(&token), &deep_page, json!({})).await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
}

#[tokio::test]
async fn a_document_seen_before_is_still_checked_with_each_requests_variables() {
    let app = spawn_app().await;
    let query = "mutation($e: String!) { signIn(email: $e, password: \"password1\") { token } }";
    for _ in 0..3 {
        let body = app
            .gql(None, query, json!({ "e": "ann@example.com" }))
            .await;
        assert_eq!(error_code(&body), Some("UNAUTHENTICATED"), "{body}");
        let body = app
            .gql(None, query, json!({ "e": "ann\u{0}@example.com" }))
            .await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    }
    // A document that does not parse is refused every time, whatever came before.
    for _ in 0..2 {
        let body = app.gql(None, "{ creditTypes { value }", json!({})).await;
        assert_eq!(error_code(&body), Some("GRAPHQL_PARSE_FAILED"), "{body}");
    }
}
