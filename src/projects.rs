//! The guarded resources. Creating a project or a task is one transaction: the idempotency
//! claim (when a key is given), the credits guard (`credits::consume`) and the insert commit
//! together or not at all. Guards go through the process's `Writer`, which commits many
//! callers' guards together; each caller is answered only after its commit.

mod guard;
mod writer;

use chrono::Duration;
use entity::{project, task};
use sea_orm::prelude::*;

pub use guard::{Created, Guarded};
pub use writer::Writer;

use crate::{
    auth::{self, Viewer},
    config::Config,
    credits::CreditKind,
    error::AppError,
    idempotency::Fingerprint,
    state::AppState,
};

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2_000;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A project to create, and who pays for it.
pub struct NewProject {
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// A repeat with the same key returns the first result and charges nothing.
    pub idempotency_key: Option<String>,
}

/// A task to create in a project; the project's tenant pays.
pub struct NewTask {
    pub project_id: Uuid,
    pub title: String,
    pub idempotency_key: Option<String>,
}

/// Creates a project in `tenant_id`, paying `credit-project-creation`.
pub async fn create_project(
    state: &AppState,
    viewer: &Viewer,
    input: NewProject,
) -> Result<project::Model, AppError> {
    let (db, writer, config) = (&state.db, &state.writer, &state.config);
    let tenant_id = input.tenant_id;
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
    let key = check_idempotency_key(input.idempotency_key)?;
    let (user, _) = auth::require_member(&db.read, viewer, tenant_id).await?;
    let mut guarded = Guarded::project(
        tenant_id,
        user.id,
        name.clone(),
        description.clone(),
        config.credit_type(CreditKind::ProjectCreation)?,
    );
    if let Some(key) = key {
        let fingerprint = Fingerprint::new(
            "createProject",
            &[
                &tenant_id.to_string(),
                &name,
                description.as_deref().unwrap_or(""),
            ],
        );
        guarded = guarded.with_key(key, fingerprint, retention(config));
    }
    match writer.submit(guarded).await? {
        Created::Project(project) => Ok(project),
        Created::Task(_) => Err(mismatch()),
    }
}

/// Creates a task in `project_id`, paying `credit-task-creation` from the project's tenant.
pub async fn create_task(
    state: &AppState,
    viewer: &Viewer,
    input: NewTask,
) -> Result<task::Model, AppError> {
    let (db, writer, config) = (&state.db, &state.writer, &state.config);
    let project_id = input.project_id;
    let title = required_text("title", &input.title, MAX_NAME)?;
    let key = check_idempotency_key(input.idempotency_key)?;
    let user = viewer.require()?;
    // A project of a tenant the viewer is not in is as absent as one that does not exist.
    let project = auth::visible_project(&db.read, user.id, project_id)
        .await?
        .ok_or(AppError::NotFound("project"))?;
    let mut guarded = Guarded::task(
        &project,
        user.id,
        title.clone(),
        config.credit_type(CreditKind::TaskCreation)?,
    );
    if let Some(key) = key {
        let fingerprint = Fingerprint::new("createTask", &[&project.id.to_string(), &title]);
        guarded = guarded.with_key(key, fingerprint, retention(config));
    }
    match writer.submit(guarded).await? {
        Created::Task(task) => Ok(task),
        Created::Project(_) => Err(mismatch()),
    }
}

fn retention(config: &Config) -> Duration {
    Duration::seconds(i64::try_from(config.idempotency.retention_seconds).unwrap_or(i64::MAX))
}

fn mismatch() -> AppError {
    AppError::Internal(anyhow::anyhow!("guard returned another kind of resource"))
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
