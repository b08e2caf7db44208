//! The Stripe outbox: one billable usage event per guarded spend of a metered credit type by
//! a tenant with a Stripe customer, written in the guard's transaction and reported to a
//! Billing Meter by the reporter. Rows are never deleted: a row that cannot be delivered is
//! kept as `FAILED` with its error.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_event")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// With `id`, the key: every key of a tenant's table includes the tenant (so the schema
    /// can be distributed by it).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    /// The ledger row this usage was charged in.
    pub credit_id: Uuid,
    /// The usage-based unit (`project-credits`, `task-credits`).
    pub unit: String,
    /// The Stripe meter's `event_name`.
    pub event_name: String,
    pub stripe_customer_id: String,
    pub quantity: i64,
    /// Stripe's deduplication key, derived from `id` (`tollgate-<id>`).
    #[sea_orm(unique)]
    pub identifier: String,
    /// `PENDING`, `WAITING`, `DELIVERED`, `FAILED` or `CANCELLED`.
    pub status: UsageStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTimeUtc,
    /// While in the future, one reporter owns the row.
    pub claimed_until: Option<DateTimeUtc>,
    pub reported_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    /// Of `quantity`, what was refunded after the event had gone to Stripe (or was on its
    /// way): it stays on the invoice.
    pub refunded_quantity: i64,
    /// `METER_EVENT` (reports `quantity`) or `CANCEL` (cancels the event `adjusts` names, by
    /// a meter event adjustment).
    pub kind: UsageKind,
    /// A `CANCEL`'s event to cancel; a re-reported event's original (the event it replaces).
    pub adjusts: Option<Uuid>,
    /// A `CANCEL` is not sent after this (Stripe cancels events within 24 hours of receiving
    /// them): it fails instead, and the usage stays on the invoice.
    pub send_by: Option<DateTimeUtc>,
}

/// What a row of the outbox asks of Stripe.
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum UsageKind {
    /// A meter event of `quantity`.
    #[sea_orm(string_value = "METER_EVENT")]
    MeterEvent,
    /// A meter event adjustment cancelling the event `adjusts` names.
    #[sea_orm(string_value = "CANCEL")]
    Cancel,
}

/// Where a usage event stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum UsageStatus {
    /// Not yet accepted by Stripe (maybe waiting for a retry).
    #[sea_orm(string_value = "PENDING")]
    Pending,
    /// Accepted by Stripe (or found already there: a duplicate identifier).
    #[sea_orm(string_value = "DELIVERED")]
    Delivered,
    /// Can never be delivered: see `last_error`.
    #[sea_orm(string_value = "FAILED")]
    Failed,
    /// Not billed: refunded before it was sent, cancelled at Stripe by a meter event
    /// adjustment after it was sent (`reported_at` set), or a re-report whose cancel failed.
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    /// A re-report held back until the cancel of the event it replaces has gone through.
    #[sea_orm(string_value = "WAITING")]
    Waiting,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
