//! Reservations: credits held for work whose cost is known only afterwards (an AI job). A hold
//! is the guard's own spend — one call, the whole amount or nothing, idempotent, counted
//! against the limit like any spend — whose paid row is the reservation itself. Then exactly
//! one of: `confirm` (a spend of the amount used; the rest given back), `release` (all given
//! back) or expiry (the sweeper gives all back). Each takes the reservation's row from
//! `PENDING` by one conditional update in the transaction that gives credits back: the loser,
//! on any replica, finds it no longer pending (`RESERVATION_NOT_PENDING`).

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use entity::credit_reservation::{self, ReservationStatus};
use sea_orm::{ColumnType, prelude::*};
use serde_json::json;

use crate::{
    auth::{ApiScope, Viewer},
    clock::Clock,
    consume::{self, Cost},
    credits::{Actor, IdempotencyKey, PaidTable, Spend, Spent, balance, feed, refunds},
    db::{Database, PerBackend, Session, Shape},
    error::AppError,
    idempotency::{self, Fingerprint},
    state::AppState,
    webhooks,
};

/// The reservation row the guard inserts with the hold.
pub static RESERVATION: PaidTable = PaidTable {
    credit_type: "reservation",
    table: "credit_reservation",
    columns: &[
        "id",
        "tenant_id",
        "feature",
        "credit_type",
        "amount",
        "object_id",
        "status",
        "expires_at",
        "created_at",
        "actor_type",
        "actor_id",
    ],
    requires: None,
};

/// A hold's default and longest life.
pub const DEFAULT_TTL_SECONDS: i64 = 3600;
pub const MAX_TTL_SECONDS: i64 = 86_400;

/// A hold asked for.
pub struct Reserve {
    pub tenant_id: Uuid,
    pub cost: Cost,
    pub object_id: Option<String>,
    pub ttl_seconds: Option<i64>,
    pub idempotency_key: String,
}

/// A hold made (or found again by its key).
pub struct Reserved {
    pub reservation: credit_reservation::Model,
    pub replayed: bool,
}

/// Holds credits like a spend, for a member or a key with `CREDITS_CONSUME`.
pub async fn reserve(
    state: &AppState,
    viewer: &Viewer,
    request: Reserve,
) -> Result<Reserved, AppError> {
    let (user_id, actor) = consume::spender(viewer, request.tenant_id, None)?;
    let credit_type = consume::spendable_type(state, &request.cost)?;
    let object_id = consume::reference("objectId", request.object_id)?;
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(AppError::bad_input(format!(
            "ttlSeconds must be between 1 and {MAX_TTL_SECONDS}"
        )));
    }
    let key = idempotency::check_key(Some(request.idempotency_key))?.unwrap_or_default();
    let now = state.clock.now();
    let reservation = credit_reservation::Model {
        id: Uuid::now_v7(),
        tenant_id: request.tenant_id,
        feature: credit_type.feature.clone(),
        credit_type: credit_type.value.clone(),
        amount: credit_type.amount,
        confirmed_amount: None,
        object_id: object_id.clone(),
        status: ReservationStatus::Pending,
        expires_at: now + Duration::seconds(ttl),
        created_at: now,
        settled_at: None,
        actor_type: actor.kind(),
        actor_id: actor.id(),
    };
    let fingerprint = Fingerprint::new(
        "reserveCredits",
        &[
            &request.tenant_id.to_string(),
            &credit_type.value,
            &credit_type.amount.to_string(),
            &credit_type.feature,
            object_id.as_deref().unwrap_or(""),
            &ttl.to_string(),
        ],
    );
    let spend = Spend {
        tenant_id: request.tenant_id,
        user_id,
        credit_type,
        paid: RESERVATION.row(&reservation)?,
        actor,
        subject: None,
        metadata: None,
        key: Some(IdempotencyKey {
            value: key,
            fingerprint,
            retention: idempotency::retention(&state.config),
        }),
        at: now,
    };
    let spent = state
        .writer
        .submit(spend)
        .await
        .map_err(|e| match (e, viewer.key()) {
            (AppError::Unauthenticated(_) | AppError::Forbidden, Some(_)) => viewer.user_gone(),
            (AppError::Unauthenticated(_), None) => viewer.user_gone(),
            (e, _) => e,
        })?;
    match spent {
        Spent::Charged { .. } => Ok(Reserved {
            reservation,
            replayed: false,
        }),
        Spent::Replayed(id) => {
            let mut session = state.db.session().await?;
            let found = find(&mut session, request.tenant_id, id).await?;
            found
                .map(|reservation| Reserved {
                    reservation,
                    replayed: true,
                })
                .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a held reservation is gone")))
        }
    }
}

/// How a pending reservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Spends `amount` (at most what is held) and gives the rest back.
    Confirm(i64),
    /// Gives all back.
    Release,
}

/// Confirms or releases a pending reservation of the tenant, for a member (or a key with
/// `CREDITS_CONSUME`): `RESERVATION_NOT_PENDING` once anything settled it (or it expired).
pub async fn settle(
    db: &Database,
    viewer: &Viewer,
    clock: &Clock,
    tenant_id: Uuid,
    id: Uuid,
    how: Settle,
) -> Result<credit_reservation::Model, AppError> {
    let (_, actor) = consume::spender(viewer, tenant_id, None)?;
    crate::auth::api_keys::in_force(db, viewer).await?;
    if viewer.key().is_none() {
        // A member of the tenant (FORBIDDEN otherwise).
        crate::auth::require_member(db, viewer, tenant_id).await?;
    }
    let now = clock.now();
    let mut session = db.session().await?;
    session.begin().await?;
    let outcome = async {
        feed::lock(&mut session, tenant_id).await?;
        let (status, confirmed) = match how {
            Settle::Confirm(amount) => (ReservationStatus::Confirmed, Some(amount)),
            Settle::Release => (ReservationStatus::Released, None),
        };
        if confirmed.is_some_and(|a| a < 0) {
            return Err(AppError::bad_input("amount must be at least 0"));
        }
        let Some(held) = take(&mut session, tenant_id, id, status, confirmed, now, false).await?
        else {
            return match find(&mut session, tenant_id, id).await? {
                None => Err(AppError::NotFound("reservation")),
                Some(_) => Err(AppError::ReservationNotPending),
            };
        };
        if confirmed.is_some_and(|a| a > held.amount) {
            return Err(AppError::bad_input(format!(
                "amount must be at most the {} credits held",
                held.amount
            )));
        }
        let back = held.amount - confirmed.unwrap_or(0);
        let reason = match how {
            Settle::Confirm(_) => "reservation confirmed: the rest released",
            Settle::Release => "reservation released",
        };
        give_back(&mut session, actor, &held, back, reason, now).await?;
        find(&mut session, tenant_id, id)
            .await?
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a settled reservation is gone")))
    }
    .await;
    session.finish(outcome).await
}

/// Gives back every reservation whose time is up (at most `limit`), each in a transaction
/// of its own that first takes it from `PENDING`: safe on any number of replicas.
pub async fn expire(db: &Database, now: DateTime<Utc>, limit: u64) -> Result<u64, AppError> {
    static DUE: PerBackend = PerBackend::new(|_| {
        "SELECT tenant_id, id FROM credit_reservation WHERE status = 'PENDING' \
         AND expires_at <= :now ORDER BY expires_at LIMIT :limit"
            .to_owned()
    });
    let due = crate::db::due(db, &DUE, now, limit).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut session = db.session().await?;
    let mut expired = 0;
    for (tenant_id, id) in due {
        session.begin().await?;
        let outcome = async {
            feed::lock(&mut session, tenant_id).await?;
            let status = ReservationStatus::Expired;
            let Some(held) = take(&mut session, tenant_id, id, status, None, now, true).await?
            else {
                return Ok(false);
            };
            let reason = "reservation expired";
            give_back(&mut session, Actor::System, &held, held.amount, reason, now).await?;
            let balance = balance::balance(&mut session, tenant_id, &held.feature, now).await?;
            let event = webhooks::NewEvent {
                tenant_id: Some(tenant_id),
                kind: "reservation.expired",
                data: balance::with_balance(
                    json!({
                        "reservationId": held.id,
                        "creditType": held.credit_type,
                        "amount": held.amount,
                        "objectId": held.object_id,
                        "expiresAt": held.expires_at,
                    }),
                    &balance,
                ),
            };
            webhooks::events::record(&mut session, &event, now).await?;
            Ok::<_, AppError>(true)
        }
        .await;
        expired += u64::from(session.finish(outcome).await?);
    }
    Ok(expired)
}

/// Expires due reservations every `interval`, for as long as the process runs.
pub fn spawn_expirer(
    db: Database,
    clock: Clock,
    interval: std::time::Duration,
    changes: crate::live::Changes,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            match expire(&db, clock.now(), 500).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(reservations = n, "released expired reservations");
                    changes.publish(crate::live::Change::All);
                }
                Err(e) => {
                    tracing::warn!(error.cause = %e, "could not release expired reservations")
                }
            }
        }
    });
}

/// Takes a reservation from `PENDING` to `status` (its row locked by the update): before its
/// expiry to confirm or release it, from its expiry on to expire it. `None` when it was not
/// pending (or not in that time). Returns it as it was held.
async fn take(
    session: &mut Session,
    tenant_id: Uuid,
    id: Uuid,
    status: ReservationStatus,
    confirmed: Option<i64>,
    now: DateTime<Utc>,
    due: bool,
) -> Result<Option<credit_reservation::Model>, AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_reservation SET status = :status, confirmed_amount = :confirmed, \
         settled_at = :now WHERE tenant_id = :tenant AND id = :id AND status = 'PENDING' \
         AND ((:due = 1 AND expires_at <= :now) OR (:due = 0 AND expires_at > :now))"
            .to_owned()
    });
    let statement = SQL.get(session.backend()).bind(|name| {
        Some(match name {
            "status" => status.to_value().into(),
            "confirmed" => confirmed.into(),
            "now" => now.into(),
            "tenant" => tenant_id.into(),
            "id" => id.into(),
            "due" => i32::from(due).into(),
            _ => return None,
        })
    })?;
    if session.execute(&statement).await? != 1 {
        return Ok(None);
    }
    find(session, tenant_id, id).await
}

/// Gives `amount` of the hold's spend back (nothing to do for 0).
async fn give_back(
    session: &mut Session,
    actor: Actor,
    held: &credit_reservation::Model,
    amount: i64,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    if amount == 0 {
        return Ok(());
    }
    static HOLD: PerBackend = PerBackend::new(|_| {
        "SELECT id FROM credit WHERE tenant_id = :tenant AND object_id = :object \
         AND kind = 'SPEND'"
            .to_owned()
    });
    static SHAPE: LazyLock<Shape> = LazyLock::new(|| Shape::default().with("id", ColumnType::Uuid));
    let statement = HOLD.get(session.backend()).bind(|name| match name {
        "tenant" => Some(held.tenant_id.into()),
        "object" => Some(held.id.to_string().into()),
        _ => None,
    })?;
    let rows = session.query(&statement, &SHAPE).await?;
    let hold: Uuid = rows
        .first()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a reservation has no hold")))?
        .get("id")?;
    refunds::give_back_within(
        session,
        actor,
        held.tenant_id,
        hold,
        Some(amount),
        reason,
        now,
    )
    .await?;
    Ok(())
}

async fn find(
    session: &mut Session,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<credit_reservation::Model>, AppError> {
    Ok(session
        .find_owned::<credit_reservation::Entity>(tenant_id, id)
        .await?)
}

/// A tenant's reservations by id, for a member (or a key with `CREDITS_READ` or
/// `CREDITS_CONSUME`).
pub async fn get(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<credit_reservation::Model>, AppError> {
    static SQL: crate::auth::PerViewer = crate::auth::PerViewer::new(|_, standing| {
        format!(
            "SELECT tu.role AS viewer_role, r.* FROM {standing} \
             LEFT JOIN credit_reservation r ON r.tenant_id = tu.tenant_id AND r.id = :id \
             WHERE u.id = :user"
        )
    });
    let user_id = viewer.standing_id(&[ApiScope::CreditsRead, ApiScope::CreditsConsume])?;
    let statement = SQL.get(db.backend(), viewer).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "id" => Some(id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    crate::auth::member_row::<credit_reservation::Entity>(db, viewer, &statement).await
}
