//! What a spend through `consumeCredits` records beside its tenant and user: `subject`, the
//! calling SaaS's own reference for who acted (when it is not a Tollgate user), and
//! `metadata`, a small JSON object of the caller's.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [string_null(Credit::Subject), json_null(Credit::Metadata)] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Credit::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Credit::Metadata, Credit::Subject] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Credit::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Credit {
    Table,
    Subject,
    Metadata,
}
