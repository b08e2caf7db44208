//! The one error type of the crate. Each variant has a stable `code()` (the public error
//! codes of DESIGN.md); `extend()` turns it into a GraphQL error with `extensions.code`.
//! Internal errors are logged here, once, with their cause chain, and reach clients opaque.

use async_graphql::ErrorExtensions;
use chrono::{DateTime, Utc};

/// Why a guarded action was refused for lack of credits: enough for a client to render
/// "You've reached the limit this month (10/10)" without a second request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub feature: String,
    pub credit_type: String,
    pub required: i64,
    pub used: i64,
    pub limit: i64,
    /// End of the current period; `None` for lifetime (`MAX`) limits.
    pub resets_at: Option<DateTime<Utc>>,
    /// What the tenant's spendable grants hold beside the allowance.
    pub grants_remaining: i64,
}

impl Shortfall {
    /// Left of the period's allowance.
    pub fn remaining(&self) -> i64 {
        (self.limit - self.used).max(0)
    }

    /// All a spend could take now: the allowance's rest and the grants.
    pub fn available(&self) -> i64 {
        self.remaining().saturating_add(self.grants_remaining)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    BadUserInput(String),
    #[error(
        "not enough credits: {} needs {}, {} of {} used this period",
        .0.credit_type, .0.required, .0.used, .0.limit
    )]
    InsufficientCredits(Box<Shortfall>),
    #[error("your plan does not include the feature {feature:?}")]
    FeatureNotIncluded { feature: String },
    #[error("this idempotency key was already used with different input")]
    IdempotencyKeyReused,
    #[error("too many requests: try again in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("this reservation is no longer pending: it was confirmed, released or has expired")]
    ReservationNotPending,
    #[error("no such invitation (or it was used or revoked)")]
    InvitationNotFound,
    #[error("this invitation has expired: ask for a new one")]
    InvitationExpired,
    #[error("this invitation is for another email address")]
    InvitationEmailMismatch,
    #[error("already a member of this tenant")]
    AlreadyMember,
    #[error("a tenant always has exactly one OWNER: transfer ownership first")]
    LastOwner,
    #[error("webhook URL not allowed: {0}")]
    WebhookUrlNotAllowed(String),
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    /// The stable, public code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::BadUserInput(_) => "BAD_USER_INPUT",
            AppError::InsufficientCredits(_) => "INSUFFICIENT_CREDITS",
            AppError::FeatureNotIncluded { .. } => "FEATURE_NOT_INCLUDED",
            AppError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::ReservationNotPending => "RESERVATION_NOT_PENDING",
            AppError::InvitationNotFound => "INVITATION_NOT_FOUND",
            AppError::InvitationExpired => "INVITATION_EXPIRED",
            AppError::InvitationEmailMismatch => "INVITATION_EMAIL_MISMATCH",
            AppError::AlreadyMember => "ALREADY_MEMBER",
            AppError::LastOwner => "LAST_OWNER",
            AppError::WebhookUrlNotAllowed(_) => "WEBHOOK_URL_NOT_ALLOWED",
            AppError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        AppError::BadUserInput(message.into())
    }

    /// Logs an internal error with its cause chain; other variants are the client's doing.
    pub fn log(&self) {
        if let AppError::Internal(cause) = self {
            tracing::error!(error.cause = %format!("{cause:#}"), "internal error");
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(err: sea_orm::DbErr) -> Self {
        AppError::Internal(err.into())
    }
}

impl From<sea_orm::TransactionError<AppError>> for AppError {
    fn from(err: sea_orm::TransactionError<AppError>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(app) => app,
        }
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        self.log();
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| {
            e.set("code", self.code());
            match self {
                AppError::InsufficientCredits(s) => {
                    e.set("feature", s.feature.as_str());
                    e.set("creditType", s.credit_type.as_str());
                    e.set("required", s.required);
                    e.set("used", s.used);
                    e.set("limit", s.limit);
                    e.set("remaining", s.remaining());
                    e.set("grantsRemaining", s.grants_remaining);
                    e.set("available", s.available());
                    e.set(
                        "resetsAt",
                        s.resets_at
                            .map(|t| t.to_rfc3339())
                            .map_or(async_graphql::Value::Null, Into::into),
                    );
                }
                AppError::FeatureNotIncluded { feature } => e.set("feature", feature.as_str()),
                AppError::RateLimited { retry_after } => e.set("retryAfter", *retry_after),
                _ => {}
            }
        })
    }
}
