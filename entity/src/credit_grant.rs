//! Credits beyond the plan's allowance: a promotional gift, a purchased pack, credits rolled
//! over. Spent after the allowance, in burn order; `remaining` falls as spends take from it.

use sea_orm::entity::prelude::*;

use crate::credit::ActorType;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_grant")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The plan feature the grant adds to (`credits`).
    pub feature: String,
    pub category: GrantCategory,
    /// Where it came from: `API` (grantCredits), `STRIPE_CHECKOUT` (a purchased pack).
    pub source: String,
    /// The source's own reference, unique per tenant and source (an idempotency key, a
    /// Checkout Session id).
    pub source_ref: String,
    pub amount: i64,
    pub remaining: i64,
    /// 0–100, lower spent first.
    pub priority: i32,
    pub effective_at: DateTimeUtc,
    /// Never spendable from this instant on; `None`: never expires.
    pub expires_at: Option<DateTimeUtc>,
    pub status: GrantStatus,
    pub reason: Option<String>,
    /// The Stripe PaymentIntent that paid for it (a purchased pack).
    pub payment_ref: Option<String>,
    pub actor_type: ActorType,
    pub actor_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
}

/// What a grant is, which also places it in the burn order (promotional before paid).
#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum GrantCategory {
    #[sea_orm(string_value = "PAID")]
    Paid,
    #[sea_orm(string_value = "PROMOTIONAL")]
    Promotional,
    #[sea_orm(string_value = "ROLLOVER")]
    Rollover,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum GrantStatus {
    /// Spendable between `effective_at` and `expires_at`.
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    /// All spent.
    #[sea_orm(string_value = "EXHAUSTED")]
    Exhausted,
    /// Its expiry passed; what was left is forfeited (an `EXPIRY` movement).
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
    /// Voided: what was left is taken back (a `VOID` movement).
    #[sea_orm(string_value = "VOIDED")]
    Voided,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
