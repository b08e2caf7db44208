//! Credits beyond the plan: grants, and which buckets paid a spend.

use async_graphql::{Enum, ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{credit_allocation, credit_grant};

use super::{Actor, int};

/// What a grant is; promotional credits are spent before paid ones of the same priority and
/// expiry.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::credit_grant::GrantCategory")]
pub enum GrantCategory {
    /// Bought (a credit pack): never expires unless an expiry is given.
    Paid,
    /// Given (a promotion, a goodwill gesture).
    Promotional,
    /// Carried over from a past period's allowance.
    Rollover,
}

/// Where a grant stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::credit_grant::GrantStatus")]
pub enum GrantStatus {
    /// Spendable from `effectiveAt` until `expiresAt`.
    Active,
    /// All spent.
    Exhausted,
    /// Its expiry passed; what was left was forfeited.
    Expired,
    /// Voided; what was left was taken back.
    Voided,
}

/// Credits a tenant holds beyond its plan's allowance, spent after it in burn order.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditGrant {
    /// The grant's id.
    pub id: ID,
    /// The plan feature it adds to, e.g. `credits`.
    pub feature: String,
    /// Paid, promotional or rolled over.
    pub category: GrantCategory,
    /// Where it came from: `API` (grantCredits) or `STRIPE_CHECKOUT` (a purchased pack).
    pub source: String,
    /// The source's own reference (an idempotency key, a Checkout Session id).
    pub source_ref: String,
    /// Credits granted.
    pub amount: i32,
    /// Credits left to spend (0 once exhausted, expired or voided).
    pub remaining: i32,
    /// 0–100: lower is spent first.
    pub priority: i32,
    /// Spendable from.
    pub effective_at: DateTime<Utc>,
    /// Not spendable from this instant on; null: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Active, exhausted, expired or voided.
    pub status: GrantStatus,
    /// Why it was granted.
    pub reason: Option<String>,
    /// Who granted it.
    pub actor: Actor,
    /// When it was granted.
    pub created_at: DateTime<Utc>,
}

impl From<credit_grant::Model> for CreditGrant {
    fn from(g: credit_grant::Model) -> Self {
        CreditGrant {
            id: ID(g.id.to_string()),
            feature: g.feature,
            category: g.category.into(),
            source: g.source,
            source_ref: g.source_ref,
            amount: int(g.amount),
            remaining: int(g.remaining),
            priority: g.priority,
            effective_at: g.effective_at,
            expires_at: g.expires_at,
            status: g.status.into(),
            reason: g.reason,
            actor: Actor::new(g.actor_type, g.actor_id),
            created_at: g.created_at,
        }
    }
}

/// Credits to grant a tenant.
#[derive(InputObject, Debug)]
pub struct GrantCreditsInput {
    /// The tenant (or give `tenantExternalId`).
    pub tenant_id: Option<ID>,
    /// The tenant, by your own id for it.
    pub tenant_external_id: Option<String>,
    /// The plan feature the credits add to (default `credits`).
    pub feature: Option<String>,
    /// 1 to 1,000,000,000.
    pub amount: i32,
    /// Default `PROMOTIONAL`.
    pub category: Option<GrantCategory>,
    /// 0–100, lower spent first (default 50).
    pub priority: Option<i32>,
    /// Spendable from (default: now).
    pub effective_at: Option<DateTime<Utc>>,
    /// Not spendable from this instant on (default: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// Why (at most 500 characters); shown in the history.
    pub reason: Option<String>,
    /// Required: a retry with the same key and input returns the first grant and grants
    /// nothing more; the key with other input is `IDEMPOTENCY_KEY_REUSED`.
    pub idempotency_key: String,
}

/// A grant made by `grantCredits`, or found again by its idempotency key.
#[derive(SimpleObject, Debug)]
pub struct CreditGrantCreated {
    /// The grant (the first one, on a replay).
    pub grant: CreditGrant,
    /// True when the key had been used for this same grant: nothing was granted again.
    pub replayed: bool,
}

/// What a ledger row records.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::credit::Movement")]
pub enum CreditMovementKind {
    /// Credits spent by an action.
    Spend,
    /// A grant created: `amount` credits added.
    Grant,
    /// A grant expired: `amount` credits forfeited.
    Expiry,
    /// A grant voided: `amount` credits taken back.
    Void,
    /// A spend given back (`refundOf`): `amount` credits returned to the buckets that paid.
    Refund,
}

/// Where credits of a spend came from.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum CreditBucket {
    /// The plan's allowance for the period.
    Allowance,
    /// A grant (`grantId`).
    Grant,
}

/// What one bucket paid of a spend.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditAllocation {
    /// The allowance or a grant.
    pub bucket: CreditBucket,
    /// The grant, for a `GRANT` bucket.
    pub grant_id: Option<ID>,
    /// Credits it paid.
    pub amount: i32,
}

impl CreditAllocation {
    /// A spend of `amount`'s buckets: the allowance's part (what grants did not pay) first.
    pub fn of_spend(amount: i64, grants: &[credit_allocation::Model]) -> Vec<Self> {
        let from_grants: i64 = grants.iter().map(|a| a.amount).sum();
        let allowance = (amount - from_grants > 0).then(|| CreditAllocation {
            bucket: CreditBucket::Allowance,
            grant_id: None,
            amount: int(amount - from_grants),
        });
        allowance
            .into_iter()
            .chain(grants.iter().map(|a| CreditAllocation {
                bucket: CreditBucket::Grant,
                grant_id: Some(ID(a.grant_id.to_string())),
                amount: int(a.amount),
            }))
            .collect()
    }
}

/// When the soonest of a tenant's grants expires, and how much of it.
#[derive(SimpleObject, Clone, Copy, Debug)]
pub struct CreditExpiry {
    /// Credits that expire then.
    pub amount: i32,
    /// When they stop being spendable.
    pub at: DateTime<Utc>,
}

/// A spend (or part of it) to give back.
#[derive(InputObject, Debug)]
pub struct RefundCreditInput {
    /// The tenant (or give `tenantExternalId`).
    pub tenant_id: Option<ID>,
    /// The tenant, by your own id for it.
    pub tenant_external_id: Option<String>,
    /// The spend: a `SPEND` row of `creditHistory`.
    pub credit_id: ID,
    /// Credits to give back (default: all that is left of the spend to refund).
    pub amount: Option<i32>,
    /// Why (at most 500 characters); shown in the history.
    pub reason: Option<String>,
    /// Required: a retry with the same key and input returns the first refund and gives
    /// nothing more back.
    pub idempotency_key: String,
}

/// Where a refund put credits back.
#[derive(SimpleObject, Clone, Debug)]
pub struct RefundedBucket {
    /// The allowance or a grant.
    pub bucket: CreditBucket,
    /// The grant, for a `GRANT` bucket.
    pub grant_id: Option<ID>,
    /// Credits given back to it.
    pub amount: i32,
    /// Restored for the record only: the spend's period has closed, or the grant has expired
    /// or was voided. Lapsed credits cannot be spent.
    pub lapsed: bool,
}

impl From<crate::credits::refunds::Returned> for RefundedBucket {
    fn from(r: crate::credits::refunds::Returned) -> Self {
        RefundedBucket {
            bucket: match r.grant_id {
                Some(_) => CreditBucket::Grant,
                None => CreditBucket::Allowance,
            },
            grant_id: r.grant_id.map(|id| ID(id.to_string())),
            amount: int(r.amount),
            lapsed: r.lapsed,
        }
    }
}

/// A refund made by `refundCredit`, or found again by its idempotency key.
#[derive(SimpleObject, Debug)]
pub struct CreditRefund {
    /// The `REFUND` ledger row.
    pub credit: super::Credit,
    /// Where the credits went back, newest bucket first.
    pub buckets: Vec<RefundedBucket>,
    /// True when the key had been used for this same refund: nothing more was given back.
    pub replayed: bool,
}

/// Where a reservation stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::credit_reservation::ReservationStatus")]
pub enum ReservationStatus {
    /// Held: counts against the limit like a spend.
    Pending,
    /// Turned into a spend of `confirmedAmount`; the rest was given back.
    Confirmed,
    /// Given back in full.
    Released,
    /// Not settled in time: given back in full.
    Expired,
}

/// Credits held for work whose cost is known only afterwards.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditReservation {
    /// The reservation's id.
    pub id: ID,
    /// The plan feature held, e.g. `credits`.
    pub feature: String,
    /// The credit type held (`explicit` for an explicit amount).
    pub credit_type: String,
    /// Credits held.
    pub amount: i32,
    /// What was finally spent, once confirmed.
    pub confirmed_amount: Option<i32>,
    /// Your id of what the credits are held for.
    pub object_id: Option<String>,
    /// Pending, confirmed, released or expired.
    pub status: ReservationStatus,
    /// Released from this instant on unless confirmed or released before.
    pub expires_at: DateTime<Utc>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was confirmed, released or expired.
    pub settled_at: Option<DateTime<Utc>>,
    /// Who made it.
    pub actor: Actor,
    /// True when the idempotency key had made this same reservation: nothing more was held.
    pub replayed: bool,
}

impl CreditReservation {
    pub fn new(r: entity::credit_reservation::Model, replayed: bool) -> Self {
        CreditReservation {
            id: ID(r.id.to_string()),
            feature: r.feature,
            credit_type: r.credit_type,
            amount: int(r.amount),
            confirmed_amount: r.confirmed_amount.map(int),
            object_id: r.object_id,
            status: r.status.into(),
            expires_at: r.expires_at,
            created_at: r.created_at,
            settled_at: r.settled_at,
            actor: Actor::new(r.actor_type, r.actor_id),
            replayed,
        }
    }
}

/// Credits to hold.
#[derive(InputObject, Debug)]
pub struct ReserveCreditsInput {
    /// The tenant (or give `tenantExternalId`).
    pub tenant_id: Option<ID>,
    /// The tenant, by your own id for it.
    pub tenant_external_id: Option<String>,
    /// A credit type of the catalogue; give this or `amount`.
    pub credit_type: Option<String>,
    /// An explicit amount to hold (1 to 1,000,000,000); give this or `creditType`.
    pub amount: Option<i32>,
    /// The plan feature an explicit `amount` holds (default `credits`).
    pub feature: Option<String>,
    /// Your id of what the credits are held for (at most 255 characters).
    pub object_id: Option<String>,
    /// How long the hold lasts unless confirmed or released (default 3600, at most 86400).
    pub ttl_seconds: Option<i32>,
    /// Required: a retry with the same key and input returns the first reservation.
    pub idempotency_key: String,
}

/// A pack of credits for sale through Stripe Checkout (`createCreditPurchase`).
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditPack {
    /// Its id, e.g. `credits-100`.
    pub value: String,
    /// Display name.
    pub name: String,
    /// Credits granted per pack (as a `PAID` grant).
    pub credits: i32,
    /// The plan feature the credits add to.
    pub feature: String,
    /// Days until the granted credits expire; null: they never do.
    pub expires_in_days: Option<i32>,
}

impl From<&crate::config::CreditPackConfig> for CreditPack {
    fn from(p: &crate::config::CreditPackConfig) -> Self {
        CreditPack {
            value: p.value.clone(),
            name: p.name.clone(),
            credits: int(p.credits),
            feature: p.feature.clone(),
            expires_in_days: p
                .expires_in_days
                .map(|d| i32::try_from(d).unwrap_or(i32::MAX)),
        }
    }
}
