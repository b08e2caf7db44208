//! The guarded resources, projects and tasks: each describes the row it inserts and hands the
//! spend to the credits `Writer`, which commits the idempotency claim (when a key is given),
//! the spend and the row together or not at all.

use chrono::Utc;
use entity::{project, task};
use sea_orm::{EntityTrait, prelude::*, sea_query::Expr};

use crate::{
    auth::{self, Viewer},
    credits::{Actor, IdempotencyKey, PaidTable, Spend, Spent},
    db::{self, Database, PerBackend},
    error::AppError,
    idempotency::{self, Fingerprint},
    state::AppState,
};

/// A project's row, paid for with `credit-project-creation`.
pub static PROJECT: PaidTable = PaidTable {
    credit_type: "credit-project-creation",
    table: "project",
    columns: &[
        "id",
        "tenant_id",
        "name",
        "description",
        "created_by",
        "created_at",
    ],
    requires: None,
};

/// A task's row, paid for with `credit-task-creation`.
pub static TASK: PaidTable = PaidTable {
    credit_type: "credit-task-creation",
    table: "task",
    columns: &[
        "id",
        "tenant_id",
        "project_id",
        "title",
        "created_by",
        "created_at",
    ],
    // Its project (`tenant_id`, `project_id`) not deleted, even while the spend runs.
    requires: Some((
        "EXISTS (SELECT 1 FROM project WHERE tenant_id = :paid_1 AND id = :paid_2 \
         AND deleted_at IS NULL)",
        "project",
    )),
};

/// Every table whose rows credits pay for.
pub static PAID: [&PaidTable; 2] = [&PROJECT, &TASK];

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2_000;

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
    let key = idempotency::check_key(input.idempotency_key)?;
    // The guard checks membership in its own statement.
    let user_id = viewer.require()?;
    let project = project::Model {
        id: Uuid::now_v7(),
        tenant_id,
        name,
        description,
        created_by: user_id,
        created_at: Utc::now(),
        deleted_at: None,
    };
    let key = key.map(|key| IdempotencyKey {
        value: key,
        fingerprint: Fingerprint::new(
            "createProject",
            &[
                &tenant_id.to_string(),
                &project.name,
                project.description.as_deref().unwrap_or(""),
            ],
        ),
        retention: idempotency::retention(config),
    });
    let spend = Spend {
        tenant_id,
        user_id: Some(user_id),
        credit_type: config.credit_type(PROJECT.credit_type)?,
        paid: PROJECT.row(&project)?,
        actor: Actor::User(user_id),
        subject: None,
        metadata: None,
        key,
        at: state.clock.now(),
    };
    match writer.submit(spend).await.map_err(|e| spender(viewer, e))? {
        Spent::Charged { .. } => Ok(project),
        Spent::Replayed(id) => original(
            project::Entity::find_by_id((id, tenant_id))
                .one(&db.read)
                .await?,
        ),
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
    let key = idempotency::check_key(input.idempotency_key)?;
    let user_id = viewer.require()?;
    // The tenant a project is in never changes: once read, it is known (the guard still
    // checks membership). A project of a tenant the viewer is not in is as absent as one
    // that does not exist.
    let tenant_id = match state.owners.get(project_id) {
        Some(tenant_id) => tenant_id,
        None => {
            let project = auth::visible_project(db, viewer, project_id)
                .await?
                .ok_or(AppError::NotFound("project"))?;
            state.owners.insert(project.id, project.tenant_id);
            project.tenant_id
        }
    };
    let task = task::Model {
        id: Uuid::now_v7(),
        tenant_id,
        project_id,
        title,
        created_by: user_id,
        created_at: Utc::now(),
        deleted_at: None,
    };
    let key = key.map(|key| IdempotencyKey {
        value: key,
        fingerprint: Fingerprint::new("createTask", &[&project_id.to_string(), &task.title]),
        retention: idempotency::retention(config),
    });
    let spend = Spend {
        tenant_id: task.tenant_id,
        user_id: Some(user_id),
        credit_type: config.credit_type(TASK.credit_type)?,
        paid: TASK.row(&task)?,
        actor: Actor::User(user_id),
        subject: None,
        metadata: None,
        key,
        at: state.clock.now(),
    };
    let spent = writer
        .submit(spend)
        .await
        .map_err(|e| match spender(viewer, e) {
            AppError::Forbidden => AppError::NotFound("project"),
            e => e,
        })?;
    match spent {
        Spent::Charged { .. } => Ok(task),
        Spent::Replayed(id) => original(
            task::Entity::find_by_id((id, tenant_id))
                .one(&db.read)
                .await?,
        ),
    }
}

/// A guard's refusal of the spender as the viewer sees it: a user gone makes the whole request
/// `UNAUTHENTICATED`.
fn spender(viewer: &Viewer, e: AppError) -> AppError {
    match e {
        AppError::Unauthenticated(_) => viewer.user_gone(),
        e => e,
    }
}

/// The row an idempotent replay's first request created (committed before the key was).
fn original<T>(row: Option<T>) -> Result<T, AppError> {
    row.ok_or_else(|| AppError::Internal(anyhow::anyhow!("an idempotent original is gone")))
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

/// A tenant's projects, newest first, `first` after `after` (keyset), deleted ones left out.
/// For a `Tenant` the viewer was already allowed to see. One query.
pub async fn projects(
    db: &Database,
    tenant_id: Uuid,
    first: u64,
    after: Option<Uuid>,
) -> Result<(Vec<project::Model>, bool), AppError> {
    let query = project::Entity::find()
        .filter(project::Column::TenantId.eq(tenant_id))
        .filter(project::Column::DeletedAt.is_null());
    let id = project::Column::Id;
    Ok(db::keyset(&db.read, query, id, first, after).await?)
}

/// A project's tasks, newest first, `first` after `after` (keyset), deleted ones left out.
/// For a `Project` the viewer was already allowed to see. One query.
pub async fn tasks(
    db: &Database,
    project: (Uuid, Uuid),
    first: u64,
    after: Option<Uuid>,
) -> Result<(Vec<task::Model>, bool), AppError> {
    let (tenant_id, project_id) = project;
    let query = task::Entity::find()
        .filter(task::Column::TenantId.eq(tenant_id))
        .filter(task::Column::ProjectId.eq(project_id))
        .filter(task::Column::DeletedAt.is_null());
    Ok(db::keyset(&db.read, query, task::Column::Id, first, after).await?)
}

/// The task `task_id` if the viewer is a member of its tenant and neither it nor its project
/// is deleted: one query. `None` otherwise, as for one that does not exist.
pub async fn visible_task(
    db: &Database,
    viewer: &Viewer,
    task_id: Uuid,
) -> Result<Option<task::Model>, AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "SELECT tu.role AS viewer_role, t.* FROM \"user\" u \
         LEFT JOIN task t ON t.id = :id AND t.deleted_at IS NULL \
         AND EXISTS (SELECT 1 FROM project p WHERE p.tenant_id = t.tenant_id \
         AND p.id = t.project_id AND p.deleted_at IS NULL) \
         LEFT JOIN tenant_user tu ON tu.tenant_id = t.tenant_id AND tu.user_id = u.id \
         WHERE u.id = :user"
            .to_owned()
    });
    auth::visible::<task::Entity>(db, viewer, &SQL, task_id).await
}

/// Deletes a project and its tasks (members). Their rows stay, marked deleted, for the ledger
/// rows that paid for them; nothing is refunded. `NOT_FOUND` for a project the viewer cannot
/// see.
pub async fn delete_project(
    db: &Database,
    viewer: &Viewer,
    project_id: Uuid,
) -> Result<project::Model, AppError> {
    let project = auth::visible_project(db, viewer, project_id)
        .await?
        .ok_or(AppError::NotFound("project"))?;
    let now = Utc::now();
    let txn = db.begin_write().await?;
    task::Entity::update_many()
        .col_expr(task::Column::DeletedAt, Expr::value(now))
        .filter(task::Column::TenantId.eq(project.tenant_id))
        .filter(task::Column::ProjectId.eq(project.id))
        .filter(task::Column::DeletedAt.is_null())
        .exec(&txn)
        .await?;
    let deleted = project::Entity::update_many()
        .col_expr(project::Column::DeletedAt, Expr::value(now))
        .filter(project::Column::TenantId.eq(project.tenant_id))
        .filter(project::Column::Id.eq(project.id))
        .filter(project::Column::DeletedAt.is_null())
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 0 {
        // Deleted by a concurrent request meanwhile.
        return Err(AppError::NotFound("project"));
    }
    txn.commit().await?;
    Ok(project)
}

/// Deletes a task (members); its row stays, marked deleted. Nothing is refunded.
pub async fn delete_task(
    db: &Database,
    viewer: &Viewer,
    task_id: Uuid,
) -> Result<task::Model, AppError> {
    let task = visible_task(db, viewer, task_id)
        .await?
        .ok_or(AppError::NotFound("task"))?;
    let deleted = task::Entity::update_many()
        .col_expr(task::Column::DeletedAt, Expr::value(Utc::now()))
        .filter(task::Column::TenantId.eq(task.tenant_id))
        .filter(task::Column::Id.eq(task.id))
        .filter(task::Column::DeletedAt.is_null())
        .exec(&db.write)
        .await?;
    match deleted.rows_affected {
        0 => Err(AppError::NotFound("task")),
        _ => Ok(task),
    }
}
