//! API keys for servers: `Authorization: Bearer tg_sk_…`. The secret is 32 random bytes,
//! shown once; only its SHA-256 is kept (a random secret needs no slow hash). A tenant key
//! touches only its own tenant, a platform key any; each carries scopes. A revoked or expired
//! key is `UNAUTHENTICATED`; `lastUsedAt` is written at most once per `LAST_USED_EVERY`.

use std::sync::LazyLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use entity::{api_key, tenant_user::Role};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    prelude::*, sea_query::Expr,
};
use sha2::{Digest, Sha256};

use super::{Viewer, require_admin};
use crate::{
    cache::Bounded,
    db::{Database, PerBackend, Shape},
    error::AppError,
};

/// What a secret starts with: how a bearer token is told from a JWT.
pub const SECRET_PREFIX: &str = "tg_sk_";
const LAST_USED_EVERY: Duration = Duration::minutes(5);
const MAX_NAME: usize = 100;

/// What a key may do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiScope {
    /// `consumeCredits`.
    CreditsConsume,
    /// `checkCredits`, `planFeatureUsage`, `creditHistory`.
    CreditsRead,
    /// Granting credits (issue 13).
    CreditsGrant,
    /// Creating tenants (platform keys).
    TenantsWrite,
    /// Managing webhook endpoints (a tenant key: its own; a platform key: any).
    WebhooksWrite,
}

impl ApiScope {
    pub const ALL: [ApiScope; 5] = [
        ApiScope::CreditsConsume,
        ApiScope::CreditsRead,
        ApiScope::CreditsGrant,
        ApiScope::TenantsWrite,
        ApiScope::WebhooksWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ApiScope::CreditsConsume => "CREDITS_CONSUME",
            ApiScope::CreditsRead => "CREDITS_READ",
            ApiScope::CreditsGrant => "CREDITS_GRANT",
            ApiScope::TenantsWrite => "TENANTS_WRITE",
            ApiScope::WebhooksWrite => "WEBHOOKS_WRITE",
        }
    }

    pub fn parse(name: &str) -> Option<ApiScope> {
        ApiScope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The scopes stored in a key's row.
pub fn scopes_of(row: &api_key::Model) -> Vec<ApiScope> {
    row.scopes.split(',').filter_map(ApiScope::parse).collect()
}

/// A key to create.
pub struct NewApiKey {
    /// `None`: a platform key.
    pub tenant_id: Option<Uuid>,
    pub name: String,
    pub scopes: Vec<ApiScope>,
    pub expires_at: Option<DateTime<Utc>>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// What a refusal says when the key was revoked since the request began.
pub const REVOKED: &str = "invalid, revoked or expired API key";

/// Keys already looked up, by their secret's SHA-256: what a key is (its id, tenant, scopes and
/// expiry) never changes, so a request with a known key costs no database call. Whether it
/// was **revoked** is never decided here: every tenant read checks it in its own query
/// (`KEY_STANDING`), the credits guard in its own statement, and the few other writes a key
/// may make check it themselves (`in_force`). At most `KNOWN_MAX` keys are kept (then the
/// cache starts over).
#[derive(Default)]
pub struct Known(Bounded<[u8; 32], KnownKey, KNOWN_MAX>);

#[derive(Clone)]
struct KnownKey {
    id: Uuid,
    tenant_id: Option<Uuid>,
    scopes: Vec<ApiScope>,
    expires_at: Option<DateTime<Utc>>,
    /// When this process last recorded the key's use.
    used_at: Option<DateTime<Utc>>,
}

const KNOWN_MAX: usize = 4096;

/// The viewer a presented secret stands for: from `known` when this process has seen it,
/// else one query. `UNAUTHENTICATED` for a key that does not exist, has expired, or (when
/// looked up) is revoked.
pub async fn authenticate(db: &Database, known: &Known, secret: &str) -> Result<Viewer, AppError> {
    const INVALID: AppError = AppError::Unauthenticated(REVOKED);
    static SQL: PerBackend =
        PerBackend::new(|_| "SELECT * FROM api_key WHERE secret_hash = :hash".to_owned());
    static SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<api_key::Entity>);
    let now = Utc::now();
    let digest = digest(secret);
    let (mut key, looked_up) = match known.0.get(&digest) {
        Some(key) => (key, false),
        None => {
            let secret_hash = super::lower_hex(&digest);
            let statement = SQL
                .get(db.backend())
                .bind(|name| (name == "hash").then(|| secret_hash.as_str().into()))?;
            // On the request's own path: SQLite's reader on this thread, PostgreSQL's own
            // connection.
            let row = db
                .query_one(&statement, &SHAPE)
                .await?
                .ok_or(INVALID)?
                .model::<api_key::Entity>()?;
            if row.revoked_at.is_some() {
                return Err(INVALID);
            }
            let key = KnownKey {
                id: row.id,
                tenant_id: row.tenant_id,
                scopes: scopes_of(&row),
                expires_at: row.expires_at,
                used_at: row.last_used_at,
            };
            (key, true)
        }
    };
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(INVALID);
    }
    let record_use = key.used_at.is_none_or(|at| at < now - LAST_USED_EVERY);
    if record_use {
        key.used_at = Some(now);
    }
    let id = key.id;
    let viewer = Viewer::with_key(key.id, key.tenant_id, key.scopes.clone());
    if looked_up || record_use {
        known.0.insert(digest, key);
    }
    if record_use {
        // Coarse on purpose: one write per key every few minutes per process, never on the
        // request's path.
        let db = db.write.clone();
        tokio::spawn(async move {
            let updated = api_key::Entity::update_many()
                .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
                .filter(api_key::Column::Id.eq(id))
                .exec(&db)
                .await;
            if let Err(e) = updated {
                tracing::warn!(error.cause = %e, "could not record an API key's last use");
            }
        });
    }
    Ok(viewer)
}

/// `UNAUTHENTICATED` (and the request answered 401) when the viewer's API key was revoked
/// since it was looked up: for the writes a key makes outside the credits guard.
pub async fn in_force(db: &Database, viewer: &Viewer) -> Result<(), AppError> {
    let Some(key) = viewer.key() else {
        return Ok(());
    };
    let row = api_key::Entity::find_by_id(key.id).one(&db.write).await?;
    match row {
        Some(row) if row.revoked_at.is_none() => Ok(()),
        _ => Err(viewer.user_gone()),
    }
}

/// The viewer's API key, when it has `scope`, reaches `tenant_id` (a tenant key its own
/// tenant, a platform key any) and is still in force: its id; `None` when the viewer is not a
/// key. A key without the scope is `FORBIDDEN`, a revoked one `UNAUTHENTICATED`, and another
/// tenant's key gets `NOT_FOUND` naming `missing`, as if what it asked for did not exist.
pub async fn reaching(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    scope: ApiScope,
    missing: &'static str,
) -> Result<Option<Uuid>, AppError> {
    let Some(key) = viewer.key() else {
        return Ok(None);
    };
    viewer.standing_id(&[scope])?;
    if key.tenant_id.is_some_and(|t| t != tenant_id) {
        return Err(AppError::NotFound(missing));
    }
    in_force(db, viewer).await?;
    Ok(Some(key.id))
}

/// Creates a key: a tenant's by its OWNER or ADMIN, a platform key only by a platform admin.
/// A key that may grant credits (`CREDITS_GRANT`) is the platform's to give, even for one
/// tenant: only a platform admin creates one.
/// Returns the row and the secret, which is never shown again.
pub async fn create(
    db: &Database,
    viewer: &Viewer,
    platform_admins: &[String],
    request: NewApiKey,
) -> Result<(api_key::Model, String), AppError> {
    let name = valid_name(&request)?;
    let user_id = viewer.require()?;
    match request.tenant_id {
        // Credits a tenant's own people could give themselves: the platform's to hand out.
        Some(tenant_id) if request.scopes.contains(&ApiScope::CreditsGrant) => {
            if !is_platform_admin(db, viewer, platform_admins).await? {
                return Err(AppError::Forbidden);
            }
            entity::tenant::Entity::find_by_id(tenant_id)
                .one(&db.write)
                .await?
                .ok_or(AppError::NotFound("tenant"))?;
        }
        Some(tenant_id) => {
            require_admin(db, viewer, tenant_id).await?;
        }
        None if !is_platform_admin(db, viewer, platform_admins).await? => {
            return Err(AppError::Forbidden);
        }
        None => {}
    }
    insert(db, request, Some(user_id), &name).await
}

/// The key's name, trimmed, once the request is known to be a valid one: a name of 1 to
/// `MAX_NAME` characters, a scope at least, an expiry in the future.
fn valid_name(request: &NewApiKey) -> Result<String, AppError> {
    let name = request.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(AppError::bad_input(format!(
            "name must be 1 to {MAX_NAME} characters"
        )));
    }
    if request.scopes.is_empty() {
        return Err(AppError::bad_input("a key needs at least one scope"));
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(AppError::bad_input("expiresAt must be in the future"));
    }
    Ok(name)
}

/// Whether the viewer is a user `platform_admins` names (anonymous and API keys are not).
pub async fn is_platform_admin(
    db: &Database,
    viewer: &Viewer,
    platform_admins: &[String],
) -> Result<bool, AppError> {
    let me = super::me(db, viewer).await?;
    Ok(me.is_some_and(|me| platform_admins.contains(&me.email)))
}

/// Creates a key without a viewer (the `api-key create` command on the server's machine).
pub async fn create_unchecked(
    db: &Database,
    request: NewApiKey,
) -> Result<(api_key::Model, String), AppError> {
    let name = valid_name(&request)?;
    if let Some(tenant_id) = request.tenant_id {
        entity::tenant::Entity::find_by_id(tenant_id)
            .one(&db.write)
            .await?
            .ok_or(AppError::NotFound("tenant"))?;
    }
    insert(db, request, None, &name).await
}

async fn insert(
    db: &Database,
    request: NewApiKey,
    created_by: Option<Uuid>,
    name: &str,
) -> Result<(api_key::Model, String), AppError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let mut scopes = request.scopes;
    scopes.sort();
    scopes.dedup();
    let scopes: Vec<&str> = scopes.into_iter().map(ApiScope::name).collect();
    let row = api_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(request.tenant_id),
        name: Set(name.to_owned()),
        prefix: Set(secret.chars().take(SECRET_PREFIX.len() + 4).collect()),
        secret_hash: Set(super::sha256_hex(secret.as_bytes())),
        scopes: Set(scopes.join(",")),
        created_by: Set(created_by),
        created_at: Set(Utc::now()),
        expires_at: Set(request.expires_at),
        revoked_at: Set(None),
        last_used_at: Set(None),
    }
    .insert(&db.write)
    .await?;
    Ok((row, secret))
}

/// Revokes a key (from the next request on, on every replica): a tenant's key by its OWNER
/// or ADMIN, a platform key by a platform admin. Revoking twice keeps the first time.
pub async fn revoke(
    db: &Database,
    viewer: &Viewer,
    platform_admins: &[String],
    id: Uuid,
) -> Result<api_key::Model, AppError> {
    let key = api_key::Entity::find_by_id(id)
        .one(&db.write)
        .await?
        .ok_or(AppError::NotFound("API key"))?;
    // A key the viewer may not manage does not exist for them.
    let manages = match key.tenant_id {
        Some(tenant_id) => matches!(
            super::require_member(db, viewer, tenant_id).await,
            Ok(Role::Owner | Role::Admin)
        ),
        None => is_platform_admin(db, viewer, platform_admins).await?,
    };
    if !manages {
        return Err(AppError::NotFound("API key"));
    }
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    let mut active: api_key::ActiveModel = key.into();
    active.revoked_at = Set(Some(Utc::now()));
    Ok(active.update(&db.write).await?)
}

/// A tenant's keys, newest first (OWNER and ADMIN); revoked ones included.
pub async fn list(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Vec<api_key::Model>, AppError> {
    require_admin(db, viewer, tenant_id).await?;
    Ok(api_key::Entity::find()
        .filter(api_key::Column::TenantId.eq(tenant_id))
        .order_by_desc(api_key::Column::Id)
        .all(&db.read)
        .await?)
}
