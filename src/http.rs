//! The HTTP surface: `POST /graphql`, `GET /graphql` (GraphiQL, or queries — never
//! mutations), `GET /healthz`, `GET /readyz`, `GET /metrics` and `POST /webhooks/stripe`.
//! Errors raised before GraphQL runs (a body that is too big or not JSON, a bad token, too
//! many requests) get the same JSON shape and codes as GraphQL errors.
//!
//! Against cross-site requests: a POST must say it is JSON (`Content-Type:
//! application/json`), which a form or a `text/plain` fetch from another site cannot do
//! without a CORS preflight; and GET never runs a mutation.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::{
    HttpRequest, HttpResponse, Responder,
    http::{StatusCode, header},
    web,
};
use async_graphql::{BatchRequest, BatchResponse, Request, parser::types::OperationType};
use async_graphql_actix_web::GraphQLResponse;
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::json;

mod graphiql;
mod webhooks;
pub mod ws;

use crate::{
    auth,
    error::AppError,
    graphql::{
        ClientAddress, IdempotencyHeader, Schemas, loaders::Loaders, nesting_error, with_code,
    },
    rate_limit::Client,
    state::AppState,
};

/// The API's routes; `/metrics` among them unless it has an address of its own.
pub fn routes(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    cfg.service(
        web::resource("/graphql")
            .route(web::post().to(graphql_post))
            .route(web::get().to(graphql_get)),
    )
    .route("/graphql/ws", web::get().to(ws::graphql_ws))
    .configure(graphiql::routes)
    .route("/webhooks/stripe", web::post().to(webhooks::receive))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz));
    if with_metrics {
        metrics_routes(cfg);
    }
}

/// `GET /metrics` (on the API's listener, or on `metrics.addr`).
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

async fn graphql_post(
    schemas: web::Data<Schemas>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    if !is_json(&req) {
        return state.reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "POST /graphql takes Content-Type: application/json",
        );
    }
    let limit = state.config.http.max_body_bytes;
    let timeout = std::time::Duration::from_secs(state.config.http.body_timeout_seconds);
    let body = match read_body(&req, payload, limit, timeout).await {
        Ok(body) => body,
        Err(BodyError::Slow) => {
            return state.reject(
                StatusCode::REQUEST_TIMEOUT,
                "BAD_USER_INPUT",
                &format!(
                    "the body took longer than {} s to arrive",
                    timeout.as_secs()
                ),
            );
        }
        Err(BodyError::TooLarge) => {
            return state.reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                &format!("the body is larger than {limit} bytes"),
            );
        }
        Err(BodyError::Broken) => {
            return state.reject(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the body could not be read",
            );
        }
    };
    let max_batch = state.config.graphql.max_batch;
    match parse_batch(&body) {
        Ok(batch) if runs_nothing(&batch) => state.reject(
            StatusCode::BAD_REQUEST,
            "GRAPHQL_PARSE_FAILED",
            "the request has no query",
        ),
        Ok(BatchRequest::Batch(requests)) if requests.len() > max_batch => state.reject(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            &format!("a batch may hold at most {max_batch} operations"),
        ),
        Ok(batch) => execute(&schemas, &state, &req, batch).await,
        Err(e) => state.reject(
            StatusCode::BAD_REQUEST,
            "GRAPHQL_PARSE_FAILED",
            &format!("the body is not a GraphQL request in JSON: {e}"),
        ),
    }
}

/// A JSON body as one request or a batch of them. Read straight into its type by the first
/// character: serde's own `BatchRequest` (an untagged enum) buffers the whole document into an
/// intermediate tree first and reads the request from that, which costs every request a copy
/// of its variables.
fn parse_batch(body: &[u8]) -> serde_json::Result<BatchRequest> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).map(BatchRequest::Batch),
        _ => serde_json::from_slice(body).map(BatchRequest::Single),
    }
}

/// Whether a body holds nothing to run: serde reads `{}` as a request with no query, and `[]`
/// is a batch of none.
fn runs_nothing(batch: &BatchRequest) -> bool {
    match batch {
        BatchRequest::Single(request) => request.query.is_empty(),
        BatchRequest::Batch(requests) => requests.is_empty(),
    }
}

/// Whether the request declares a JSON body.
fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || mime.eq_ignore_ascii_case("application/graphql-response+json")
        })
}

pub(crate) enum BodyError {
    /// Longer than the limit (by its `Content-Length`, or as it arrived).
    TooLarge,
    /// The connection failed mid-body.
    Broken,
    /// Not all there within the time allowed (a client trickling bytes to hold a connection).
    Slow,
}

/// The body, read up to `limit` bytes within `timeout`.
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, BodyError> {
    tokio::time::timeout(timeout, read_body_unbounded(req, payload, limit))
        .await
        .unwrap_or(Err(BodyError::Slow))
}

async fn read_body_unbounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The client's address as rate limits key it: the connection's peer, or — when
/// `http.trust_forwarded_for` is set — the last `X-Forwarded-For` address of all its header
/// lines together, the one the proxy in front appended (earlier ones, and earlier lines, are
/// whatever the client claimed). An IPv4-mapped IPv6 address counts as its IPv4 address, and
/// an IPv6 client as its /64 (one host's share of addresses).
fn client_address(req: &HttpRequest, trust_forwarded_for: bool) -> IpAddr {
    let forwarded = trust_forwarded_for
        .then(|| {
            req.headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .last()
        })
        .flatten()
        .and_then(|v| v.trim().parse().ok());
    let address = forwarded
        .or_else(|| req.peer_addr().map(|a| a.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    rate_limit_key(address)
}

fn rate_limit_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !0xffff_ffff_ffff_ffff_u128)),
        },
        v4 => v4,
    }
}

async fn graphql_get(
    schemas: web::Data<Schemas>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> HttpResponse {
    if req.query_string().is_empty() {
        return graphiql::page(&state);
    }
    let request = match async_graphql::http::parse_query_string(req.query_string()) {
        Ok(request) => request,
        Err(e) => {
            return state.reject(
                StatusCode::BAD_REQUEST,
                "GRAPHQL_PARSE_FAILED",
                &format!("the query string is not a GraphQL request: {e}"),
            );
        }
    };
    // The GET-mutation check parses the document: its nesting is checked first.
    let max_nesting = state.config.graphql.max_nesting;
    if let Some(message) = nesting_error(&request.query, &request.variables, max_nesting) {
        return state.reject(StatusCode::BAD_REQUEST, "GRAPHQL_PARSE_FAILED", &message);
    }
    if has_mutation(&request) {
        // A link or an <img> must never spend credits (CSRF).
        return state.reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "mutations are not allowed over GET: use POST",
        );
    }
    execute(&schemas, &state, &req, BatchRequest::Single(request)).await
}

/// Whether the document holds a mutation (an unparsable one is left to GraphQL to report).
fn has_mutation(request: &Request) -> bool {
    async_graphql::parser::parse_query(&request.query).is_ok_and(|doc| {
        doc.operations
            .iter()
            .any(|(_, op)| op.node.ty == OperationType::Mutation)
    })
}

async fn execute(
    schemas: &Schemas,
    state: &AppState,
    req: &HttpRequest,
    batch: BatchRequest,
) -> HttpResponse {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let viewer = match auth::authenticate(&state.db, &state.keys, authorization).await {
        Ok(viewer) => viewer,
        Err(e) => {
            e.log();
            let status = match e {
                AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return state.reject(status, e.code(), &e.to_string());
        }
    };
    let address = client_address(req, state.config.http.trust_forwarded_for);
    let client = match viewer.caller_id() {
        Some(user_id) => Client::User(user_id),
        None => Client::Address(address),
    };
    if let Err(e @ AppError::RateLimited { retry_after }) = state.limits.check_request(&client) {
        state.metrics.error(e.code());
        return HttpResponse::TooManyRequests()
            .insert_header((header::RETRY_AFTER, retry_after.to_string()))
            .json(json!({ "errors": [{
                "message": e.to_string(),
                "extensions": { "code": e.code(), "retryAfter": retry_after },
            }] }));
    }
    let idempotency_key = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) => Some(key.to_owned()),
        // Ignoring it would charge a retry twice.
        Some(Err(_)) => {
            return state.reject(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the Idempotency-Key header must be visible ASCII",
            );
        }
    };
    let prepare = |request: Request| {
        let request = request
            .data(viewer.clone())
            .data(ClientAddress(address))
            .data(Loaders::new(state.db.read.clone()));
        match &idempotency_key {
            Some(key) => request.data(IdempotencyHeader(key.clone())),
            None => request,
        }
    };
    let response = match batch {
        BatchRequest::Single(request) => {
            let schema = schemas.for_request(&request);
            BatchResponse::Single(schema.execute(prepare(request)).await)
        }
        BatchRequest::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                let schema = schemas.for_request(&request);
                responses.push(schema.execute(prepare(request)).await);
            }
            BatchResponse::Batch(responses)
        }
    };
    // A query found the token's user gone: as for any invalid token, nothing is answered.
    if viewer.is_gone() {
        let e = AppError::Unauthenticated("invalid or expired token");
        return state.reject(StatusCode::UNAUTHORIZED, e.code(), &e.to_string());
    }
    // `application/graphql-response+json`, with the response's cache-control and headers.
    GraphQLResponse::from(with_default_codes(response)).respond_to(req)
}

/// Errors async-graphql raises while coercing arguments carry no code: they are the
/// client's input. (Every error Tollgate raises has its code already.)
fn with_default_codes(response: BatchResponse) -> BatchResponse {
    let fix = |mut r: async_graphql::Response| {
        r.errors = r
            .errors
            .into_iter()
            .map(|e| with_code(e, "BAD_USER_INPUT"))
            .collect();
        r
    };
    match response {
        BatchResponse::Single(r) => BatchResponse::Single(fix(r)),
        BatchResponse::Batch(rs) => BatchResponse::Batch(rs.into_iter().map(fix).collect()),
    }
}

impl AppState {
    /// A GraphQL-shaped error response for a request refused before execution (counted).
    fn reject(&self, status: StatusCode, code: &str, message: &str) -> HttpResponse {
        self.metrics.error(code);
        HttpResponse::build(status).json(json!({
            "errors": [{ "message": message, "extensions": { "code": code } }]
        }))
    }
}

/// Prometheus text exposition; with `metrics.bearer_token`, only for its bearer.
async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Some(token) = &state.config.metrics.bearer_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(presented.as_bytes(), token.expose_secret().as_bytes()) {
            return HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .finish();
        }
    }
    match state.metrics.render(&state.db).await {
        Ok(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Err(e) => {
            tracing::warn!(error.cause = %e, "metrics could not read the database");
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}

/// Equal bytes, compared in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.db.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ok", "database": "ok" })),
        Err(e) => {
            tracing::warn!(error.cause = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "unavailable", "database": "unreachable" }))
        }
    }
}
