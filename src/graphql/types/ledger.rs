//! What a tenant has used and spent: its usage of a feature and the credit ledger.

use async_graphql::{
    ComplexObject, Context, Enum, ErrorExtensions, ID, InputObject, Json, ResultExt, SimpleObject,
};
use chrono::{DateTime, Utc};
use entity::credit;
use uuid::Uuid;

use super::{
    Actor, ActorKind, CreditAllocation, CreditExpiry, CreditMovementKind, CreditType,
    FeatureLimitType, User, int,
};
use crate::{
    auth::ApiScope,
    consume::{Check, Consume, Consumed, Cost, Refusal},
    credits::{self, FeatureUsage},
    error::AppError,
    graphql::{loaders::Loaders, state, viewer},
    state::AppState,
};

/// Where a tenant stands on one feature of its plan.
#[derive(SimpleObject, Clone, Debug)]
pub struct PlanFeatureUsage {
    /// The feature, e.g. `credits`.
    pub name: String,
    /// Display name.
    pub title: String,
    /// How the tenant's plan limits the feature.
    #[graphql(name = "type")]
    pub kind: FeatureLimitType,
    /// The limit, for `MONTHLY` and `MAX`.
    pub value: i32,
    /// Used in the current period (lifetime for `MAX`).
    pub used: i32,
    /// Left in the current period; null when unlimited.
    pub remaining: Option<i32>,
    /// True for `INCLUDED` and `UNLIMITED`.
    pub unlimited: bool,
    /// Whether the feature can be used now.
    pub enabled: bool,
    /// Why not, when `enabled` is false; null when enabled.
    pub message: Option<String>,
    /// The counting period, for `MONTHLY` features.
    pub period: Option<UsagePeriod>,
    /// What the tenant's spendable grants of the feature hold beside the allowance (frozen
    /// while the plan does not include the feature).
    pub grants_remaining: i32,
    /// All a spend may take now: what is left of the allowance plus the grants; null when
    /// unlimited, 0 when the plan does not include the feature.
    pub available: Option<i32>,
    /// The soonest a spendable grant expires, and how much expires then; null when none does.
    pub next_expiry: Option<CreditExpiry>,
}

impl From<FeatureUsage> for PlanFeatureUsage {
    fn from(u: FeatureUsage) -> Self {
        PlanFeatureUsage {
            remaining: u.remaining().map(int),
            available: u.available().map(int),
            grants_remaining: int(u.grants_remaining),
            next_expiry: u.next_expiry.map(|(amount, at)| CreditExpiry {
                amount: int(amount),
                at,
            }),
            unlimited: matches!(
                u.kind,
                credits::FeatureLimitType::Included | credits::FeatureLimitType::Unlimited
            ),
            period: u.period.and_then(|p| {
                Some(UsagePeriod {
                    start: p.start,
                    end: p.end?,
                })
            }),
            name: u.name,
            title: u.title,
            kind: u.kind.into(),
            value: int(u.value),
            used: int(u.used),
            enabled: u.enabled,
            message: u.message,
        }
    }
}

/// A counting period in UTC.
#[derive(SimpleObject, Clone, Copy, Debug)]
pub struct UsagePeriod {
    /// Inclusive.
    pub start: DateTime<Utc>,
    /// Exclusive: when the usage resets.
    pub end: DateTime<Utc>,
}

/// One row of the credit ledger: credits a guarded action spent, or a grant's creation,
/// expiry or void (`kind`).
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Credit {
    /// The ledger row's id.
    pub id: ID,
    /// When the credits moved.
    pub created_at: DateTime<Utc>,
    /// What moved: a spend, or a grant's creation, expiry or void.
    #[graphql(name = "kind")]
    pub movement: CreditMovementKind,
    /// The credit type's value, e.g. `credit-task-creation` (`grant` for a grant's movements).
    #[graphql(name = "type")]
    pub kind: String,
    /// Credits spent (granted, forfeited, taken back).
    pub amount: i32,
    /// The grant a `GRANT`, `EXPIRY` or `VOID` row is of.
    pub grant_id: Option<ID>,
    /// The spend a `REFUND` row gives back (part of).
    pub refund_of: Option<ID>,
    /// Why credits were granted, taken back or refunded.
    pub reason: Option<String>,
    /// The id of what the credits paid for: the new Project's or Task's id, or the caller's
    /// own object id (`consumeCredits`).
    pub object_id: Option<String>,
    /// The plan feature the credits were counted against, e.g. `credits`.
    pub feature: String,
    /// The caller's own reference for who acted (`consumeCredits`' `subject`).
    pub subject: Option<String>,
    /// The caller's JSON object (`consumeCredits`' `metadata`).
    pub metadata: Option<Json<serde_json::Value>>,
    /// Who made the spend: a user, an API key or the system.
    pub actor: Actor,
    #[graphql(skip)]
    pub user_id: Option<Uuid>,
    #[graphql(skip)]
    pub ledger_id: Uuid,
    #[graphql(skip)]
    pub amount_spent: i64,
}

impl From<credit::Model> for Credit {
    fn from(c: credit::Model) -> Self {
        Credit {
            id: ID(c.id.to_string()),
            ledger_id: c.id,
            amount_spent: c.amount,
            movement: c.movement.into(),
            grant_id: c.grant_id.map(|id| ID(id.to_string())),
            refund_of: c.refund_of.map(|id| ID(id.to_string())),
            reason: c.reason,
            created_at: c.created_at,
            kind: c.kind,
            amount: int(c.amount),
            object_id: c.object_id,
            feature: c.feature,
            subject: c.subject,
            metadata: c.metadata.map(Json),
            actor: Actor::new(c.actor_type, c.actor_id),
            user_id: c.user_id,
        }
    }
}

#[ComplexObject]
impl Credit {
    /// Who spent the credits (batched: one query for a whole page).
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(id) = self.user_id else {
            return Ok(None);
        };
        let loader = ctx.data::<Loaders>()?.users();
        let user = loader
            .load_one(id)
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("loading users: {e}")).extend())?;
        Ok(user.map(User::from))
    }

    /// Which buckets paid a spend (or got a refund back): the allowance's part, then each
    /// grant's (batched: one query for a whole page). Empty for a grant's movements.
    async fn allocations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<CreditAllocation>> {
        if !matches!(
            self.movement,
            CreditMovementKind::Spend | CreditMovementKind::Refund
        ) {
            return Ok(Vec::new());
        }
        let loader = ctx.data::<Loaders>()?.allocations();
        let grants = loader
            .load_one(self.ledger_id)
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("loading allocations: {e}")).extend())?
            .unwrap_or_default();
        Ok(CreditAllocation::of_spend(self.amount_spent, &grants))
    }

    /// The credit type, as currently configured.
    async fn credit_type(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<CreditType>> {
        let config = &state(ctx)?.config;
        Ok(config.find_credit_type(&self.kind).map(CreditType::from))
    }
}

/// Filters for `creditHistory`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct CreditHistoryFilter {
    /// Only this kind of movement (spends, or a grant's creation, expiry or void).
    #[graphql(name = "kind")]
    pub movement: Option<CreditMovementKind>,
    /// Only this credit type (its value).
    #[graphql(name = "type")]
    pub kind: Option<String>,
    /// Only credits this user spent.
    pub user_id: Option<ID>,
    /// Only credits spent at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only credits spent before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only spends made by this kind of actor.
    pub actor: Option<ActorKind>,
    /// Only spends made by this user or API key.
    pub actor_id: Option<ID>,
    /// Only spends for this object id.
    pub object_id: Option<String>,
}

/// A spend of credits for an action of the caller's own.
#[derive(InputObject, Debug)]
pub struct ConsumeCreditsInput {
    /// The tenant that pays (or give `tenantExternalId`).
    pub tenant_id: Option<ID>,
    /// The tenant that pays, by your own id for it (`createTenant`'s `externalId`).
    pub tenant_external_id: Option<String>,
    /// A credit type of the catalogue (`creditTypes`): its amount and feature. Give this or
    /// `amount`.
    pub credit_type: Option<String>,
    /// An explicit cost (1 to 1,000,000,000), recorded as credit type `explicit`. Give this or
    /// `creditType`.
    pub amount: Option<i32>,
    /// The plan feature an explicit `amount` spends (default `credits`); beside a
    /// `creditType`, it must be the one that type spends.
    pub feature: Option<String>,
    /// Your id of what the credits pay for, kept in the ledger (at most 255 characters).
    pub object_id: Option<String>,
    /// The member the spend is made for. A signed-in user spends as themselves: leave it out.
    pub user_id: Option<ID>,
    /// Your own reference for who acted, when it is not a Tollgate user (at most 255).
    pub subject: Option<String>,
    /// Required: a retry with the same key and input returns the first spend and charges
    /// nothing; the key with other input is `IDEMPOTENCY_KEY_REUSED`.
    pub idempotency_key: String,
    /// A JSON object kept with the ledger row (at most 4,096 bytes).
    pub metadata: Option<Json<serde_json::Value>>,
}

impl ConsumeCreditsInput {
    /// The domain's request: the tenant resolved (by id or external id), the cost checked.
    pub async fn into_request(self, state: &AppState) -> Result<Consume, AppError> {
        let tenant = self.tenant_id.as_ref();
        let tenant_id = super::tenant_ref(&state.db, tenant, self.tenant_external_id.as_deref());
        let amount = self.amount.map(i64::from);
        Ok(Consume {
            tenant_id: tenant_id.await?,
            cost: Cost::from_input(self.credit_type, amount, self.feature, state)?,
            object_id: self.object_id,
            user_id: self
                .user_id
                .map(|id| super::parse_id(&id, "userId"))
                .transpose()?,
            subject: self.subject,
            idempotency_key: self.idempotency_key,
            metadata: self.metadata.map(|m| m.0),
        })
    }
}

/// A spend made by `consumeCredits`, or found again by its idempotency key.
#[derive(SimpleObject, Debug)]
#[graphql(complex)]
pub struct CreditSpend {
    /// The ledger row.
    pub credit: Credit,
    /// True when the idempotency key had been used for this same spend: nothing was charged
    /// again, and `credit` is the first spend's.
    pub replayed: bool,
    #[graphql(skip)]
    pub tenant_id: Uuid,
}

impl CreditSpend {
    pub fn new(consumed: Consumed) -> Self {
        CreditSpend {
            tenant_id: consumed.credit.tenant_id,
            credit: consumed.credit.into(),
            replayed: consumed.replayed,
        }
    }
}

#[ComplexObject]
impl CreditSpend {
    /// Where the tenant stands on the spend's feature now (read when asked for).
    async fn usage(&self, ctx: &Context<'_>) -> async_graphql::Result<PlanFeatureUsage> {
        let state = state(ctx)?;
        let usage = credits::usage(
            &state.db,
            viewer(ctx),
            self.tenant_id,
            &self.credit.feature,
            state.clock.now(),
            ApiScope::CreditsConsume,
        )
        .await
        .extend()?;
        let usage = usage.ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("a spent feature has no plan")).extend()
        })?;
        Ok(usage.into())
    }
}

/// Why an action would be refused (the error code a spend would get).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum CreditRefusalReason {
    InsufficientCredits,
    FeatureNotIncluded,
}

/// Whether an action would be allowed now (`checkCredits`): nothing is written or held.
#[derive(SimpleObject, Debug)]
pub struct CreditCheck {
    /// Whether a spend of `required` would be allowed now.
    pub allowed: bool,
    /// What the action costs.
    pub required: i32,
    /// Left of the period's allowance; null when unlimited.
    pub remaining: Option<i32>,
    /// The allowance's rest and the grants together; null when unlimited.
    pub available: Option<i32>,
    /// Why not, when `allowed` is false.
    pub reason: Option<CreditRefusalReason>,
    /// When the allowance starts again (`MONTHLY` features); null otherwise.
    pub resets_at: Option<DateTime<Utc>>,
    /// Where the tenant stands on the feature; null when no plan defines it.
    pub usage: Option<PlanFeatureUsage>,
}

impl From<Check> for CreditCheck {
    fn from(c: Check) -> Self {
        CreditCheck {
            allowed: c.allowed,
            required: int(c.required),
            remaining: c.remaining.map(int),
            available: c.available.map(int),
            reason: c.reason.map(|r| match r {
                Refusal::InsufficientCredits => CreditRefusalReason::InsufficientCredits,
                Refusal::FeatureNotIncluded => CreditRefusalReason::FeatureNotIncluded,
            }),
            resets_at: c.resets_at,
            usage: c.usage.map(PlanFeatureUsage::from),
        }
    }
}
