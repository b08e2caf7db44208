//! An in-process fake of the parts of Stripe's API Tollgate calls, on 127.0.0.1: meter
//! events (deduplicated by `identifier`, as Stripe does), meter event adjustments (cancels,
//! deduplicated by `Idempotency-Key`), Checkout sessions and billing portal sessions. It records every request's form body and can be told how to answer the
//! next meter-event requests (fail, throttle, hang, accept and never answer). Its answers
//! are Stripe's own object fixtures (tests/fixtures/stripe.json) with the request's values.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// How the fake answers one meter-event request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A status with a Stripe error body, and `Stripe-Should-Retry` if given.
    Fail(u16, Option<&'static str>),
    /// Accepts the event, then answers only after this long (the client times out first).
    AcceptSlowly(Duration),
    /// Does not accept the event; answers 500 after this long.
    Stall(Duration),
}

#[derive(Default)]
pub struct Recorded {
    /// Form bodies of every meter-event request, in arrival order.
    pub meter_requests: Vec<HashMap<String, String>>,
    /// Identifier → the event Stripe keeps (its form body).
    pub accepted: HashMap<String, HashMap<String, String>>,
    /// How many requests were refused as duplicate identifiers.
    pub duplicates: usize,
    /// Form bodies and idempotency keys of every meter event adjustment request.
    pub adjustment_requests: Vec<(HashMap<String, String>, Option<String>)>,
    /// Identifiers of the events cancelled.
    pub cancelled: HashSet<String>,
    /// Answers for the next adjustment requests, first to last.
    pub adjustment_script: VecDeque<Answer>,
    /// Answer every adjustment 401 while set (a key without the right to adjust).
    pub refuse_adjustments: bool,
    pub checkout_requests: Vec<HashMap<String, String>>,
    pub portal_requests: Vec<HashMap<String, String>>,
    /// Answers for the next meter-event requests, first to last.
    pub script: VecDeque<Answer>,
    /// Answer every Checkout request with this status (an error) when set.
    pub checkout_failure: Option<u16>,
    /// Delay for every accepted meter event (to keep reporters busy).
    pub latency: Option<Duration>,
    /// Delay before every Checkout answer.
    pub checkout_latency: Option<Duration>,
    /// Answer every meter event 401, as Stripe does for a revoked or rolled key.
    pub refuse_key: bool,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub url: String,
    pub recorded: Arc<Mutex<Recorded>>,
}

pub fn fixture(name: &str) -> Value {
    let text = include_str!("../fixtures/stripe.json");
    let all: Value = serde_json::from_str(text).expect("fixtures parse");
    all["resources"][name].clone()
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let data = web::Data::from(recorded.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/billing/meter_events", web::post().to(meter_event))
                .route(
                    "/v1/billing/meter_event_adjustments",
                    web::post().to(meter_event_adjustment),
                )
                .route("/v1/checkout/sessions", web::post().to(checkout_session))
                .route(
                    "/v1/billing_portal/sessions",
                    web::post().to(portal_session),
                )
        })
        .workers(2)
        .listen(listener)
        .expect("listen")
        .disable_signals()
        .run();
        tokio::spawn(server);
        FakeStripe {
            url: format!("http://127.0.0.1:{port}"),
            recorded,
        }
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.recorded.lock().unwrap().script.extend(answers);
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Recorded) -> R) -> R {
        f(&mut self.recorded.lock().unwrap())
    }

    /// What Stripe bills `customer` for: the values of the events it keeps, less those
    /// cancelled.
    pub fn billed(&self, customer: &str) -> i64 {
        self.with(|r| {
            r.accepted
                .iter()
                .filter(|(id, e)| {
                    !r.cancelled.contains(*id)
                        && e.get("payload[stripe_customer_id]").map(String::as_str)
                            == Some(customer)
                })
                .map(|(_, e)| e["payload[value]"].parse::<i64>().expect("a value"))
                .sum()
        })
    }
}

fn stripe_error(status: u16, kind: &str, message: &str, retry: Option<&str>) -> HttpResponse {
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"));
    if let Some(retry) = retry {
        response.insert_header(("Stripe-Should-Retry", retry));
    }
    response.json(json!({ "error": { "type": kind, "message": message } }))
}

async fn meter_event(
    recorded: web::Data<Mutex<Recorded>>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let form: HashMap<String, String> = form.into_inner().into_iter().collect();
    let identifier = form.get("identifier").cloned().unwrap_or_default();
    let (answer, latency) = {
        let mut r = recorded.lock().unwrap();
        r.meter_requests.push(form.clone());
        if r.refuse_key {
            return stripe_error(
                401,
                "invalid_request_error",
                "Invalid API Key provided: sk_test_****_key",
                None,
            );
        }
        (r.script.pop_front(), r.latency)
    };
    match answer {
        Some(Answer::Fail(status, retry)) => {
            return stripe_error(status, "api_error", "the fake failed on purpose", retry);
        }
        Some(Answer::Stall(delay)) => {
            tokio::time::sleep(delay).await;
            return stripe_error(500, "api_error", "stalled", None);
        }
        Some(Answer::AcceptSlowly(_)) | None => {}
    }
    {
        let mut r = recorded.lock().unwrap();
        if r.accepted.contains_key(&identifier) {
            r.duplicates += 1;
            return stripe_error(
                400,
                "invalid_request_error",
                &format!("An event already exists with identifier {identifier}."),
                Some("false"),
            );
        }
        r.accepted.insert(identifier.clone(), form.clone());
    }
    if let Some(Answer::AcceptSlowly(delay)) = answer {
        tokio::time::sleep(delay).await;
    } else if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let mut event = fixture("billing.meter_event");
    event["event_name"] = json!(form.get("event_name"));
    event["identifier"] = json!(identifier);
    event["payload"] = json!({
        "stripe_customer_id": form.get("payload[stripe_customer_id]"),
        "value": form.get("payload[value]"),
    });
    let timestamp: i64 = form
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    event["timestamp"] = json!(timestamp);
    HttpResponse::Ok().json(event)
}

/// A cancel, as Stripe takes it: accepted at once (Stripe applies it later, and reports a
/// cancel it could not apply — an unknown event, one received more than 24 hours before —
/// as a meter error, not in this answer).
async fn meter_event_adjustment(
    recorded: web::Data<Mutex<Recorded>>,
    request: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let form: HashMap<String, String> = form.into_inner().into_iter().collect();
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = {
        let mut r = recorded.lock().unwrap();
        r.adjustment_requests.push((form.clone(), key));
        if r.refuse_adjustments {
            return stripe_error(
                401,
                "invalid_request_error",
                "This API key cannot create meter event adjustments.",
                None,
            );
        }
        r.adjustment_script.pop_front()
    };
    match answer {
        Some(Answer::Fail(status, retry)) => {
            return stripe_error(
                status,
                "invalid_request_error",
                "the fake refused the cancel",
                retry,
            );
        }
        Some(Answer::Stall(delay)) => {
            tokio::time::sleep(delay).await;
            return stripe_error(500, "api_error", "stalled", None);
        }
        Some(Answer::AcceptSlowly(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let identifier = form.get("cancel[identifier]").cloned().unwrap_or_default();
    recorded
        .lock()
        .unwrap()
        .cancelled
        .insert(identifier.clone());
    let mut adjustment = fixture("billing.meter_event_adjustment");
    adjustment["event_name"] = json!(form.get("event_name"));
    adjustment["cancel"] = json!({ "identifier": identifier });
    adjustment["status"] = json!("pending");
    HttpResponse::Ok().json(adjustment)
}

async fn checkout_session(
    recorded: web::Data<Mutex<Recorded>>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let form: HashMap<String, String> = form.into_inner().into_iter().collect();
    let (n, failure, latency) = {
        let mut r = recorded.lock().unwrap();
        r.checkout_requests.push(form.clone());
        (
            r.checkout_requests.len(),
            r.checkout_failure,
            r.checkout_latency,
        )
    };
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = failure {
        return stripe_error(
            status,
            "api_error",
            "secret internal detail sk_live_leak",
            None,
        );
    }
    let mut session = fixture("checkout.session");
    session["id"] = json!(format!("cs_test_{n}"));
    session["url"] = json!(format!("https://checkout.stripe.test/c/pay/cs_test_{n}"));
    session["mode"] = json!("subscription");
    session["client_reference_id"] = json!(form.get("client_reference_id"));
    HttpResponse::Ok().json(session)
}

async fn portal_session(
    recorded: web::Data<Mutex<Recorded>>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let form: HashMap<String, String> = form.into_inner().into_iter().collect();
    let n = {
        let mut r = recorded.lock().unwrap();
        r.portal_requests.push(form.clone());
        r.portal_requests.len()
    };
    let mut session = fixture("billing_portal.session");
    session["id"] = json!(format!("bps_test_{n}"));
    session["customer"] = json!(form.get("customer"));
    session["url"] = json!(format!("https://billing.stripe.test/p/session/{n}"));
    HttpResponse::Ok().json(session)
}
