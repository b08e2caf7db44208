//! Tollgate: tracks, limits and charges a SaaS product's customers through credits, behind a
//! GraphQL API. Start with `credits` (the domain and its invariants).

/// Who is calling: tokens, API keys, accounts and password hashing, the viewer, tenancy checks.
pub mod auth;
/// Stripe: the usage outbox and its reporter, webhooks, Checkout and the billing portal.
pub mod billing;
/// Bounded in-process caches of facts that never change once known.
pub mod cache;
/// The command line (`serve`, `migrate`, `print-schema`, `verify`, `token`, `api-key create`).
pub mod cli;
/// The time the credits domain runs on (the system clock, or a manual one in tests).
pub mod clock;
/// Typed configuration: defaults, TOML file, environment.
pub mod config;
/// Credits spent on the SaaS's own actions (`consumeCredits`) and the preflight
/// (`checkCredits`), through the same guard.
pub mod consume;
/// THE DOMAIN: the credits guard (`credits::guard`, batched by `credits::Writer`), the
/// plan-limit rule (`credits::limit`), usage, the ledger and its audit.
pub mod credits;
/// Database connections: the request path's reads in one round trip (rusqlite on SQLite, our
/// own sqlx connections on PostgreSQL), the writer's session, sea-orm for the rest; SQL with
/// named parameters; every round trip counted.
pub mod db;
/// The one error type and its public codes.
pub mod error;
/// The GraphQL schema, its types and resolvers.
pub mod graphql;
/// The HTTP routes: /graphql (and GraphiQL), /healthz, /readyz, /metrics, /webhooks/stripe
/// (its HTTP side; `billing::webhooks` applies the events).
pub mod http;
/// Idempotency keys of guarded mutations: claim, replay, purge.
pub mod idempotency;
/// The live balance's fan-out: changes heard by every process's subscribers (in-process on
/// SQLite; PostgreSQL `LISTEN/NOTIFY`, sent after commit in batches).
pub mod live;
/// Teams: members, invitations, roles and the one OWNER of each tenant.
pub mod members;
/// Prometheus metrics (`GET /metrics`).
pub mod metrics;
/// Plans and subscriptions: the configured plans, and the plan each tenant is on.
pub mod plans;
/// Guarded resources: projects and tasks, each describing the row its credits pay for.
pub mod projects;
/// Per-client rate limits (governor), per process.
pub mod rate_limit;
/// Reservations: credits held for work whose cost is known afterwards, then confirmed,
/// released or expired.
pub mod reservations;
/// Connect, migrate, serve.
pub mod startup;
/// `AppState`: what every request can reach.
pub mod state;
/// Logging set-up.
pub mod telemetry;
/// Tenants (workspaces) and memberships.
pub mod tenants;
/// Signed webhooks Tollgate sends (Standard Webhooks): endpoints, the events recorded with
/// the changes they tell of, and the sender that delivers them, retried, on any replica.
pub mod webhooks;
