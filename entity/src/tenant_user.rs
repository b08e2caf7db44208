//! Membership of a user in a tenant, with a role (OWNER, ADMIN, MEMBER).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenant_user")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    pub role: Role,
    pub created_at: DateTimeUtc,
}

/// A member's role in a tenant, stored as `OWNER`, `ADMIN` or `MEMBER`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Role {
    /// Created the tenant; can do everything.
    #[sea_orm(string_value = "OWNER")]
    Owner,
    /// Manages the tenant and its billing.
    #[sea_orm(string_value = "ADMIN")]
    Admin,
    /// Uses the tenant's resources.
    #[sea_orm(string_value = "MEMBER")]
    Member,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
