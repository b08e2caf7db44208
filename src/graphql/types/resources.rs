//! The guarded resources: projects and tasks, and the inputs that create them.

use async_graphql::{ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{project, task};

/// A project (creating one costs `credit-project-creation`).
#[derive(SimpleObject, Clone, Debug)]
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
}

impl From<project::Model> for Project {
    fn from(p: project::Model) -> Self {
        Project {
            id: ID(p.id.to_string()),
            tenant_id: ID(p.tenant_id.to_string()),
            name: p.name,
            description: p.description,
            created_at: p.created_at,
        }
    }
}

/// A task in a project (creating one costs `credit-task-creation`).
#[derive(SimpleObject, Clone, Debug)]
pub struct Task {
    /// The task's id (the `objectId` of the credits that paid for it).
    pub id: ID,
    /// The project it belongs to.
    pub project_id: ID,
    /// What to do.
    pub title: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<task::Model> for Task {
    fn from(t: task::Model) -> Self {
        Task {
            id: ID(t.id.to_string()),
            project_id: ID(t.project_id.to_string()),
            title: t.title,
            created_at: t.created_at,
        }
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
