//! Credits beyond the plan: grants. A spend takes from the period's allowance first; only
//! when the allowance alone cannot pay the whole cost does the guard come here (`funds`), lock
//! the counter row and then the tenant's spendable grants in burn order — one fixed order on
//! every replica, so two spenders cannot deadlock — and take what is missing from them
//! (`draw`), recording what each grant paid (`credit_allocation`). A tenant without grants
//! never comes here while its allowance lasts: its spends stay the guard's one call.
//!
//! Burn order: priority (lower first), soonest expiry (never-expiring last), promotional
//! before rolled-over before paid, oldest first. A grant is spendable only while `ACTIVE`,
//! from `effective_at` and before `expires_at` — whether or not the sweeper (`sweep`) has
//! marked it expired yet.

use chrono::{DateTime, Duration, Utc};
use entity::{
    credit::{ActorType, Movement},
    credit_grant::{self, GrantCategory, GrantStatus},
};
use sea_orm::{
    ColumnType, ConnectionTrait, DatabaseBackend, FromQueryResult, Statement, prelude::*,
};
use std::sync::LazyLock;

use super::{
    Actor, alerts,
    balance::{self, Balance},
    feed,
    limit::plan_sql,
};
use crate::{
    auth::{self, ApiScope, Viewer},
    db::{Database, PerBackend, Session, Shape, Tx},
    error::AppError,
    idempotency::{self, Claim, Fingerprint},
    webhooks,
};
use serde_json::json;

/// A spendable grant, in SQL, for grant row `g` at `:now`.
pub(super) const SPENDABLE_SQL: &str = "g.status = 'ACTIVE' AND g.remaining > 0 \
AND g.effective_at <= :now AND (g.expires_at IS NULL OR g.expires_at > :now)";

/// The burn order, in SQL, for grant rows `g`.
pub(super) const BURN_ORDER_SQL: &str = "g.priority, CASE WHEN g.expires_at IS NULL THEN 1 ELSE 0 END, \
g.expires_at, CASE g.category WHEN 'PROMOTIONAL' THEN 0 WHEN 'ROLLOVER' THEN 1 ELSE 2 END, \
g.created_at, g.id";

/// The most credits one grant may hold.
pub const MAX_AMOUNT: i64 = 1_000_000_000;
/// A grant's default priority, and its bounds.
pub const DEFAULT_PRIORITY: i32 = 50;
const PRIORITIES: std::ops::RangeInclusive<i32> = 0..=100;
const MAX_REASON: usize = 500;

/// What the counter and the grants hold for a spend the allowance alone refused, locked
/// until the spend's transaction ends.
#[derive(Debug)]
pub(super) struct Funds {
    /// Used of the period's allowance.
    pub used: i64,
    /// Left of the period's allowance.
    pub allowance: i64,
    /// Spendable grants in burn order: id and remaining.
    pub grants: Vec<(Uuid, i64)>,
}

impl Funds {
    pub fn grants_remaining(&self) -> i64 {
        self.grants
            .iter()
            .fold(0i64, |sum, (_, r)| sum.saturating_add(*r))
    }

    /// Who pays `cost`: the allowance first, then the grants in order; `None` when all of
    /// them together cannot pay the whole of it.
    pub fn allocate(&self, cost: i64) -> Option<Allocation> {
        if self.allowance.saturating_add(self.grants_remaining()) < cost {
            return None;
        }
        let allowance = self.allowance.min(cost);
        let mut missing = cost - allowance;
        let mut grants = Vec::new();
        for (id, remaining) in &self.grants {
            if missing == 0 {
                break;
            }
            let take = missing.min(*remaining);
            grants.push((*id, take));
            missing -= take;
        }
        Some(Allocation { allowance, grants })
    }
}

/// Who pays a spend: `allowance` from the period's counter, the rest from grants.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Allocation {
    pub allowance: i64,
    pub grants: Vec<(Uuid, i64)>,
}

/// Locks the tenant's counter row of the period that counts at `:now` (creating it, empty)
/// and then its spendable grants of `:feature` in burn order; reads what they hold.
/// Parameters: the plan's (`limit::plan_sql`).
pub(super) async fn funds(
    session: &mut Session,
    value: &(dyn Fn(&str) -> Option<sea_orm::Value> + Sync),
) -> Result<Funds, AppError> {
    static LOCK: PerBackend = PerBackend::new(|backend| {
        format!(
            "INSERT INTO credit_usage (tenant_id, feature, period_start, used) \
             SELECT :tenant, :feature, p.period_start, 0 FROM ({}) p WHERE 1 = 1 \
             ON CONFLICT (tenant_id, feature, period_start) DO UPDATE SET used = credit_usage.used \
             RETURNING used",
            plan_sql(backend)
        )
    });
    static LIMIT: PerBackend =
        PerBackend::new(|backend| format!("SELECT p.lim FROM ({}) p", plan_sql(backend)));
    static GRANTS: PerBackend = PerBackend::new(|backend| {
        let lock = crate::db::row_lock(backend, " FOR UPDATE");
        format!(
            "SELECT g.id, g.remaining FROM credit_grant g \
             WHERE g.tenant_id = :tenant AND g.feature = :feature AND {SPENDABLE_SQL} \
             ORDER BY {BURN_ORDER_SQL}{lock}"
        )
    });
    static SHAPE: LazyLock<Shape> = LazyLock::new(|| {
        Shape::default()
            .with("used", ColumnType::BigInteger)
            .with("lim", ColumnType::BigInteger)
            .with("id", ColumnType::Uuid)
            .with("remaining", ColumnType::BigInteger)
    });
    let backend = session.backend();
    let rows = session
        .query(&LOCK.get(backend).bind(value)?, &SHAPE)
        .await?;
    let used: i64 = match rows.first() {
        Some(row) => row.get("used")?,
        // No plan defines the feature for the tenant (any more): nothing to spend.
        None => {
            return Ok(Funds {
                used: 0,
                allowance: 0,
                grants: Vec::new(),
            });
        }
    };
    let rows = session
        .query(&LIMIT.get(backend).bind(value)?, &SHAPE)
        .await?;
    let lim: Option<i64> = match rows.first() {
        Some(row) => row.get("lim")?,
        None => None,
    };
    let Some(lim) = lim else {
        // Not included: grants are frozen, not spendable.
        return Ok(Funds {
            used,
            allowance: 0,
            grants: Vec::new(),
        });
    };
    let rows = session
        .query(&GRANTS.get(backend).bind(value)?, &SHAPE)
        .await?;
    let grants = rows
        .iter()
        .map(|row| Ok((row.get("id")?, row.get("remaining")?)))
        .collect::<Result<Vec<_>, DbErr>>()?;
    Ok(Funds {
        used,
        allowance: lim.saturating_sub(used).max(0),
        grants,
    })
}

/// Takes `allocation` from the locked counter and grants for ledger row `:ledger_id`: the
/// allowance part onto the counter (the grants' part onto its `grants_used`; whether an alert
/// is now pending is returned, as `alerts::pending` reads the row), each grant's part off its `remaining` (a grant spent to
/// nothing is `EXHAUSTED`) and into `credit_allocation`.
pub(super) async fn draw(
    session: &mut Session,
    allocation: &Allocation,
    value: &(dyn Fn(&str) -> Option<sea_orm::Value> + Sync),
) -> Result<bool, AppError> {
    static COUNTER: PerBackend = PerBackend::new(|backend| {
        format!(
            "UPDATE credit_usage SET used = used + :allowance, grants_used = grants_used + :granted \
             WHERE tenant_id = :tenant AND feature = :feature \
             AND period_start = (SELECT p.period_start FROM ({}) p) \
             RETURNING used, grants_used, alert_at",
            plan_sql(backend)
        )
    });
    static GRANT: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_grant SET remaining = remaining - :take, \
         status = CASE WHEN remaining = :take THEN 'EXHAUSTED' ELSE status END \
         WHERE tenant_id = :tenant AND id = :grant AND remaining >= :take"
            .to_owned()
    });
    static ALLOCATION: PerBackend = PerBackend::new(|_| {
        "INSERT INTO credit_allocation (tenant_id, credit_id, grant_id, amount) \
         VALUES (:tenant, :ledger_id, :grant, :take)"
            .to_owned()
    });
    let backend = session.backend();
    static COUNTED: LazyLock<Shape> = LazyLock::new(|| {
        Shape::default()
            .with("used", ColumnType::BigInteger)
            .with("grants_used", ColumnType::BigInteger)
            .with("alert_at", ColumnType::BigInteger)
    });
    let granted: i64 = allocation.grants.iter().map(|(_, take)| take).sum();
    let statement = COUNTER.get(backend).bind(|name| match name {
        "allowance" => Some(allocation.allowance.into()),
        "granted" => Some(granted.into()),
        name => value(name),
    })?;
    let rows = session.query(&statement, &COUNTED).await?;
    let Some(counter) = rows.first() else {
        return Err(AppError::Internal(anyhow::anyhow!(
            "the locked counter row was not found again"
        )));
    };
    let pending = alerts::pending(
        counter.get("used")?,
        counter.get("grants_used")?,
        counter.get("alert_at")?,
    );
    for (grant, take) in &allocation.grants {
        let value = |name: &str| match name {
            "grant" => Some((*grant).into()),
            "take" => Some((*take).into()),
            name => value(name),
        };
        if session.execute(&GRANT.get(backend).bind(value)?).await? != 1 {
            return Err(AppError::Internal(anyhow::anyhow!(
                "a locked grant no longer holds what was read"
            )));
        }
        session
            .execute(&ALLOCATION.get(backend).bind(value)?)
            .await?;
    }
    Ok(pending)
}

/// A grant to create.
pub struct NewGrant {
    pub tenant_id: Uuid,
    pub feature: String,
    pub amount: i64,
    pub category: GrantCategory,
    pub priority: i32,
    /// Default: now.
    pub effective_at: Option<DateTime<Utc>>,
    /// Default: never.
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// `API`, `STRIPE_CHECKOUT`.
    pub source: &'static str,
    /// Unique per tenant and source; the idempotency key for `API` grants.
    pub source_ref: String,
}

impl NewGrant {
    fn check(&self, now: DateTime<Utc>) -> Result<(), AppError> {
        if !(1..=MAX_AMOUNT).contains(&self.amount) {
            return Err(AppError::bad_input(format!(
                "amount must be between 1 and {MAX_AMOUNT}"
            )));
        }
        if !PRIORITIES.contains(&self.priority) {
            return Err(AppError::bad_input("priority must be between 0 and 100"));
        }
        if self.feature.is_empty() || self.feature.len() > 255 {
            return Err(AppError::bad_input("feature must be 1 to 255 characters"));
        }
        if self
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON)
        {
            return Err(AppError::bad_input(format!(
                "reason must be at most {MAX_REASON} characters"
            )));
        }
        let effective = self.effective_at.unwrap_or(now);
        if self
            .expires_at
            .is_some_and(|at| at <= effective || at <= now)
        {
            return Err(AppError::bad_input(
                "expiresAt must be in the future and after effectiveAt",
            ));
        }
        Ok(())
    }
}

/// Who may create and void grants of `tenant_id`: an API key with `CREDITS_GRANT` (a tenant
/// key for its own tenant), or a platform admin. The tenant must exist (`NOT_FOUND`).
pub async fn authorize(
    db: &Database,
    viewer: &Viewer,
    platform_admins: &[String],
    tenant_id: Uuid,
) -> Result<Actor, AppError> {
    let key = auth::api_keys::reaching(db, viewer, tenant_id, ApiScope::CreditsGrant, "tenant");
    let actor = match key.await? {
        Some(key) => Actor::ApiKey(key),
        None => {
            let user_id = viewer.require()?;
            if !auth::api_keys::is_platform_admin(db, viewer, platform_admins).await? {
                return Err(AppError::Forbidden);
            }
            Actor::User(user_id)
        }
    };
    entity::tenant::Entity::find_by_id(tenant_id)
        .one(&db.write)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    Ok(actor)
}

/// Creates a grant and its `GRANT` movement in one transaction, idempotent on `key`: a
/// repeat returns the first grant (`true`) and creates nothing.
pub async fn grant(
    db: &Database,
    actor: Actor,
    grant: NewGrant,
    key: (&str, Duration),
    now: DateTime<Utc>,
) -> Result<(credit_grant::Model, bool), AppError> {
    grant.check(now)?;
    let (key, retention) = key;
    let key = idempotency::check_key(Some(key.to_owned()))?.unwrap_or_default();
    let fingerprint = Fingerprint::new(
        "grantCredits",
        &[
            &grant.tenant_id.to_string(),
            &grant.feature,
            &grant.amount.to_string(),
            grant.category.to_value().as_str(),
            &grant.priority.to_string(),
            &grant
                .effective_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            &grant.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            grant.reason.as_deref().unwrap_or(""),
        ],
    );
    let model = credit_grant::Model {
        tenant_id: grant.tenant_id,
        id: Uuid::now_v7(),
        feature: grant.feature,
        category: grant.category,
        source: grant.source.to_owned(),
        source_ref: grant.source_ref,
        amount: grant.amount,
        remaining: grant.amount,
        priority: grant.priority,
        effective_at: grant.effective_at.unwrap_or(now),
        expires_at: grant.expires_at,
        status: GrantStatus::Active,
        reason: grant.reason,
        payment_ref: None,
        actor_type: actor.kind(),
        actor_id: actor.id(),
        created_at: now,
    };
    let mut session = db.session().await?;
    session.begin().await?;
    let outcome = async {
        feed::lock(&mut session, model.tenant_id).await?;
        let claim = idempotency::claim(
            &mut session,
            model.tenant_id,
            &key,
            &fingerprint,
            model.id,
            now,
            retention,
        )
        .await?;
        if let Claim::Replay(id) = claim {
            let found = find(&mut session, model.tenant_id, id).await?;
            return found
                .map(|g| (g, true))
                .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a granted grant is gone")));
        }
        insert(&mut session, &model).await?;
        movement(&mut session, &model, Movement::Grant, model.amount, now).await?;
        let balance = balance::balance(&mut session, model.tenant_id, &model.feature, now).await?;
        webhooks::events::record(&mut session, &granted_event(&model, &balance), now).await?;
        alerts::reconcile(&mut session, model.tenant_id, &model.feature, now).await?;
        Ok((model.clone(), false))
    }
    .await;
    session.finish(outcome).await
}

/// `credits.granted`, for grant `g` with the tenant's balance after it.
fn granted_event(g: &credit_grant::Model, balance: &Balance) -> webhooks::NewEvent {
    webhooks::NewEvent {
        tenant_id: Some(g.tenant_id),
        kind: "credits.granted",
        data: balance::with_balance(
            json!({
                "grantId": g.id,
                "category": g.category.to_value(),
                "source": g.source,
                "amount": g.amount,
                "effectiveAt": g.effective_at,
                "expiresAt": g.expires_at,
                "reason": g.reason,
            }),
            balance,
        ),
    }
}

/// Voids what is left of a grant: it is no longer spendable, and a `VOID` movement records
/// the credits taken back. Only an `ACTIVE` grant can be voided (`BAD_USER_INPUT`).
pub async fn void(
    db: &Database,
    actor: Actor,
    tenant_id: Uuid,
    grant_id: Uuid,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<credit_grant::Model, AppError> {
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(AppError::bad_input(format!(
            "reason must be at most {MAX_REASON} characters"
        )));
    }
    let mut session = db.session().await?;
    session.begin().await?;
    let outcome = async {
        feed::lock(&mut session, tenant_id).await?;
        let Some(before) = close(&mut session, tenant_id, grant_id, GrantStatus::Voided).await?
        else {
            return match find(&mut session, tenant_id, grant_id).await? {
                None => Err(AppError::NotFound("credit grant")),
                Some(g) => Err(AppError::bad_input(format!(
                    "the grant is {}: only an ACTIVE grant can be voided",
                    g.status.to_value()
                ))),
            };
        };
        let mut voided = before.clone();
        voided.status = GrantStatus::Voided;
        voided.remaining = 0;
        let mut moved = voided.clone();
        moved.reason = reason.or(before.reason);
        moved.actor_type = actor.kind();
        moved.actor_id = actor.id();
        movement(&mut session, &moved, Movement::Void, before.remaining, now).await?;
        alerts::reconcile(&mut session, tenant_id, &before.feature, now).await?;
        Ok(voided)
    }
    .await;
    session.finish(outcome).await
}

/// Marks up to `limit` grants whose expiry has passed `EXPIRED`, each with one `EXPIRY`
/// movement of what it still held, decided under the grant's row lock: safe on any number
/// of replicas (each grant expires once). Returns how many it expired.
pub async fn sweep(db: &Database, now: DateTime<Utc>, limit: u64) -> Result<u64, AppError> {
    static DUE: PerBackend = PerBackend::new(|_| {
        "SELECT tenant_id, id FROM credit_grant WHERE status = 'ACTIVE' \
         AND expires_at IS NOT NULL AND expires_at <= :now ORDER BY expires_at LIMIT :limit"
            .to_owned()
    });
    let due = crate::db::due(db, &DUE, now, limit).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut session = db.session().await?;
    let mut expired = 0;
    for (tenant_id, grant_id) in due {
        session.begin().await?;
        let outcome = async {
            feed::lock(&mut session, tenant_id).await?;
            let Some(before) =
                close(&mut session, tenant_id, grant_id, GrantStatus::Expired).await?
            else {
                // Expired, voided or spent by someone else meanwhile.
                return Ok(false);
            };
            let mut moved = before.clone();
            moved.actor_type = ActorType::System;
            moved.actor_id = None;
            moved.reason = Some("expired".to_owned());
            movement(
                &mut session,
                &moved,
                Movement::Expiry,
                before.remaining,
                now,
            )
            .await?;
            let balance = balance::balance(&mut session, tenant_id, &before.feature, now).await?;
            let event = webhooks::NewEvent {
                tenant_id: Some(tenant_id),
                kind: "credits.grant_expired",
                data: balance::with_balance(
                    json!({
                        "grantId": grant_id,
                        "category": before.category.to_value(),
                        "expired": before.remaining,
                        "expiresAt": before.expires_at,
                    }),
                    &balance,
                ),
            };
            webhooks::events::record(&mut session, &event, now).await?;
            alerts::reconcile(&mut session, tenant_id, &before.feature, now).await?;
            Ok::<_, AppError>(true)
        }
        .await;
        if session.finish(outcome).await? {
            expired += 1;
        }
    }
    Ok(expired)
}

/// Sweeps due grants every `interval`, for as long as the process runs.
pub fn spawn_sweeper(
    db: Database,
    clock: crate::clock::Clock,
    interval: std::time::Duration,
    changes: crate::live::Changes,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            match sweep(&db, clock.now(), 500).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(grants = n, "expired credit grants");
                    changes.publish(crate::live::Change::All);
                }
                Err(e) => tracing::warn!(error.cause = %e, "could not sweep expired grants"),
            }
        }
    });
}

/// A tenant's grants, newest first (at most 500), for a member (or a key with
/// `CREDITS_READ`).
pub async fn list(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Vec<credit_grant::Model>, AppError> {
    static SQL: auth::PerViewer = auth::PerViewer::new(|_, standing| {
        format!(
            "SELECT tu.role AS viewer_role, g.* FROM {standing} \
             LEFT JOIN credit_grant g ON g.tenant_id = tu.tenant_id \
             WHERE u.id = :user ORDER BY g.id DESC LIMIT 501"
        )
    });
    let user_id = viewer.standing_id(&[ApiScope::CreditsRead])?;
    let statement = SQL.get(db.backend(), viewer).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    static SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<credit_grant::Entity>);
    let rows = db.query(&statement, &SHAPE).await?;
    auth::standing_of(viewer, rows.first())?;
    let mut grants = Vec::with_capacity(rows.len());
    for row in rows.into_iter().take(500) {
        if row.get::<Option<Uuid>>("id")?.is_some() {
            grants.push(row.model::<credit_grant::Entity>()?);
        }
    }
    Ok(grants)
}

/// Takes an `ACTIVE` grant out of use as `status` (its row locked by the update) and returns
/// it as it was; `None` when it is not `ACTIVE` (or an expiry is swept before it is due).
async fn close(
    session: &mut Session,
    tenant_id: Uuid,
    grant_id: Uuid,
    status: GrantStatus,
) -> Result<Option<credit_grant::Model>, AppError> {
    static CLOSE: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_grant SET status = :status WHERE tenant_id = :tenant AND id = :grant \
         AND status = 'ACTIVE'"
            .to_owned()
    });
    static EMPTY: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_grant SET remaining = 0 WHERE tenant_id = :tenant AND id = :grant".to_owned()
    });
    let value = |name: &str| -> Option<sea_orm::Value> {
        Some(match name {
            "status" => status.to_value().into(),
            "tenant" => tenant_id.into(),
            "grant" => grant_id.into(),
            _ => return None,
        })
    };
    let backend = session.backend();
    if session.execute(&CLOSE.get(backend).bind(value)?).await? != 1 {
        return Ok(None);
    }
    // Read under the lock the update took: what it held is what is taken back.
    let mut before = find(session, tenant_id, grant_id)
        .await?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a locked grant is gone")))?;
    session.execute(&EMPTY.get(backend).bind(value)?).await?;
    before.status = GrantStatus::Active;
    Ok(Some(before))
}

async fn find(
    session: &mut Session,
    tenant_id: Uuid,
    grant_id: Uuid,
) -> Result<Option<credit_grant::Model>, AppError> {
    Ok(session
        .find_owned::<credit_grant::Entity>(tenant_id, grant_id)
        .await?)
}

/// The grant's insert; `once`: doing nothing when its source reference is there already.
fn insert_statement(
    backend: DatabaseBackend,
    g: &credit_grant::Model,
    once: bool,
) -> Result<Statement, DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| INSERT_SQL.to_owned());
    static ONCE: PerBackend = PerBackend::new(|_| {
        format!("{INSERT_SQL} ON CONFLICT (tenant_id, source, source_ref) DO NOTHING")
    });
    let sql = if once { &ONCE } else { &SQL };
    sql.get(backend).bind(|name| {
        Some(match name {
            "tenant" => g.tenant_id.into(),
            "id" => g.id.into(),
            "feature" => g.feature.as_str().into(),
            "category" => g.category.to_value().into(),
            "source" => g.source.as_str().into(),
            "source_ref" => g.source_ref.as_str().into(),
            "amount" => g.amount.into(),
            "priority" => g.priority.into(),
            "effective_at" => g.effective_at.into(),
            "expires_at" => g.expires_at.into(),
            "reason" => g.reason.as_deref().into(),
            "payment_ref" => g.payment_ref.as_deref().into(),
            "actor_type" => g.actor_type.to_value().into(),
            "actor_id" => g.actor_id.into(),
            "now" => g.created_at.into(),
            _ => return None,
        })
    })
}

const INSERT_SQL: &str = "INSERT INTO credit_grant (tenant_id, id, feature, category, source, \
source_ref, amount, remaining, priority, effective_at, expires_at, status, reason, payment_ref, \
actor_type, actor_id, created_at) VALUES (:tenant, :id, :feature, :category, :source, \
:source_ref, :amount, :amount, :priority, :effective_at, :expires_at, 'ACTIVE', :reason, \
:payment_ref, :actor_type, :actor_id, :now)";

async fn insert(session: &mut Session, g: &credit_grant::Model) -> Result<(), AppError> {
    let statement = insert_statement(session.backend(), g, false)?;
    match session.execute(&statement).await {
        Ok(_) => Ok(()),
        Err(e) if crate::db::is_unique_violation(&e) => Err(AppError::bad_input(
            "a grant with this source reference exists already",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Creates `g` with its `GRANT` movement in `txn` (a Stripe webhook's), once per source
/// reference: `false` when a grant of that reference exists already (the event raced or
/// repeated).
pub async fn grant_once(
    txn: &impl ConnectionTrait,
    g: &credit_grant::Model,
) -> Result<bool, DbErr> {
    let backend = txn.get_database_backend();
    feed::lock(&mut &*txn, g.tenant_id).await?;
    if txn
        .execute_raw(insert_statement(backend, g, true)?)
        .await?
        .rows_affected()
        != 1
    {
        return Ok(false);
    }
    movement(&mut &*txn, g, Movement::Grant, g.amount, g.created_at).await?;
    let balance = balance::balance(&mut &*txn, g.tenant_id, &g.feature, g.created_at).await?;
    webhooks::record(&mut &*txn, &granted_event(g, &balance), g.created_at).await?;
    alerts::reconcile(&mut &*txn, g.tenant_id, &g.feature, g.created_at).await?;
    Ok(true)
}

/// Takes back from the grant a payment bought (`payment_ref`) up to `target` credits in all
/// (what was taken back before counts: a dispute after a refund never claws back twice), at
/// most what it still holds, in `txn`; `VOIDED` once the target is all of it. Returns what it
/// took back now (`None`: no such grant).
pub async fn claw_back(
    txn: &impl ConnectionTrait,
    payment_ref: &str,
    target: impl Fn(&credit_grant::Model) -> i64,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<i64>, DbErr> {
    static LOCK: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_grant SET remaining = remaining WHERE payment_ref = :payment".to_owned()
    });
    static FIND: PerBackend = PerBackend::new(|_| {
        "SELECT g.*, CAST(COALESCE((SELECT SUM(c.amount) FROM credit c \
         WHERE c.tenant_id = g.tenant_id AND c.grant_id = g.id AND c.kind = 'VOID'), 0) AS BIGINT) \
         AS taken FROM credit_grant g WHERE g.payment_ref = :payment"
            .to_owned()
    });
    static TAKE: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_grant SET remaining = remaining - :take, status = CASE \
         WHEN :all = 1 THEN 'VOIDED' WHEN remaining = :take AND status = 'ACTIVE' THEN 'EXHAUSTED' \
         ELSE status END WHERE tenant_id = :tenant AND id = :grant"
            .to_owned()
    });
    static TENANT: PerBackend = PerBackend::new(|_| {
        "SELECT tenant_id FROM credit_grant WHERE payment_ref = :payment".to_owned()
    });
    let backend = txn.get_database_backend();
    let payment = |name: &str| (name == "payment").then(|| payment_ref.into());
    // The tenant's event numbering locked first (`feed`), then the grant's row: refunds and
    // disputes of one payment take turns.
    let Some(row) = txn
        .query_one_raw(TENANT.get(backend).bind(payment)?)
        .await?
    else {
        return Ok(None);
    };
    feed::lock(&mut &*txn, row.try_get("", "tenant_id")?).await?;
    txn.execute_raw(LOCK.get(backend).bind(payment)?).await?;
    let Some(row) = txn.query_one_raw(FIND.get(backend).bind(payment)?).await? else {
        return Ok(None);
    };
    let grant = credit_grant::Model::from_query_result(&row, "")?;
    let taken: i64 = row.try_get("", "taken")?;
    let goal = target(&grant).clamp(0, grant.amount);
    let take = (goal - taken).clamp(0, grant.remaining);
    let all = goal >= grant.amount;
    if take == 0 && !(all && grant.status == GrantStatus::Active) {
        return Ok(Some(0));
    }
    let statement = TAKE.get(backend).bind(|name| {
        Some(match name {
            "take" => take.into(),
            "all" => i32::from(all).into(),
            "tenant" => grant.tenant_id.into(),
            "grant" => grant.id.into(),
            _ => return None,
        })
    })?;
    txn.execute_raw(statement).await?;
    let mut moved = grant.clone();
    moved.actor_type = ActorType::System;
    moved.actor_id = None;
    moved.reason = Some(reason.to_owned());
    movement(&mut &*txn, &moved, Movement::Void, take, now).await?;
    alerts::reconcile(&mut &*txn, grant.tenant_id, &grant.feature, now).await?;
    Ok(Some(take))
}

/// Records, in `tx`'s open transaction, a ledger row of a grant's movement of `amount`
/// credits (creation, expiry, void), by the grant's actor, under the tenant's next event
/// number (`feed`). Its period is the movement's own time: it counts against no allowance.
pub(super) async fn movement(
    tx: &mut impl Tx,
    g: &credit_grant::Model,
    kind: Movement,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "INSERT INTO credit (id, tenant_id, user_id, type, amount, object_id, feature, \
         period_start, created_at, reason, actor_type, actor_id, kind, grant_id, seq) \
         VALUES (:id, :tenant, :user, :type, :amount, :object, :feature, :now, :now, :reason, \
         :actor_type, :actor_id, :kind, :grant, :seq)"
            .to_owned()
    });
    let user = match g.actor_type {
        ActorType::User => g.actor_id,
        _ => None,
    };
    let seq = feed::next(tx, g.tenant_id).await?;
    let statement = SQL.get(tx.backend()).bind(|name| {
        Some(match name {
            "id" => Uuid::now_v7().into(),
            "tenant" => g.tenant_id.into(),
            "user" => user.into(),
            "type" => GRANT_CREDIT_TYPE.into(),
            "amount" => amount.into(),
            "object" => g.id.to_string().into(),
            "feature" => g.feature.as_str().into(),
            "now" => now.into(),
            "reason" => g.reason.as_deref().into(),
            "actor_type" => g.actor_type.to_value().into(),
            "actor_id" => g.actor_id.into(),
            "kind" => kind.to_value().into(),
            "grant" => g.id.into(),
            "seq" => seq.into(),
            _ => return None,
        })
    })?;
    tx.run(&statement).await?;
    Ok(())
}

/// The credit type a grant's movements are recorded under.
pub const GRANT_CREDIT_TYPE: &str = "grant";

#[cfg(test)]
mod tests {
    use super::*;

    fn funds(allowance: i64, grants: &[i64]) -> Funds {
        Funds {
            used: 0,
            allowance,
            grants: grants
                .iter()
                .map(|r| (Uuid::now_v7(), *r))
                .collect::<Vec<_>>(),
        }
    }

    #[test]
    fn the_allowance_pays_first_then_grants_in_order() {
        let f = funds(2, &[3, 10]);
        let a = f.allocate(7).expect("fits");
        assert_eq!(a.allowance, 2);
        assert_eq!(a.grants, vec![(f.grants[0].0, 3), (f.grants[1].0, 2)]);
        let a = f.allocate(1).expect("fits");
        assert_eq!((a.allowance, a.grants.len()), (1, 0));
    }

    #[test]
    fn a_cost_is_paid_whole_or_not_at_all() {
        let f = funds(2, &[3, 10]);
        assert!(f.allocate(15).is_some());
        assert!(f.allocate(16).is_none());
        assert!(funds(0, &[]).allocate(1).is_none());
    }

    #[test]
    fn the_burn_order_is_priority_expiry_category_age() {
        let order = BURN_ORDER_SQL;
        let position = |s: &str| order.find(s).unwrap();
        assert!(position("g.priority") < position("g.expires_at"));
        assert!(position("g.expires_at,") < position("'PROMOTIONAL'"));
        assert!(position("'PROMOTIONAL'") < position("g.created_at"));
    }
}
