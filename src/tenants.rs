//! Tenants (workspaces) and their members. A new tenant's creator becomes its OWNER and the
//! tenant is subscribed to the default plan, in one transaction.

use chrono::Utc;
use entity::{tenant, tenant_user};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    prelude::*,
};

use crate::{
    auth::{self, ApiScope, PerViewer, Viewer},
    config::Config,
    db::{Database, PerBackend},
    error::AppError,
    plans,
};

const MAX_TENANT_NAME: usize = 100;
const MAX_SLUG: usize = 48;

pub use entity::tenant_user::Role;

pub struct NewTenant {
    pub name: String,
    pub slug: String,
    /// The SaaS's own id for it; unique.
    pub external_id: Option<String>,
    /// Its OWNER, an existing user, when a platform API key creates it (a signed-in user
    /// owns what they create).
    pub owner_email: Option<String>,
}

/// The longest external id accepted.
pub const MAX_EXTERNAL_ID: usize = 255;

/// Creates a tenant subscribed to the configured default plan, with exactly one OWNER: the
/// signed-in user, or — for a platform API key with `TENANTS_WRITE` — the existing user
/// `owner_email` names.
pub async fn create_tenant(
    db: &Database,
    config: &Config,
    viewer: &Viewer,
    input: NewTenant,
) -> Result<tenant::Model, AppError> {
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_TENANT_NAME {
        return Err(AppError::bad_input(format!(
            "name must be 1 to {MAX_TENANT_NAME} characters"
        )));
    }
    let slug = input.slug.trim().to_owned();
    let valid_slug = (1..=MAX_SLUG).contains(&slug.len())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if !valid_slug {
        return Err(AppError::bad_input(format!(
            "slug must be 1 to {MAX_SLUG} lower-case letters, digits or inner hyphens"
        )));
    }
    let external_id = match input.external_id.map(|e| e.trim().to_owned()) {
        Some(e) if e.is_empty() || e.chars().count() > MAX_EXTERNAL_ID => {
            return Err(AppError::bad_input(format!(
                "externalId must be 1 to {MAX_EXTERNAL_ID} characters"
            )));
        }
        other => other,
    };
    let owner = match (viewer.key(), input.owner_email) {
        (Some(key), Some(email))
            if key.tenant_id.is_none() && key.scopes.contains(&ApiScope::TenantsWrite) =>
        {
            let email = auth::normalize_email(&email)?;
            auth::find_by_email(&db.read, &email)
                .await?
                .ok_or_else(|| {
                    AppError::bad_input("ownerEmail names no user: they must sign up first")
                })?
                .id
        }
        (Some(key), None)
            if key.tenant_id.is_none() && key.scopes.contains(&ApiScope::TenantsWrite) =>
        {
            return Err(AppError::bad_input(
                "ownerEmail is required: a tenant always has exactly one OWNER",
            ));
        }
        (Some(_), _) => return Err(AppError::Forbidden),
        (None, Some(_)) => {
            return Err(AppError::bad_input(
                "ownerEmail is for platform API keys: you own the tenants you create",
            ));
        }
        (None, None) => viewer.require()?,
    };
    auth::api_keys::in_force(db, viewer).await?;
    let now = Utc::now();
    let txn = db.begin_write().await?;
    ensure_room(&txn, config, viewer, owner).await?;
    let inserted = tenant::ActiveModel {
        id: Set(Uuid::now_v7()),
        slug: Set(slug),
        name: Set(name),
        stripe_customer_id: Set(None),
        created_at: Set(now),
        external_id: Set(external_id),
    }
    .insert(&txn)
    .await;
    let tenant = match inserted {
        Ok(tenant) => tenant,
        Err(e) => {
            return Err(match e.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(m)) if m.contains("external_id") => {
                    AppError::bad_input("this externalId is already taken")
                }
                Some(SqlErr::UniqueConstraintViolation(_)) => {
                    AppError::bad_input("this slug is already taken")
                }
                _ => e.into(),
            });
        }
    };
    tenant_user::ActiveModel {
        tenant_id: Set(tenant.id),
        user_id: Set(owner),
        role: Set(Role::Owner),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    // The tenant's event numbering (`credits::feed`), made with it.
    crate::credits::feed::lock(&mut &txn, tenant.id).await?;
    plans::subscribe(&txn, tenant.id, &config.default_plan, now).await?;
    txn.commit().await?;
    tracing::info!(tenant.id = %tenant.id, user.id = %owner, "tenant created");
    Ok(tenant)
}

/// Whether `user` may belong to one more tenant (owning a new one, or joining one): the user
/// exists (on PostgreSQL its row is locked for the transaction, so concurrent creations or
/// acceptances by one user cannot both pass the cap) and belongs to fewer than
/// `tenants.max_per_user`.
pub async fn ensure_room(
    txn: &sea_orm::DatabaseTransaction,
    config: &Config,
    viewer: &Viewer,
    owner: Uuid,
) -> Result<(), AppError> {
    static OWNER: PerBackend = PerBackend::new(|backend| {
        let lock = crate::db::row_lock(backend, " FOR UPDATE");
        format!("SELECT 1 FROM \"user\" WHERE id = :owner{lock}")
    });
    let statement = OWNER
        .get(txn.get_database_backend())
        .bind(|name| (name == "owner").then(|| owner.into()))?;
    if txn.query_one_raw(statement).await?.is_none() {
        return Err(viewer.user_gone());
    }
    let belongs_to = tenant_user::Entity::find()
        .filter(tenant_user::Column::UserId.eq(owner))
        .count(txn)
        .await?;
    if belongs_to >= config.tenants.max_per_user {
        return Err(AppError::bad_input(format!(
            "a user may belong to at most {} tenants",
            config.tenants.max_per_user
        )));
    }
    Ok(())
}

/// The id of the tenant whose external id is `external_id`: one query; `NOT_FOUND` when none
/// has it.
pub async fn by_external_id(db: &Database, external_id: &str) -> Result<Uuid, AppError> {
    let tenant = tenant::Entity::find()
        .filter(tenant::Column::ExternalId.eq(external_id))
        .one(&db.read)
        .await?;
    tenant.map(|t| t.id).ok_or(AppError::NotFound("tenant"))
}

pub async fn find(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> Result<Option<tenant::Model>, AppError> {
    Ok(tenant::Entity::find_by_id(tenant_id).one(db).await?)
}

/// The tenant `tenant_id`, for a member of it (`auth::standing`): one query, the viewer's
/// check included.
pub async fn tenant(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Option<tenant::Model>, AppError> {
    static SQL: PerViewer = PerViewer::new(|_, standing| {
        format!(
            "SELECT tu.role AS viewer_role, t.* FROM {standing} \
             LEFT JOIN tenant t ON t.id = tu.tenant_id WHERE u.id = :user"
        )
    });
    // A key reads the tenants it may touch (with any credits or tenants scope).
    let user_id = viewer.standing_id(&[
        ApiScope::CreditsRead,
        ApiScope::CreditsConsume,
        ApiScope::TenantsWrite,
    ])?;
    let statement = SQL.get(db.backend(), viewer).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    auth::member_row::<tenant::Entity>(db, viewer, &statement).await
}

/// The tenants `user_id` belongs to, with the role in each, oldest membership first.
pub async fn memberships(
    db: &impl ConnectionTrait,
    user_id: Uuid,
) -> Result<Vec<(tenant::Model, Role)>, AppError> {
    let rows = tenant_user::Entity::find()
        .filter(tenant_user::Column::UserId.eq(user_id))
        .order_by_asc(tenant_user::Column::CreatedAt)
        .all(db)
        .await?;
    let tenants = tenant::Entity::find()
        .filter(tenant::Column::Id.is_in(rows.iter().map(|r| r.tenant_id)))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|m| {
            let tenant = tenants.iter().find(|t| t.id == m.tenant_id)?.clone();
            Some((tenant, m.role))
        })
        .collect())
}
