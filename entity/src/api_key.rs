//! API keys for servers: the secret is shown once and kept only as its SHA-256 hash. A tenant
//! key (`tenant_id`) touches only its tenant; a platform key (`tenant_id` null) any.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_key")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub name: String,
    /// The secret's first characters (`tg_sk_abcd`), to tell keys apart in a list.
    pub prefix: String,
    /// Hex SHA-256 of the whole secret.
    pub secret_hash: String,
    /// Scope names, comma-separated (`CREDITS_CONSUME,CREDITS_READ`).
    pub scopes: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// When the key was last used, to within a few minutes.
    pub last_used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
