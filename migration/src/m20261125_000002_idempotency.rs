//! Idempotency keys of guarded mutations (kept for a configurable time, then purged), and an
//! index that lets `tollgate verify` match ledger rows to the resources they paid for.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKey::Table)
                    .col(uuid(IdempotencyKey::TenantId))
                    .col(string(IdempotencyKey::Key))
                    .col(string(IdempotencyKey::Operation))
                    .col(string(IdempotencyKey::RequestHash))
                    .col(uuid(IdempotencyKey::ResourceId))
                    .col(timestamp_with_time_zone(IdempotencyKey::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKey::TenantId)
                            .col(IdempotencyKey::Key),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_key_created_at")
                    .table(IdempotencyKey::Table)
                    .col(IdempotencyKey::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_object_id")
                    .table(Credit::Table)
                    .col(Credit::ObjectId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_credit_object_id")
                    .table(Credit::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(IdempotencyKey::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotencyKey {
    Table,
    TenantId,
    Key,
    Operation,
    RequestHash,
    ResourceId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Credit {
    Table,
    ObjectId,
}
