//! Threshold alerts: the rules a tenant is warned by, and what fired.

use async_graphql::{Enum, ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};

use super::int;
use crate::credits::alerts;

/// What an alert watches.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::credits::alerts::AlertKind")]
pub enum CreditAlertKind {
    /// At least `threshold` % of what the period offers — the allowance, the grants drawn in
    /// the period and the grants still spendable — is used.
    PercentUsed,
    /// Fewer than `threshold` credits are available.
    RemainingBelow,
    /// Nothing is available. Always watched; not a rule one sets.
    Depleted,
    /// A spend was refused for want of credits: the period's first refusal. Not a rule one
    /// sets.
    LimitReached,
}

/// Whether an alert fires now.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum CreditAlertState {
    /// Its rule holds (for `LIMIT_REACHED`: a spend was refused this period).
    Active,
    /// Its rule stopped holding (a refund, a grant, a plan change); it fires again if it holds
    /// again in the same period.
    Resolved,
}

/// A rule to set.
#[derive(InputObject, Clone, Debug)]
pub struct CreditAlertRuleInput {
    /// `PERCENT_USED` or `REMAINING_BELOW`.
    pub kind: CreditAlertKind,
    /// A percentage from 1 to 100 (`PERCENT_USED`), or credits (`REMAINING_BELOW`).
    pub threshold: i32,
    /// Also send `credits.threshold_resolved` when it stops holding.
    #[graphql(default = false)]
    pub notify_resolved: bool,
}

impl From<CreditAlertRuleInput> for alerts::Rule {
    fn from(input: CreditAlertRuleInput) -> Self {
        alerts::Rule {
            kind: input.kind.into(),
            threshold: input.threshold.into(),
            notify_resolved: input.notify_resolved,
        }
    }
}

/// A rule a tenant is warned by.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditAlertRule {
    /// What it watches.
    pub kind: CreditAlertKind,
    /// A percentage (`PERCENT_USED`) or credits (`REMAINING_BELOW`).
    pub threshold: i32,
    /// Whether `credits.threshold_resolved` is sent when it stops holding.
    pub notify_resolved: bool,
}

impl From<alerts::Rule> for CreditAlertRule {
    fn from(rule: alerts::Rule) -> Self {
        CreditAlertRule {
            kind: rule.kind.into(),
            threshold: int(rule.threshold),
            notify_resolved: rule.notify_resolved,
        }
    }
}

/// The rules that apply to a tenant's feature.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditAlertRules {
    /// The plan feature, e.g. `credits`.
    pub feature: String,
    /// The rules (`DEPLETED` is watched beside them).
    pub rules: Vec<CreditAlertRule>,
    /// Whether these are the platform's defaults (the tenant set none of its own).
    pub is_default: bool,
}

impl From<alerts::Rules> for CreditAlertRules {
    fn from(rules: alerts::Rules) -> Self {
        CreditAlertRules {
            feature: rules.feature,
            rules: rules.rules.into_iter().map(Into::into).collect(),
            is_default: rules.is_default,
        }
    }
}

/// An alert that fired in a period: once per rule and period, again only after it resolved.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditAlert {
    /// The alert's id.
    pub id: ID,
    /// The plan feature, e.g. `credits`.
    pub feature: String,
    /// The period it fired in.
    pub period_start: DateTime<Utc>,
    /// What its rule watches.
    pub kind: CreditAlertKind,
    /// The rule's threshold (0 for `DEPLETED` and `LIMIT_REACHED`).
    pub threshold: i32,
    /// Whether it fires now.
    pub state: CreditAlertState,
    /// How many times it fired in the period (more than once only after resolving).
    pub times_reached: i32,
    /// When it last fired.
    pub reached_at: DateTime<Utc>,
    /// When it last resolved; null while active.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Used of the allowance when it last fired or resolved.
    pub used: i32,
    /// The allowance then.
    pub limit: Option<i32>,
    /// Available in all then (allowance left and grants).
    pub available: Option<i32>,
}

impl From<alerts::Alert> for CreditAlert {
    fn from(a: alerts::Alert) -> Self {
        CreditAlert {
            id: ID(a.id.to_string()),
            feature: a.feature,
            period_start: a.period_start,
            kind: a.rule.kind.into(),
            threshold: int(a.rule.threshold),
            state: match a.active {
                true => CreditAlertState::Active,
                false => CreditAlertState::Resolved,
            },
            times_reached: a.times_reached,
            reached_at: a.reached_at,
            resolved_at: a.resolved_at,
            used: int(a.used),
            limit: a.limit.map(int),
            available: a.available.map(int),
        }
    }
}

/// What a `creditEvents` event is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum CreditEventType {
    /// Credits spent (`credit` is the ledger row).
    Spend,
    /// A spend given back.
    Refund,
    /// Credits granted beyond the plan.
    Grant,
    /// A grant expired: what it held is forfeited.
    Expiry,
    /// A grant voided: what it held is taken back.
    Void,
    /// An alert rule started to hold (`data` is the `credits.threshold_reached` webhook's).
    ThresholdReached,
    /// An alert rule with `notifyResolved` stopped holding.
    ThresholdResolved,
    /// Nothing is available any more.
    Depleted,
    /// The period's first spend refused for want of credits.
    LimitReached,
}

impl CreditEventType {
    /// The type of an alert event, by its webhook type.
    pub fn of_alert(kind: &str) -> Option<Self> {
        Some(match kind {
            "credits.threshold_reached" => CreditEventType::ThresholdReached,
            "credits.threshold_resolved" => CreditEventType::ThresholdResolved,
            "credits.depleted" => CreditEventType::Depleted,
            "credits.limit_reached" => CreditEventType::LimitReached,
            _ => return None,
        })
    }

    /// The type of a ledger row, by its movement.
    pub fn of_movement(movement: &entity::credit::Movement) -> Self {
        use entity::credit::Movement;
        match movement {
            Movement::Spend => CreditEventType::Spend,
            Movement::Refund => CreditEventType::Refund,
            Movement::Grant => CreditEventType::Grant,
            Movement::Expiry => CreditEventType::Expiry,
            Movement::Void => CreditEventType::Void,
        }
    }
}

/// The number of one of a tenant's credit events: 1, 2, 3, … per tenant, in the order the
/// events committed, never reused. A JSON number (a whole number up to 2^53 − 1, beyond
/// GraphQL's 32-bit `Int`: a busy tenant passes 2^31 events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sequence(pub i64);

/// The largest number a JSON reader holds exactly (2^53 − 1).
const MAX_SEQUENCE: i64 = (1 << 53) - 1;

#[async_graphql::Scalar]
impl async_graphql::ScalarType for Sequence {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match &value {
            async_graphql::Value::Number(n) => n
                .as_i64()
                .filter(|n| (0..=MAX_SEQUENCE).contains(n))
                .map(Sequence)
                .ok_or_else(|| {
                    async_graphql::InputValueError::custom(
                        "a sequence number is a whole number from 0 to 2^53 - 1",
                    )
                }),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::Number(self.0.into())
    }
}

/// One of a tenant's credit events, live.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditEvent {
    /// Its number among the tenant's events (1, 2, 3, … in the order they committed, the
    /// same for every subscriber, on every replica): a number skipped is an event missed —
    /// unless `types` left it out. Resume after it with `creditEvents(after:)`.
    pub sequence: Sequence,
    /// The ledger row's or the alert event's id.
    pub id: ID,
    /// What happened.
    #[graphql(name = "type")]
    pub kind: CreditEventType,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The plan feature, e.g. `credits`.
    pub feature: Option<String>,
    /// The ledger row, for ledger events.
    pub credit: Option<super::Credit>,
    /// What the alert's webhook carries (`rule`, the balance), for alert events.
    pub data: Option<async_graphql::Json<serde_json::Value>>,
}
