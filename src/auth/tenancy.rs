//! Who may do what in a tenant: membership and role checks, made against `tenant_user` on
//! every request.

use entity::{project, tenant_user, user};
use sea_orm::{ConnectionTrait, EntityTrait, prelude::*};

use super::Viewer;
use crate::{db, error::AppError, tenants::Role};

/// The viewer's role in `tenant_id`, or `FORBIDDEN` when they are not a member (whether or
/// not the tenant exists, so ids of other tenants reveal nothing).
pub async fn require_member(
    db: &impl ConnectionTrait,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<(user::Model, Role), AppError> {
    let user = viewer.require()?;
    // Raw, without sea-orm's `LIMIT ?` (see `authenticate`).
    let sql = "SELECT * FROM tenant_user WHERE tenant_id = $1 AND user_id = $2";
    let membership = tenant_user::Entity::find()
        .from_raw_sql(db::statement(
            db.get_database_backend(),
            sql,
            [tenant_id.into(), user.id.into()],
        ))
        .one(db)
        .await?
        .ok_or(AppError::Forbidden)?;
    Ok((user.clone(), membership.role))
}

/// The viewer if they are an OWNER or ADMIN of `tenant_id`; `FORBIDDEN` otherwise.
pub async fn require_admin(
    db: &impl ConnectionTrait,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<user::Model, AppError> {
    match require_member(db, viewer, tenant_id).await? {
        (user, Role::Owner | Role::Admin) => Ok(user),
        (_, Role::Member) => Err(AppError::Forbidden),
    }
}

/// The project `project_id` if `user_id` is a member of its tenant: one query.
pub async fn visible_project(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    project_id: Uuid,
) -> Result<Option<project::Model>, AppError> {
    let backend = db.get_database_backend();
    let sql = "SELECT p.* FROM project p \
               JOIN tenant_user tu ON tu.tenant_id = p.tenant_id AND tu.user_id = $2 \
               WHERE p.id = $1";
    Ok(project::Entity::find()
        .from_raw_sql(db::statement(
            backend,
            sql,
            [project_id.into(), user_id.into()],
        ))
        .one(db)
        .await?)
}
