//! Every unique key of a tenant-owned table includes `tenant_id`, so the schema can be
//! distributed by tenant (Citus: `create_distributed_table(…, 'tenant_id')`), where a unique
//! key must contain the distribution column. `project`, `task`, `credit` and `usage_event`
//! were keyed by `id` alone: their primary keys become `(tenant_id, id)`, a task names its
//! project by `(tenant_id, project_id)`, a usage event's identifier is unique per tenant.
//! Lookups by `id` alone keep plain (non-unique) indexes; ledger rows are found by the
//! resource they paid for within their tenant (`tollgate verify`).
//!
//! PostgreSQL alters the keys in place; SQLite, which cannot, rebuilds the four tables with
//! their rows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    "ALTER TABLE task DROP CONSTRAINT task_project_id_fkey",
    "ALTER TABLE project DROP CONSTRAINT project_pkey",
    "ALTER TABLE project ADD PRIMARY KEY (tenant_id, id)",
    "DROP INDEX idx_project_tenant",
    "CREATE INDEX idx_project_id ON project (id)",
    "ALTER TABLE task DROP CONSTRAINT task_pkey",
    "ALTER TABLE task ADD PRIMARY KEY (tenant_id, id)",
    "ALTER TABLE task ADD CONSTRAINT task_project_fkey FOREIGN KEY (tenant_id, project_id) \
     REFERENCES project (tenant_id, id)",
    "DROP INDEX idx_task_project",
    "CREATE INDEX idx_task_project ON task (tenant_id, project_id)",
    "CREATE INDEX idx_task_id ON task (id)",
    "ALTER TABLE credit DROP CONSTRAINT credit_pkey",
    "ALTER TABLE credit ADD PRIMARY KEY (tenant_id, id)",
    "DROP INDEX idx_credit_tenant_id",
    "CREATE INDEX idx_credit_id ON credit (id)",
    "DROP INDEX idx_credit_object_id",
    "CREATE INDEX idx_credit_object ON credit (tenant_id, object_id)",
    "ALTER TABLE usage_event DROP CONSTRAINT usage_event_pkey",
    "ALTER TABLE usage_event ADD PRIMARY KEY (tenant_id, id)",
    "ALTER TABLE usage_event DROP CONSTRAINT usage_event_identifier_key",
    "ALTER TABLE usage_event ADD CONSTRAINT usage_event_identifier_key \
     UNIQUE (tenant_id, identifier)",
    "DROP INDEX idx_usage_event_tenant",
    "CREATE INDEX idx_usage_event_id ON usage_event (id)",
];

const SQLITE_UP: &[&str] = &[
    r#"CREATE TABLE "project_new" ( "id" uuid_text NOT NULL, "tenant_id" uuid_text NOT NULL,
       "name" varchar NOT NULL, "description" varchar NULL, "created_by" uuid_text NOT NULL,
       "created_at" timestamp_with_timezone_text NOT NULL, PRIMARY KEY ("tenant_id", "id"),
       FOREIGN KEY ("tenant_id") REFERENCES "tenant" ("id") )"#,
    "INSERT INTO project_new (id, tenant_id, name, description, created_by, created_at) \
     SELECT id, tenant_id, name, description, created_by, created_at FROM project",
    r#"CREATE TABLE "task_new" ( "id" uuid_text NOT NULL, "tenant_id" uuid_text NOT NULL,
       "project_id" uuid_text NOT NULL, "title" varchar NOT NULL, "created_by" uuid_text NOT NULL,
       "created_at" timestamp_with_timezone_text NOT NULL, PRIMARY KEY ("tenant_id", "id"),
       FOREIGN KEY ("tenant_id", "project_id") REFERENCES "project_new" ("tenant_id", "id") )"#,
    "INSERT INTO task_new (id, tenant_id, project_id, title, created_by, created_at) \
     SELECT id, tenant_id, project_id, title, created_by, created_at FROM task",
    r#"CREATE TABLE "credit_new" ( "id" uuid_text NOT NULL, "tenant_id" uuid_text NOT NULL,
       "user_id" uuid_text NULL, "type" varchar NOT NULL, "amount" integer NOT NULL,
       "object_id" varchar NULL, "idempotency_key" varchar NULL, "feature" varchar NOT NULL,
       "period_start" timestamp_with_timezone_text NOT NULL,
       "created_at" timestamp_with_timezone_text NOT NULL, PRIMARY KEY ("tenant_id", "id"),
       FOREIGN KEY ("tenant_id") REFERENCES "tenant" ("id") )"#,
    "INSERT INTO credit_new (id, tenant_id, user_id, type, amount, object_id, idempotency_key, \
     feature, period_start, created_at) SELECT id, tenant_id, user_id, type, amount, object_id, \
     idempotency_key, feature, period_start, created_at FROM credit",
    r#"CREATE TABLE "usage_event_new" ( "id" uuid_text NOT NULL, "tenant_id" uuid_text NOT NULL,
       "credit_id" uuid_text NOT NULL, "unit" varchar NOT NULL, "event_name" varchar NOT NULL,
       "stripe_customer_id" varchar NOT NULL, "quantity" integer NOT NULL,
       "identifier" varchar NOT NULL, "status" varchar NOT NULL,
       "attempts" integer NOT NULL DEFAULT 0, "last_error" text NULL,
       "next_attempt_at" timestamp_with_timezone_text NOT NULL,
       "claimed_until" timestamp_with_timezone_text NULL,
       "reported_at" timestamp_with_timezone_text NULL,
       "created_at" timestamp_with_timezone_text NOT NULL, PRIMARY KEY ("tenant_id", "id"),
       UNIQUE ("tenant_id", "identifier"), FOREIGN KEY ("tenant_id") REFERENCES "tenant" ("id") )"#,
    "INSERT INTO usage_event_new (id, tenant_id, credit_id, unit, event_name, stripe_customer_id, \
     quantity, identifier, status, attempts, last_error, next_attempt_at, claimed_until, \
     reported_at, created_at) SELECT id, tenant_id, credit_id, unit, event_name, \
     stripe_customer_id, quantity, identifier, status, attempts, last_error, next_attempt_at, \
     claimed_until, reported_at, created_at FROM usage_event",
    // Children first: dropping a parent deletes its rows, which its children's keys forbid.
    "DROP TABLE task",
    "DROP TABLE project",
    "DROP TABLE credit",
    "DROP TABLE usage_event",
    // Renaming rewrites the references to it (task_new's key to project_new).
    "ALTER TABLE project_new RENAME TO project",
    "ALTER TABLE task_new RENAME TO task",
    "ALTER TABLE credit_new RENAME TO credit",
    "ALTER TABLE usage_event_new RENAME TO usage_event",
    "CREATE INDEX idx_project_id ON project (id)",
    "CREATE INDEX idx_task_project ON task (tenant_id, project_id)",
    "CREATE INDEX idx_task_id ON task (id)",
    "CREATE INDEX idx_credit_id ON credit (id)",
    "CREATE INDEX idx_credit_object ON credit (tenant_id, object_id)",
    "CREATE INDEX idx_usage_event_due ON usage_event (status, next_attempt_at)",
    "CREATE INDEX idx_usage_event_id ON usage_event (id)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            sea_orm::DatabaseBackend::Postgres => POSTGRES_UP,
            _ => SQLITE_UP,
        };
        let db = manager.get_connection();
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Going back would narrow the keys again (another rebuild on SQLite); nothing needs it.
        Err(DbErr::Migration(
            "tenant-scoped keys are not reverted; restore a backup taken before this migration"
                .to_owned(),
        ))
    }
}
