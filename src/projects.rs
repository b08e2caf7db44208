//! The guarded resources. Creating a project or a task is one transaction: the credits guard
//! (`credits::consume`) and the insert commit together or not at all.

use chrono::Utc;
use entity::{project, task, user};
use sea_orm::{ActiveValue::Set, DatabaseTransaction, EntityTrait, TransactionTrait, prelude::*};

use crate::{
    auth::{self, Viewer},
    config::{Config, CreditTypeConfig},
    credits::{self, CreditKind, Spend},
    db::Database,
    error::AppError,
};

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2_000;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

pub struct NewProject {
    pub name: String,
    pub description: Option<String>,
}

/// Creates a project in `tenant_id`, paying `credit-project-creation`.
pub async fn create_project(
    db: &Database,
    config: &Config,
    viewer: &Viewer,
    tenant_id: Uuid,
    input: NewProject,
    idempotency_key: Option<String>,
) -> Result<project::Model, AppError> {
    let name = required_text("name", &input.name, MAX_NAME)?;
    let description = match input.description.as_deref().map(str::trim) {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => {
            return Err(AppError::bad_input(format!(
                "description must be at most {MAX_DESCRIPTION} characters"
            )));
        }
        Some("") | None => None,
        Some(d) => Some(d.to_owned()),
    };
    let idempotency_key = check_idempotency_key(idempotency_key)?;
    let (user, _) = auth::require_member(&db.read, viewer, tenant_id).await?;
    let credit_type = config.credit_type(CreditKind::ProjectCreation);
    let id = Uuid::now_v7();
    let project = project::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id),
        name: Set(name),
        description: Set(description),
        created_by: Set(user.id),
        created_at: Set(Utc::now()),
    };
    let txn = db.write.begin().await?;
    spend(&txn, &user, tenant_id, &credit_type, id, idempotency_key).await?;
    let project = project.insert(&txn).await?;
    txn.commit().await?;
    Ok(project)
}

/// Creates a task in `project_id`, paying `credit-task-creation` from the project's tenant.
pub async fn create_task(
    db: &Database,
    config: &Config,
    viewer: &Viewer,
    project_id: Uuid,
    title: &str,
    idempotency_key: Option<String>,
) -> Result<task::Model, AppError> {
    let title = required_text("title", title, MAX_NAME)?;
    let idempotency_key = check_idempotency_key(idempotency_key)?;
    viewer.require()?;
    // A project of a tenant the viewer is not in is as absent as one that does not exist.
    let project = project::Entity::find_by_id(project_id)
        .one(&db.read)
        .await?
        .ok_or(AppError::NotFound("project"))?;
    let user = match auth::require_member(&db.read, viewer, project.tenant_id).await {
        Ok((user, _)) => user,
        Err(AppError::Forbidden) => return Err(AppError::NotFound("project")),
        Err(e) => return Err(e),
    };
    let credit_type = config.credit_type(CreditKind::TaskCreation);
    let id = Uuid::now_v7();
    let task = task::ActiveModel {
        id: Set(id),
        tenant_id: Set(project.tenant_id),
        project_id: Set(project.id),
        title: Set(title),
        created_by: Set(user.id),
        created_at: Set(Utc::now()),
    };
    let txn = db.write.begin().await?;
    spend(
        &txn,
        &user,
        project.tenant_id,
        &credit_type,
        id,
        idempotency_key,
    )
    .await?;
    let task = task.insert(&txn).await?;
    txn.commit().await?;
    Ok(task)
}

async fn spend(
    txn: &DatabaseTransaction,
    user: &user::Model,
    tenant_id: Uuid,
    credit_type: &CreditTypeConfig,
    resource_id: Uuid,
    idempotency_key: Option<String>,
) -> Result<(), AppError> {
    let spend = Spend {
        tenant_id,
        user_id: Some(user.id),
        credit_type,
        object_id: resource_id.to_string(),
        idempotency_key,
    };
    let credit = credits::consume(txn, &spend, Utc::now()).await?;
    tracing::debug!(
        tenant.id = %tenant_id,
        credit.r#type = %credit.kind,
        credit.amount = credit.amount,
        "credits consumed"
    );
    Ok(())
}

fn required_text(field: &str, value: &str, max: usize) -> Result<String, AppError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(AppError::bad_input(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(value.to_owned())
}

fn check_idempotency_key(key: Option<String>) -> Result<Option<String>, AppError> {
    match key {
        Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY => Err(AppError::bad_input(
            format!("idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
        )),
        other => Ok(other),
    }
}
