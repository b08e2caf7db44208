//! Credits used per tenant, feature and period: the O(1) counter concurrent spenders contend on.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_usage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub feature: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub period_start: DateTimeUtc,
    pub used: i64,
    /// What grants paid in the period (the allowance's part is `used`).
    pub grants_used: i64,
    /// The consumption (`used + grants_used`) at which the next alert rule would start to
    /// hold; null: not known yet (a spend then looks at its alerts).
    pub alert_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
