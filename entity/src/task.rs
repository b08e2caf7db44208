//! A task inside a project: a guarded resource (creating one costs credits).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "task")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// With `id`, the key: every key of a tenant's table includes the tenant (so the schema
    /// can be distributed by it).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub title: String,
    pub created_by: Uuid,
    pub created_at: DateTimeUtc,
    /// When it was deleted: the row stays for the ledger rows that paid for it.
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
