//! The GraphQL schema: its type, the builder (shared by the server and `print-schema`), the
//! state resolvers reach through the context, and the extension that gives parse and
//! validation errors their `extensions.code`.

mod limits;
pub mod loaders;
mod mutation;
mod observe;
mod query;
pub mod types;

use std::sync::Arc;

use async_graphql::{
    Context, EmptySubscription, ErrorExtensions, Schema, ServerError, ServerResult,
    ValidationResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation},
    parser::types::ExecutableDocument,
};

use crate::{
    auth::Keys, auth::Viewer, billing::StripeHttp, config::Config, db::Database, error::AppError,
    metrics::Metrics, projects::Writer, rate_limit::RateLimits,
};

pub use mutation::Mutation;
pub use query::Query;

pub type TollgateSchema = Schema<Query, Mutation, EmptySubscription>;

/// What resolvers need from the process: shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub writer: Writer,
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    /// The Stripe client, when `stripe.secret_key` is configured.
    pub stripe: Option<StripeHttp>,
    pub metrics: Metrics,
    pub limits: Arc<RateLimits>,
}

/// The client's address (for per-address rate limits).
pub struct ClientAddress(pub std::net::IpAddr);

/// The `Idempotency-Key` header of a request, when it has one.
pub struct IdempotencyHeader(pub String);

/// The schema; without `state` it can only describe itself (`print-schema`). With it, the
/// configured limits apply: document length, aliases, root fields, depth, complexity, and
/// introspection on or off.
pub fn build_schema(state: Option<AppState>) -> TollgateSchema {
    let mut builder = Schema::build(Query, Mutation, EmptySubscription).extension(ErrorCodes);
    if let Some(state) = state {
        let limits = &state.config.graphql;
        builder = builder
            .extension(observe::Observe(state.metrics.clone()))
            .extension(limits::Limits::new(limits))
            .limit_depth(limits.max_depth)
            .limit_complexity(limits.max_complexity)
            .limit_recursive_depth(64);
        if !limits.introspection {
            builder = builder.disable_introspection();
        }
        builder = builder.data(state);
    }
    builder.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    build_schema(None).sdl()
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a AppState> {
    ctx.data::<AppState>().map_err(|_| {
        AppError::Internal(anyhow::anyhow!("schema executed without AppState")).extend()
    })
}

pub(crate) fn viewer<'a>(ctx: &Context<'a>) -> &'a Viewer {
    ctx.data_opt::<Viewer>().unwrap_or(&Viewer::ANONYMOUS)
}

/// Puts Apollo's codes on the errors async-graphql raises before execution.
struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|e| with_code(e, "GRAPHQL_PARSE_FAILED"))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| with_code(e, "GRAPHQL_VALIDATION_FAILED"))
                .collect()
        })
    }
}

/// Sets `extensions.code` on an error that has none.
pub(crate) fn with_code(mut error: ServerError, code: &'static str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    error
}
