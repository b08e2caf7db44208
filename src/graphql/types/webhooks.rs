//! Webhook endpoints, the secrets shown once, and deliveries.

use async_graphql::{Enum, ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{
    webhook_delivery::{self, DeliveryStatus},
    webhook_endpoint,
};

use crate::webhooks::endpoints::types_of;

/// Where Tollgate sends signed webhooks (never its secret).
#[derive(SimpleObject, Clone, Debug)]
pub struct WebhookEndpoint {
    /// The endpoint's id.
    pub id: ID,
    /// Whose events it gets; null: a platform endpoint (every tenant's).
    pub tenant_id: Option<ID>,
    /// Where webhooks are POSTed.
    pub url: String,
    /// What it is for.
    pub description: Option<String>,
    /// The event types it gets; empty: all of them.
    pub event_types: Vec<String>,
    /// Whether deliveries are made to it.
    pub enabled: bool,
    /// Why it is disabled: by a user, `410 Gone`, or failing for too long.
    pub disabled_reason: Option<String>,
    /// Since when every delivery to it has failed; null while it is healthy.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs beside the new one.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<webhook_endpoint::Model> for WebhookEndpoint {
    fn from(e: webhook_endpoint::Model) -> Self {
        WebhookEndpoint {
            id: ID(e.id.to_string()),
            tenant_id: e.tenant_id.map(|t| ID(t.to_string())),
            event_types: types_of(&e),
            url: e.url,
            description: e.description,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            previous_secret_expires_at: e.previous_secret_until.filter(|at| *at > Utc::now()),
            created_at: e.created_at,
        }
    }
}

/// A new endpoint and its signing secret, shown this once.
#[derive(SimpleObject, Clone, Debug)]
pub struct WebhookEndpointCreated {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verify each webhook's `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

/// An endpoint's new signing secret, shown this once; the old one signs beside it until
/// `endpoint.previousSecretExpiresAt`.
#[derive(SimpleObject, Clone, Debug)]
pub struct WebhookSecretRotated {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// The new `whsec_…`.
    pub secret: String,
}

/// A new webhook endpoint.
#[derive(InputObject, Clone, Debug)]
pub struct CreateWebhookEndpointInput {
    /// The tenant whose events it gets; omitted: a platform endpoint (platform admins and
    /// platform keys only), which gets every tenant's.
    pub tenant_id: Option<ID>,
    /// `https://…` (or `http://`); never an internal address (`WEBHOOK_URL_NOT_ALLOWED`).
    pub url: String,
    /// What it is for (at most 500 characters).
    pub description: Option<String>,
    /// The event types to send; omitted or empty: all.
    pub event_types: Option<Vec<String>>,
}

/// A change to a webhook endpoint: what is given changes.
#[derive(InputObject, Clone, Debug)]
pub struct UpdateWebhookEndpointInput {
    /// The endpoint to change.
    pub id: ID,
    /// A new URL (checked as when created).
    pub url: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// The event types to send; empty: all.
    pub event_types: Option<Vec<String>>,
    /// Turn deliveries off or back on (turning on clears a disabled reason).
    pub enabled: Option<bool>,
}

/// Where a delivery stands.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookDeliveryStatus {
    /// Not yet answered with a 2xx; `nextAttemptAt` says when it is tried again.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up (`lastError` says why); `replayWebhookEvent` sends the event again.
    Failed,
}

/// One event sent to one endpoint.
#[derive(SimpleObject, Clone, Debug)]
pub struct WebhookDelivery {
    /// The delivery's id.
    pub id: ID,
    /// The endpoint it goes to.
    pub endpoint_id: ID,
    /// The event: its `webhook-id` is `msg_` and this id without dashes.
    pub event_id: ID,
    /// Where it stands.
    pub status: WebhookDeliveryStatus,
    /// Requests sent so far.
    pub attempts: i32,
    /// The endpoint's last HTTP status, if it answered.
    pub last_status_code: Option<i32>,
    /// What went wrong last, if anything.
    pub last_error: Option<String>,
    /// When it is (or was last) due.
    pub next_attempt_at: DateTime<Utc>,
    /// When the endpoint answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was made (the event fanned out, a test or a replay asked for).
    pub created_at: DateTime<Utc>,
}

impl From<webhook_delivery::Model> for WebhookDelivery {
    fn from(d: webhook_delivery::Model) -> Self {
        WebhookDelivery {
            id: ID(d.id.to_string()),
            endpoint_id: ID(d.endpoint_id.to_string()),
            event_id: ID(d.event_id.to_string()),
            status: match d.status {
                DeliveryStatus::Pending => WebhookDeliveryStatus::Pending,
                DeliveryStatus::Delivered => WebhookDeliveryStatus::Delivered,
                DeliveryStatus::Failed => WebhookDeliveryStatus::Failed,
            },
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}
