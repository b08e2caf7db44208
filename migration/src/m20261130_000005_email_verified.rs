//! When a user's email address was verified (by the identity provider that created the
//! account): only such an account may ever be linked to an identity provider's user.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(User::Table)
                    .add_column(timestamp_with_time_zone_null(User::EmailVerifiedAt))
                    .to_owned(),
            )
            .await?;
        // Accounts an identity provider created had a verified email when they were made.
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE \"user\" SET email_verified_at = created_at WHERE external_subject IS NOT NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(User::Table)
                    .drop_column(User::EmailVerifiedAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum User {
    Table,
    EmailVerifiedAt,
}
