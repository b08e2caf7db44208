//! Billing: a tenant's Stripe subscription, the Stripe-hosted pages, and the usage reported
//! to Stripe.

use async_graphql::{Enum, ID, SimpleObject};
use chrono::{DateTime, Utc};
use entity::usage_event;

use super::{Plan, int};
use crate::billing::{UsageKind, UsageStatus};

/// A tenant's subscription: its plan and, once Stripe manages it, its billing period.
#[derive(SimpleObject, Clone, Debug)]
pub struct TenantSubscription {
    /// The plan the tenant is on.
    pub plan: Option<Plan>,
    /// `active` for the default plan; else Stripe's status (`active`, `trialing`,
    /// `past_due`, `canceled`, …).
    pub status: String,
    /// Start of the current billing period (inclusive), when Stripe knows one.
    pub current_period_start: Option<DateTime<Utc>>,
    /// End of the current billing period (exclusive): when MONTHLY usage resets.
    pub current_period_end: Option<DateTime<Utc>>,
    /// Whether Stripe ends the subscription when the period ends.
    pub cancel_at_period_end: bool,
}

/// A Stripe Checkout page: send the customer's browser to `url`.
#[derive(SimpleObject, Clone, Debug)]
pub struct CheckoutSession {
    /// The page's address (Stripe-hosted).
    pub url: String,
}

/// A Stripe billing portal page: send the customer's browser to `url`.
#[derive(SimpleObject, Clone, Debug)]
pub struct BillingPortalSession {
    /// The page's address (Stripe-hosted).
    pub url: String,
}

/// Where a usage report stands.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageReportStatus {
    /// Not yet accepted by Stripe (perhaps waiting to be retried).
    Pending,
    /// Accepted by Stripe.
    Delivered,
    /// Can never be delivered; `lastError` says why.
    Failed,
    /// Not billed: refunded before it was sent, or sent and then cancelled at Stripe by a
    /// meter event adjustment (`reportedAt` set), or a re-report whose cancel failed.
    Cancelled,
    /// A re-report of what stands of a refunded spend, held back until the cancel of the
    /// report it replaces (`adjusts`) has gone through.
    Waiting,
}

/// What a usage report asks of Stripe.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageReportKind {
    /// A meter event of `quantity`.
    MeterEvent,
    /// A meter event adjustment cancelling the report `adjusts` names (a refund of usage
    /// Stripe had received less than 24 hours before).
    Cancel,
}

impl From<UsageKind> for UsageReportKind {
    fn from(k: UsageKind) -> Self {
        match k {
            UsageKind::MeterEvent => UsageReportKind::MeterEvent,
            UsageKind::Cancel => UsageReportKind::Cancel,
        }
    }
}

impl From<UsageStatus> for UsageReportStatus {
    fn from(s: UsageStatus) -> Self {
        match s {
            UsageStatus::Pending => UsageReportStatus::Pending,
            UsageStatus::Delivered => UsageReportStatus::Delivered,
            UsageStatus::Failed => UsageReportStatus::Failed,
            UsageStatus::Cancelled => UsageReportStatus::Cancelled,
            UsageStatus::Waiting => UsageReportStatus::Waiting,
        }
    }
}

/// Billable usage reported to a Stripe Billing Meter: one per guarded action of a metered
/// credit type.
#[derive(SimpleObject, Clone, Debug)]
pub struct UsageReport {
    /// The report's id.
    pub id: ID,
    /// A meter event, or the cancel of one.
    pub kind: UsageReportKind,
    /// The ledger row (spend) the usage was charged in.
    pub credit_id: ID,
    /// A cancel's report to cancel; a re-report's original, the report it replaces.
    pub adjusts: Option<ID>,
    /// The usage-based unit (e.g. `task-credits`).
    pub unit: String,
    /// The meter event's value (the credits spent); for a cancel, the value it takes off.
    pub quantity: i32,
    /// Where the report stands.
    pub status: UsageReportStatus,
    /// Sends to Stripe so far.
    pub attempts: i32,
    /// What went wrong last, if anything.
    pub last_error: Option<String>,
    /// When Stripe accepted it.
    pub reported_at: Option<DateTime<Utc>>,
    /// When the usage happened (the meter event's timestamp).
    pub created_at: DateTime<Utc>,
    /// Of `quantity`, credits refunded after the report had gone to Stripe. Within 24 hours of
    /// Stripe receiving it, a refund cancels the report (a `CANCEL` report) and re-reports what
    /// stands; later, or when the cancel fails, they stay on the invoice (credit the customer
    /// there). Refunds before it was sent reduce `quantity`.
    pub refunded_quantity: i32,
}

impl From<usage_event::Model> for UsageReport {
    fn from(e: usage_event::Model) -> Self {
        UsageReport {
            id: ID(e.id.to_string()),
            kind: e.kind.into(),
            credit_id: ID(e.credit_id.to_string()),
            adjusts: e.adjusts.map(|id| ID(id.to_string())),
            unit: e.unit,
            quantity: int(e.quantity),
            status: e.status.into(),
            attempts: e.attempts,
            last_error: e.last_error,
            reported_at: e.reported_at,
            created_at: e.created_at,
            refunded_quantity: int(e.refunded_quantity),
        }
    }
}
