//! Generated hostility: thousands of GraphQL documents (valid and not, deep, wide, aliased,
//! with random arguments and variables) and random bytes, thrown at a running server by POST
//! and by GET. Among them every class of input that once hurt: brackets nested thousands deep
//! (lists, objects, input objects; in arguments, variable defaults and variables), list
//! fan-out, nested and reused fragments, control characters in text, dates out of range,
//! non-ASCII idempotency keys, forged `X-Forwarded-For` lines, introspection nested deep.
//! Never a 5xx, never an internal error, every error carries a code, and the server keeps
//! answering. The generator is seeded (`FUZZ_SEED` to replay a run; the seed is printed).

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};

use crate::{
    helpers::spawn_app,
    hostile::{deep_documents, nest},
};

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
        5 => format!(
            "{:?}",
            ["ä😀\u{0}\"'\\", "\u{1b}[31m", "\u{7f}", "\u{85}", "\t\n"]
                .choose(rng)
                .copied()
                .unwrap_or("")
                .repeat(rng.random_range(0..4))
        ),
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
        2 => json!(
            ["ä😀\u{0}", "\u{1b}", "a\u{7f}", "\u{9f}"]
                .choose(rng)
                .copied()
                .unwrap_or("")
                .repeat(rng.random_range(0..50))
        ),
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
    let from = [
        "2020-01-01T00:00:00Z",
        "-5000-01-01T00:00:00Z",
        "+300000-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
    ]
    .choose(rng)
    .copied();
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
            json!({ "t": value(rng, json!(tenant)), "n": value(rng, json!(number)), "a": value(rng, json!("YzE6")), "f": value(rng, json!({ "type": "credit-task-creation", "from": from, "userId": "nope" })) }),
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

/// A request nesting brackets deep (mostly far past the limit) somewhere a parser would
/// recurse: the documents of `hostile::deep_documents` (arguments, input objects, variable
/// defaults, selections), or the variables.
fn deep(rng: &mut StdRng) -> Value {
    let n = *[10, 63, 65, 200, 2_000, 10_000]
        .choose(rng)
        .unwrap_or(&10_000);
    if rng.random_bool(0.15) {
        let variables: Value =
            serde_json::from_str(&nest("[", "1", "]", n.min(120))).unwrap_or(Value::Null);
        return json!({ "query": "query($x: [ID]) { creditTypes { value } }", "variables": { "x": variables } });
    }
    let documents = deep_documents(n);
    let (_, query) = documents.choose(rng).cloned().unwrap_or_default();
    json!({ "query": query })
}

/// Documents that multiply work: list fan-out under many aliases, fragments reused and
/// nested, introspection nested deep.
fn multiplied(rng: &mut StdRng) -> Value {
    let aliases = rng.random_range(1..40);
    match rng.random_range(0..3) {
        0 => {
            let one = "me { memberships { tenant { plan { features { name } } subscription { status } } } }";
            let all: Vec<String> = (0..aliases).map(|i| format!("m{i}: {one}")).collect();
            json!({ "query": format!("{{ {} }}", all.join(" ")) })
        }
        1 => {
            let leaf: Vec<String> = (0..aliases)
                .map(|i| format!("a{i}: plans {{ slug }}"))
                .collect();
            json!({ "query": format!(
                "{{ ...F2 }} fragment F2 on Query {{ ...F1 ...F1 ...F1 }} fragment F1 on Query {{ ...F0 ...F0 }} fragment F0 on Query {{ {} }}",
                leaf.join(" ")
            ) })
        }
        _ => json!({ "query": format!(
            "{{ __schema {{ types {{ fields {{ type {} }} }} }} }}",
            nest("{ ofType ", "{ name }", "}", aliases)
        ) }),
    }
}

fn body(rng: &mut StdRng, tenant: &str, project: &str) -> (Vec<u8>, &'static str) {
    match rng.random_range(0..13) {
        10 => (deep(rng).to_string().into_bytes(), "application/json"),
        11 => (multiplied(rng).to_string().into_bytes(), "application/json"),
        12 => {
            // A batch mixing all of the above.
            let batch: Vec<Value> = (0..rng.random_range(1..8))
                .map(|_| match rng.random_range(0..3) {
                    0 => deep(rng),
                    1 => multiplied(rng),
                    _ => valid(rng, tenant, project),
                })
                .collect();
            (
                Value::Array(batch).to_string().into_bytes(),
                "application/json",
            )
        }
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
    // Headers a client chooses: idempotency keys (some not ASCII), forged address lines.
    let headers: Vec<Vec<(&str, Vec<u8>)>> = (0..requests.len())
        .map(|i| {
            let mut headers = Vec::new();
            if rng.random_bool(0.2) {
                let key: &[u8] = [b"k-1".as_slice(), "clé".as_bytes(), b"\xff\xfe", b"ok key"]
                    .choose(&mut rng)
                    .copied()
                    .unwrap_or(b"k");
                headers.push(("idempotency-key", key.to_vec()));
            }
            if rng.random_bool(0.2) {
                headers.push((
                    "x-forwarded-for",
                    format!("203.0.113.{}", i % 250).into_bytes(),
                ));
                headers.push(("x-forwarded-for", b"2001:db8::1, ::ffff:10.0.0.1".to_vec()));
            }
            headers
        })
        .collect();
    let mut executed = 0;
    for (chunk, chunk_headers) in requests.chunks(50).zip(headers.chunks(50)) {
        let answers = futures::future::join_all(chunk.iter().zip(chunk_headers).enumerate().map(
            |(i, ((body, content_type, signed), headers))| {
                // One in ten JSON bodies with a single query goes by GET instead.
                let by_get = i % 10 == 0
                    && *content_type == "application/json"
                    && serde_json::from_slice::<Value>(body).is_ok_and(|v| {
                        v["query"].is_string()
                            && v["query"].as_str().is_some_and(|q| q.len() < 20_000)
                    });
                let mut request = if by_get {
                    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                    let mut pairs = vec![("query", v["query"].as_str().unwrap_or("").to_owned())];
                    if !v["variables"].is_null() {
                        pairs.push(("variables", v["variables"].to_string()));
                    }
                    app.client
                        .get(format!("{}/graphql", app.address))
                        .query(&pairs)
                } else {
                    app.client
                        .post(format!("{}/graphql", app.address))
                        .header("content-type", *content_type)
                        .body(body.clone())
                };
                for (name, value) in headers {
                    if let Ok(value) = reqwest::header::HeaderValue::from_bytes(value) {
                        request = request.header(*name, value);
                    }
                }
                if *signed {
                    request = request.bearer_auth(&token);
                }
                async move {
                    let response = request.send().await.expect("the server answers");
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    (status, text)
                }
            },
        ))
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
            assert!(
                !text.contains("INTERNAL_SERVER_ERROR"),
                "seed {seed}: bad input answered as an outage for {shown}: {text}"
            );
            executed += usize::from(status == 200 && reached_execution(&answer));
        }
    }
    assert!(executed > 150, "seed {seed}: only {executed} documents ran");
    println!("{executed} of {} documents ran", requests.len());
    app.assert_still_answering().await;
}
