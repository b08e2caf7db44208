//! The events webhooks carry, recorded in the transaction of the change they tell of: an
//! event exists if and only if its change committed. The body is the Standard Webhooks shape,
//! `{"type", "timestamp", "data"}`.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{ColumnType, DatabaseBackend, DbErr, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::{PerBackend, Shape, Tx};

/// The event types an endpoint can ask for.
pub const TYPES: &[&str] = &[
    "credits.threshold_reached",
    "credits.threshold_resolved",
    "credits.depleted",
    "credits.limit_reached",
    "credits.granted",
    "credits.grant_expired",
    "credits.refunded",
    "reservation.expired",
    "subscription.updated",
    "usage_report.failed",
    "member.invited",
    "member.joined",
    "webhook.test",
];

/// An event to record.
pub struct NewEvent {
    /// The tenant it is about (its endpoints and the platform's get it); `None`: the
    /// platform's endpoints only.
    pub tenant_id: Option<Uuid>,
    pub kind: &'static str,
    pub data: Value,
}

impl NewEvent {
    /// The body every delivery of it sends: `data` with the tenant's id and external id.
    pub fn payload(&self, now: DateTime<Utc>, external_id: Option<&str>) -> String {
        let mut data = self.data.clone();
        if let (Some(tenant), Value::Object(fields)) = (self.tenant_id, &mut data) {
            fields.insert("tenantId".into(), json!(tenant));
            fields.insert("tenantExternalId".into(), json!(external_id));
        }
        json!({
            "type": self.kind,
            "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string()
    }

    /// The statement recording it as event `id`, already dispatched when `dispatched` (a
    /// test or replay, whose delivery is made with it); `seq`: its number among the tenant's
    /// credit events, for one `creditEvents` carries.
    fn insert(
        &self,
        backend: DatabaseBackend,
        id: Uuid,
        now: DateTime<Utc>,
        dispatched: bool,
        external_id: Option<&str>,
        seq: Option<i64>,
    ) -> Result<Statement, DbErr> {
        static SQL: PerBackend = PerBackend::new(|_| {
            "INSERT INTO webhook_event (id, tenant_id, type, payload, created_at, dispatched_at, \
             seq) VALUES (:id, :tenant, :type, :payload, :now, :dispatched, :seq)"
                .to_owned()
        });
        let payload = self.payload(now, external_id);
        SQL.get(backend).bind(|name| {
            Some(match name {
                "id" => id.into(),
                "tenant" => self.tenant_id.unwrap_or(Uuid::nil()).into(),
                "type" => self.kind.into(),
                "payload" => payload.as_str().into(),
                "now" => now.into(),
                "dispatched" => dispatched.then_some(now).into(),
                "seq" => seq.into(),
                _ => return None,
            })
        })
    }
}

/// The tenant's external id, for the payload.
fn external_id_sql(backend: DatabaseBackend, tenant: Uuid) -> Result<Statement, DbErr> {
    static SQL: PerBackend =
        PerBackend::new(|_| "SELECT external_id FROM tenant WHERE id = :tenant".to_owned());
    SQL.get(backend)
        .bind(|name| (name == "tenant").then(|| tenant.into()))
}

/// Records `event` in `tx`'s open transaction; returns its id.
pub async fn record(tx: &mut impl Tx, event: &NewEvent, now: DateTime<Utc>) -> Result<Uuid, DbErr> {
    record_as(tx, event, now, false, None).await
}

/// Records `event` as number `seq` of its tenant's credit events (`credits::feed`: an alert
/// event `creditEvents` carries).
pub async fn record_numbered(
    tx: &mut impl Tx,
    event: &NewEvent,
    now: DateTime<Utc>,
    seq: i64,
) -> Result<Uuid, DbErr> {
    record_as(tx, event, now, false, Some(seq)).await
}

/// Records `event` as already dispatched (its one delivery is made by the caller).
pub(super) async fn record_dispatched(
    tx: &mut impl Tx,
    event: &NewEvent,
    now: DateTime<Utc>,
) -> Result<Uuid, DbErr> {
    record_as(tx, event, now, true, None).await
}

async fn record_as(
    tx: &mut impl Tx,
    event: &NewEvent,
    now: DateTime<Utc>,
    dispatched: bool,
    seq: Option<i64>,
) -> Result<Uuid, DbErr> {
    static SHAPE: std::sync::LazyLock<Shape> =
        std::sync::LazyLock::new(|| Shape::default().with("external_id", ColumnType::Text));
    let backend = tx.backend();
    let external_id: Option<String> = match event.tenant_id {
        Some(tenant) => match tx
            .rows(&external_id_sql(backend, tenant)?, &SHAPE)
            .await?
            .first()
        {
            Some(row) => row.get("external_id")?,
            None => None,
        },
        None => None,
    };
    let id = Uuid::now_v7();
    let insert = event.insert(backend, id, now, dispatched, external_id.as_deref(), seq)?;
    tx.run(&insert).await?;
    Ok(id)
}
