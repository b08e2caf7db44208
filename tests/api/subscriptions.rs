//! The live balance over WebSocket, with the real `graphql-ws` client a frontend uses
//! (tests/browser/subscribe.mjs): the current value first, then each change — made on this
//! server, or through another replica on PostgreSQL (within a second); the legacy protocol; a
//! bad token closed with 4401; another tenant refused; a removed member's stream ended; too
//! many connections closed with 4429; changes still heard after the PostgreSQL listener's
//! connection is cut. And the tenant's event feed (`creditEvents`): ledger and alert events in
//! commit order with the tenant's sequence numbers, resumed after a number (from 0: page after
//! page), filtered by type, from another replica.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use entity::plan_feature::FeatureLimitType;

use crate::helpers::{spawn_app_with, spawn_app_with_plan};

const BALANCE: &str = "subscription($t: ID!) { creditBalance(tenantId: $t) { used remaining \
    grantsRemaining available } }";

/// A `graphql-ws` client subscribed to one document, its events read as they come.
struct Subscriber {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    async fn start(
        server: &str,
        authorization: &str,
        tenant: &str,
        count: usize,
        legacy: bool,
    ) -> Subscriber {
        let variables = json!({ "t": tenant });
        Subscriber::document(server, authorization, BALANCE, variables, count, legacy).await
    }

    /// A subscription to any `document`.
    async fn document(
        server: &str,
        authorization: &str,
        document: &str,
        variables: Value,
        count: usize,
        legacy: bool,
    ) -> Subscriber {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || crate::browser::ensure_browser(&dir)
        })
        .await
        .unwrap();
        let url = format!("{}/graphql/ws", server.replacen("http", "ws", 1));
        let mut command = Command::new("node");
        command
            .arg(dir.join("subscribe.mjs"))
            .args([
                url,
                authorization.to_owned(),
                document.to_owned(),
                variables.to_string(),
                count.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if legacy {
            command.arg("legacy");
        }
        let mut child = command.spawn().expect("node runs");
        let stdout = child.stdout.take().unwrap();
        Subscriber {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next event, within `within`.
    async fn next(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))
            .expect("stdout")
            .expect("an event before the client ended");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON line: {line}"))
    }

    /// The next event's balance (a `next` with no errors).
    async fn balance(&mut self, within: Duration) -> Value {
        let event = self.next(within).await;
        let balance = &event["next"]["data"]["creditBalance"];
        assert!(balance.is_object(), "a balance: {event}");
        balance.clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const SECOND: Duration = Duration::from_secs(1);
/// The first value: node starting, the connection, the handshake.
const START: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_balance_arrives_first_then_every_change() {
    let app = spawn_app_with(|c| c.platform_admins = vec!["root@example.com".into()]).await;
    let (admin, _) = app.sign_up("root@example.com").await;
    let (owner, tenant) = app.owner_with_tenant("live").await;
    let mut live = Subscriber::start(&app.address, &bearer(&owner), &tenant, 3, false).await;
    let first = live.balance(START).await;
    assert_eq!(
        (&first["used"], &first["remaining"]),
        (&json!(0), &json!(10)),
        "{first}"
    );

    app.project_id(&owner, &tenant).await;
    let spent = live.balance(SECOND).await;
    assert_eq!(
        (&spent["used"], &spent["remaining"]),
        (&json!(2), &json!(8)),
        "{spent}"
    );

    let granted = app
        .gql(
            Some(&admin),
            "mutation($t: ID!) { grantCredits(input: { tenantId: $t, amount: 5, idempotencyKey: \"g\" }) { grant { id } } }",
            json!({ "t": tenant }),
        )
        .await;
    assert!(granted["errors"].is_null(), "{granted}");
    let more = live.balance(SECOND).await;
    assert_eq!(
        (&more["grantsRemaining"], &more["available"]),
        (&json!(5), &json!(13)),
        "{more}"
    );
}

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_works_too() {
    let app = spawn_app_with(|_| {}).await;
    let (owner, tenant) = app.owner_with_tenant("legacy").await;
    let mut live = Subscriber::start(&app.address, &bearer(&owner), &tenant, 2, true).await;
    assert_eq!(live.balance(START).await["used"], 0);
    app.project_id(&owner, &tenant).await;
    assert_eq!(live.balance(SECOND).await["used"], 2);
}

#[tokio::test]
async fn a_spend_through_another_replica_reaches_the_subscriber_within_a_second() {
    let app = spawn_app_with(|_| {}).await;
    if !app.is_postgres() {
        // SQLite is one process: its changes are an in-process broadcast (the test above).
        return;
    }
    let (owner, tenant) = app.owner_with_tenant("replicas").await;
    let project = app.project_id(&owner, &tenant).await;
    let other = app.start_server(&app.replica_env(10)).await;
    let mut live = Subscriber::start(&app.address, &bearer(&owner), &tenant, 2, false).await;
    assert_eq!(live.balance(START).await["used"], 2);
    let task = app
        .gql_at(
            &other.url,
            &owner,
            "mutation($p: ID!) { createTask(projectId: $p, input: { title: \"t\" }) { id } }",
            json!({ "p": project }),
        )
        .await
        .expect("answered");
    assert!(task["errors"].is_null(), "{task}");
    assert_eq!(live.balance(SECOND).await["used"], 3);
}

#[tokio::test]
async fn a_bad_or_missing_token_is_closed_with_4401() {
    let app = spawn_app_with(|_| {}).await;
    let (_, tenant) = app.owner_with_tenant("closed").await;
    for authorization in ["Bearer not-a-token", "Bearer tg_sk_nonsense", ""] {
        let mut live = Subscriber::start(&app.address, authorization, &tenant, 1, false).await;
        let mut event = live.next(START).await;
        if event.get("closed").is_none() {
            event = live.next(SECOND).await;
        }
        assert_eq!(event["closed"]["code"], 4401, "{authorization:?}: {event}");
    }
}

#[tokio::test]
async fn another_tenants_balance_is_refused_and_a_removed_members_stream_ends() {
    let app = spawn_app_with(|_| {}).await;
    let (owner, tenant) = app.owner_with_tenant("team").await;
    let (stranger, _) = app.owner_with_tenant("stranger").await;
    let mut refused = Subscriber::start(&app.address, &bearer(&stranger), &tenant, 1, false).await;
    let event = refused.next(START).await;
    assert_eq!(
        event["next"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{event}"
    );

    // A member watching, then removed: told so, and the stream ends.
    let invited = app
        .gql(
            Some(&owner),
            "mutation($t: ID!) { inviteMember(tenantId: $t, email: \"member@example.com\") { token } }",
            json!({ "t": tenant }),
        )
        .await;
    let token = invited["data"]["inviteMember"]["token"].as_str().unwrap();
    let (member, member_id) = app.sign_up("member@example.com").await;
    app.gql(
        Some(&member),
        "mutation($token: String!) { acceptInvitation(token: $token) { role } }",
        json!({ "token": token }),
    )
    .await;
    let mut live = Subscriber::start(&app.address, &bearer(&member), &tenant, 5, false).await;
    live.balance(START).await;
    let removed = app
        .gql(
            Some(&owner),
            "mutation($t: ID!, $u: ID!) { removeMember(tenantId: $t, userId: $u) }",
            json!({ "t": tenant, "u": member_id }),
        )
        .await;
    assert!(removed["errors"].is_null(), "{removed}");
    let told = live.next(SECOND).await;
    assert_eq!(
        told["next"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{told}"
    );
    assert_eq!(live.next(SECOND).await, json!({ "complete": true }));
}

#[tokio::test]
async fn connections_past_the_limit_per_user_are_closed_with_4429() {
    let app = spawn_app_with(|c| c.graphql.max_connections_per_user = 1).await;
    let (owner, tenant) = app.owner_with_tenant("limited").await;
    let mut first = Subscriber::start(&app.address, &bearer(&owner), &tenant, 2, false).await;
    first.balance(START).await;
    let mut second = Subscriber::start(&app.address, &bearer(&owner), &tenant, 1, false).await;
    let mut event = second.next(START).await;
    if event.get("closed").is_none() {
        event = second.next(SECOND).await;
    }
    assert_eq!(event["closed"]["code"], 4429, "{event}");
    // The first still works.
    app.project_id(&owner, &tenant).await;
    assert_eq!(first.balance(SECOND).await["used"], 2);
}

#[tokio::test]
async fn after_the_change_listener_loses_its_connection_subscribers_still_hear_of_changes() {
    let app = spawn_app_with(|_| {}).await;
    if !app.is_postgres() {
        // No listener on SQLite: changes are an in-process broadcast.
        return;
    }
    let (owner, tenant) = app.owner_with_tenant("relisten").await;
    let mut live = Subscriber::start(&app.address, &bearer(&owner), &tenant, 3, false).await;
    assert_eq!(live.balance(START).await["used"], 0);
    // The server's LISTEN connection is cut (a failover, a restart of PostgreSQL's side).
    let cut = app
        .scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await;
    assert_eq!(cut, 1, "one listener per process");
    // A change made while it reconnects reaches the subscriber: by its NOTIFY once the
    // listener is back, or by the read-again every subscriber is told to do then.
    app.project_id(&owner, &tenant).await;
    // (A read-again that finds nothing new sends nothing: the next value is the change.)
    let seen = live.balance(Duration::from_secs(5)).await;
    assert_eq!(seen["used"], 2, "{seen}");
}

const EVENTS: &str = "subscription($t: ID!, $after: Sequence, $types: [CreditEventType!]) { \
    creditEvents(tenantId: $t, after: $after, types: $types) { sequence id type at feature \
    credit { id amount kind } data } }";

const CONSUME: &str = "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { \
    credit { id } } }";

/// A spend of `amount` through `server`: its ledger row's id (or the error's code).
async fn consume(
    app: &crate::helpers::TestApp,
    server: &str,
    token: &str,
    tenant: &str,
    amount: i64,
    key: &str,
) -> Result<String, String> {
    let input = json!({ "tenantId": tenant, "amount": amount, "idempotencyKey": key });
    let body = app
        .gql_at(server, token, CONSUME, json!({ "input": input }))
        .await
        .expect("answered");
    match body["data"]["consumeCredits"]["credit"]["id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => Err(crate::helpers::error_code(&body).unwrap_or("?").to_owned()),
    }
}

impl Subscriber {
    /// The next `creditEvents` event whose id is not in `skip`.
    async fn event(&mut self, within: Duration, skip: &[&str]) -> Value {
        loop {
            let next = self.next(within).await;
            let event = &next["next"]["data"]["creditEvents"];
            assert!(event.is_object(), "an event: {next}");
            if !skip.contains(&event["id"].as_str().unwrap()) {
                return event.clone();
            }
        }
    }
}

#[tokio::test]
async fn credit_events_arrive_in_commit_order_with_sequence_numbers() {
    let app = spawn_app_with(|_| {}).await;
    let (owner, tenant) = app.owner_with_tenant("feed").await;
    let first = consume(&app, &app.address, &owner, &tenant, 1, "a")
        .await
        .unwrap();
    // Resumed after the first spend (the tenant's event 1): what follows it, nothing missed.
    let vars = json!({ "t": tenant, "after": 1 });
    let mut feed =
        Subscriber::document(&app.address, &bearer(&owner), EVENTS, vars, 10, false).await;
    let limits = json!({ "t": tenant, "after": 1, "types": ["LIMIT_REACHED"] });
    let mut refusals =
        Subscriber::document(&app.address, &bearer(&owner), EVENTS, limits, 10, false).await;
    let seven = consume(&app, &app.address, &owner, &tenant, 7, "b")
        .await
        .unwrap();
    let two = consume(&app, &app.address, &owner, &tenant, 2, "c")
        .await
        .unwrap();
    assert_eq!(
        consume(&app, &app.address, &owner, &tenant, 1, "d").await,
        Err("INSUFFICIENT_CREDITS".into())
    );
    let mut events = Vec::new();
    for _ in 0..6 {
        events.push(feed.event(START, &[&first]).await);
    }
    let seen: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["credit"]["id"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("SPEND", Some(seven.as_str())),
            ("THRESHOLD_REACHED", None),
            ("SPEND", Some(two.as_str())),
            ("THRESHOLD_REACHED", None),
            ("DEPLETED", None),
            ("LIMIT_REACHED", None),
        ],
        "{events:?}"
    );
    // The tenant's numbers, after the first spend's: without a gap, in commit order.
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [2, 3, 4, 5, 6, 7], "{events:?}");
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["id"].as_str() < w[1]["id"].as_str())
    );
    assert_eq!(
        (
            &events[1]["data"]["rule"]["threshold"],
            &events[1]["data"]["used"]
        ),
        (&json!(80), &json!(8))
    );
    assert_eq!(events[0]["credit"]["amount"], 7);
    assert_eq!(events[4]["feature"], "credits");
    // Only what was asked for, under the tenant's number: the others are skipped.
    let refused = refusals.event(START, &[]).await;
    assert_eq!(
        (&refused["type"], &refused["sequence"]),
        (&json!("LIMIT_REACHED"), &json!(7))
    );
    // Another tenant's feed is refused.
    let (stranger, _) = app.owner_with_tenant("stranger").await;
    let vars = json!({ "t": tenant });
    let mut theirs =
        Subscriber::document(&app.address, &bearer(&stranger), EVENTS, vars, 1, false).await;
    let refused = theirs.next(START).await;
    assert_eq!(
        refused["next"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
}

#[tokio::test]
async fn credit_events_from_another_replica_arrive_within_a_second() {
    let app = spawn_app_with(|_| {}).await;
    if !app.is_postgres() {
        return;
    }
    let (owner, tenant) = app.owner_with_tenant("far").await;
    let first = consume(&app, &app.address, &owner, &tenant, 1, "a")
        .await
        .unwrap();
    let other = app.start_server(&app.replica_env(10)).await;
    let vars = json!({ "t": tenant, "after": 0 });
    let mut feed =
        Subscriber::document(&app.address, &bearer(&owner), EVENTS, vars, 10, false).await;
    // From the start: the first spend.
    assert_eq!(feed.event(START, &[]).await["credit"]["id"], first.as_str());
    let there = consume(&app, &other.url, &owner, &tenant, 2, "b")
        .await
        .unwrap();
    let event = feed.event(SECOND, &[]).await;
    assert_eq!(
        (&event["type"], &event["credit"]["id"]),
        (&json!("SPEND"), &json!(there))
    );
    assert_eq!(event["sequence"], 2);
}

#[tokio::test]
async fn a_feed_resumed_from_the_start_pages_through_every_event_once_in_order() {
    let app = spawn_app_with_plan(FeatureLimitType::Unlimited, 0).await;
    let (owner, tenant) = app.owner_with_tenant("pages").await;
    // More events than one read takes (`feed::PAGE`, 500).
    let count = 520;
    for chunk in (0..count).collect::<Vec<_>>().chunks(40) {
        let spends = chunk.iter().map(|i| {
            let (app, owner, tenant) = (&app, &owner, &tenant);
            async move { consume(app, &app.address, owner, tenant, 1, &format!("k{i}")).await }
        });
        for spent in futures::future::join_all(spends).await {
            spent.unwrap();
        }
    }
    let vars = json!({ "t": tenant, "after": 0 });
    let mut feed = Subscriber::document(
        &app.address,
        &bearer(&owner),
        EVENTS,
        vars,
        count + 1,
        false,
    )
    .await;
    let mut sequences = Vec::new();
    for _ in 0..count {
        sequences.push(feed.event(START, &[]).await["sequence"].as_i64().unwrap());
    }
    assert_eq!(sequences, (1..=count as i64).collect::<Vec<_>>());
    // Then the live ones, numbered on.
    consume(&app, &app.address, &owner, &tenant, 1, "after")
        .await
        .unwrap();
    assert_eq!(feed.event(START, &[]).await["sequence"], json!(count + 1));
}
