//! Credits held for work whose cost is known only afterwards: held like a spend (its ledger
//! row's `object_id` is the reservation's id) until confirmed (the rest given back), released
//! or expired (all given back). Exactly one of those happens.

use sea_orm::entity::prelude::*;

use crate::credit::ActorType;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_reservation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    pub feature: String,
    /// The credit type held (`explicit` for an explicit amount).
    pub credit_type: String,
    /// Credits held.
    pub amount: i64,
    /// What was finally spent, once confirmed.
    pub confirmed_amount: Option<i64>,
    /// The caller's id of what the credits are held for.
    pub object_id: Option<String>,
    pub status: ReservationStatus,
    /// Released by the sweeper from this instant on, unless confirmed or released before.
    pub expires_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    /// When it was confirmed, released or expired.
    pub settled_at: Option<DateTimeUtc>,
    pub actor_type: ActorType,
    pub actor_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum ReservationStatus {
    /// Held: counts against the limit like a spend.
    #[sea_orm(string_value = "PENDING")]
    Pending,
    /// Turned into a spend of `confirmed_amount`; the rest was given back.
    #[sea_orm(string_value = "CONFIRMED")]
    Confirmed,
    /// Given back in full.
    #[sea_orm(string_value = "RELEASED")]
    Released,
    /// Not settled in time: given back in full.
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
