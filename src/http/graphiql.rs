//! The GraphiQL playground, served whole from the binary: production builds of GraphiQL and
//! React (assets/graphiql/vendor, pinned, with integrity hashes in the page) under a
//! Content-Security-Policy that lets the page load nothing from anywhere else. Offline and
//! air-gapped installs get the same page; no third-party code runs on the API's origin.

use actix_web::{HttpResponse, http::header, web};

use crate::state::AppState;

/// What the page may load: its own scripts and styles, inline styles (GraphiQL's editor sets
/// them), fonts embedded in the stylesheet, and requests to this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
font-src data:; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

const PAGE: &str = include_str!("../../assets/graphiql/page.html");

/// One embedded file: its path under `/graphiql/`, content type and bytes. Versioned paths
/// never change, so browsers may keep them.
const ASSETS: [(&str, &str, &[u8]); 6] = [
    (
        "3.9.0/graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/vendor/graphiql.min.js"),
    ),
    (
        "3.9.0/graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/graphiql/vendor/graphiql.min.css"),
    ),
    (
        "18.3.1/react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/vendor/react.production.min.js"),
    ),
    (
        "18.3.1/react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/vendor/react-dom.production.min.js"),
    ),
    (
        "start.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/start.js"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/graphiql/page.css"),
    ),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/graphiql")
            .wrap(actix_web::middleware::Compress::default())
            .route("/{path:.+}", web::get().to(asset)),
    );
}

/// `GET /graphql` without a query: the page, or 404 when `graphql.graphiql` is off.
pub fn page(state: &AppState) -> HttpResponse {
    if !state.config.graphql.graphiql {
        return state.reject(
            actix_web::http::StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "GraphiQL is turned off on this server; POST GraphQL requests here",
        );
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}

async fn asset(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let found = ASSETS.iter().find(|(name, _, _)| *name == path.as_str());
    match found {
        Some((name, content_type, bytes)) if state.config.graphql.graphiql => {
            let cache = if name.starts_with(|c: char| c.is_ascii_digit()) {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            HttpResponse::Ok()
                .content_type(*content_type)
                .insert_header((header::CACHE_CONTROL, cache))
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .body(*bytes)
        }
        _ => HttpResponse::NotFound().finish(),
    }
}
