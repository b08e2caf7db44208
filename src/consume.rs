//! Credits spent on the SaaS's own actions (`consumeCredits`) and the preflight that writes
//! nothing (`checkCredits`). A spend here is the guard's like any other — one call, the
//! whole cost or nothing, idempotent, recorded — but it pays for no row of Tollgate's: the
//! ledger row keeps the caller's object id, subject and metadata.

use chrono::{DateTime, Utc};
use entity::credit::{self, Movement};
use sea_orm::prelude::*;

use crate::{
    auth::{self, ApiScope, Viewer},
    config::CreditTypeConfig,
    credits::{self, Actor, FeatureLimitType, FeatureUsage, IdempotencyKey, Paid, Spend, Spent},
    error::AppError,
    idempotency::{self, Fingerprint},
    projects,
    state::AppState,
};

/// The most credits one explicit spend may cost.
pub const MAX_AMOUNT: i64 = 1_000_000_000;
const MAX_REFERENCE: usize = 255;
/// The most bytes `metadata` may hold, as JSON text.
pub const MAX_METADATA_BYTES: usize = 4096;

/// What a spend costs: a catalogue entry, or an explicit amount of a feature.
pub enum Cost {
    CreditType(String),
    Amount { amount: i64, feature: String },
}

impl Cost {
    /// From a request's `creditType`, `amount` and `feature` (default `credits`): exactly one
    /// of the first two; a feature given beside a credit type must be the one it spends.
    pub fn from_input(
        credit_type: Option<String>,
        amount: Option<i64>,
        feature: Option<String>,
        state: &AppState,
    ) -> Result<Self, AppError> {
        match (credit_type, amount) {
            (Some(value), None) => {
                let known = state.config.find_credit_type(&value);
                match (known, feature) {
                    (Some(ct), Some(f)) if ct.feature != f => Err(AppError::bad_input(format!(
                        "creditType {value:?} spends feature {:?}, not {f:?}",
                        ct.feature
                    ))),
                    _ => Ok(Cost::CreditType(value)),
                }
            }
            (None, Some(amount)) => Ok(Cost::Amount {
                amount,
                feature: feature.unwrap_or_else(|| credits::CREDITS_FEATURE.to_owned()),
            }),
            _ => Err(AppError::bad_input(
                "give exactly one of creditType (the catalogue's cost) and amount",
            )),
        }
    }
}

/// A spend of the caller's own.
pub struct Consume {
    pub tenant_id: Uuid,
    pub cost: Cost,
    /// The caller's id of what the credits pay for.
    pub object_id: Option<String>,
    /// The member the spend is made for; a signed-in user spends as themselves.
    pub user_id: Option<Uuid>,
    /// The caller's own reference for who acted, when it is not a Tollgate user.
    pub subject: Option<String>,
    pub idempotency_key: String,
    /// A JSON object, at most `MAX_METADATA_BYTES`.
    pub metadata: Option<serde_json::Value>,
}

/// A spend made (or found again).
pub struct Consumed {
    pub credit: credit::Model,
    /// True when the key had been used for this same request: nothing was charged again.
    pub replayed: bool,
}

/// Spends credits for the caller's own action.
pub async fn consume(
    state: &AppState,
    viewer: &Viewer,
    request: Consume,
) -> Result<Consumed, AppError> {
    let (user_id, actor) = spender(viewer, request.tenant_id, request.user_id)?;
    let credit_type = spendable_type(state, &request.cost)?;
    let object_id = reference("objectId", request.object_id)?;
    let subject = reference("subject", request.subject)?;
    let metadata_text = match &request.metadata {
        None => String::new(),
        Some(metadata @ serde_json::Value::Object(_)) => {
            let text = metadata.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(AppError::bad_input(format!(
                    "metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"
                )));
            }
            text
        }
        Some(_) => return Err(AppError::bad_input("metadata must be a JSON object")),
    };
    let key = idempotency::check_key(Some(request.idempotency_key))?.unwrap_or_default();
    let fingerprint = fingerprint(
        request.tenant_id,
        user_id,
        &credit_type,
        object_id.as_deref(),
        subject.as_deref(),
        &metadata_text,
    );
    let spend = Spend {
        tenant_id: request.tenant_id,
        user_id,
        credit_type: credit_type.clone(),
        paid: Paid::Action {
            object_id: object_id.clone(),
        },
        actor,
        subject: subject.clone(),
        metadata: request.metadata,
        key: Some(IdempotencyKey {
            value: key.clone(),
            fingerprint,
            retention: idempotency::retention(&state.config),
        }),
        at: state.clock.now(),
    };
    let metadata = spend.metadata.clone();
    let spent = state
        .writer
        .submit(spend)
        .await
        .map_err(|e| match (e, viewer.key()) {
            // The key was revoked since it was looked up.
            (AppError::Unauthenticated(auth::api_keys::REVOKED), Some(_)) => viewer.user_gone(),
            // The member a key named is not one (or no longer exists).
            (AppError::Unauthenticated(_) | AppError::Forbidden, Some(_)) => {
                AppError::bad_input("userId is not a member of the tenant")
            }
            (AppError::Unauthenticated(_), None) => viewer.user_gone(),
            (e, _) => e,
        })?;
    match spent {
        // Everything the row holds is known here but its period and its number among the
        // tenant's events, which no reader is shown.
        Spent::Charged { ledger_id, at } => Ok(Consumed {
            credit: credit::Model {
                id: ledger_id,
                tenant_id: request.tenant_id,
                user_id,
                kind: credit_type.value,
                amount: credit_type.amount,
                object_id,
                idempotency_key: Some(key),
                feature: credit_type.feature,
                period_start: at,
                created_at: at,
                subject,
                metadata,
                actor_type: actor.kind(),
                actor_id: actor.id(),
                movement: Movement::Spend,
                grant_id: None,
                refund_of: None,
                reason: None,
                seq: None,
            },
            replayed: false,
        }),
        Spent::Replayed(ledger_id) => {
            let credit = credits::ledger_row(
                &state.db,
                viewer,
                request.tenant_id,
                ledger_id,
                ApiScope::CreditsConsume,
            )
            .await?
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("an idempotent original is gone")))?;
            Ok(Consumed {
                credit,
                replayed: true,
            })
        }
    }
}

/// What a `consumeCredits` asked for, to tell a replay of its key from a reuse: everything
/// it spends and records (`metadata` as its JSON text, empty when none).
pub fn fingerprint(
    tenant_id: Uuid,
    user_id: Option<Uuid>,
    credit_type: &CreditTypeConfig,
    object_id: Option<&str>,
    subject: Option<&str>,
    metadata: &str,
) -> Fingerprint {
    Fingerprint::new(
        "consumeCredits",
        &[
            &tenant_id.to_string(),
            &user_id.map(|id| id.to_string()).unwrap_or_default(),
            &credit_type.value,
            &credit_type.amount.to_string(),
            &credit_type.feature,
            object_id.unwrap_or(""),
            subject.unwrap_or(""),
            metadata,
        ],
    )
}

/// Who spends: a user as themselves; a key (scope `CREDITS_CONSUME`) for the member it names,
/// or for none, within the tenants it may touch. The user's id and the actor.
pub fn spender(
    viewer: &Viewer,
    tenant_id: Uuid,
    user_id: Option<Uuid>,
) -> Result<(Option<Uuid>, Actor), AppError> {
    match viewer.key() {
        Some(key) => {
            viewer.standing_id(&[ApiScope::CreditsConsume])?;
            if key.tenant_id.is_some_and(|t| t != tenant_id) {
                return Err(AppError::Forbidden);
            }
            Ok((user_id, Actor::ApiKey(key.id)))
        }
        None => {
            let me = viewer.require()?;
            if user_id.is_some_and(|id| id != me) {
                return Err(AppError::bad_input(
                    "a signed-in user spends as themselves: leave userId out, or set it to your own id",
                ));
            }
            Ok((Some(me), Actor::User(me)))
        }
    }
}

/// The credit type `cost` spends, when the caller may spend it: not one that pays for
/// Tollgate's own rows (spent without one, the books would not balance).
pub fn spendable_type(state: &AppState, cost: &Cost) -> Result<CreditTypeConfig, AppError> {
    let credit_type = credit_type(state, cost)?;
    if projects::PAID
        .iter()
        .any(|p| p.credit_type == credit_type.value)
    {
        return Err(AppError::bad_input(format!(
            "creditType {:?} pays for Tollgate's own projects and tasks: spend it with \
             createProject or createTask, or define a credit type of your own",
            credit_type.value
        )));
    }
    Ok(credit_type)
}

/// Why a check or a spend would be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    InsufficientCredits,
    FeatureNotIncluded,
}

/// What `checkCredits` answers.
pub struct Check {
    pub allowed: bool,
    pub required: i64,
    /// Left of the period's allowance; `None` when unlimited.
    pub remaining: Option<i64>,
    /// The allowance's rest and the grants together; `None` when unlimited.
    pub available: Option<i64>,
    pub reason: Option<Refusal>,
    /// When the period's allowance starts again (`MONTHLY`).
    pub resets_at: Option<DateTime<Utc>>,
    /// Where the tenant stands; `None` when no plan defines the feature.
    pub usage: Option<FeatureUsage>,
}

/// Whether a spend of `cost` would be allowed now: the guard's own rule on the tenant's
/// usage as it stands, for a member. Writes nothing; one query.
pub async fn check(
    state: &AppState,
    viewer: &Viewer,
    tenant_id: Uuid,
    cost: &Cost,
) -> Result<Check, AppError> {
    let credit_type = credit_type(state, cost)?;
    let required = credit_type.amount;
    let now = state.clock.now();
    let feature = &credit_type.feature;
    let usage = credits::usage(
        &state.db,
        viewer,
        tenant_id,
        feature,
        now,
        ApiScope::CreditsRead,
    );
    let usage = usage.await?;
    let (allowed, reason) = match &usage {
        None => (false, Some(Refusal::FeatureNotIncluded)),
        Some(u) if u.kind == FeatureLimitType::NotIncluded => {
            (false, Some(Refusal::FeatureNotIncluded))
        }
        Some(u) if u.fits(required) => (true, None),
        Some(_) => (false, Some(Refusal::InsufficientCredits)),
    };
    Ok(Check {
        allowed,
        required,
        remaining: usage.as_ref().and_then(FeatureUsage::remaining),
        available: match &usage {
            Some(u) => u.available(),
            None => Some(0),
        },
        reason,
        resets_at: usage.as_ref().and_then(|u| u.period).and_then(|p| p.end),
        usage,
    })
}

/// The credit type a cost spends: the catalogue's, or an explicit amount's.
fn credit_type(state: &AppState, cost: &Cost) -> Result<CreditTypeConfig, AppError> {
    match cost {
        Cost::CreditType(value) => state
            .config
            .find_credit_type(value)
            .cloned()
            .ok_or_else(|| {
                AppError::bad_input(format!(
                    "creditType {value:?} is not in the catalogue (see creditTypes)"
                ))
            }),
        Cost::Amount { amount, feature } => {
            if !(1..=MAX_AMOUNT).contains(amount) {
                return Err(AppError::bad_input(format!(
                    "amount must be between 1 and {MAX_AMOUNT}"
                )));
            }
            if feature.is_empty() || feature.len() > MAX_REFERENCE {
                return Err(AppError::bad_input(format!(
                    "feature must be 1 to {MAX_REFERENCE} characters"
                )));
            }
            Ok(CreditTypeConfig::explicit(*amount, feature.clone()))
        }
    }
}

/// An optional reference of the caller's: 1 to 255 characters when given.
pub fn reference(field: &str, value: Option<String>) -> Result<Option<String>, AppError> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > MAX_REFERENCE => Err(AppError::bad_input(
            format!("{field} must be 1 to {MAX_REFERENCE} characters"),
        )),
        other => Ok(other),
    }
}
