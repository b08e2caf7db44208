//! Who may do what in a tenant: membership and role checks, made by the database on every
//! request — in the same query as what the request reads (`STANDING`), so that a read costs
//! one call. Never cached in the process.

use std::sync::OnceLock;

use entity::{project, tenant_user::Role};
use sea_orm::{DatabaseBackend, prelude::*};

use super::Viewer;
use crate::{
    db::{Database, PerBackend, Row, Session, Shape, Sql},
    error::AppError,
};

/// The FROM clause of a query that checks the viewer in the same call: `u` is the token's
/// user, `tu` its membership of `:tenant` (null when it is not a member). With `WHERE u.id =
/// :user` such a query yields no row when the user is gone; join what the request reads on
/// `tu.tenant_id`, so that nothing is read for a non-member.
pub const STANDING: &str =
    "\"user\" u LEFT JOIN tenant_user tu ON tu.tenant_id = :tenant AND tu.user_id = u.id";

/// `STANDING` for an API key (bound as `:user`): `u` is the key, no row once it is revoked
/// (`UNAUTHENTICATED`), and `tu` the tenant when the key may touch it (a tenant key only its
/// own), with the standing of a `MEMBER` — else null (`FORBIDDEN`, as for a user).
pub const KEY_STANDING: &str = "(SELECT id, tenant_id FROM api_key WHERE revoked_at IS NULL) u \
     LEFT JOIN (SELECT t.id AS tenant_id, 'MEMBER' AS role FROM tenant t) tu \
     ON tu.tenant_id = :tenant AND (u.tenant_id IS NULL OR u.tenant_id = tu.tenant_id)";

/// A statement that checks its viewer (`STANDING` or `KEY_STANDING`), built the first time
/// each dialect and kind of viewer needs it: `build` gets the FROM clause to use.
pub struct PerViewer {
    build: fn(DatabaseBackend, &str) -> String,
    /// Postgres user, Postgres key, SQLite user, SQLite key.
    built: [OnceLock<Sql>; 4],
}

impl PerViewer {
    pub const fn new(build: fn(DatabaseBackend, &str) -> String) -> Self {
        PerViewer {
            build,
            built: [const { OnceLock::new() }; 4],
        }
    }

    pub fn get(&self, backend: DatabaseBackend, viewer: &Viewer) -> &Sql {
        let key = viewer.key().is_some();
        let at = usize::from(!matches!(backend, DatabaseBackend::Postgres)) * 2 + usize::from(key);
        self.built[at].get_or_init(|| {
            let standing = if key { KEY_STANDING } else { STANDING };
            Sql::new(backend, &(self.build)(backend, standing))
        })
    }
}

/// The viewer's role from the `viewer_role` column of a `STANDING` query's first row: no row
/// means the token's user is gone (`UNAUTHENTICATED`), a null role that the viewer is not a
/// member (`FORBIDDEN`, whether or not the tenant exists, so ids of other tenants reveal
/// nothing).
pub fn standing_of(viewer: &Viewer, row: Option<&Row>) -> Result<Role, AppError> {
    match row {
        None => Err(viewer.user_gone()),
        Some(row) => row
            .get::<Option<Role>>("viewer_role")?
            .ok_or(AppError::Forbidden),
    }
}

/// The row of `E` a `STANDING` query read beside the viewer's role (`viewer_role`): refused
/// as `standing_of` says, `None` when the viewer may look but there is no such row (its `id`
/// is null). One query.
pub async fn member_row<E>(
    db: &Database,
    viewer: &Viewer,
    statement: &sea_orm::Statement,
) -> Result<Option<E::Model>, AppError>
where
    E: EntityTrait,
    E::Model: sea_orm::FromQueryResult,
    E::ActiveModel: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::TryIntoModel<E::Model>,
{
    let row = db.query_one(statement, &Shape::of::<E>()).await?;
    standing_of(viewer, row.as_ref())?;
    match row {
        Some(row) if row.get::<Option<Uuid>>("id")?.is_some() => Ok(Some(row.model::<E>()?)),
        _ => Ok(None),
    }
}

/// The role of `user_id` in `tenant_id`, read in a write transaction: `UNAUTHENTICATED` when
/// the user is gone, `FORBIDDEN` when not a member.
pub async fn standing_in(
    session: &mut Session,
    user_id: Uuid,
    tenant_id: Uuid,
) -> Result<Role, AppError> {
    let statement = MEMBER_SQL.get(session.backend()).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    match session.query(&statement, &Shape::default()).await?.first() {
        None => Err(AppError::Unauthenticated("invalid or expired token")),
        Some(row) => row
            .get::<Option<Role>>("viewer_role")?
            .ok_or(AppError::Forbidden),
    }
}

/// The role of `:user` in `:tenant` (`viewer_role`): no row when the user is gone, a null role
/// when not a member.
static MEMBER_SQL: PerBackend = PerBackend::new(|_| {
    format!("SELECT tu.role AS viewer_role FROM {STANDING} WHERE u.id = :user")
});

/// The viewer's role in `tenant_id` (see `standing_of`): one query.
pub async fn require_member(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Role, AppError> {
    let user_id = viewer.require()?;
    let statement = MEMBER_SQL.get(db.backend()).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    let row = db.query_one(&statement, &Shape::default()).await?;
    standing_of(viewer, row.as_ref())
}

/// The viewer's id if they are an OWNER or ADMIN of `tenant_id`; `FORBIDDEN` otherwise.
pub async fn require_admin(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Uuid, AppError> {
    match require_member(db, viewer, tenant_id).await? {
        Role::Owner | Role::Admin => viewer.require(),
        Role::Member => Err(AppError::Forbidden),
    }
}

/// The project `project_id` if the viewer is a member of its tenant and it is not deleted:
/// one query. `None` for a project of a tenant the viewer is not in, as for one that does not
/// exist.
pub async fn visible_project(
    db: &Database,
    viewer: &Viewer,
    project_id: Uuid,
) -> Result<Option<project::Model>, AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "SELECT tu.role AS viewer_role, p.* FROM \"user\" u \
         LEFT JOIN project p ON p.id = :id AND p.deleted_at IS NULL \
         LEFT JOIN tenant_user tu ON tu.tenant_id = p.tenant_id AND tu.user_id = u.id \
         WHERE u.id = :user"
            .to_owned()
    });
    visible::<project::Entity>(db, viewer, &SQL, project_id).await
}

/// The row `id` of `E` that `sql` finds — a query of the viewer's `viewer_role` (bound as
/// `:user`) beside the row (`:id`) — if the viewer is a member of the row's tenant: one
/// query. No row at all means the viewer's user is gone.
pub async fn visible<E>(
    db: &Database,
    viewer: &Viewer,
    sql: &PerBackend,
    id: Uuid,
) -> Result<Option<E::Model>, AppError>
where
    E: EntityTrait,
    E::Model: sea_orm::FromQueryResult,
    E::ActiveModel: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::TryIntoModel<E::Model>,
{
    let user_id = viewer.require()?;
    let shape = Shape::of::<E>();
    let statement = sql.get(db.backend()).bind(|name| match name {
        "id" => Some(id.into()),
        "user" => Some(user_id.into()),
        _ => None,
    })?;
    let Some(row) = db.query_one(&statement, &shape).await? else {
        return Err(viewer.user_gone());
    };
    match row.get::<Option<Role>>("viewer_role")? {
        Some(_) => Ok(Some(row.model::<E>()?)),
        None => Ok(None),
    }
}
