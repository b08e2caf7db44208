//! Stripe billing, all optional: without `stripe.secret_key` nothing here runs (the guard
//! still writes usage events for tenants that have a Stripe customer, so nothing is lost if
//! the key is added later).
//!
//! - Usage goes out through an outbox: the credits guard writes a `usage_event` row in its own
//!   transaction (with `credits::usage_events::spend_event_sql`); the reporter sends each row to a Billing
//!   Meter exactly once (`reporter`, `outbox`).
//! - Plans and periods come in as signed webhooks (`webhooks`).
//! - Checkout and the billing portal are Stripe-hosted pages (`sessions`).

mod client;
pub mod outbox;
mod reporter;
mod sessions;
pub mod webhooks;

pub use client::{StripeFailure, StripeHttp};
pub use outbox::{UsageKind, UsageStatus};
pub use reporter::spawn_reporter;
pub use sessions::{
    Billing, Checkout, PACK_METADATA_KEY, QUANTITY_METADATA_KEY, TENANT_METADATA_KEY, checkout,
    portal, purchase,
};

pub use crate::credits::usage_events::identifier;
