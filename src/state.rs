//! `AppState`: what every request can reach — connections, the guard writer, the
//! configuration, keys, the password hashers, the Stripe client, metrics and rate limits.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use uuid::Uuid;

use crate::{
    auth::{Hasher, Keys},
    billing::StripeHttp,
    clock::Clock,
    config::Config,
    credits::Writer,
    db::Database,
    metrics::Metrics,
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
    /// The tenant of each resource seen (facts that never change).
    pub owners: Arc<Owners>,
    /// The time spends, grants and usage are decided at.
    pub clock: Clock,
    /// Changes, for the live balance's subscribers on every replica.
    pub changes: crate::live::Changes,
    /// Open subscription connections per caller (`graphql.max_ws_connections_per_user`).
    pub connections: Arc<crate::live::Connections>,
}

impl AppState {
    /// What billing pages need.
    pub fn billing(&self) -> crate::billing::Billing<'_> {
        crate::billing::Billing {
            db: &self.db,
            stripe: self.stripe.as_ref(),
            config: &self.config,
        }
    }
}

/// The tenant that owns each resource seen (a project). A resource never changes tenant, so
/// this decides nothing the database would not — the guard still checks membership — and
/// saves reading the resource again (`createTask` names only its project). Bounded: emptied
/// when full.
#[derive(Default)]
pub struct Owners(Mutex<HashMap<Uuid, Uuid>>);

/// Resources `Owners` holds at most.
const KNOWN_OWNERS: usize = 100_000;

impl Owners {
    pub fn get(&self, resource_id: Uuid) -> Option<Uuid> {
        let known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(&resource_id).copied()
    }

    pub fn insert(&self, resource_id: Uuid, tenant_id: Uuid) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= KNOWN_OWNERS {
            known.clear();
        }
        known.insert(resource_id, tenant_id);
    }
}
