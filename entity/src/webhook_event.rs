//! An event to send as a webhook, recorded in the transaction of the change it tells of; its
//! id is the `webhook-id` every delivery of it carries. `dispatched_at` is set when it has been
//! fanned out to the endpoints that want it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_event")]
pub struct Model {
    /// The tenant it is about (the nil id: about no tenant, e.g. a platform endpoint's test
    /// event).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_name = "type")]
    pub kind: String,
    /// The body sent: `{"type", "timestamp", "data"}`.
    pub payload: String,
    pub created_at: DateTimeUtc,
    pub dispatched_at: Option<DateTimeUtc>,
    /// Its number among the tenant's credit events, for an alert event `creditEvents`
    /// carries (`credit.seq`'s numbering); null for the others.
    pub seq: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
