//! The public catalogue: credit types, units, plans and their features.

use async_graphql::{Enum, ID, SimpleObject};

use super::int;
use crate::{
    config::{CreditTypeConfig, UsageBasedUnitConfig},
    plans::PlanWithFeatures,
};

/// How a plan limits a feature.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::plan_feature::FeatureLimitType")]
pub enum FeatureLimitType {
    /// The plan does not include the feature: every use is refused.
    NotIncluded,
    /// Included without a limit; uses are still recorded.
    Included,
    /// Up to `value` uses per billing period (the calendar month in UTC unless Stripe says otherwise).
    Monthly,
    /// Up to `value` uses over the tenant's lifetime.
    Max,
    /// No limit; uses are still recorded.
    Unlimited,
}

/// A kind of guarded action and what it costs.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditType {
    /// Stable identifier, e.g. `credit-task-creation`.
    pub value: String,
    /// Human-readable name.
    pub name: String,
    /// When these credits are spent.
    pub description: String,
    /// Credits one action costs.
    pub amount: i32,
    /// The plan feature it spends, e.g. `credits`.
    pub feature: String,
}

impl From<&CreditTypeConfig> for CreditType {
    fn from(c: &CreditTypeConfig) -> Self {
        CreditType {
            value: c.value.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            amount: int(c.amount),
            feature: c.feature.clone(),
        }
    }
}

/// A unit usage is measured and billed in.
#[derive(SimpleObject, Clone, Debug)]
pub struct UsageBasedUnit {
    /// Stable identifier, e.g. `task-credits`.
    pub name: String,
    /// Singular label.
    pub title: String,
    /// Plural label.
    pub title_plural: String,
}

impl From<&UsageBasedUnitConfig> for UsageBasedUnit {
    fn from(u: &UsageBasedUnitConfig) -> Self {
        UsageBasedUnit {
            name: u.name.clone(),
            title: u.title.clone(),
            title_plural: u.title_plural.clone(),
        }
    }
}

/// A subscription plan.
#[derive(SimpleObject, Clone, Debug)]
pub struct Plan {
    /// The plan's id.
    pub id: ID,
    /// Stable identifier, e.g. `free`.
    pub slug: String,
    /// Display name.
    pub title: String,
    /// Longer text for a pricing page.
    pub description: Option<String>,
    /// The plan's limits, in display order.
    pub features: Vec<PlanFeature>,
}

impl From<PlanWithFeatures> for Plan {
    fn from(p: PlanWithFeatures) -> Self {
        Plan {
            id: ID(p.plan.id.to_string()),
            slug: p.plan.slug,
            title: p.plan.title,
            description: p.plan.description,
            features: p
                .features
                .into_iter()
                .map(|f| PlanFeature {
                    name: f.name,
                    title: f.title,
                    kind: f.kind.into(),
                    value: int(f.value),
                    order: f.order,
                })
                .collect(),
        }
    }
}

/// One limit of a plan.
#[derive(SimpleObject, Clone, Debug)]
pub struct PlanFeature {
    /// Stable identifier, e.g. `credits`.
    pub name: String,
    /// Display name.
    pub title: String,
    /// How `value` limits the feature.
    #[graphql(name = "type")]
    pub kind: FeatureLimitType,
    /// The limit, for `MONTHLY` and `MAX`.
    pub value: i32,
    /// Display order within the plan.
    pub order: i32,
}
