//! One guarded creation, owned so it can be handed to the writer: who pays, what it costs,
//! the entitlement read for it, the idempotency key if any, and the resource to insert.

use chrono::{Duration, Utc};
use entity::{project, task};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, TryIntoModel, prelude::*};

use crate::{
    config::CreditTypeConfig,
    credits::{self, Paid, Spend},
    db::{self, Database},
    error::AppError,
    idempotency::{self, Claim, Fingerprint},
};

/// Attempts of one guarded transaction before a contention error is given up on.
const ATTEMPTS: u32 = 5;

/// A resource about to be inserted.
enum Resource {
    Project(project::ActiveModel),
    Task(task::ActiveModel),
}

impl Resource {
    /// The row to insert when the credits are spent, and the resource it will be.
    fn paid(&self) -> Result<(Paid, Created), AppError> {
        let incomplete = || AppError::Internal(anyhow::anyhow!("resource not fully set"));
        Ok(match self {
            Resource::Project(p) => {
                let model = p.clone().try_into_model().map_err(|_| incomplete())?;
                let paid = Paid {
                    table: "project",
                    columns: &[
                        "id",
                        "tenant_id",
                        "name",
                        "description",
                        "created_by",
                        "created_at",
                    ],
                    values: vec![
                        model.id.into(),
                        model.tenant_id.into(),
                        model.name.clone().into(),
                        model.description.clone().into(),
                        model.created_by.into(),
                        model.created_at.into(),
                    ],
                };
                (paid, Created::Project(model))
            }
            Resource::Task(t) => {
                let model = t.clone().try_into_model().map_err(|_| incomplete())?;
                let paid = Paid {
                    table: "task",
                    columns: &[
                        "id",
                        "tenant_id",
                        "project_id",
                        "title",
                        "created_by",
                        "created_at",
                    ],
                    values: vec![
                        model.id.into(),
                        model.tenant_id.into(),
                        model.project_id.into(),
                        model.title.clone().into(),
                        model.created_by.into(),
                        model.created_at.into(),
                    ],
                };
                (paid, Created::Task(model))
            }
        })
    }
}

/// A resource a guard created (or, on an idempotent replay, had created before).
#[derive(Debug)]
pub enum Created {
    Project(project::Model),
    Task(task::Model),
}

/// What a guard's writes did: the resource, and whether credits were spent for it now (not
/// on an idempotent replay).
#[derive(Debug)]
pub struct Written {
    pub created: Created,
    pub charged: bool,
}

struct Key {
    value: String,
    fingerprint: Fingerprint,
    retention: Duration,
}

pub struct Guarded {
    tenant_id: Uuid,
    user_id: Uuid,
    resource_id: Uuid,
    credit_type: CreditTypeConfig,
    key: Option<Key>,
    resource: Resource,
}

impl Guarded {
    /// A new project named `name` in `tenant_id`, created by `user_id`.
    pub fn project(
        tenant_id: Uuid,
        user_id: Uuid,
        name: String,
        description: Option<String>,
        credit_type: CreditTypeConfig,
    ) -> Self {
        let resource_id = Uuid::now_v7();
        Guarded {
            tenant_id,
            user_id,
            resource_id,
            credit_type,
            key: None,
            resource: Resource::Project(project::ActiveModel {
                id: Set(resource_id),
                tenant_id: Set(tenant_id),
                name: Set(name),
                description: Set(description),
                created_by: Set(user_id),
                created_at: Set(Utc::now()),
            }),
        }
    }

    /// A new task titled `title` in `project`, created by `user_id`.
    pub fn task(
        project: &project::Model,
        user_id: Uuid,
        title: String,
        credit_type: CreditTypeConfig,
    ) -> Self {
        let resource_id = Uuid::now_v7();
        Guarded {
            tenant_id: project.tenant_id,
            user_id,
            resource_id,
            credit_type,
            key: None,
            resource: Resource::Task(task::ActiveModel {
                id: Set(resource_id),
                tenant_id: Set(project.tenant_id),
                project_id: Set(project.id),
                title: Set(title),
                created_by: Set(user_id),
                created_at: Set(Utc::now()),
            }),
        }
    }

    /// Makes the guard idempotent under `key`, remembered for `retention`.
    pub fn with_key(mut self, key: String, fingerprint: Fingerprint, retention: Duration) -> Self {
        self.key = Some(Key {
            value: key,
            fingerprint,
            retention,
        });
        self
    }

    pub(super) fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    /// What the guard spends: its credit type and amount.
    pub(super) fn credit_type(&self) -> &CreditTypeConfig {
        &self.credit_type
    }

    /// Whether the guard can share a transaction with others: a refused guard writes
    /// nothing, but a refused keyed guard would leave its key claimed without a savepoint.
    pub(super) fn batchable(&self) -> bool {
        self.key.is_none()
    }

    /// The guard's writes inside `txn`: claim the key, consume the credits, insert the
    /// resource. On a refusal (`INSUFFICIENT_CREDITS`, `FEATURE_NOT_INCLUDED`) it has written
    /// nothing, except a key claim, which its caller must roll back.
    pub(super) async fn write(&self, txn: &impl ConnectionTrait) -> Result<Written, AppError> {
        let now = Utc::now();
        if let Some(key) = &self.key {
            let claim = idempotency::claim(
                txn,
                self.tenant_id,
                &key.value,
                &key.fingerprint,
                self.resource_id,
                now,
                key.retention,
            )
            .await?;
            if let Claim::Replay(original) = claim {
                return Ok(Written {
                    created: self.load(txn, original).await?,
                    charged: false,
                });
            }
        }
        let spend = Spend {
            tenant_id: self.tenant_id,
            user_id: Some(self.user_id),
            credit_type: &self.credit_type,
            object_id: self.resource_id.to_string(),
            idempotency_key: self.key.as_ref().map(|k| k.value.clone()),
        };
        let (paid, created) = self.resource.paid()?;
        credits::consume(txn, &spend, now, paid).await?;
        Ok(Written {
            created,
            charged: true,
        })
    }

    /// The guard in a transaction of its own, again if the database aborted it for
    /// contention (a Postgres serialization failure or deadlock, SQLite busy).
    pub async fn run_alone(&self, db: &Database) -> Result<Written, AppError> {
        let mut attempt = 1;
        loop {
            let outcome = async {
                let txn = db.begin_write().await?;
                let created = self.write(&txn).await?;
                txn.commit().await?;
                Ok(created)
            }
            .await;
            match outcome {
                Err(AppError::Internal(e))
                    if attempt < ATTEMPTS
                        && e.downcast_ref::<DbErr>().is_some_and(db::is_transient) =>
                {
                    tracing::debug!(attempt, "guard transaction aborted by contention; retrying");
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    tokio::time::sleep(std::time::Duration::from_millis((2 << attempt) + jitter))
                        .await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// The resource a replayed key created, read in the claim's transaction.
    async fn load(&self, txn: &impl ConnectionTrait, id: Uuid) -> Result<Created, AppError> {
        let gone = || AppError::Internal(anyhow::anyhow!("idempotent resource {id} is gone"));
        Ok(match self.resource {
            Resource::Project(_) => Created::Project(
                project::Entity::find_by_id(id)
                    .one(txn)
                    .await?
                    .ok_or_else(gone)?,
            ),
            Resource::Task(_) => Created::Task(
                task::Entity::find_by_id(id)
                    .one(txn)
                    .await?
                    .ok_or_else(gone)?,
            ),
        })
    }
}
