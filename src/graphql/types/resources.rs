//! The guarded resources: projects and tasks, and the inputs that create them.

use async_graphql::{ComplexObject, Context, ID, InputObject, ResultExt, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{project, task};
use uuid::Uuid;

use super::{TaskConnection, User, encode_cursor, page, page_complexity};
use crate::{
    error::AppError,
    graphql::{loaders::Loaders, state},
    projects,
};

/// A project (creating one costs `credit-project-creation`).
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Project {
    /// The project's id (the `objectId` of the credits that paid for it).
    pub id: ID,
    /// The tenant that owns it.
    pub tenant_id: ID,
    /// Display name.
    pub name: String,
    /// Optional longer text.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    #[graphql(skip)]
    pub key: (Uuid, Uuid),
    #[graphql(skip)]
    pub created_by: Uuid,
}

impl From<project::Model> for Project {
    fn from(p: project::Model) -> Self {
        Project {
            id: ID(p.id.to_string()),
            tenant_id: ID(p.tenant_id.to_string()),
            name: p.name,
            description: p.description,
            created_at: p.created_at,
            key: (p.tenant_id, p.id),
            created_by: p.created_by,
        }
    }
}

#[ComplexObject]
impl Project {
    /// The project's tasks, newest first, `first` (at most 100) at a time; deleted ones left
    /// out.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<TaskConnection> {
        let (first, after_id) = page(first, after.as_deref()).extend()?;
        let db = &state(ctx)?.db;
        let (rows, more) = projects::tasks(db, self.key, first, after_id)
            .await
            .extend()?;
        let rows = rows
            .into_iter()
            .map(|row| (encode_cursor(row.id), Task::from(row)))
            .collect();
        Ok(TaskConnection::new(rows, after.is_some(), more))
    }

    /// Who created it.
    async fn created_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        user(ctx, self.created_by).await
    }
}

/// A user through the request's loader (one query for all the users of a response).
async fn user(ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Option<User>> {
    let loader = ctx.data::<Loaders>()?.users();
    let user = loader
        .load_one(id)
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("loading users: {e}")))
        .extend()?;
    Ok(user.map(User::from))
}

/// A task in a project (creating one costs `credit-task-creation`).
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Task {
    /// The task's id (the `objectId` of the credits that paid for it).
    pub id: ID,
    /// The project it belongs to.
    pub project_id: ID,
    /// What to do.
    pub title: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    #[graphql(skip)]
    pub created_by: Uuid,
}

impl From<task::Model> for Task {
    fn from(t: task::Model) -> Self {
        Task {
            id: ID(t.id.to_string()),
            project_id: ID(t.project_id.to_string()),
            title: t.title,
            created_at: t.created_at,
            created_by: t.created_by,
        }
    }
}

#[ComplexObject]
impl Task {
    /// Who created it.
    async fn created_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        user(ctx, self.created_by).await
    }
}

/// Input of `createProject`.
#[derive(InputObject, Debug)]
pub struct CreateProjectInput {
    /// 1 to 200 characters.
    pub name: String,
    /// Optional longer text (at most 2,000 characters).
    pub description: Option<String>,
}

/// Input of `createTask`.
#[derive(InputObject, Debug)]
pub struct CreateTaskInput {
    /// 1 to 200 characters.
    pub title: String,
}
