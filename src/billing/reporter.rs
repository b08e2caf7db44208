//! The reporter: a background task that drains the outbox into Stripe Billing Meters. It
//! claims due usage events as it has room for them (`stripe.concurrency` sends in flight),
//! sends each as a meter event whose `identifier` is the row's own, and records each outcome
//! as soon as it is known — a stalled send holds up nothing but itself:
//!
//! - accepted, or rejected as a duplicate identifier (Stripe already has it: an earlier send
//!   whose answer was lost) → `DELIVERED`;
//! - 429, 5xx, a timeout or no connection (or `Stripe-Should-Retry: true`) → retried later,
//!   after an exponential backoff with jitter;
//! - 401 or 403 (a revoked, rolled or restricted key): configuration, not the event's fault →
//!   kept pending without counting an attempt, retried every minute at most, logged and
//!   counted (`tollgate_stripe_meter_events_total{outcome="unauthorized"}`), so everything goes
//!   out once the key works;
//! - any other 4xx (or `Stripe-Should-Retry: false`), `max_attempts` reached, or an event
//!   older than Stripe accepts (35 days) → `FAILED`, with the error kept. Never dropped.
//!
//! Exactly once rests on the identifier: a row is sent again only when its outcome was not
//! recorded, and Stripe rejects the second copy.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use stripe_billing::{
    BillingMeterEventAdjustmentType,
    billing_meter_event::CreateBillingMeterEvent,
    billing_meter_event_adjustment::{
        CreateBillingMeterEventAdjustment, CreateBillingMeterEventAdjustmentCancel,
    },
};
use stripe_client_core::{IdempotencyKey, RequestStrategy, StripeRequest};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
};

use super::{
    StripeFailure, StripeHttp, UsageKind,
    outbox::{self, Claimed, Outcome},
};
use crate::{config::StripeSettings, db::Database, metrics::Metrics};

/// How far back Stripe accepts a meter event's `timestamp` (35 days), less an hour's margin
/// for the time the send takes.
const OLDEST_REPORTABLE: chrono::Duration = chrono::Duration::hours(35 * 24 - 1);

/// The longest wait before retrying events Stripe refused our key for.
const KEY_RETRY_MAX_MS: u64 = 60_000;

/// What every send needs.
struct Reporter {
    db: Database,
    client: StripeHttp,
    settings: StripeSettings,
    metrics: Metrics,
    /// When a refused key was last logged (unix seconds): once a minute is enough.
    key_refused_logged: AtomicI64,
}

/// Starts the reporter. It runs until `stop` turns true; then it claims nothing more, lets
/// the sends in flight finish and records their outcomes, and ends.
pub fn spawn_reporter(
    db: Database,
    client: StripeHttp,
    settings: StripeSettings,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(settings.worker_interval_ms);
        let concurrency = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let reporter = Arc::new(Reporter {
            db,
            client,
            settings,
            metrics,
            key_refused_logged: AtomicI64::new(0),
        });
        while !*stop.borrow() {
            let room = u64::try_from(slots.available_permits())
                .unwrap_or(0)
                .min(reporter.settings.batch_size);
            if room > 0 {
                match claim_and_send(&reporter, &slots, room).await {
                    // As many as there was room for: more may be due at once.
                    Ok(claimed) if claimed as u64 >= room => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error.cause = %e, "usage reporting round failed; will retry")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
        // The sends in flight finish and are recorded.
        let _ = slots.acquire_many(concurrency).await;
        tracing::info!("usage reporter stopped");
    })
}

/// Claims up to `room` due events and starts a send for each; returns how many it claimed.
async fn claim_and_send(
    reporter: &Arc<Reporter>,
    slots: &Arc<Semaphore>,
    room: u64,
) -> Result<usize, sea_orm::DbErr> {
    let now = Utc::now();
    let lease = i64::try_from(reporter.settings.claim_seconds).unwrap_or(60);
    let claimed = outbox::claim(
        &reporter.db,
        now,
        now + chrono::Duration::seconds(lease),
        room,
    )
    .await?;
    let count = claimed.len();
    for event in claimed {
        let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
            break;
        };
        let reporter = Arc::clone(reporter);
        tokio::spawn(async move {
            let (sent, outcome) = reporter.deliver(&event).await;
            reporter.log(&event, &outcome);
            if let Err(e) = outbox::settle(&reporter.db, Utc::now(), &event, sent, &outcome).await {
                // The lease runs out and the event is sent again: Stripe keeps one copy.
                tracing::warn!(usage_event.id = %event.id, error.cause = %e, "outcome not recorded; the event will be sent again");
            }
            drop(slot);
        });
    }
    Ok(count)
}

impl Reporter {
    /// Sends one event (unless it is too old to) and judges the answer. The bool says
    /// whether the send counts as an attempt.
    async fn deliver(&self, event: &Claimed) -> (bool, Outcome) {
        let now = Utc::now();
        if let Some(error) = too_late(event, now) {
            return (false, Outcome::Failed { error });
        }
        let result = match event.kind {
            UsageKind::MeterEvent => send(&self.client, event).await,
            UsageKind::Cancel => cancel(&self.client, event).await,
        };
        let outcome = judge(result, event.attempts + 1, &self.settings, now);
        let label = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Held { .. } => "unauthorized",
            Outcome::Failed { .. } => "failed",
        };
        self.metrics.stripe_meter_event(label);
        (!matches!(outcome, Outcome::Held { .. }), outcome)
    }

    fn log(&self, event: &Claimed, outcome: &Outcome) {
        let id = event.id;
        match outcome {
            Outcome::Delivered => tracing::debug!(usage_event.id = %id, "usage event delivered"),
            Outcome::Retry { error, at } => {
                tracing::info!(usage_event.id = %id, error.cause = %error, retry_at = %at, "usage event not delivered; will retry")
            }
            Outcome::Held { error, at } => {
                let now = Utc::now().timestamp();
                let last = self.key_refused_logged.load(Ordering::Relaxed);
                if now - last >= 60
                    && self
                        .key_refused_logged
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::error!(error.cause = %error, retry_at = %at, "Stripe refused the API key (stripe.secret_key): usage is kept pending and goes out once the key works");
                }
            }
            Outcome::Failed { error } => {
                tracing::error!(usage_event.id = %id, error.cause = %error, "usage event can never be delivered; marked FAILED")
            }
        }
    }
}

/// Why `event` may no longer be sent at `now`, if so: a meter event older than Stripe
/// accepts, a cancel past its `send_by` (or naming no event).
fn too_late(event: &Claimed, now: DateTime<Utc>) -> Option<String> {
    match event.kind {
        UsageKind::MeterEvent if now - event.created_at > OLDEST_REPORTABLE => Some(format!(
            "not reported: created {}, older than the 35 days Stripe accepts",
            event.created_at.to_rfc3339()
        )),
        UsageKind::Cancel if event.adjusts.is_none() => {
            Some("not cancelled: the cancel names no meter event".to_owned())
        }
        UsageKind::Cancel if event.send_by.is_none_or(|by| now > by) => Some(
            "not cancelled: Stripe cancels a meter event only within 24 hours of receiving it; \
             the refunded usage stays on the invoice"
                .to_owned(),
        ),
        _ => None,
    }
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

/// Sends one cancel: a meter event adjustment of the event `adjusts` names, under an
/// idempotency key of the cancel's own (a retry after a lost answer is one cancel).
async fn cancel(client: &StripeHttp, event: &Claimed) -> Result<(), StripeFailure> {
    // `tollgate-<uuid>`: a valid key (1 to 255 characters) whatever the id.
    let strategy = IdempotencyKey::new(&event.identifier)
        .map_or(RequestStrategy::Once, RequestStrategy::Idempotent);
    let cancel = CreateBillingMeterEventAdjustmentCancel {
        identifier: event.adjusts.map(super::identifier),
    };
    CreateBillingMeterEventAdjustment::new(
        event.event_name.as_str(),
        BillingMeterEventAdjustmentType::Cancel,
    )
    .cancel(cancel)
    .customize()
    .request_strategy(strategy)
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
    if let StripeFailure::Api {
        status: 401 | 403, ..
    } = &error
    {
        let full = settings.backoff_max_ms.min(KEY_RETRY_MAX_MS);
        let wait = full / 2 + rand::random_range(0..=full / 2);
        return Outcome::Held {
            error: error.to_string(),
            at: now + chrono::Duration::milliseconds(i64::try_from(wait).unwrap_or(i64::MAX)),
        };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(
        kind: UsageKind,
        created_at: DateTime<Utc>,
        send_by: Option<DateTime<Utc>>,
    ) -> Claimed {
        Claimed {
            id: uuid::Uuid::now_v7(),
            tenant_id: uuid::Uuid::now_v7(),
            credit_id: uuid::Uuid::now_v7(),
            kind,
            adjusts: Some(uuid::Uuid::now_v7()),
            send_by,
            identifier: "tollgate-x".into(),
            event_name: "api_requests".into(),
            stripe_customer_id: "cus_x".into(),
            quantity: 1,
            attempts: 0,
            created_at,
        }
    }

    #[test]
    fn a_meter_event_goes_out_until_35_days_after_the_usage() {
        let now = Utc::now();
        let fresh = claimed(
            UsageKind::MeterEvent,
            now - chrono::Duration::days(34),
            None,
        );
        let stale = claimed(
            UsageKind::MeterEvent,
            now - chrono::Duration::days(35),
            None,
        );
        assert_eq!(too_late(&fresh, now), None);
        assert!(too_late(&stale, now).is_some_and(|e| e.contains("35 days")));
    }

    #[test]
    fn a_cancel_goes_out_only_until_its_send_by() {
        let now = Utc::now();
        let by = now + chrono::Duration::minutes(1);
        // However old the usage: what counts is when Stripe received it.
        let old = now - chrono::Duration::days(40);
        assert_eq!(
            too_late(&claimed(UsageKind::Cancel, old, Some(by)), now),
            None
        );
        let late = claimed(
            UsageKind::Cancel,
            now,
            Some(now - chrono::Duration::seconds(1)),
        );
        assert!(too_late(&late, now).is_some_and(|e| e.contains("24 hours")));
        // A cancel never armed with a deadline is never sent.
        assert!(too_late(&claimed(UsageKind::Cancel, now, None), now).is_some());
    }
}
