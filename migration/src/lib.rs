//! Tollgate's schema, one migration per change. An applied migration is never edited:
//! add a new one.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_core;
mod m20261125_000002_idempotency;
mod m20261125_000003_stripe;
mod m20261125_000004_external_subject;
mod m20261130_000005_email_verified;
mod m20261130_000006_tenant_keys;
mod m20261130_000007_credit_subject;
mod m20261130_000008_api_keys;
mod m20261130_000009_tenant_external_id;
mod m20261130_000010_deleted_resources;
mod m20261130_000011_invitations;
mod m20261130_000012_credit_grants;
mod m20261130_000013_usage_adjustments;
mod m20261130_000014_webhooks;
mod m20261130_000015_credit_alerts;
mod m20261201_000016_event_sequence;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_core::Migration),
            Box::new(m20261125_000002_idempotency::Migration),
            Box::new(m20261125_000003_stripe::Migration),
            Box::new(m20261125_000004_external_subject::Migration),
            Box::new(m20261130_000005_email_verified::Migration),
            Box::new(m20261130_000006_tenant_keys::Migration),
            Box::new(m20261130_000007_credit_subject::Migration),
            Box::new(m20261130_000008_api_keys::Migration),
            Box::new(m20261130_000009_tenant_external_id::Migration),
            Box::new(m20261130_000010_deleted_resources::Migration),
            Box::new(m20261130_000011_invitations::Migration),
            Box::new(m20261130_000012_credit_grants::Migration),
            Box::new(m20261130_000013_usage_adjustments::Migration),
            Box::new(m20261130_000014_webhooks::Migration),
            Box::new(m20261130_000015_credit_alerts::Migration),
            Box::new(m20261201_000016_event_sequence::Migration),
        ]
    }
}
