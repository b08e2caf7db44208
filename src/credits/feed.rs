//! A tenant's credit events, as `creditEvents` streams them: its ledger rows (spends, refunds,
//! grants, expiries, voids) and its alert events (`credits.threshold_reached`, …), read from
//! the database after each change commits — nothing is kept in memory that a restart would
//! lose. Both are keyed by UUIDv7 ids made inside the transaction that commits them, so
//! `since` reads by the primary key `(tenant_id, id)` from a time on. A transaction commits
//! a few milliseconds after it made its ids; readers look back `LOOKBACK` before the newest id
//! they saw, and skip what they sent already, so a row that commits late is still sent.

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use entity::credit;
use sea_orm::{ColumnType, prelude::*};
use serde_json::Value;

use super::alerts;
use crate::{
    auth::Viewer,
    db::{Database, PerBackend, Shape},
    error::AppError,
};

/// How far before the newest event seen a reader looks again for rows that committed late.
pub const LOOKBACK: Duration = Duration::seconds(5);

/// Rows read at most per query and source.
pub const PAGE: u64 = 500;

/// The alert events the feed carries, by their webhook type.
pub const ALERT_TYPES: [&str; 4] = [
    "credits.threshold_reached",
    "credits.threshold_resolved",
    "credits.depleted",
    "credits.limit_reached",
];

/// One event of a tenant's feed.
#[derive(Clone, Debug)]
pub enum FeedEvent {
    /// A ledger row.
    Ledger(Box<credit::Model>),
    /// An alert event: its id, webhook type, time and `data` (as its webhook carries it).
    Alert {
        id: Uuid,
        kind: String,
        at: DateTime<Utc>,
        data: Value,
    },
}

impl FeedEvent {
    pub fn id(&self) -> Uuid {
        match self {
            FeedEvent::Ledger(c) => c.id,
            FeedEvent::Alert { id, .. } => *id,
        }
    }
}

/// The smallest UUIDv7 of instant `at`: ids at or after it were made at `at` or later.
pub fn floor(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// When UUIDv7 `id` was made.
pub fn made_at(id: Uuid) -> DateTime<Utc> {
    let bytes = id.as_bytes();
    let mut millis = [0u8; 8];
    millis[2..].copy_from_slice(&bytes[..6]);
    DateTime::from_timestamp_millis(i64::try_from(u64::from_be_bytes(millis)).unwrap_or(0))
        .unwrap_or_default()
}

/// The tenant's events made at `since` or later, in id order, for a member or a key with
/// `CREDITS_READ`; and, when a source had more than a page, the time to read on from (the
/// events past it are left for that read).
pub async fn since(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    since: DateTime<Utc>,
) -> Result<(Vec<FeedEvent>, Option<DateTime<Utc>>), AppError> {
    alerts::authorize_read(db, viewer, tenant_id).await?;
    static LEDGER: PerBackend = PerBackend::new(|_| {
        format!(
            "SELECT * FROM credit WHERE tenant_id = :tenant AND id >= :floor ORDER BY id LIMIT {PAGE}"
        )
    });
    static ALERTS: PerBackend = PerBackend::new(|_| {
        format!(
            "SELECT id, type, payload, created_at FROM webhook_event WHERE tenant_id = :tenant \
             AND id >= :floor AND type IN ('{}') ORDER BY id LIMIT {PAGE}",
            ALERT_TYPES.join("', '")
        )
    });
    static LEDGER_SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<credit::Entity>);
    static ALERT_SHAPE: LazyLock<Shape> = LazyLock::new(|| {
        Shape::default()
            .with("id", ColumnType::Uuid)
            .with("type", ColumnType::Text)
            .with("payload", ColumnType::Text)
            .with("created_at", ColumnType::TimestampWithTimeZone)
    });
    let value = |name: &str| -> Option<sea_orm::Value> {
        Some(match name {
            "tenant" => tenant_id.into(),
            "floor" => floor(since).into(),
            _ => return None,
        })
    };
    let backend = db.backend();
    let mut events = Vec::new();
    // The last id of each source that filled a page: nothing past the first is complete.
    let mut cut: Option<Uuid> = None;
    let ledger = db
        .query(&LEDGER.get(backend).bind(value)?, &LEDGER_SHAPE)
        .await?;
    let full = ledger.len() as u64 >= PAGE;
    for row in ledger {
        events.push(FeedEvent::Ledger(Box::new(row.model::<credit::Entity>()?)));
    }
    if full {
        cut = events.last().map(FeedEvent::id);
    }
    let alerts = db
        .query(&ALERTS.get(backend).bind(value)?, &ALERT_SHAPE)
        .await?;
    let full = alerts.len() as u64 >= PAGE;
    let mut last_alert = None;
    for row in alerts {
        let payload: String = row.get("payload")?;
        let body: Value = serde_json::from_str(&payload)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("an event's payload: {e}")))?;
        events.push(FeedEvent::Alert {
            id: row.get("id")?,
            kind: row.get("type")?,
            at: row.get("created_at")?,
            data: body["data"].clone(),
        });
        last_alert = events.last().map(FeedEvent::id);
    }
    if full {
        cut = match (cut, last_alert) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    events.sort_by_key(FeedEvent::id);
    let Some(cut) = cut else {
        return Ok((events, None));
    };
    events.retain(|e| e.id() <= cut);
    // On from the cut's instant: what is read again there is skipped by its id.
    let next = made_at(cut);
    // A page made within one millisecond cannot move on by time: take the next one up.
    let next = if next <= since {
        since + Duration::milliseconds(1)
    } else {
        next
    };
    Ok((events, Some(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_of_an_instant_sorts_before_every_id_made_then_or_later() {
        let now = Utc::now();
        let made = Uuid::now_v7();
        assert!(floor(now - Duration::milliseconds(1)) <= made);
        assert!(floor(now + Duration::seconds(1)) > made);
        assert_eq!(floor(now).get_version_num(), 7);
        let at = made_at(made);
        assert!((now - at).num_milliseconds().abs() <= 1, "{now} {at}");
        assert_eq!(made_at(floor(at)), at);
    }
}
