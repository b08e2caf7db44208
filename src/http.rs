//! The HTTP surface: `POST /graphql`, `GET /graphql` (GraphiQL, or queries — never
//! mutations), `GET /healthz` and `GET /readyz`. Errors raised before GraphQL runs (a body
//! that is not JSON, a bad token) get the same JSON shape and codes as GraphQL errors.

use actix_web::{HttpRequest, HttpResponse, Responder, http::StatusCode, http::header, web};
use async_graphql::{
    BatchRequest, BatchResponse, Request, dataloader::DataLoader, http::GraphiQLSource,
    parser::types::OperationType,
};
use async_graphql_actix_web::GraphQLResponse;
use serde_json::json;

use crate::{
    auth, billing,
    error::AppError,
    graphql::{AppState, IdempotencyHeader, TollgateSchema, loaders::UserLoader, with_code},
};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/graphql")
            .route(web::post().to(graphql_post))
            .route(web::get().to(graphql_get)),
    )
    .route("/webhooks/stripe", web::post().to(billing::receive))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz));
}

async fn graphql_post(
    schema: web::Data<TollgateSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    match serde_json::from_slice::<BatchRequest>(&body) {
        // serde reads `[]` and `{}` as a request with no query.
        Ok(BatchRequest::Single(request)) if request.query.is_empty() => reject(
            StatusCode::BAD_REQUEST,
            "GRAPHQL_PARSE_FAILED",
            "the request has no query",
        ),
        Ok(batch) => execute(&schema, &state, &req, batch).await,
        Err(e) => reject(
            StatusCode::BAD_REQUEST,
            "GRAPHQL_PARSE_FAILED",
            &format!("the body is not a GraphQL request in JSON: {e}"),
        ),
    }
}

async fn graphql_get(
    schema: web::Data<TollgateSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> HttpResponse {
    if req.query_string().is_empty() {
        let page = GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Tollgate GraphiQL")
            .finish();
        return HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(page);
    }
    let request = match async_graphql::http::parse_query_string(req.query_string()) {
        Ok(request) => request,
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "GRAPHQL_PARSE_FAILED",
                &format!("the query string is not a GraphQL request: {e}"),
            );
        }
    };
    if has_mutation(&request) {
        // A link or an <img> must never spend credits (CSRF).
        return reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "mutations are not allowed over GET: use POST",
        );
    }
    execute(&schema, &state, &req, BatchRequest::Single(request)).await
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
    schema: &TollgateSchema,
    state: &AppState,
    req: &HttpRequest,
    batch: BatchRequest,
) -> HttpResponse {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let viewer = match auth::authenticate(&state.db.read, &state.keys, authorization).await {
        Ok(viewer) => viewer,
        Err(e) => {
            e.log();
            let status = match e {
                AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return reject(status, e.code(), &e.to_string());
        }
    };
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let prepare = |request: Request| {
        let request = request.data(viewer.clone()).data(DataLoader::new(
            UserLoader(state.db.read.clone()),
            tokio::spawn,
        ));
        match &idempotency_key {
            Some(key) => request.data(IdempotencyHeader(key.clone())),
            None => request,
        }
    };
    let response = match batch {
        BatchRequest::Single(request) => {
            BatchResponse::Single(schema.execute(prepare(request)).await)
        }
        BatchRequest::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                responses.push(schema.execute(prepare(request)).await);
            }
            BatchResponse::Batch(responses)
        }
    };
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

/// A GraphQL-shaped error response for requests refused before execution.
fn reject(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    }))
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
