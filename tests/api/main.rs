//! Tollgate's integration tests: one binary, one file per area, every test through the
//! public surface (GraphQL over HTTP, the CLI) of a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerts;
mod api_keys;
mod auth;
mod browser;
mod consume;
mod entitlement;
mod errors;
mod fake_stripe;
mod fuzz;
mod grants;
mod guard;
mod hardening;
mod helpers;
mod history;
mod hostile;
mod idempotency;
mod layout;
mod operability;
mod packs;
mod plans;
mod reporter;
mod reservations;
mod resilience;
mod resources;
mod round_trips;
mod schema;
mod stripe;
mod subscriptions;
mod teams;
mod tenants;
mod usage_refunds;
mod webhooks;
