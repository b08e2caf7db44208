//! One limit of a plan: its type (NOT_INCLUDED, INCLUDED, MONTHLY, MAX, UNLIMITED) and value.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "plan_feature")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub plan_id: Uuid,
    pub name: String,
    pub title: String,
    #[sea_orm(column_name = "type")]
    pub kind: FeatureLimitType,
    pub value: i64,
    pub order: i32,
}

/// How a plan limits a feature (SaasRock's SubscriptionFeatureLimitType), stored and
/// configured as `NOT_INCLUDED`, `INCLUDED`, `MONTHLY`, `MAX` or `UNLIMITED`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    EnumIter,
    DeriveActiveEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeatureLimitType {
    #[sea_orm(string_value = "NOT_INCLUDED")]
    NotIncluded,
    #[sea_orm(string_value = "INCLUDED")]
    Included,
    #[sea_orm(string_value = "MONTHLY")]
    Monthly,
    #[sea_orm(string_value = "MAX")]
    Max,
    #[sea_orm(string_value = "UNLIMITED")]
    Unlimited,
}

impl FeatureLimitType {
    /// Whether `value` caps usage (`MONTHLY`, `MAX`).
    pub fn is_limited(self) -> bool {
        matches!(self, FeatureLimitType::Monthly | FeatureLimitType::Max)
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
