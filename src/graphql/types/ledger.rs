//! What a tenant has used and spent: its usage of a feature and the credit ledger.

use async_graphql::{ComplexObject, Context, ErrorExtensions, ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::credit;
use uuid::Uuid;

use super::{CreditType, FeatureLimitType, User, int};
use crate::{
    credits::{self, FeatureUsage},
    error::AppError,
    graphql::{loaders::Loaders, state},
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
}

impl From<FeatureUsage> for PlanFeatureUsage {
    fn from(u: FeatureUsage) -> Self {
        PlanFeatureUsage {
            remaining: u.remaining().map(int),
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

/// One row of the credit ledger: credits a guarded action spent.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Credit {
    /// The ledger row's id.
    pub id: ID,
    /// When the credits were spent.
    pub created_at: DateTime<Utc>,
    /// The credit type's value, e.g. `credit-task-creation`.
    #[graphql(name = "type")]
    pub kind: String,
    /// Credits spent.
    pub amount: i32,
    /// The id of the resource the credits paid for (the new Project's or Task's id).
    pub object_id: Option<String>,
    #[graphql(skip)]
    pub user_id: Option<Uuid>,
}

impl From<credit::Model> for Credit {
    fn from(c: credit::Model) -> Self {
        Credit {
            id: ID(c.id.to_string()),
            created_at: c.created_at,
            kind: c.kind,
            amount: int(c.amount),
            object_id: c.object_id,
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

    /// The credit type, as currently configured.
    async fn credit_type(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<CreditType>> {
        Ok(state(ctx)?
            .config
            .credit_types
            .iter()
            .find(|c| c.value == self.kind)
            .map(CreditType::from))
    }
}

/// Filters for `creditHistory`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct CreditHistoryFilter {
    /// Only this credit type (its value).
    #[graphql(name = "type")]
    pub kind: Option<String>,
    /// Only credits this user spent.
    pub user_id: Option<ID>,
    /// Only credits spent at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only credits spent before this time.
    pub to: Option<DateTime<Utc>>,
}
