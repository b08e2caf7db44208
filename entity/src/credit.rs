//! The append-only credit ledger: one row per movement of credits — a guarded action's spend,
//! and a grant's creation, expiry or void. Never updated or deleted.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// With `id`, the key: every key of a tenant's table includes the tenant (so the schema
    /// can be distributed by it).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    #[sea_orm(column_name = "type")]
    pub kind: String,
    pub amount: i64,
    pub object_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// The plan feature the credits were counted against (`credits`).
    pub feature: String,
    /// The start of the counting period, the key of the `credit_usage` row this spend added to.
    pub period_start: DateTimeUtc,
    pub created_at: DateTimeUtc,
    /// The calling SaaS's own reference for who acted, when it is not a Tollgate user
    /// (`consumeCredits`' `subject`).
    pub subject: Option<String>,
    /// The caller's JSON object (`consumeCredits`' `metadata`), at most a few KB.
    pub metadata: Option<Json>,
    /// Who made the spend: a user, an API key (`actor_id`) or the system.
    pub actor_type: ActorType,
    pub actor_id: Option<Uuid>,
    /// What moved: a spend (the default), or a grant's creation, expiry or void.
    #[sea_orm(column_name = "kind")]
    pub movement: Movement,
    /// The grant a `GRANT`, `EXPIRY` or `VOID` movement is of.
    pub grant_id: Option<Uuid>,
    /// The spend a `REFUND` gives back (part of).
    pub refund_of: Option<Uuid>,
    /// Why credits were granted, taken back or refunded.
    pub reason: Option<String>,
    /// Its number among the tenant's credit events (`credit_feed`): 1, 2, 3, … in commit
    /// order, shared with its alert events.
    pub seq: Option<i64>,
}

/// What a ledger row records.
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Movement {
    /// Credits spent (counted against the period's allowance, and its grants' allocations).
    #[sea_orm(string_value = "SPEND")]
    Spend,
    /// A grant created: `amount` credits added.
    #[sea_orm(string_value = "GRANT")]
    Grant,
    /// A grant expired: `amount` credits forfeited.
    #[sea_orm(string_value = "EXPIRY")]
    Expiry,
    /// A grant voided: `amount` credits taken back.
    #[sea_orm(string_value = "VOID")]
    Void,
    /// A spend given back (`refund_of`): `amount` credits returned to the buckets that paid.
    #[sea_orm(string_value = "REFUND")]
    Refund,
}

/// Who made a spend, stored as `USER`, `API_KEY` or `SYSTEM`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum ActorType {
    /// A signed-in user (`actor_id` is the user's id).
    #[sea_orm(string_value = "USER")]
    User,
    /// A server with an API key (`actor_id` is the key's id).
    #[sea_orm(string_value = "API_KEY")]
    ApiKey,
    /// Tollgate itself.
    #[sea_orm(string_value = "SYSTEM")]
    System,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
