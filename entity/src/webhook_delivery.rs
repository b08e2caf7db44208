//! One event sent to one endpoint (a replay is another delivery of the same event): claimed
//! by a sender for a while, retried on a schedule, kept with its last answer. Never deleted.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_delivery")]
pub struct Model {
    /// The event's tenant (the nil id: about no tenant).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    /// While in the future, one sender owns the row.
    pub claimed_until: Option<DateTimeUtc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

/// Where a delivery stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum DeliveryStatus {
    /// Not yet answered with a 2xx (maybe waiting for a retry).
    #[sea_orm(string_value = "PENDING")]
    Pending,
    /// The endpoint answered 2xx.
    #[sea_orm(string_value = "DELIVERED")]
    Delivered,
    /// Given up: retries exhausted, or the endpoint disabled. `last_error` says why; a replay
    /// sends the event again.
    #[sea_orm(string_value = "FAILED")]
    Failed,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
