//! The guarded resources. Creating a project or a task is one transaction: the idempotency
//! claim (when a key is given), the credits guard (`credits::consume`) and the insert commit
//! together or not at all. A transaction the database aborts for contention (a Postgres
//! serialization failure or deadlock, SQLite busy) is retried a few times, never surfaced.

use chrono::{Duration, Utc};
use entity::{project, task};
use sea_orm::{ActiveValue::Set, EntityTrait, prelude::*};

use crate::{
    auth::{self, Viewer},
    config::Config,
    credits::{self, CreditKind, Spend},
    db::{self, Database},
    error::AppError,
    idempotency::{self, Claim, Fingerprint},
};

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2_000;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Attempts of one guarded transaction before a contention error is given up on.
const ATTEMPTS: u32 = 5;

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
    let key = check_idempotency_key(idempotency_key)?;
    let (user, _) = auth::require_member(&db.read, viewer, tenant_id).await?;
    let fingerprint = Fingerprint::new(
        "createProject",
        &[
            &tenant_id.to_string(),
            &name,
            description.as_deref().unwrap_or(""),
        ],
    );
    let project = project::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        name: Set(name),
        description: Set(description),
        created_by: Set(user.id),
        created_at: Set(Utc::now()),
    };
    let guard = Guard {
        tenant_id,
        user_id: user.id,
        kind: CreditKind::ProjectCreation,
        key: key.as_deref(),
        fingerprint: &fingerprint,
    };
    match guard.run(db, config, Resource::Project(project)).await? {
        Created::Project(project) => Ok(project),
        Created::Task(_) => Err(mismatch()),
    }
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
    let key = check_idempotency_key(idempotency_key)?;
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
    let fingerprint = Fingerprint::new("createTask", &[&project.id.to_string(), &title]);
    let task = task::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(project.tenant_id),
        project_id: Set(project.id),
        title: Set(title),
        created_by: Set(user.id),
        created_at: Set(Utc::now()),
    };
    let guard = Guard {
        tenant_id: project.tenant_id,
        user_id: user.id,
        kind: CreditKind::TaskCreation,
        key: key.as_deref(),
        fingerprint: &fingerprint,
    };
    match guard.run(db, config, Resource::Task(task)).await? {
        Created::Task(task) => Ok(task),
        Created::Project(_) => Err(mismatch()),
    }
}

/// A resource about to be inserted, and one that was.
enum Resource {
    Project(project::ActiveModel),
    Task(task::ActiveModel),
}

enum Created {
    Project(project::Model),
    Task(task::Model),
}

impl Resource {
    fn id(&self) -> Result<Uuid, AppError> {
        let id = match self {
            Resource::Project(p) => p.id.clone().into_value(),
            Resource::Task(t) => t.id.clone().into_value(),
        };
        match id {
            Some(sea_orm::Value::Uuid(Some(id))) => Ok(id),
            _ => Err(AppError::Internal(anyhow::anyhow!(
                "resource without an id"
            ))),
        }
    }

    async fn insert(&self, txn: &impl sea_orm::ConnectionTrait) -> Result<Created, AppError> {
        Ok(match self {
            Resource::Project(p) => Created::Project(p.clone().insert(txn).await?),
            Resource::Task(t) => Created::Task(t.clone().insert(txn).await?),
        })
    }

    /// The resource a replayed key created before.
    async fn load(&self, db: &Database, id: Uuid) -> Result<Created, AppError> {
        let gone = || AppError::Internal(anyhow::anyhow!("idempotent resource {id} is gone"));
        Ok(match self {
            Resource::Project(_) => Created::Project(
                project::Entity::find_by_id(id)
                    .one(&db.read)
                    .await?
                    .ok_or_else(gone)?,
            ),
            Resource::Task(_) => Created::Task(
                task::Entity::find_by_id(id)
                    .one(&db.read)
                    .await?
                    .ok_or_else(gone)?,
            ),
        })
    }
}

/// One guarded creation: who pays, for what, under which idempotency key.
struct Guard<'a> {
    tenant_id: Uuid,
    user_id: Uuid,
    kind: CreditKind,
    key: Option<&'a str>,
    fingerprint: &'a Fingerprint,
}

impl Guard<'_> {
    /// Runs the guarded transaction, again if the database aborted it for contention.
    async fn run(
        &self,
        db: &Database,
        config: &Config,
        resource: Resource,
    ) -> Result<Created, AppError> {
        let mut attempt = 1;
        loop {
            match self.attempt(db, config, &resource).await {
                Err(AppError::Internal(e))
                    if attempt < ATTEMPTS
                        && e.downcast_ref::<DbErr>().is_some_and(db::is_transient) =>
                {
                    tracing::debug!(attempt, "guard transaction aborted by contention; retrying");
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    let backoff = (2u64 << attempt) + jitter;
                    tokio::time::sleep(std::time::Duration::from_millis(backoff)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn attempt(
        &self,
        db: &Database,
        config: &Config,
        resource: &Resource,
    ) -> Result<Created, AppError> {
        let now = Utc::now();
        let resource_id = resource.id()?;
        let txn = db.begin_write().await?;
        if let Some(key) = self.key {
            let retention = Duration::seconds(
                i64::try_from(config.idempotency.retention_seconds).unwrap_or(i64::MAX),
            );
            let claim = idempotency::claim(
                &txn,
                self.tenant_id,
                key,
                self.fingerprint,
                resource_id,
                now,
                retention,
            )
            .await?;
            if let Claim::Replay(original) = claim {
                txn.rollback().await?;
                return resource.load(db, original).await;
            }
        }
        let credit_type = config.credit_type(self.kind);
        let spend = Spend {
            tenant_id: self.tenant_id,
            user_id: Some(self.user_id),
            credit_type: &credit_type,
            object_id: resource_id.to_string(),
            idempotency_key: self.key.map(str::to_owned),
        };
        credits::consume(&txn, &spend, now).await?;
        let created = resource.insert(&txn).await?;
        txn.commit().await?;
        tracing::debug!(
            tenant.id = %self.tenant_id,
            credit.r#type = %credit_type.value,
            credit.amount = credit_type.amount,
            "credits consumed"
        );
        Ok(created)
    }
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
