//! `AppState`: what every request can reach — connections, the guard writer, the
//! configuration, keys, the password hashers, the Stripe client, metrics and rate limits.

use std::sync::Arc;

use crate::{
    auth::{Hasher, Keys},
    billing::StripeHttp,
    config::Config,
    credits::Writer,
    db::Database,
    metrics::Metrics,
    projects::ProjectTenants,
    rate_limit::RateLimits,
};

/// What resolvers need from the process: shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub writer: Writer,
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    /// Password hashing, bounded (`auth.hashing_concurrency`, `auth.hashing_queue`).
    pub hasher: Hasher,
    /// The Stripe client, when `stripe.secret_key` is configured.
    pub stripe: Option<StripeHttp>,
    pub metrics: Metrics,
    pub limits: Arc<RateLimits>,
    /// The tenant of each project seen (immutable facts; see `projects::ProjectTenants`).
    pub project_tenants: Arc<ProjectTenants>,
}
