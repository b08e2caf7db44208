//! The sender: a background task in every process that fans new events out to the endpoints
//! that want them and sends due deliveries. Both steps claim rows as the Stripe reporter does
//! (on PostgreSQL `FOR UPDATE SKIP LOCKED`; a delivery's claim is a time, so one whose sender
//! died is taken up again), so any number of replicas share the work and each event is fanned
//! out once.
//!
//! A delivery is a `POST` of the event's body with the Standard Webhooks headers, answered
//! within `webhooks.timeout_ms`, redirects not followed, and never to an internal address
//! (the resolver refuses them, so a name cannot be re-pointed after the endpoint was saved):
//!
//! - 2xx → `DELIVERED`; the endpoint is healthy again;
//! - `410 Gone` → `FAILED`, and the endpoint is disabled (its other deliveries fail when due);
//! - anything else (another status, a timeout, no connection) → retried on the schedule
//!   (`webhooks.retry_schedule_ms`, jittered), or after `Retry-After` when the endpoint asks
//!   for longer; past the schedule → `FAILED`. An endpoint failing without a success for
//!   `webhooks.disable_after_failing_hours` is disabled.
//!
//! Nothing is dropped silently: a delivery that will not be made is `FAILED` with its reason,
//! and `replayWebhookEvent` sends its event again.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use chrono::{DateTime, Utc};
use entity::{webhook_endpoint, webhook_event};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Uri,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT},
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use sea_orm::{ConnectionTrait, DbErr, EntityTrait};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use super::target;
use crate::{
    config::WebhookSettings,
    db::{self, Database, PerBackend},
    metrics::Metrics,
};

/// Events fanned out per round, at most.
const DISPATCH_BATCH: i64 = 100;

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: chrono::Duration = chrono::Duration::hours(24);

type Https = Client<HttpsConnector<HttpConnector<Guarded>>, Full<Bytes>>;

/// What every send needs.
struct Sender {
    db: Database,
    http: Https,
    settings: WebhookSettings,
    metrics: Metrics,
}

/// Starts the sender. It runs until `stop` turns true; the sends in flight then finish and
/// are recorded.
pub fn spawn_sender(
    db: Database,
    settings: WebhookSettings,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(settings.worker_interval_ms.max(1));
        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let concurrency = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        let sender = Arc::new(Sender {
            http: client(&settings),
            db,
            settings,
            metrics,
        });
        while !*stop.borrow() {
            // Idle, a round is one read: no write transaction unless there is work.
            let (events, due) = pending(&sender.db, Utc::now()).await.unwrap_or_else(|e| {
                tracing::warn!(error.cause = %e, "webhook sender could not look for work; will retry");
                (false, false)
            });
            if events && let Err(e) = dispatch(&sender.db, Utc::now()).await {
                tracing::warn!(error.cause = %e, "webhook fan-out failed; will retry");
            }
            let room = slots.available_permits();
            if (events || due)
                && room > 0
                && let Err(e) = claim_and_send(&sender, &slots, room).await
            {
                tracing::warn!(error.cause = %e, "webhook delivery round failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = slots.acquire_many(concurrency).await;
        tracing::info!("webhook sender stopped");
    })
}

/// An HTTP client that resolves names only to addresses webhooks may go to, follows no
/// redirects (hyper never does) and gives up after `timeout_ms`.
fn client(settings: &WebhookSettings) -> Https {
    let mut http = HttpConnector::new_with_resolver(Guarded {
        allow_private: settings.allow_private_targets,
    });
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(settings.timeout_ms)));
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A resolver that drops internal addresses (and fails when only those are left).
#[derive(Clone)]
struct Guarded {
    allow_private: bool,
}

impl tower_service::Service<Name> for Guarded {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let allowed: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| target::allowed(a.ip(), allow_private))
                .collect();
            if allowed.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{name} resolves to no address webhooks may be sent to"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Whether events wait to be fanned out, and whether deliveries are due: one read.
async fn pending(db: &Database, now: DateTime<Utc>) -> Result<(bool, bool), DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "SELECT CAST((SELECT COUNT(*) FROM (SELECT 1 FROM webhook_event \
         WHERE dispatched_at IS NULL LIMIT 1) e) AS BIGINT) AS events, \
         CAST((SELECT COUNT(*) FROM (SELECT 1 FROM webhook_delivery WHERE status = 'PENDING' \
         AND next_attempt_at <= :now AND (claimed_until IS NULL OR claimed_until <= :now) \
         LIMIT 1) d) AS BIGINT) AS due"
            .to_owned()
    });
    let statement = SQL
        .get(db.backend())
        .bind(|name| (name == "now").then(|| now.into()))?;
    let Some(row) = db.read.query_one_raw(statement).await? else {
        return Ok((false, false));
    };
    let events: i64 = row.try_get("", "events")?;
    let due: i64 = row.try_get("", "due")?;
    Ok((events > 0, due > 0))
}

/// Fans out the events not yet dispatched: one pending delivery per enabled endpoint that
/// wants the event (the tenant's own endpoints and the platform's), then marks them
/// dispatched — in one transaction, the events claimed so no other sender fans them out too.
pub async fn dispatch(db: &Database, now: DateTime<Utc>) -> Result<u64, DbErr> {
    static CLAIM: PerBackend = PerBackend::new(|backend| {
        let lock = db::row_lock(backend, " FOR UPDATE SKIP LOCKED");
        format!(
            "SELECT tenant_id, id FROM webhook_event WHERE dispatched_at IS NULL \
             ORDER BY created_at LIMIT :limit{lock}"
        )
    });
    static FAN_OUT: PerBackend = PerBackend::new(|_| {
        "SELECT e.id AS event_id, p.id AS endpoint_id, e.tenant_id FROM webhook_event e \
         JOIN webhook_endpoint p ON (p.tenant_id = e.tenant_id OR p.tenant_id IS NULL) \
         AND p.enabled AND (p.event_types = '' OR p.event_types LIKE '%,' || e.type || ',%') \
         WHERE e.tenant_id = :tenant AND e.id = :event"
            .to_owned()
    });
    static DELIVERY: PerBackend = PerBackend::new(|_| {
        "INSERT INTO webhook_delivery (id, endpoint_id, event_id, tenant_id, status, attempts, \
         next_attempt_at, created_at) VALUES (:id, :endpoint, :event, :tenant, 'PENDING', 0, \
         :now, :now)"
            .to_owned()
    });
    static DISPATCHED: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_event SET dispatched_at = :now WHERE tenant_id = :tenant AND id = :event"
            .to_owned()
    });
    let txn = db.begin_write().await?;
    let backend = txn.get_database_backend();
    let claimed = txn
        .query_all_raw(CLAIM.get(backend).bind(|name| match name {
            "limit" => Some(DISPATCH_BATCH.into()),
            _ => None,
        })?)
        .await?;
    let mut made = 0;
    for row in claimed {
        let event: Uuid = row.try_get("", "id")?;
        let tenant: Uuid = row.try_get("", "tenant_id")?;
        let bind = |sql: &PerBackend, values: &dyn Fn(&str) -> Option<sea_orm::Value>| {
            sql.get(backend).bind(|name| match name {
                "event" => Some(event.into()),
                "tenant" => Some(tenant.into()),
                "now" => Some(now.into()),
                other => values(other),
            })
        };
        for pair in txn.query_all_raw(bind(&FAN_OUT, &|_| None)?).await? {
            let endpoint: Uuid = pair.try_get("", "endpoint_id")?;
            let id = Uuid::now_v7();
            let values = move |name: &str| -> Option<sea_orm::Value> {
                Some(match name {
                    "id" => id.into(),
                    "endpoint" => endpoint.into(),
                    _ => return None,
                })
            };
            txn.execute_raw(bind(&DELIVERY, &values)?).await?;
            made += 1;
        }
        txn.execute_raw(bind(&DISPATCHED, &|_| None)?).await?;
    }
    txn.commit().await?;
    Ok(made)
}

/// A delivery a sender has claimed.
struct Claimed {
    tenant_id: Uuid,
    id: Uuid,
    endpoint_id: Uuid,
    event_id: Uuid,
    attempts: i32,
}

/// Claims up to `room` due deliveries and starts a send for each.
async fn claim_and_send(
    sender: &Arc<Sender>,
    slots: &Arc<Semaphore>,
    room: usize,
) -> Result<(), DbErr> {
    static CLAIM: PerBackend = PerBackend::new(|backend| {
        let lock = db::row_lock(backend, " FOR UPDATE SKIP LOCKED");
        format!(
            "UPDATE webhook_delivery SET claimed_until = :until WHERE id IN (\
             SELECT id FROM webhook_delivery WHERE status = 'PENDING' AND next_attempt_at <= :now \
             AND (claimed_until IS NULL OR claimed_until <= :now) \
             ORDER BY next_attempt_at LIMIT :limit{lock}) \
             RETURNING tenant_id, id, endpoint_id, event_id, attempts"
        )
    });
    let now = Utc::now();
    let lease = i64::try_from(sender.settings.claim_seconds).unwrap_or(60);
    let limit = i64::try_from(room).unwrap_or(i64::MAX);
    let txn = sender.db.begin_write().await?;
    let statement = CLAIM.get(txn.get_database_backend()).bind(|name| {
        Some(match name {
            "now" => now.into(),
            "until" => (now + chrono::Duration::seconds(lease)).into(),
            "limit" => limit.into(),
            _ => return None,
        })
    })?;
    let rows = txn.query_all_raw(statement).await?;
    txn.commit().await?;
    for row in rows {
        let claimed = Claimed {
            tenant_id: row.try_get("", "tenant_id")?,
            id: row.try_get("", "id")?,
            endpoint_id: row.try_get("", "endpoint_id")?,
            event_id: row.try_get("", "event_id")?,
            attempts: row.try_get("", "attempts")?,
        };
        let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
            break;
        };
        let sender = Arc::clone(sender);
        tokio::spawn(async move {
            let outcome = sender.deliver(&claimed).await;
            match settle(&sender.db, &sender.settings, &claimed, &outcome).await {
                Ok(counted) => sender.metrics.webhook_delivery(counted),
                // The claim runs out and the delivery is made again: same webhook-id.
                Err(e) => {
                    tracing::warn!(webhook_delivery.id = %claimed.id, error.cause = %e, "webhook outcome not recorded; it will be sent again");
                }
            }
            drop(slot);
        });
    }
    Ok(())
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered {
        status: u16,
    },
    /// The endpoint answered `410 Gone`: it is disabled.
    Gone,
    /// Not sent: the endpoint is gone or disabled.
    Dropped {
        reason: String,
    },
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<chrono::Duration>,
    },
}

impl Sender {
    async fn deliver(&self, claimed: &Claimed) -> Outcome {
        let endpoint = webhook_endpoint::Entity::find_by_id(claimed.endpoint_id)
            .one(&self.db.write)
            .await;
        let event = webhook_event::Entity::find_by_id((claimed.tenant_id, claimed.event_id))
            .one(&self.db.write)
            .await;
        let (endpoint, event) = match (endpoint, event) {
            (Ok(Some(endpoint)), Ok(Some(event))) => (endpoint, event),
            (Ok(None), _) => return dropped("endpoint deleted"),
            (_, Ok(None)) => return dropped("event missing"),
            (Err(e), _) | (_, Err(e)) => return failed(None, format!("database: {e}"), None),
        };
        if !endpoint.enabled {
            return dropped(&format!(
                "endpoint disabled: {}",
                endpoint.disabled_reason.as_deref().unwrap_or("by a user")
            ));
        }
        let uri = match target::parse(&endpoint.url) {
            Ok(uri) => uri,
            Err(e) => return dropped(&e.to_string()),
        };
        // A literal address is not resolved, so it is checked here.
        if let Ok(ip) = target::host_of(&uri).parse()
            && !target::allowed(ip, self.settings.allow_private_targets)
        {
            return dropped("the endpoint's address is internal");
        }
        self.post(uri, &endpoint, &event).await
    }

    async fn post(
        &self,
        uri: Uri,
        endpoint: &webhook_endpoint::Model,
        event: &webhook_event::Model,
    ) -> Outcome {
        let now = Utc::now();
        let id = super::message_id(event.id);
        let timestamp = now.timestamp();
        let mut signatures: Vec<String> =
            super::signature(&endpoint.secret, &id, timestamp, &event.payload)
                .into_iter()
                .collect();
        if let (Some(previous), Some(until)) =
            (&endpoint.previous_secret, endpoint.previous_secret_until)
            && until > now
        {
            signatures.extend(super::signature(previous, &id, timestamp, &event.payload));
        }
        let request = Request::post(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                concat!("tollgate-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(Full::new(Bytes::from(event.payload.clone())));
        let request = match request {
            Ok(request) => request,
            Err(e) => return dropped(&format!("the request could not be built: {e}")),
        };
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let exchange = async {
            let response = self.http.request(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|s| chrono::Duration::seconds(s.max(0)).min(MAX_RETRY_AFTER));
            // Read (a bounded part of) the body so the connection can be reused.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => failed(
                None,
                format!("no answer within {} ms", timeout.as_millis()),
                None,
            ),
            Ok(Err(e)) => failed(None, connection_error(&e), None),
            Ok(Ok((status, _))) if status.is_success() => Outcome::Delivered {
                status: status.as_u16(),
            },
            Ok(Ok((status, _))) if status == hyper::StatusCode::GONE => Outcome::Gone,
            Ok(Ok((status, retry_after))) => failed(
                Some(status.as_u16()),
                format!("the endpoint answered {status}"),
                retry_after,
            ),
        }
    }
}

fn dropped(reason: &str) -> Outcome {
    Outcome::Dropped {
        reason: reason.to_owned(),
    }
}

fn failed(status: Option<u16>, error: String, retry_after: Option<chrono::Duration>) -> Outcome {
    Outcome::Failed {
        status,
        error,
        retry_after,
    }
}

/// A connection error with its cause (hyper's own message says only "client error").
fn connection_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// When the attempt after the `attempts`th failed one is due, if any is left: the schedule's
/// wait (plus up to a tenth of it, at random), or the endpoint's `Retry-After` when longer.
fn next_attempt(
    attempts: i32,
    settings: &WebhookSettings,
    retry_after: Option<chrono::Duration>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let index = usize::try_from(attempts.saturating_sub(1)).ok()?;
    let wait = *settings.retry_schedule_ms.get(index)?;
    let jitter = rand::random_range(0..=wait / 10);
    let scheduled = chrono::Duration::milliseconds(i64::try_from(wait + jitter).ok()?);
    Some(now + retry_after.map_or(scheduled, |asked| asked.max(scheduled)))
}

/// Records an attempt's outcome on the delivery (still pending, and still this sender's
/// claim) and on its endpoint, in one transaction. Returns what the attempt counts as in the
/// metrics: `delivered`, `retry` (another attempt is due), `failed` (no more attempts) or
/// `dropped` (not sent: the endpoint is gone or disabled).
async fn settle(
    db: &Database,
    settings: &WebhookSettings,
    claimed: &Claimed,
    outcome: &Outcome,
) -> Result<&'static str, DbErr> {
    static DELIVERED: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_delivery SET status = 'DELIVERED', attempts = attempts + 1, \
         last_status_code = :code, last_error = NULL, delivered_at = :now, claimed_until = NULL \
         WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING'"
            .to_owned()
    });
    static AGAIN: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_delivery SET attempts = attempts + 1, last_status_code = :code, \
         last_error = :error, next_attempt_at = :at, claimed_until = NULL \
         WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING'"
            .to_owned()
    });
    static FAILED: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_delivery SET status = 'FAILED', attempts = attempts + :tried, \
         last_status_code = :code, last_error = :error, claimed_until = NULL \
         WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING'"
            .to_owned()
    });
    static HEALTHY: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_endpoint SET failing_since = NULL WHERE id = :endpoint".to_owned()
    });
    static FAILING: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_endpoint SET failing_since = COALESCE(failing_since, :now) \
         WHERE id = :endpoint"
            .to_owned()
    });
    // Disabled: asked by a 410, or failing since before `:cutoff`.
    static DISABLE: PerBackend = PerBackend::new(|_| {
        "UPDATE webhook_endpoint SET enabled = false, disabled_reason = :reason \
         WHERE id = :endpoint AND enabled AND failing_since <= :cutoff"
            .to_owned()
    });
    let now = Utc::now();
    let attempts = claimed.attempts + 1;
    let window = i64::try_from(settings.disable_after_failing_hours).unwrap_or(i64::MAX);
    let failing_cutoff = now - chrono::Duration::hours(window.min(1_000_000));
    // The delivery's update, and the endpoint's after it (statement, `:cutoff`, `:reason`).
    let failing = vec![
        (&FAILING, now, ""),
        (&DISABLE, failing_cutoff, "failing for too long"),
    ];
    let (counted, delivery, code, error, at, tried, endpoint) = match outcome {
        Outcome::Delivered { status } => (
            "delivered",
            &DELIVERED,
            Some(i32::from(*status)),
            None,
            None,
            1,
            vec![(&HEALTHY, now, "")],
        ),
        Outcome::Gone => (
            "failed",
            &FAILED,
            Some(410),
            Some("the endpoint answered 410 Gone: it is disabled".to_owned()),
            None,
            1,
            vec![(&FAILING, now, ""), (&DISABLE, now, "answered 410 Gone")],
        ),
        Outcome::Dropped { reason } => (
            "dropped",
            &FAILED,
            None,
            Some(reason.clone()),
            None,
            0,
            vec![],
        ),
        Outcome::Failed {
            status,
            error,
            retry_after,
        } => {
            let code = status.map(i32::from);
            match next_attempt(attempts, settings, *retry_after, now) {
                Some(at) => (
                    "retry",
                    &AGAIN,
                    code,
                    Some(error.clone()),
                    Some(at),
                    1,
                    failing,
                ),
                None => (
                    "failed",
                    &FAILED,
                    code,
                    Some(format!("gave up after {attempts} attempts: {error}")),
                    None,
                    1,
                    failing,
                ),
            }
        }
    };
    let txn = db.begin_write().await?;
    let backend = txn.get_database_backend();
    let statement = delivery.get(backend).bind(|name| {
        Some(match name {
            "id" => claimed.id.into(),
            "tenant" => claimed.tenant_id.into(),
            "code" => code.into(),
            "error" => error.as_deref().into(),
            "at" => at?.into(),
            "now" => now.into(),
            "tried" => tried.into(),
            _ => return None,
        })
    })?;
    if txn.execute_raw(statement).await?.rows_affected() > 0 {
        for (sql, cutoff, reason) in &endpoint {
            let statement = sql.get(backend).bind(|name| {
                Some(match name {
                    "endpoint" => claimed.endpoint_id.into(),
                    "now" => now.into(),
                    "cutoff" => (*cutoff).into(),
                    "reason" => (*reason).into(),
                    _ => return None,
                })
            })?;
            txn.execute_raw(statement).await?;
        }
    }
    txn.commit().await?;
    Ok(counted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(schedule: &[u64]) -> WebhookSettings {
        WebhookSettings {
            worker_interval_ms: 500,
            concurrency: 1,
            timeout_ms: 15_000,
            claim_seconds: 60,
            retry_schedule_ms: schedule.to_vec(),
            disable_after_failing_hours: 120,
            allow_private_targets: false,
        }
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let s = settings(&[0, 5_000, 300_000]);
        let now = Utc::now();
        let after = |attempts| next_attempt(attempts, &s, None, now).map(|at| at - now);
        assert_eq!(after(1), Some(chrono::Duration::zero()));
        let second = after(2).unwrap();
        assert!(
            second >= chrono::Duration::seconds(5)
                && second <= chrono::Duration::milliseconds(5_500)
        );
        assert!(after(3).unwrap() >= chrono::Duration::minutes(5));
        assert_eq!(after(4), None, "three retries, then no more");
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_schedule() {
        let s = settings(&[0, 5_000]);
        let now = Utc::now();
        let asked = Some(chrono::Duration::seconds(120));
        assert_eq!(
            next_attempt(1, &s, asked, now),
            Some(now + chrono::Duration::seconds(120))
        );
        let short = Some(chrono::Duration::seconds(1));
        assert!(next_attempt(2, &s, short, now).unwrap() >= now + chrono::Duration::seconds(5));
    }
}
