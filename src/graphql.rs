//! The GraphQL schema: its type, the builder (shared by the server and `print-schema`) and
//! the state resolvers reach through the context. Its extensions: `observe` (metrics, logs)
//! and `limits` (limits, cached parses and validations, and the `extensions.code` of parse and
//! validation errors).

mod limits;
pub mod loaders;
mod mutation;
mod observe;
mod query;
mod subscription;
pub mod types;
mod validated;

use async_graphql::{Context, ErrorExtensions, Schema, SchemaBuilder, ServerError};

use crate::{auth::Viewer, error::AppError, state::AppState};

pub use limits::nesting_error;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

pub type TollgateSchema = Schema<Query, Mutation, Subscription>;

/// The client's address (for per-address rate limits).
pub struct ClientAddress(pub std::net::IpAddr);

/// The `Idempotency-Key` header of a request, when it has one.
pub struct IdempotencyHeader(pub String);

/// The standard introspection documents (`getIntrospectionQuery()` of graphql-js with every
/// option on: GraphiQL, Apollo Sandbox, graphql-codegen) nest `ofType` 9 levels under
/// `__schema { types { fields { type … } } }`: deeper than any query of the API needs. They
/// run on a schema of their own, which can answer nothing but introspection, with this
/// allowance.
const INTROSPECTION_MAX_DEPTH: usize = 16;
const INTROSPECTION_MAX_COMPLEXITY: usize = 1_000;

/// The schemas a request may run on.
pub struct Schemas {
    max_nesting: usize,
    /// Everything, within the configured depth and complexity.
    pub api: TollgateSchema,
    /// Introspection only, within its own allowance; `None` when introspection is off.
    pub introspection: Option<TollgateSchema>,
}

impl Schemas {
    pub fn new(state: AppState) -> Self {
        let settings = &state.config.graphql;
        let introspection = settings.introspection.then(|| {
            with_limits(&state, builder().introspection_only())
                .limit_depth(INTROSPECTION_MAX_DEPTH.max(settings.max_depth))
                .limit_complexity(INTROSPECTION_MAX_COMPLEXITY.max(settings.max_complexity))
                .finish()
        });
        let mut api = with_limits(&state, builder())
            .limit_depth(settings.max_depth)
            .limit_complexity(settings.max_complexity);
        if !settings.introspection {
            // "Did you mean …?" would name the fields introspection hides.
            api = api.disable_introspection().disable_suggestions();
        }
        Schemas {
            max_nesting: settings.max_nesting,
            api: api.finish(),
            introspection,
        }
    }

    /// The schema `request` runs on: the introspection one for a document that asks only
    /// about the schema (checked on the parsed document, so a look-alike gains nothing: that
    /// schema answers nothing else anyway).
    pub fn for_request(&self, request: &async_graphql::Request) -> &TollgateSchema {
        match &self.introspection {
            Some(schema) if limits::is_introspection(&request.query, self.max_nesting) => schema,
            _ => &self.api,
        }
    }
}

fn builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query, Mutation, Subscription)
}

/// The configured limits and the state resolvers reach.
fn with_limits(
    state: &AppState,
    builder: SchemaBuilder<Query, Mutation, Subscription>,
) -> SchemaBuilder<Query, Mutation, Subscription> {
    builder
        .extension(observe::Observe(state.metrics.clone()))
        .extension(limits::Limits::new(&state.config.graphql))
        .limit_recursive_depth(64)
        .data(state.clone())
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    builder().finish().sdl()
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a AppState> {
    ctx.data::<AppState>().map_err(|_| {
        AppError::Internal(anyhow::anyhow!("schema executed without AppState")).extend()
    })
}

pub(crate) fn viewer<'a>(ctx: &Context<'a>) -> &'a Viewer {
    ctx.data_opt::<Viewer>().unwrap_or(&Viewer::ANONYMOUS)
}

/// The caller managing webhook endpoints.
pub(crate) fn webhook_caller<'a>(
    ctx: &Context<'a>,
) -> async_graphql::Result<crate::webhooks::endpoints::Caller<'a>> {
    let state = state(ctx)?;
    Ok(crate::webhooks::endpoints::Caller {
        db: &state.db,
        viewer: viewer(ctx),
        platform_admins: &state.config.platform_admins,
        settings: &state.config.webhooks,
    })
}

/// Sets `extensions.code` on an error that has none.
pub(crate) fn with_code(mut error: ServerError, code: &'static str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    error
}
