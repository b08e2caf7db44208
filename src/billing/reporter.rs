//! The reporter: a background task that drains the outbox into Stripe Billing Meters. Each
//! round it claims a batch of due usage events, sends them (a few at a time) as meter events
//! whose `identifier` is the row's own, and records each outcome:
//!
//! - accepted, or rejected as a duplicate identifier (Stripe already has it: an earlier send
//!   whose answer was lost) → `DELIVERED`;
//! - 429, 5xx, a timeout or no connection (or `Stripe-Should-Retry: true`) → retried later,
//!   after an exponential backoff with jitter;
//! - any other 4xx (or `Stripe-Should-Retry: false`), `max_attempts` reached, or an event
//!   older than Stripe accepts (35 days) → `FAILED`, with the error kept. Never dropped.
//!
//! Exactly once rests on the identifier: a row is sent again only when its outcome was not
//! recorded, and Stripe rejects the second copy.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    StripeFailure, StripeHttp,
    outbox::{self, Claimed, Outcome},
};
use crate::{config::StripeSettings, db::Database};

/// How far back Stripe accepts a meter event's `timestamp` (35 days), less an hour's margin
/// for the time the send takes.
const OLDEST_REPORTABLE: chrono::Duration = chrono::Duration::hours(35 * 24 - 1);

/// Starts the reporter. It runs until `stop` turns true; then it finishes the round in hand
/// (every event it sent gets its outcome recorded) and ends.
pub fn spawn_reporter(
    db: Database,
    client: StripeHttp,
    settings: StripeSettings,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(settings.worker_interval_ms);
        while !*stop.borrow() {
            match round(&db, &client, &settings).await {
                // A full batch: more may be due at once.
                Ok(claimed) if claimed as u64 >= settings.batch_size => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error.cause = %e, "usage reporting round failed; will retry")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("usage reporter stopped");
    })
}

/// One round: claim, send, settle. Returns how many events were claimed.
async fn round(
    db: &Database,
    client: &StripeHttp,
    settings: &StripeSettings,
) -> Result<usize, sea_orm::DbErr> {
    let now = Utc::now();
    let claim = chrono::Duration::seconds(i64::try_from(settings.claim_seconds).unwrap_or(60));
    let claimed = outbox::claim(db, now, now + claim, settings.batch_size).await?;
    let count = claimed.len();
    if count == 0 {
        return Ok(0);
    }
    let outcomes: Vec<_> = stream::iter(claimed)
        .map(|event| async move {
            let now = Utc::now();
            if now - event.created_at > OLDEST_REPORTABLE {
                let error = format!(
                    "not reported: created {}, older than the 35 days Stripe accepts",
                    event.created_at.to_rfc3339()
                );
                return (event.id, false, Outcome::Failed { error });
            }
            let result = send(client, &event).await;
            (
                event.id,
                true,
                judge(result, event.attempts + 1, settings, now),
            )
        })
        .buffer_unordered(settings.concurrency)
        .collect()
        .await;
    for (id, _, outcome) in &outcomes {
        match outcome {
            Outcome::Delivered => tracing::debug!(usage_event.id = %id, "usage event delivered"),
            Outcome::Retry { error, at } => {
                tracing::info!(usage_event.id = %id, error.cause = %error, retry_at = %at, "usage event not delivered; will retry")
            }
            Outcome::Failed { error } => {
                tracing::error!(usage_event.id = %id, error.cause = %error, "usage event can never be delivered; marked FAILED")
            }
        }
    }
    outbox::settle(db, Utc::now(), &outcomes).await?;
    Ok(count)
}

/// Sends one meter event.
async fn send(client: &StripeHttp, event: &Claimed) -> Result<(), StripeFailure> {
    let payload = HashMap::from([
        (
            "stripe_customer_id".to_owned(),
            event.stripe_customer_id.clone(),
        ),
        ("value".to_owned(), event.quantity.to_string()),
    ]);
    CreateBillingMeterEvent::new(event.event_name.as_str(), payload)
        .identifier(event.identifier.as_str())
        .timestamp(event.created_at.timestamp())
        .send(client)
        .await
        .map(|_| ())
}

/// The outcome of the `attempt`th send of an event.
fn judge(
    result: Result<(), StripeFailure>,
    attempt: i32,
    settings: &StripeSettings,
    now: DateTime<Utc>,
) -> Outcome {
    let error = match result {
        Ok(()) => return Outcome::Delivered,
        // Stripe took it (2xx) but its answer did not parse: it is delivered all the same.
        Err(StripeFailure::Decode(_)) => return Outcome::Delivered,
        Err(e) if is_duplicate(&e) => return Outcome::Delivered,
        Err(e) => e,
    };
    let retryable = match &error {
        StripeFailure::Api {
            should_retry: Some(retry),
            ..
        } => *retry,
        StripeFailure::Api { status, .. } => matches!(status, 409 | 424 | 429 | 500..=599),
        StripeFailure::Transport(_) | StripeFailure::Decode(_) => true,
    };
    let error = error.to_string();
    if !retryable {
        return Outcome::Failed { error };
    }
    if attempt >= settings.max_attempts {
        return Outcome::Failed {
            error: format!("gave up after {attempt} attempts: {error}"),
        };
    }
    Outcome::Retry {
        error,
        at: now + backoff(attempt, settings),
    }
}

/// Stripe's answer to an identifier it already has: the event was delivered before.
fn is_duplicate(error: &StripeFailure) -> bool {
    matches!(error, StripeFailure::Api { status: 400, message, .. }
        if message.contains("already exists") && message.contains("identifier"))
}

/// The delay before the retry that follows the `attempt`th send: `backoff_base_ms` doubled
/// per attempt, capped at `backoff_max_ms`, then a random part of it ("equal jitter": between
/// half and all of it), so reporters that failed together do not retry together.
fn backoff(attempt: i32, settings: &StripeSettings) -> chrono::Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let full = settings
        .backoff_base_ms
        .saturating_mul(1 << exponent)
        .min(settings.backoff_max_ms);
    let half = full / 2;
    let jittered = half + rand::random_range(0..=half);
    chrono::Duration::milliseconds(i64::try_from(jittered).unwrap_or(i64::MAX))
}
