//! Where Tollgate sends signed webhooks: a tenant's endpoint (its own events), or the
//! platform's (`tenant_id` null: every tenant's). The signing secret is kept as it must be
//! used (HMAC), and shown only when created or rotated.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_endpoint")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub url: String,
    pub description: Option<String>,
    /// The event types sent, as `,a,b,` (empty: all of them).
    pub event_types: String,
    /// `whsec_` and the base64 of the key.
    pub secret: String,
    /// The secret before the last rotation: it signs beside `secret` until
    /// `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTimeUtc>,
    pub enabled: bool,
    /// Why it was disabled (by Tollgate: `410 Gone`, failing for days), if it was.
    pub disabled_reason: Option<String>,
    /// Since when every delivery to it has failed (cleared by a success).
    pub failing_since: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
