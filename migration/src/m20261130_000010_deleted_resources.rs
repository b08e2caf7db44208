//! Deleting a project or a task keeps its row, marked `deleted_at`: the ledger rows that paid
//! for it keep naming a row that existed (`tollgate verify` tells a deleted resource from one
//! that never was), and deleting refunds nothing.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Resource::Project, Resource::Task] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(timestamp_with_time_zone_null(Resource::DeletedAt))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Resource::Project, Resource::Task] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Resource::DeletedAt)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Resource {
    Project,
    Task,
    DeletedAt,
}
