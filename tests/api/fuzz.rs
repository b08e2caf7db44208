//! Generated hostility: thousands of GraphQL documents (valid and not, deep, wide, aliased,
//! with random arguments and variables) and random bytes, thrown at a running server. Never a
//! 5xx, every error carries a code, and the server keeps answering. The generator is seeded
//! (`FUZZ_SEED` to replay a run; the seed is printed).

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

/// Root fields with the arguments they take, and the fields below them.
const QUERIES: &[&str] = &[
    "creditTypes",
    "plans",
    "usageBasedUnits",
    "me",
    "tenant",
    "planFeatureUsage",
    "creditHistory",
    "usageReports",
];
const MUTATIONS: &[&str] = &[
    "signUp",
    "signIn",
    "createTenant",
    "createProject",
    "createTask",
    "createCheckoutSession",
    "createBillingPortalSession",
];
const FIELDS: &[&str] = &[
    "id",
    "value",
    "name",
    "description",
    "amount",
    "slug",
    "title",
    "features",
    "type",
    "order",
    "used",
    "remaining",
    "enabled",
    "message",
    "period",
    "start",
    "end",
    "nodes",
    "edges",
    "node",
    "cursor",
    "pageInfo",
    "hasNextPage",
    "endCursor",
    "user",
    "email",
    "memberships",
    "tenant",
    "role",
    "plan",
    "subscription",
    "status",
    "token",
    "url",
    "__typename",
    "createdAt",
    "objectId",
    "creditType",
    "nope",
    "__schema",
    "types",
    "fields",
    "ofType",
    "kind",
];
const ARGS: &[&str] = &[
    "id",
    "tenantId",
    "projectId",
    "first",
    "after",
    "feature",
    "filter",
    "input",
    "email",
    "password",
    "idempotencyKey",
    "planSlug",
    "bogus",
];

fn scalar(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => rng.random::<i64>().to_string(),
        1 => rng.random_range(-5..200).to_string(),
        2 => format!("{:?}", uuid::Uuid::now_v7().to_string()),
        3 => "null".into(),
        4 => (if rng.random() { "true" } else { "false" }).into(),
        5 => format!("{:?}", "ä😀\u{0}\"'\\".repeat(rng.random_range(0..4))),
        6 => format!("\"{}\"", "x".repeat(rng.random_range(0..3000))),
        7 => "1e309".into(),
        8 => "[1, \"a\", null]".into(),
        9 => format!(
            "{{ name: {:?}, slug: \"s{}\", title: \"t\", email: \"e{}@example.com\", password: \"password1\" }}",
            "n",
            rng.random::<u32>(),
            rng.random::<u32>()
        ),
        10 => "$v".into(),
        _ => "ENUM_VALUE".into(),
    }
}

fn selection(rng: &mut StdRng, depth: usize) -> String {
    if depth == 0 || rng.random_bool(0.3) {
        return FIELDS.choose(rng).copied().unwrap_or("id").to_owned();
    }
    let n = rng.random_range(1..6);
    let inner: Vec<String> = (0..n)
        .map(|i| {
            let field = FIELDS.choose(rng).copied().unwrap_or("id");
            let alias = if rng.random_bool(0.2) {
                format!("a{i}: ")
            } else {
                String::new()
            };
            let directive = match rng.random_range(0..10) {
                0 => " @skip(if: true)",
                1 => " @include(if: $flag)",
                2 => " @nope",
                _ => "",
            };
            if rng.random_bool(0.5) {
                format!(
                    "{alias}{field}{directive} {{ {} }}",
                    selection(rng, depth - 1)
                )
            } else {
                format!("{alias}{field}{directive}")
            }
        })
        .collect();
    inner.join(" ")
}

fn document(rng: &mut StdRng) -> String {
    let mutation = rng.random_bool(0.4);
    let roots = if mutation { MUTATIONS } else { QUERIES };
    let n = rng.random_range(1..4);
    let fields: Vec<String> = (0..n)
        .map(|i| {
            let root = roots.choose(rng).copied().unwrap_or("me");
            let args: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| {
                    format!(
                        "{}: {}",
                        ARGS.choose(rng).copied().unwrap_or("id"),
                        scalar(rng)
                    )
                })
                .collect();
            let args = if args.is_empty() {
                String::new()
            } else {
                format!("({})", args.join(", "))
            };
            let alias = if rng.random_bool(0.2) {
                format!("r{i}: ")
            } else {
                String::new()
            };
            let depth = rng.random_range(0..8);
            format!("{alias}{root}{args} {{ {} }}", selection(rng, depth))
        })
        .collect();
    let kind = if mutation { "mutation" } else { "query" };
    let mut doc = format!(
        "{kind} Op($v: String, $flag: Boolean = true) {{ {} }}",
        fields.join(" ")
    );
    if rng.random_bool(0.2) {
        doc.push_str(" fragment F on Query { plans { slug } }");
    }
    if rng.random_bool(0.15) {
        // Damage it: cut it somewhere, or splice in punctuation.
        let cut = rng.random_range(0..doc.len().max(1));
        let cut = (0..=cut)
            .rev()
            .find(|&i| doc.is_char_boundary(i))
            .unwrap_or(0);
        doc.truncate(cut);
        doc.push_str(
            ["}", "{", "(", ":", "$", "@", "...", "\"", "#"]
                .choose(rng)
                .copied()
                .unwrap_or("}"),
        );
    }
    doc
}

/// A random JSON value: mostly of the right type for a variable, often not.
fn value(rng: &mut StdRng, right: Value) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.random::<i64>()),
        2 => json!("ä😀\u{0}".repeat(rng.random_range(0..50))),
        3 => json!("x".repeat(rng.random_range(0..400))),
        4 => json!([right.clone(), right]),
        5 => json!(uuid::Uuid::now_v7().to_string()),
        _ => right,
    }
}

/// A document the schema accepts, with random variables: it gets executed.
fn valid(rng: &mut StdRng, tenant: &str, project: &str) -> Value {
    let key = format!("k{}", rng.random_range(0..20));
    let number = rng.random_range(-3..130);
    let email = format!("u{}@example.com", rng.random::<u32>());
    let (query, variables) = match rng.random_range(0..6) {
        0 => (
            "mutation($t: ID!, $n: String!, $d: String, $k: String) { createProject(tenantId: $t, input: {name: $n, description: $d}, idempotencyKey: $k) { id name tenantId } }",
            json!({ "t": value(rng, json!(tenant)), "n": value(rng, json!("P")), "d": value(rng, json!("d")), "k": value(rng, json!(key)) }),
        ),
        1 => (
            "mutation($p: ID!, $title: String!, $k: String) { createTask(projectId: $p, input: {title: $title}, idempotencyKey: $k) { id projectId title } }",
            json!({ "p": value(rng, json!(project)), "title": value(rng, json!("T")), "k": value(rng, json!(key)) }),
        ),
        2 => (
            "query($t: ID!, $n: Int, $a: String, $f: CreditHistoryFilter) { creditHistory(tenantId: $t, first: $n, after: $a, filter: $f) { nodes { id amount type user { email } creditType { name } } pageInfo { hasNextPage endCursor } } }",
            json!({ "t": value(rng, json!(tenant)), "n": value(rng, json!(number)), "a": value(rng, json!("YzE6")), "f": value(rng, json!({ "type": "credit-task-creation", "from": "2020-01-01T00:00:00Z", "userId": "nope" })) }),
        ),
        3 => (
            "query($t: ID!, $f: String!) { planFeatureUsage(tenantId: $t, feature: $f) { used remaining enabled message period { start end } } tenant(id: $t) { subscription { status plan { slug } } } }",
            json!({ "t": value(rng, json!(tenant)), "f": value(rng, json!("credits")) }),
        ),
        4 => (
            "mutation($e: String!, $p: String!, $n: String!) { signUp(input: {email: $e, password: $p, name: $n}) { token user { id } } }",
            json!({ "e": value(rng, json!(email)), "p": value(rng, json!("password1")), "n": value(rng, json!("N")) }),
        ),
        _ => (
            "query($t: ID!, $n: Int) { usageReports(tenantId: $t, first: $n) { nodes { id status } } me { memberships { role tenant { slug plan { slug features { name type value } } } } } }",
            json!({ "t": value(rng, json!(tenant)), "n": value(rng, json!(5)) }),
        ),
    };
    json!({ "query": query, "variables": variables })
}

fn body(rng: &mut StdRng, tenant: &str, project: &str) -> (Vec<u8>, &'static str) {
    match rng.random_range(0..10) {
        5..=7 => (
            valid(rng, tenant, project).to_string().into_bytes(),
            "application/json",
        ),
        0 => {
            let n = rng.random_range(0..2048);
            (
                (0..n).map(|_| rng.random::<u8>()).collect(),
                "application/json",
            )
        }
        1 => {
            let batch: Vec<Value> = (0..rng.random_range(0..15))
                .map(|_| json!({ "query": document(rng) }))
                .collect();
            (
                Value::Array(batch).to_string().into_bytes(),
                "application/json",
            )
        }
        2 => (
            json!({ "query": document(rng), "variables": [1, 2], "operationName": 7 })
                .to_string()
                .into_bytes(),
            "application/json",
        ),
        3 => (
            json!({ "query": document(rng) }).to_string().into_bytes(),
            "text/plain",
        ),
        _ => {
            let variables = match rng.random_range(0..4) {
                0 => json!({ "v": "x", "flag": false }),
                1 => json!({ "v": 5, "flag": "yes" }),
                2 => json!({ "v": { "deep": [[[[]]]] } }),
                _ => Value::Null,
            };
            (
                json!({ "query": document(rng), "variables": variables, "operationName": "Op" })
                    .to_string()
                    .into_bytes(),
                "application/json",
            )
        }
    }
}

/// Whether a single answer's document parsed and validated (it ran, maybe into errors).
fn reached_execution(answer: &Value) -> bool {
    answer.is_object()
        && answer["errors"].as_array().is_none_or(|errors| {
            errors.iter().all(|e| {
                !matches!(
                    e["extensions"]["code"].as_str(),
                    Some("GRAPHQL_PARSE_FAILED" | "GRAPHQL_VALIDATION_FAILED")
                )
            })
        })
}

/// Every error in a GraphQL answer has `extensions.code`.
fn all_coded(answer: &Value) -> bool {
    let responses = match answer {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        other => vec![other],
    };
    responses.iter().all(|r| {
        r["errors"]
            .as_array()
            .is_none_or(|errors| errors.iter().all(|e| e["extensions"]["code"].is_string()))
    })
}

#[tokio::test]
async fn generated_documents_and_random_bytes_never_get_a_5xx() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("fuzzed").await;
    let project = app.project_id(&token, &tenant).await;
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<(Vec<u8>, &str, bool)> = (0..2000)
        .map(|_| {
            let (body, content_type) = body(&mut rng, &tenant, &project);
            (body, content_type, rng.random_bool(0.5))
        })
        .collect();
    let mut executed = 0;
    for chunk in requests.chunks(50) {
        let answers =
            futures::future::join_all(chunk.iter().map(|(body, content_type, signed)| {
                let mut request = app
                    .client
                    .post(format!("{}/graphql", app.address))
                    .header("content-type", *content_type)
                    .body(body.clone());
                if *signed {
                    request = request.bearer_auth(&token);
                }
                async move {
                    let response = request.send().await.expect("the server answers");
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    (status, text)
                }
            }))
            .await;
        for ((body, _, _), (status, text)) in chunk.iter().zip(answers) {
            let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            assert!(status < 500, "seed {seed}: {status} for {shown}: {text}");
            let answer: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("seed {seed}: not JSON for {shown}: {text}"));
            assert!(
                all_coded(&answer),
                "seed {seed}: an error without a code for {shown}: {text}"
            );
            executed += usize::from(status == 200 && reached_execution(&answer));
        }
    }
    assert!(executed > 150, "seed {seed}: only {executed} documents ran");
    println!("{executed} of {} documents ran", requests.len());
    app.assert_still_answering().await;
}
