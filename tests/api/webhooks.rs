//! Signed webhooks Tollgate sends, received by a local endpoint: signatures checked with the
//! Standard Webhooks reference library (`standardwebhooks` on crates.io), retries after 500,
//! a timeout and 429 with `Retry-After`, `410 Gone` disabling the endpoint, retries running
//! out and a replay, secret rotation (both signatures during the overlap), events fanned out
//! from real changes (an invitation), who may manage endpoints, and internal targets refused.
//! Each attempt shows in the metrics by outcome (`tollgate_webhook_deliveries_total`).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tollgate::config::Config;

use crate::{
    helpers::{TestApp, error_code, spawn_app_with},
    operability::{metrics_page, sample},
    stripe::eventually,
};

const ADMIN: &str = "root@example.com";

const CREATE: &str = "mutation($input: CreateWebhookEndpointInput!) { \
    createWebhookEndpoint(input: $input) { secret endpoint { id tenantId url eventTypes enabled } } }";

const DELIVERIES: &str = "query($e: ID!) { webhookDeliveries(endpointId: $e) { nodes { id eventId \
    status attempts lastStatusCode lastError } } }";

const ENDPOINTS: &str = "query($t: ID) { webhookEndpoints(tenantId: $t) { id enabled \
    disabledReason failingSince previousSecretExpiresAt } }";

/// How the receiver answers one request.
#[derive(Clone, Debug)]
enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    Hang(Duration),
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: hyper::HeaderMap,
    body: String,
    at: Instant,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    script: VecDeque<Reply>,
}

/// A local webhook endpoint: records every request; answers 200 unless scripted.
#[derive(Clone)]
struct Receiver {
    url: String,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let log = Arc::new(Mutex::new(Log::default()));
        let data = web::Data::from(log.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .disable_signals()
        .run();
        tokio::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hooks"),
            log,
        }
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.log.lock().unwrap().script.extend(replies);
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().received.clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} webhooks received"), || async {
            self.received().len() >= n
        })
        .await;
        self.received()
    }
}

async fn receive(log: web::Data<Mutex<Log>>, request: HttpRequest, body: String) -> HttpResponse {
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in request.headers() {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            hyper::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    let reply = {
        let mut log = log.lock().unwrap();
        log.received.push(Received {
            headers,
            body,
            at: Instant::now(),
        });
        log.script.pop_front()
    };
    match reply {
        None => HttpResponse::Ok().finish(),
        Some(Reply::Status(code)) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap()).finish()
        }
        Some(Reply::RetryAfter(code, seconds)) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .insert_header(("Retry-After", seconds.to_string()))
                .finish()
        }
        Some(Reply::Hang(delay)) => {
            tokio::time::sleep(delay).await;
            HttpResponse::Ok().finish()
        }
    }
}

/// Quick senders: 50 ms rounds, retries after 0, 100 and 200 ms, 500 ms to answer.
fn quick(c: &mut Config) {
    c.webhooks.allow_private_targets = true;
    c.webhooks.worker_interval_ms = 50;
    c.webhooks.timeout_ms = 500;
    c.webhooks.claim_seconds = 2;
    c.webhooks.retry_schedule_ms = vec![0, 100, 200];
    c.platform_admins = vec![ADMIN.into()];
}

async fn endpoint(app: &TestApp, token: &str, tenant: Option<&str>, url: &str) -> (String, String) {
    let body = app
        .gql(
            Some(token),
            CREATE,
            json!({ "input": { "tenantId": tenant, "url": url } }),
        )
        .await;
    let created = &body["data"]["createWebhookEndpoint"];
    let secret = created["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    (
        created["endpoint"]["id"].as_str().unwrap().to_owned(),
        secret,
    )
}

async fn send_test(app: &TestApp, token: &str, endpoint: &str) -> Value {
    let body = app
        .gql(
            Some(token),
            "mutation($e: ID!) { sendTestWebhook(id: $e) { id eventId status } }",
            json!({ "e": endpoint }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["sendTestWebhook"].clone()
}

async fn deliveries(app: &TestApp, token: &str, endpoint: &str) -> Vec<Value> {
    let body = app
        .gql(Some(token), DELIVERIES, json!({ "e": endpoint }))
        .await;
    body["data"]["webhookDeliveries"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone()
}

async fn settled(app: &TestApp, token: &str, endpoint: &str, status: &str) -> Value {
    eventually(&format!("the delivery is {status}"), || async {
        deliveries(app, token, endpoint).await[0]["status"] == status
    })
    .await;
    deliveries(app, token, endpoint).await[0].clone()
}

/// Waits until the server's `tollgate_webhook_deliveries_total` reads, for each outcome,
/// the count given (the sender counts an attempt just after recording it).
async fn counted(app: &TestApp, expected: &[(&str, f64)]) {
    let what = format!("webhook deliveries counted {expected:?}");
    eventually(&what, || async {
        let page = metrics_page(app).await;
        expected.iter().all(|(outcome, n)| {
            let series = format!("tollgate_webhook_deliveries_total{{outcome=\"{outcome}\"}}");
            sample(&page, &series).unwrap_or(0.0) == *n
        })
    })
    .await;
}

fn verify(secret: &str, r: &Received) {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(r.body.as_bytes(), &r.headers)
        .unwrap_or_else(|e| panic!("signature of {r:?} under the secret: {e:?}"));
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers[name].to_str().unwrap()
}

#[tokio::test]
async fn a_test_webhook_arrives_signed_in_the_standard_webhooks_format() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("hooks").await;
    let (endpoint, secret) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    let delivery = send_test(&app, &owner, &endpoint).await;
    let received = receiver.wait_for(1).await;
    let r = &received[0];
    verify(&secret, r);
    let event_id = delivery["eventId"].as_str().unwrap().replace('-', "");
    assert_eq!(header(r, "webhook-id"), format!("msg_{event_id}"));
    assert_eq!(header(r, "content-type"), "application/json");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["data"]["tenantId"], tenant);
    assert!(body["timestamp"].is_string());
    let done = settled(&app, &owner, &endpoint, "DELIVERED").await;
    assert_eq!(
        (&done["attempts"], &done["lastStatusCode"]),
        (&json!(1), &json!(200))
    );
    counted(&app, &[("delivered", 1.0), ("retry", 0.0), ("failed", 0.0)]).await;
    // A wrong secret does not verify.
    let wrong = tollgate::webhooks::new_secret();
    assert!(
        standardwebhooks::Webhook::new(&wrong)
            .unwrap()
            .verify(r.body.as_bytes(), &r.headers)
            .is_err()
    );
}

#[tokio::test]
async fn failures_are_retried_with_the_same_id_and_retry_after_is_honoured() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("retries").await;
    let (endpoint, secret) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    // 500, then no answer in time, then 429 asking for 2 s, then 200.
    receiver.script([
        Reply::Status(500),
        Reply::Hang(Duration::from_secs(2)),
        Reply::RetryAfter(429, 2),
    ]);
    send_test(&app, &owner, &endpoint).await;
    let done = settled(&app, &owner, &endpoint, "DELIVERED").await;
    let received = receiver.received();
    assert_eq!(received.len(), 4, "{received:?}");
    assert_eq!(done["attempts"], 4);
    let id = header(&received[0], "webhook-id");
    for r in &received {
        assert_eq!(header(r, "webhook-id"), id, "one id across retries");
        verify(&secret, r);
    }
    counted(&app, &[("delivered", 1.0), ("retry", 3.0), ("failed", 0.0)]).await;
    let waited = received[3].at - received[2].at;
    assert!(
        waited >= Duration::from_millis(1_900),
        "Retry-After: 2 honoured: {waited:?}"
    );
    // The endpoint is healthy again.
    let listed = app
        .gql(Some(&owner), ENDPOINTS, json!({ "t": tenant }))
        .await;
    assert_eq!(
        listed["data"]["webhookEndpoints"][0]["failingSince"],
        Value::Null
    );
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_later_deliveries_fail_visibly() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("gone").await;
    let (endpoint, _) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    receiver.script([Reply::Status(410)]);
    send_test(&app, &owner, &endpoint).await;
    let failed = settled(&app, &owner, &endpoint, "FAILED").await;
    assert_eq!(failed["lastStatusCode"], 410);
    let listed = app
        .gql(Some(&owner), ENDPOINTS, json!({ "t": tenant }))
        .await;
    let listed = &listed["data"]["webhookEndpoints"][0];
    assert_eq!(listed["enabled"], false, "{listed}");
    assert!(listed["disabledReason"].as_str().unwrap().contains("410"));

    // While disabled, a delivery is not made, and says why.
    send_test(&app, &owner, &endpoint).await;
    let dropped = settled(&app, &owner, &endpoint, "FAILED").await;
    assert!(
        dropped["lastError"].as_str().unwrap().contains("disabled"),
        "{dropped}"
    );
    assert_eq!(receiver.received().len(), 1);
    counted(
        &app,
        &[("failed", 1.0), ("dropped", 1.0), ("delivered", 0.0)],
    )
    .await;

    // Turned back on, it receives again.
    let enabled = app
        .gql(
            Some(&owner),
            "mutation($e: ID!) { updateWebhookEndpoint(input: { id: $e, enabled: true }) { enabled disabledReason } }",
            json!({ "e": endpoint }),
        )
        .await;
    assert_eq!(
        enabled["data"]["updateWebhookEndpoint"],
        json!({ "enabled": true, "disabledReason": null })
    );
    send_test(&app, &owner, &endpoint).await;
    settled(&app, &owner, &endpoint, "DELIVERED").await;
    counted(
        &app,
        &[("failed", 1.0), ("dropped", 1.0), ("delivered", 1.0)],
    )
    .await;
}

#[tokio::test]
async fn a_delivery_that_runs_out_of_retries_fails_and_a_replay_sends_it_again() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("replay").await;
    let (endpoint, secret) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    receiver.script((0..4).map(|_| Reply::Status(503)));
    let first = send_test(&app, &owner, &endpoint).await;
    let failed = settled(&app, &owner, &endpoint, "FAILED").await;
    assert_eq!(failed["attempts"], 4, "one try and three retries: {failed}");
    assert!(
        failed["lastError"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts")
    );
    counted(&app, &[("retry", 3.0), ("failed", 1.0), ("delivered", 0.0)]).await;

    let replayed = app
        .gql(
            Some(&owner),
            "mutation($e: ID!, $ev: ID!) { replayWebhookEvent(endpointId: $e, eventId: $ev) { id eventId status } }",
            json!({ "e": endpoint, "ev": first["eventId"] }),
        )
        .await;
    let replay = &replayed["data"]["replayWebhookEvent"];
    assert_eq!(replay["eventId"], first["eventId"], "{replayed}");
    assert_ne!(replay["id"], first["id"]);
    settled(&app, &owner, &endpoint, "DELIVERED").await;
    counted(&app, &[("retry", 3.0), ("failed", 1.0), ("delivered", 1.0)]).await;
    let received = receiver.received();
    assert_eq!(received.len(), 5);
    assert_eq!(
        header(&received[4], "webhook-id"),
        header(&received[0], "webhook-id"),
        "a replay carries the event's id"
    );
    verify(&secret, &received[4]);
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("rotate").await;
    let (endpoint, old) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    let rotated = app
        .gql(
            Some(&owner),
            "mutation($e: ID!) { rotateWebhookSecret(id: $e) { secret endpoint { previousSecretExpiresAt } } }",
            json!({ "e": endpoint }),
        )
        .await;
    let new = rotated["data"]["rotateWebhookSecret"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{rotated}"))
        .to_owned();
    assert_ne!(new, old);
    assert!(
        rotated["data"]["rotateWebhookSecret"]["endpoint"]["previousSecretExpiresAt"].is_string()
    );
    send_test(&app, &owner, &endpoint).await;
    let r = &receiver.wait_for(1).await[0];
    assert_eq!(header(r, "webhook-signature").split(' ').count(), 2);
    verify(&new, r);
    verify(&old, r);
}

#[tokio::test]
async fn an_invitation_and_its_acceptance_reach_the_tenant_and_platform_endpoints() {
    let receiver = Receiver::start().await;
    let platform = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (admin, _) = app.sign_up(ADMIN).await;
    let (owner, tenant) = app.owner_with_tenant("events").await;
    let (_, secret) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    let (_, platform_secret) = endpoint(&app, &admin, None, &platform.url).await;
    // Another tenant's endpoint gets none of it.
    let other_receiver = Receiver::start().await;
    let (other_owner, other) = app.owner_with_tenant("other").await;
    endpoint(&app, &other_owner, Some(&other), &other_receiver.url).await;

    let invited = app
        .gql(
            Some(&owner),
            "mutation($t: ID!) { inviteMember(tenantId: $t, email: \"new@example.com\") { token } }",
            json!({ "t": tenant }),
        )
        .await;
    let token = invited["data"]["inviteMember"]["token"].as_str().unwrap();
    let (newcomer, _) = app.sign_up("new@example.com").await;
    let accepted = app
        .gql(
            Some(&newcomer),
            "mutation($token: String!) { acceptInvitation(token: $token) { role } }",
            json!({ "token": token }),
        )
        .await;
    assert!(accepted["errors"].is_null(), "{accepted}");

    for (receiver, secret) in [(&receiver, &secret), (&platform, &platform_secret)] {
        // Webhooks may arrive in any order (they are sent side by side).
        let invited = event_of(receiver, secret, "member.invited").await;
        assert_eq!(invited["email"], "new@example.com");
        assert_eq!(invited["tenantId"], tenant);
        assert!(invited.get("tenantExternalId").is_some());
        assert!(invited.get("token").is_none(), "never the token");
        let joined = event_of(receiver, secret, "member.joined").await;
        assert_eq!(joined["role"], "MEMBER");
        assert_eq!(receiver.received().len(), 2);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(other_receiver.received().is_empty());
}

#[tokio::test]
async fn an_endpoint_gets_only_the_event_types_it_asks_for() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("filtered").await;
    let body = app
        .gql(
            Some(&owner),
            CREATE,
            json!({ "input": { "tenantId": tenant, "url": receiver.url, "eventTypes": ["member.joined"] } }),
        )
        .await;
    assert_eq!(
        body["data"]["createWebhookEndpoint"]["endpoint"]["eventTypes"],
        json!(["member.joined"]),
        "{body}"
    );
    let unknown = app
        .gql(
            Some(&owner),
            CREATE,
            json!({ "input": { "tenantId": tenant, "url": receiver.url, "eventTypes": ["member.left"] } }),
        )
        .await;
    assert_eq!(error_code(&unknown), Some("BAD_USER_INPUT"), "{unknown}");
    app.gql(
        Some(&owner),
        "mutation($t: ID!) { inviteMember(tenantId: $t, email: \"x@example.com\") { token } }",
        json!({ "t": tenant }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        receiver.received().is_empty(),
        "member.invited is not asked for"
    );
}

#[tokio::test]
async fn who_may_manage_endpoints() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(quick).await;
    let (owner, tenant) = app.owner_with_tenant("who").await;
    let (stranger, other) = app.owner_with_tenant("stranger").await;
    let (endpoint, _) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    // Another tenant's owner: as if it did not exist; a platform endpoint: platform admins.
    let seen = app
        .gql(Some(&stranger), DELIVERIES, json!({ "e": endpoint }))
        .await;
    assert_eq!(error_code(&seen), Some("NOT_FOUND"), "{seen}");
    let platform = app
        .gql(
            Some(&owner),
            CREATE,
            json!({ "input": { "url": receiver.url } }),
        )
        .await;
    assert_eq!(error_code(&platform), Some("FORBIDDEN"), "{platform}");
    let theirs = app
        .gql(
            Some(&owner),
            CREATE,
            json!({ "input": { "tenantId": other, "url": receiver.url } }),
        )
        .await;
    assert!(
        matches!(error_code(&theirs), Some("FORBIDDEN" | "NOT_FOUND")),
        "{theirs}"
    );
    // A tenant key with WEBHOOKS_WRITE manages its own tenant's endpoints only.
    let key = app
        .gql(
            Some(&owner),
            "mutation($t: ID!) { createApiKey(tenantId: $t, name: \"hooks\", scopes: [WEBHOOKS_WRITE]) { secret } }",
            json!({ "t": tenant }),
        )
        .await;
    let key = key["data"]["createApiKey"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{key}"))
        .to_owned();
    let listed = app.gql(Some(&key), ENDPOINTS, json!({ "t": tenant })).await;
    assert_eq!(
        listed["data"]["webhookEndpoints"][0]["id"], endpoint,
        "{listed}"
    );
    let elsewhere = app.gql(Some(&key), ENDPOINTS, json!({ "t": other })).await;
    assert_eq!(error_code(&elsewhere), Some("NOT_FOUND"), "{elsewhere}");
    let platform = app.gql(Some(&key), ENDPOINTS, json!({ "t": null })).await;
    assert_eq!(error_code(&platform), Some("FORBIDDEN"), "{platform}");
    let deleted = app
        .gql(
            Some(&key),
            "mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }",
            json!({ "e": endpoint }),
        )
        .await;
    assert_eq!(
        deleted["data"]["deleteWebhookEndpoint"], endpoint,
        "{deleted}"
    );
}

#[tokio::test]
async fn internal_targets_are_refused_unless_allowed() {
    let app = spawn_app_with(|c| {
        quick(c);
        c.webhooks.allow_private_targets = false;
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("ssrf").await;
    for url in [
        "http://127.0.0.1:9/hooks",
        "http://localhost/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let body = app
            .gql(
                Some(&owner),
                CREATE,
                json!({ "input": { "tenantId": tenant, "url": url } }),
            )
            .await;
        assert_eq!(
            error_code(&body),
            Some("WEBHOOK_URL_NOT_ALLOWED"),
            "{url}: {body}"
        );
    }
    for url in [
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "hooks",
    ] {
        let body = app
            .gql(
                Some(&owner),
                CREATE,
                json!({ "input": { "tenantId": tenant, "url": url } }),
            )
            .await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{url}: {body}");
    }
}

/// The `data` of each event of `kind` the receiver got (signatures checked).
fn events_of(receiver: &Receiver, secret: &str, kind: &str) -> Vec<Value> {
    receiver
        .received()
        .iter()
        .filter_map(|r| {
            verify(secret, r);
            let body: Value = serde_json::from_str(&r.body).unwrap();
            (body["type"] == kind).then(|| body["data"].clone())
        })
        .collect()
}

async fn event_of(receiver: &Receiver, secret: &str, kind: &str) -> Value {
    eventually(&format!("a {kind} webhook"), || async {
        !events_of(receiver, secret, kind).is_empty()
    })
    .await;
    events_of(receiver, secret, kind).remove(0)
}

#[tokio::test]
async fn grants_refunds_expiries_and_expired_holds_are_sent_with_the_balance() {
    use chrono::{Duration as Span, Utc};
    use entity::plan_feature::FeatureLimitType;
    use tollgate::clock::Clock;

    let receiver = Receiver::start().await;
    let clock = Clock::manual(Utc::now());
    let app = crate::helpers::spawn_app_with_clock(clock.clone(), |c| {
        quick(c);
        c.plans = vec![crate::helpers::plan("test", FeatureLimitType::Monthly, 10)];
        c.default_plan = "test".into();
        c.grants.sweep_interval_seconds = 1;
    })
    .await;
    let (admin, _) = app.sign_up(ADMIN).await;
    let (owner, tenant) = app.owner_with_tenant("balance").await;
    let (_, secret) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    let expires = clock.now() + Span::hours(1);
    let granted = app
        .gql(
            Some(&admin),
            "mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { grant { id } } }",
            json!({ "input": { "tenantId": tenant, "amount": 5, "idempotencyKey": "g", "expiresAt": expires.to_rfc3339() } }),
        )
        .await;
    let grant_id = granted["data"]["grantCredits"]["grant"]["id"].clone();
    let data = event_of(&receiver, &secret, "credits.granted").await;
    assert_eq!(data["grantId"], grant_id, "{data}");
    assert_eq!(data["tenantId"], tenant);
    assert_eq!(
        (
            &data["feature"],
            &data["used"],
            &data["limit"],
            &data["grantsRemaining"],
            &data["available"]
        ),
        (
            &json!("credits"),
            &json!(0),
            &json!(10),
            &json!(5),
            &json!(15)
        ),
        "{data}"
    );

    // A spend of 12 (10 of the allowance, 2 of the grant), refunded by 3.
    let spent = app
        .gql(
            Some(&owner),
            "mutation($t: ID!) { consumeCredits(input: { tenantId: $t, amount: 12, idempotencyKey: \"s\" }) { credit { id } } }",
            json!({ "t": tenant }),
        )
        .await;
    let spend = spent["data"]["consumeCredits"]["credit"]["id"].clone();
    app.gql(
        Some(&owner),
        "mutation($input: RefundCreditInput!) { refundCredit(input: $input) { credit { id } } }",
        json!({ "input": { "tenantId": tenant, "creditId": spend, "amount": 3, "idempotencyKey": "r" } }),
    )
    .await;
    let data = event_of(&receiver, &secret, "credits.refunded").await;
    assert_eq!(
        (&data["refundOf"], &data["amount"]),
        (&spend, &json!(3)),
        "{data}"
    );
    // Newest first: the grant's 2, then 1 of the allowance.
    assert_eq!(data["buckets"][0]["grantId"], grant_id);
    assert_eq!(
        (&data["used"], &data["grantsRemaining"], &data["available"]),
        (&json!(9), &json!(5), &json!(6))
    );

    // A hold that runs out, then the grant's expiry.
    app.gql(
        Some(&owner),
        "mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }",
        json!({ "input": { "tenantId": tenant, "amount": 1, "idempotencyKey": "h", "ttlSeconds": 60 } }),
    )
    .await;
    clock.set(expires + Span::seconds(1));
    let data = event_of(&receiver, &secret, "reservation.expired").await;
    assert_eq!(data["amount"], 1, "{data}");
    let data = event_of(&receiver, &secret, "credits.grant_expired").await;
    assert_eq!(
        (&data["grantId"], &data["expired"]),
        (&grant_id, &json!(5)),
        "{data}"
    );
    assert_eq!(data["grantsRemaining"], 0);
}

#[tokio::test]
async fn stripe_subscription_changes_and_usage_stripe_refuses_are_sent() {
    use crate::{
        fake_stripe::{Answer, FakeStripe},
        stripe::{PRO_PRICE, deliver_signed, event, link_customer, now, stripe_app, subscription},
    };

    let receiver = Receiver::start().await;
    let fake = FakeStripe::start().await;
    fake.script([Answer::Fail(400, None)]);
    let app = stripe_app(&fake, quick).await;
    let (owner, tenant) = app.owner_with_tenant("billing").await;
    let (_, secret) = endpoint(&app, &owner, Some(&tenant), &receiver.url).await;
    link_customer(&app, &tenant, "cus_hooks").await;

    let (start, end) = (now() - 3600, now() + 29 * 86400);
    let updated = event(
        "evt_hooks_sub",
        "customer.subscription.updated",
        now(),
        subscription(
            "cus_hooks",
            Some(&tenant),
            PRO_PRICE,
            "active",
            (start, end),
        ),
    );
    let (status, _) = deliver_signed(&app, &updated).await;
    assert_eq!(status, 200);
    let data = event_of(&receiver, &secret, "subscription.updated").await;
    assert_eq!(
        (&data["plan"], &data["status"]),
        (&json!("pro"), &json!("active")),
        "{data}"
    );
    assert_eq!((&data["limit"], &data["used"]), (&json!(1000), &json!(0)));
    // A replay of the Stripe event changes nothing, and sends nothing.
    deliver_signed(&app, &updated).await;

    // Stripe refuses the project's usage for good.
    app.project_id(&owner, &tenant).await;
    let data = event_of(&receiver, &secret, "usage_report.failed").await;
    assert_eq!(
        (&data["kind"], &data["quantity"]),
        (&json!("METER_EVENT"), &json!(2)),
        "{data}"
    );
    assert!(data["error"].as_str().unwrap().contains("400"), "{data}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        events_of(&receiver, &secret, "subscription.updated").len(),
        1
    );
}

#[tokio::test]
async fn threshold_alerts_arrive_signed_with_the_balance() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|c| {
        quick(c);
        c.plans = vec![crate::helpers::plan(
            "test",
            entity::plan_feature::FeatureLimitType::Monthly,
            10,
        )];
        c.default_plan = "test".into();
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("alerts").await;
    let body = app
        .gql(
            Some(&owner),
            CREATE,
            json!({ "input": { "tenantId": tenant, "url": receiver.url,
                "eventTypes": ["credits.threshold_reached", "credits.depleted", "credits.limit_reached"] } }),
        )
        .await;
    let secret = body["data"]["createWebhookEndpoint"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let spend = |amount: i64, key: &'static str| {
        let (app, owner, tenant) = (&app, &owner, &tenant);
        async move {
            app.gql(
                Some(owner),
                "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { replayed } }",
                json!({ "input": { "tenantId": tenant, "amount": amount, "idempotencyKey": key } }),
            )
            .await
        }
    };
    assert!(spend(8, "a").await["errors"].is_null());
    let reached = event_of(&receiver, &secret, "credits.threshold_reached").await;
    assert_eq!(reached["tenantId"], tenant);
    assert_eq!(
        (
            &reached["feature"],
            &reached["used"],
            &reached["limit"],
            &reached["available"]
        ),
        (&json!("credits"), &json!(8), &json!(10), &json!(2))
    );
    assert_eq!(reached["rule"]["kind"], "PERCENT_USED");
    assert_eq!(reached["rule"]["threshold"], 80);
    assert!(reached["periodStart"].is_string(), "{reached}");
    assert!(spend(2, "b").await["errors"].is_null());
    assert_eq!(
        error_code(&spend(1, "c").await),
        Some("INSUFFICIENT_CREDITS")
    );
    let depleted = event_of(&receiver, &secret, "credits.depleted").await;
    assert_eq!(depleted["available"], 0);
    let refused = event_of(&receiver, &secret, "credits.limit_reached").await;
    assert_eq!(
        (&refused["required"], &refused["used"]),
        (&json!(1), &json!(10))
    );
    // 80 %, then 100 % and depleted by the second spend, then the refusal.
    receiver.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 4);
}
