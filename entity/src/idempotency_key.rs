//! An idempotency key a tenant used on a guarded mutation: what it was used for and which
//! resource it created. Purged after the configured retention.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_key")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// `createProject` or `createTask`.
    pub operation: String,
    /// SHA-256 of the operation's input: the same key with other input is refused.
    pub request_hash: String,
    /// The resource the first request created.
    pub resource_id: Uuid,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
