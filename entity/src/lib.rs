//! sea-orm models of Tollgate's tables, one module per table. Models only: no GraphQL, no
//! business rules (those live in the `tollgate` crate).

pub mod api_key;
pub mod credit;
pub mod credit_allocation;
pub mod credit_grant;
pub mod credit_reservation;
pub mod credit_usage;
pub mod idempotency_key;
pub mod plan;
pub mod plan_feature;
pub mod project;
pub mod stripe_event;
pub mod task;
pub mod tenant;
pub mod tenant_invitation;
pub mod tenant_subscription;
pub mod tenant_user;
pub mod usage_event;
pub mod user;
pub mod webhook_delivery;
pub mod webhook_endpoint;
pub mod webhook_event;
