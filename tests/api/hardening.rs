//! A public endpoint that spends money, against hostile clients: limits on what one request
//! may ask, JSON-only POSTs, CORS, rate limits, and request ids.

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

/// POSTs `body` with `content_type` (none when `None`); returns status, headers and JSON body.
async fn post_raw(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, HeaderMap, Value) {
    let mut request = app
        .client
        .post(format!("{}/graphql", app.address))
        .body(body);
    if let Some(ct) = content_type {
        request = request.header(CONTENT_TYPE, ct);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn post_json(app: &TestApp, body: &Value) -> (u16, Value) {
    let (status, _, json) = post_raw(app, Some("application/json"), body.to_string()).await;
    (status, json)
}

fn nested(levels: usize) -> String {
    // Introspection nests as deep as a client likes: `ofType { ofType { … } }`.
    let mut query = String::from("{ __schema { types { fields { type ");
    for _ in 0..levels {
        query.push_str("{ ofType ");
    }
    query.push_str("{ name }");
    for _ in 0..levels {
        query.push('}');
    }
    query.push_str(" } } } }");
    query
}

fn aliased(n: usize) -> String {
    let fields: Vec<String> = (0..n)
        .map(|i| format!("a{i}: creditTypes {{ value }}"))
        .collect();
    format!("{{ {} }}", fields.join(" "))
}

#[tokio::test]
async fn hostile_requests_get_their_code_and_never_a_500() {
    let app = spawn_app().await;
    let big = "x".repeat(100 * 1024);
    let long_query = format!("{{ creditTypes {{ value }} }} #{}", "x".repeat(20 * 1024));
    // Three full ledger pages with their users: 3 × 100 rows × 7 fields.
    let wide = format!(
        "{{ {} }}",
        (0..3)
            .map(|i| format!("h{i}: creditHistory(tenantId: \"00000000-0000-0000-0000-000000000000\", first: 100) {{ nodes {{ id type amount createdAt user {{ id email }} }} }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let root_fields = format!(
        "{{ {} }}",
        (0..25)
            .map(|_| "creditTypes { value }")
            .collect::<Vec<_>>()
            .join(" ")
    );
    let batch: Vec<Value> = (0..1000)
        .map(|_| json!({ "query": "{ creditTypes { value } }" }))
        .collect();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("huge body", json!({ "query": big }), 413, "BAD_USER_INPUT"),
        (
            "oversized variables",
            json!({ "query": "query($x: String) { creditTypes { value } }", "variables": { "x": big } }),
            413,
            "BAD_USER_INPUT",
        ),
        (
            "deep nesting",
            json!({ "query": nested(40) }),
            200,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "nesting deeper than the parser goes",
            json!({ "query": format!("{}{}", "{ a ".repeat(3000), "}".repeat(3000)) }),
            200,
            "GRAPHQL_PARSE_FAILED",
        ),
        (
            "alias bomb",
            json!({ "query": aliased(100) }),
            200,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "too many root fields",
            json!({ "query": root_fields }),
            200,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "too complex",
            json!({ "query": wide }),
            200,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "document too long",
            json!({ "query": long_query }),
            200,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        ("batch of 1000", Value::Array(batch), 400, "BAD_USER_INPUT"),
    ];
    for (case, body, status, code) in cases {
        let (got, answer) = post_json(&app, &body).await;
        assert_eq!(got, status, "{case}: {answer}");
        let first = match &answer {
            Value::Array(items) => items[0].clone(),
            other => other.clone(),
        };
        assert_eq!(error_code(&first), Some(code), "{case}: {answer}");
    }
    // Requests a form or a `text/plain` fetch could send from another site never run.
    let mutation = json!({ "query": "mutation { signUp(input: {email: \"csrf@example.com\", password: \"password1\", name: \"C\"}) { token } }" }).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let (status, _, answer) = post_raw(&app, content_type, mutation.clone()).await;
        assert_eq!(status, 415, "{content_type:?}: {answer}");
        assert_eq!(error_code(&answer), Some("BAD_USER_INPUT"));
    }
    let (status, _, answer) = post_raw(
        &app,
        Some("application/json; charset=utf-8"),
        vec![0xff, 0xfe, 0x00],
    )
    .await;
    assert_eq!(
        (status, error_code(&answer)),
        (400, Some("GRAPHQL_PARSE_FAILED"))
    );
    // A GET never runs a mutation.
    let response = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", "mutation { signUp(input: {email: \"get@example.com\", password: \"password1\", name: \"G\"}) { token } }")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM \"user\"").await,
        0,
        "nothing ran"
    );
    app.assert_still_answering().await;
}

#[tokio::test]
async fn limits_introspection_and_graphiql_follow_the_config() {
    let app = spawn_app_with(|c| {
        c.graphql.max_depth = 3;
        c.graphql.max_aliases = 2;
        c.graphql.max_batch = 2;
        c.graphql.introspection = false;
        c.graphql.graphiql = false;
        c.http.max_body_bytes = 2048;
    })
    .await;
    let (_, body) = post_json(&app, &json!({ "query": aliased(3) })).await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    let (_, body) = post_json(&app, &json!({ "query": aliased(2) })).await;
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = post_json(
        &app,
        &json!({ "query": "{ plans { features { name } } me { memberships { tenant { plan { slug } } } } }" }),
    )
    .await;
    assert_eq!(
        error_code(&body),
        Some("GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    let three = Value::Array(vec![json!({ "query": "{ plans { slug } }" }); 3]);
    assert_eq!(post_json(&app, &three).await.0, 400);
    let (status, _) = post_json(&app, &json!({ "query": "x".repeat(3000) })).await;
    assert_eq!(status, 413);
    let (_, body) = post_json(&app, &json!({ "query": "{ __schema { types { name } } }" })).await;
    assert!(
        body["data"]["__schema"].is_null(),
        "introspection is off: {body}"
    );
    let page = app
        .client
        .get(format!("{}/graphql", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 404);
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let app =
        spawn_app_with(|c| c.http.cors_allowed_origins = vec!["https://app.example.com".into()])
            .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.address))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type, authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let post = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("Origin", "https://app.example.com")
        .json(&json!({ "query": "{ plans { slug } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        post.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );

    // The same from the environment, as a deployment sets it.
    let server = app
        .start_server(&[(
            "TOLLGATE_HTTP__CORS_ALLOWED_ORIGINS",
            "[\"https://app.example.com\", \"https://admin.example.com\"]",
        )])
        .await;
    let allowed = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/graphql", server.url))
        .header("Origin", "https://admin.example.com")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );

    // Without configured origins, no browser on another origin may read an answer.
    let closed = spawn_app().await;
    let post = closed
        .client
        .post(format!("{}/graphql", closed.address))
        .header("Origin", "https://app.example.com")
        .json(&json!({ "query": "{ plans { slug } }" }))
        .send()
        .await
        .unwrap();
    assert!(!post.headers().contains_key("access-control-allow-origin"));
}

const SIGN_IN: &str =
    "mutation($e: String!, $p: String!) { signIn(email: $e, password: $p) { token } }";

#[tokio::test]
async fn sign_in_and_sign_up_are_limited_per_address_and_requests_per_user() {
    let app = spawn_app_with(|c| {
        c.rate_limit.enabled = true;
        c.rate_limit.auth_per_minute = 3;
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 5;
    })
    .await;
    let (token, _) = app.sign_up("ann@example.com").await; // attempt 1
    for _ in 0..2 {
        let body = app
            .gql(
                None,
                SIGN_IN,
                json!({ "e": "ann@example.com", "p": "wrong password" }),
            )
            .await;
        assert_eq!(error_code(&body), Some("UNAUTHENTICATED"), "{body}");
    }
    // The 4th attempt from this address within a minute, even with the right password.
    let body = app
        .gql(
            None,
            SIGN_IN,
            json!({ "e": "ann@example.com", "p": "correct horse" }),
        )
        .await;
    assert_eq!(error_code(&body), Some("RATE_LIMITED"), "{body}");
    let retry = body["errors"][0]["extensions"]["retryAfter"]
        .as_u64()
        .unwrap();
    assert!((1..=60).contains(&retry), "{body}");

    // A signed-in user: a burst of 5, then 1 a second; 429 with Retry-After past it.
    let mut limited = None;
    for _ in 0..8 {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&token)
            .json(&json!({ "query": "{ me { id } }" }))
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the burst ran out");
    assert_eq!(limited.headers()["retry-after"], "1");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(error_code(&body), Some("RATE_LIMITED"));
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 1);
    // Another client is not affected.
    let body = app.gql(None, "{ plans { slug } }", json!({})).await;
    assert!(body["errors"].is_null(), "{body}");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let send = |id: Option<&'static str>| {
        let mut request = app
            .client
            .post(format!("{}/graphql", app.address))
            .json(&json!({ "query": "{ plans { slug } }" }));
        if let Some(id) = id {
            request = request.header("X-Request-Id", id);
        }
        request.send()
    };
    let echoed = send(Some("trace-abc_123.4")).await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc_123.4");
    let generated = send(None).await.unwrap();
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let replaced = send(Some("no spaces or <html> please")).await.unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert!(health.headers().contains_key("x-request-id"));

    // In production logs (JSON): one line per request with its id and GraphQL operation.
    let server = app
        .start_server(&[("TOLLGATE_LOG_FORMAT", "json"), ("RUST_LOG", "info")])
        .await;
    app.client
        .post(format!("{}/graphql", server.url))
        .header("X-Request-Id", "req-42")
        .json(&json!({ "query": "query Pricing { plans { slug } }", "operationName": "Pricing" }))
        .send()
        .await
        .unwrap();
    let mut line = None;
    for _ in 0..50 {
        let log = std::fs::read_to_string(&server.log).unwrap();
        line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["span"]["request_id"] == "req-42");
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = line.expect("a JSON log line for the request");
    assert_eq!(line["span"]["graphql.operation"], "query plans", "{line}");
    assert_eq!(line["span"]["graphql.operation_name"], "Pricing", "{line}");
    assert_eq!(line["span"]["http.status_code"], 200, "{line}");
}

#[tokio::test]
async fn behind_a_proxy_the_address_it_appended_is_what_is_limited() {
    let app = spawn_app_with(|c| {
        c.rate_limit.enabled = true;
        c.rate_limit.auth_per_minute = 2;
        c.http.trust_forwarded_for = true;
    })
    .await;
    let attempt = |forwarded: &'static str| {
        app.client
            .post(format!("{}/graphql", app.address))
            .header("X-Forwarded-For", forwarded)
            .json(&json!({ "query": SIGN_IN, "variables": { "e": "x@example.com", "p": "password1" } }))
            .send()
    };
    let code = |body: Value| error_code(&body).map(str::to_owned);
    for forwarded in ["1.1.1.1, 10.0.0.1", "2.2.2.2, 10.0.0.1"] {
        let body: Value = attempt(forwarded).await.unwrap().json().await.unwrap();
        assert_eq!(code(body).as_deref(), Some("UNAUTHENTICATED"));
    }
    // What the client put first does not matter: the proxy saw 10.0.0.1 three times.
    let body: Value = attempt("3.3.3.3, 10.0.0.1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(body).as_deref(), Some("RATE_LIMITED"));
    let body: Value = attempt("10.0.0.2").await.unwrap().json().await.unwrap();
    assert_eq!(
        code(body).as_deref(),
        Some("UNAUTHENTICATED"),
        "another client"
    );
}

#[tokio::test]
async fn behind_a_proxy_that_adds_its_own_header_line_the_last_address_of_all_lines_counts() {
    let app = spawn_app_with(|c| {
        c.rate_limit.enabled = true;
        c.rate_limit.auth_per_minute = 2;
        c.http.trust_forwarded_for = true;
    })
    .await;
    // HAProxy appends a header line of its own rather than extending the client's.
    let attempt = |lines: &'static [&'static str]| {
        let mut request = app.client.post(format!("{}/graphql", app.address)).json(
            &json!({ "query": SIGN_IN, "variables": { "e": "x@example.com", "p": "password1" } }),
        );
        for line in lines {
            request = request.header("X-Forwarded-For", *line);
        }
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            error_code(&body).map(str::to_owned)
        }
    };
    for forged in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let lines: &'static [&'static str] = match forged {
            "1.1.1.1" => &["1.1.1.1", "10.0.0.7"],
            "2.2.2.2" => &["2.2.2.2", "10.0.0.7"],
            _ => &["3.3.3.3", "10.0.0.7"],
        };
        let code = attempt(lines).await;
        let expected = if forged == "3.3.3.3" {
            "RATE_LIMITED"
        } else {
            "UNAUTHENTICATED"
        };
        assert_eq!(
            code.as_deref(),
            Some(expected),
            "forged first line {forged}"
        );
    }
    // IPv6 clients count by their /64; an IPv4-mapped address counts as the IPv4 one.
    assert_eq!(
        attempt(&["2001:db8:1:2::1"]).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert_eq!(
        attempt(&["2001:db8:1:2::ffff"]).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert_eq!(
        attempt(&["2001:db8:1:2:aaaa::9"]).await.as_deref(),
        Some("RATE_LIMITED")
    );
    assert_eq!(
        attempt(&["2001:db8:1:3::1"]).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert_eq!(
        attempt(&["::ffff:10.0.0.7"]).await.as_deref(),
        Some("RATE_LIMITED")
    );
}

#[tokio::test]
async fn a_body_is_one_request_or_a_batch_whatever_its_leading_whitespace() {
    let app = spawn_app().await;
    let json = Some("application/json");
    // One request, and a batch of two — each after whitespace, as some clients send them.
    let (status, _, body) = post_raw(&app, json, " \n{\"query\":\"{ __typename }\"}").await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query"))
    );
    let batch = "\t[{\"query\":\"{ __typename }\"}, {\"query\":\"{ creditTypes { value } }\"}]";
    let (status, _, body) = post_raw(&app, json, batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["data"]["__typename"], "Query", "{body}");
    assert!(body[1]["data"]["creditTypes"].is_array(), "{body}");
    // Nothing to run: an empty object, an empty batch; and a request of the wrong shape.
    for empty in ["{}", "[]", " [ ] "] {
        let (status, _, body) = post_raw(&app, json, empty).await;
        assert_eq!(status, 400, "{empty}: {body}");
        assert_eq!(error_code(&body), Some("GRAPHQL_PARSE_FAILED"), "{empty}");
    }
    for wrong in [
        "{\"query\": 7}",
        "[{\"query\":\"{ __typename }\"}, 7]",
        "\"{ __typename }\"",
    ] {
        let (status, _, body) = post_raw(&app, json, wrong).await;
        assert_eq!(status, 400, "{wrong}: {body}");
        assert_eq!(error_code(&body), Some("GRAPHQL_PARSE_FAILED"), "{wrong}");
    }
}

/// A document's validation is kept once it passes (`graphql/validated.rs`): a later request
/// with the same text must still get exactly the answer a never-seen document gets, whatever
/// its variables hold. Each case runs the warmed document and the same document made new by
/// a trailing comment (which moves no error location), and compares their errors.
#[tokio::test]
async fn a_document_validated_before_answers_new_variables_as_a_new_document_would() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("kept").await;
    let project = app.project_id(&token, &tenant).await;
    let task =
        "mutation($p: ID!, $i: CreateTaskInput!) { createTask(projectId: $p, input: $i) { id } }";
    let in_literal =
        "mutation($p: ID!, $t: String!) { createTask(projectId: $p, input: {title: $t}) { id } }";
    let defaulted = "mutation($p: ID = \"nope\", $i: CreateTaskInput!) { createTask(projectId: $p, input: $i) { id } }";
    let key = "mutation($t: ID, $s: [ApiScope!]!) { createApiKey(tenantId: $t, name: \"k\", scopes: $s) { apiKey { id } } }";
    let page = "query($t: ID!, $n: Int) { creditHistory(tenantId: $t, first: $n) { nodes { id type amount createdAt user { id email } } } }";
    let named = "query Types { creditTypes { value } }";
    // Warm every document with variables that pass.
    for (query, variables) in [
        (task, json!({ "p": project, "i": { "title": "a" } })),
        (in_literal, json!({ "p": project, "t": "a" })),
        (defaulted, json!({ "p": project, "i": { "title": "a" } })),
        (key, json!({ "t": tenant, "s": ["CREDITS_READ"] })),
        (page, json!({ "t": tenant, "n": 5 })),
    ] {
        let body = app.gql(Some(&token), query, variables).await;
        assert!(body.get("errors").is_none(), "{query}: {body}");
    }
    let named_body = app.gql(Some(&token), named, json!({})).await;
    assert!(named_body.get("errors").is_none(), "{named_body}");
    // Left out, a variable leaves its whole literal unchecked by validation: the unknown
    // field is found only when the input is read.
    let half_checked = "mutation($p: ID!, $t: String) { createTask(projectId: $p, input: {title: $t, bogus: 1}) { id } }";
    let body = app
        .gql(Some(&token), half_checked, json!({ "p": project }))
        .await;
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");

    let cases = [
        // Values of the wrong type, unknown fields, missing ones, null where none may be.
        (task, json!({ "p": project, "i": { "title": 5 } }), true),
        (task, json!({ "p": project, "i": {} }), true),
        (
            task,
            json!({ "p": project, "i": { "title": "b", "bogus": 1 } }),
            true,
        ),
        (task, json!({ "p": project, "i": "b" }), true),
        (task, json!({ "p": null, "i": { "title": "b" } }), true),
        (task, json!({ "p": [project], "i": { "title": "b" } }), true),
        (task, json!({ "p": project }), true),
        (task, json!({ "p": project, "i": { "title": "b" } }), false),
        // A variable inside a literal: checked once substituted.
        (in_literal, json!({ "p": project, "t": 5 }), true),
        (in_literal, json!({ "p": project, "t": "b" }), false),
        (half_checked, json!({ "p": project, "t": "b" }), true),
        // A nullable variable with a default stands where null is not allowed.
        (defaulted, json!({ "p": null, "i": { "title": "b" } }), true),
        // Enums, and a single value for a list.
        (key, json!({ "t": tenant, "s": ["NOPE"] }), true),
        (key, json!({ "t": tenant, "s": "CREDITS_READ" }), false),
        (key, json!({ "t": tenant, "s": [] }), true),
        // A page's size is the request's complexity: 1,000 rows of 7 fields is too much.
        (page, json!({ "t": tenant, "n": 1000 }), true),
        (page, json!({ "t": tenant, "n": 7 }), false),
    ];
    for (n, (query, variables, refused)) in cases.into_iter().enumerate() {
        let warmed = app.gql(Some(&token), query, variables.clone()).await;
        let unseen = format!("{query}\n# unseen {n}");
        let new = app.gql(Some(&token), &unseen, variables.clone()).await;
        assert_eq!(warmed["errors"], new["errors"], "{query} with {variables}");
        assert_eq!(
            warmed.get("errors").is_some(),
            refused,
            "{query} with {variables}: {warmed}"
        );
    }
    // The one operation asked for by another name.
    let asked = |query: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/graphql", app.address))
                .json(&json!({ "query": query, "operationName": "Other" }))
                .send()
                .await
                .expect("sent")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let warmed = asked(named.to_owned()).await;
    let new = asked(format!("{named}\n# unseen")).await;
    assert!(warmed.get("errors").is_some(), "{warmed}");
    assert_eq!(warmed["errors"], new["errors"]);
}
