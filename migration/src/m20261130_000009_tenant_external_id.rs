//! A tenant's id in the SaaS's own system (`externalId`): optional, unique when set.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tenant::Table)
                    .add_column(string_null(Tenant::ExternalId))
                    .to_owned(),
            )
            .await?;
        // A unique index, not a column constraint (SQLite cannot add one); many nulls allowed.
        manager
            .create_index(
                Index::create()
                    .name("idx_tenant_external_id")
                    .table(Tenant::Table)
                    .col(Tenant::ExternalId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_tenant_external_id")
                    .table(Tenant::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tenant::Table)
                    .drop_column(Tenant::ExternalId)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    ExternalId,
}
