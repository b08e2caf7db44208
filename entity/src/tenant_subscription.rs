//! The plan a tenant is on, and its billing period when Stripe knows one.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenant_subscription")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    pub plan_id: Uuid,
    pub status: String,
    pub current_period_start: Option<DateTimeUtc>,
    pub current_period_end: Option<DateTimeUtc>,
    pub stripe_subscription_id: Option<String>,
    pub updated_at: DateTimeUtc,
    /// Stripe will end the subscription when the current period ends.
    pub cancel_at_period_end: bool,
    /// When Stripe created the event that last changed this row: older events are ignored.
    pub stripe_event_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
