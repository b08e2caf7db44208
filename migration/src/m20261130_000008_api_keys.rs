//! API keys for servers (`tg_sk_…`, kept only as a SHA-256 hash), per tenant or platform-wide
//! (`tenant_id` null), and the actor of every ledger row: a user, an API key or the system.
//!
//! `api_key` is not a tenant's table (a platform key belongs to none): distributed by tenant
//! (Citus), it is a reference table, copied to every node.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKey::Table)
                    .col(uuid(ApiKey::Id).primary_key())
                    .col(uuid_null(ApiKey::TenantId))
                    .col(string(ApiKey::Name))
                    .col(string(ApiKey::Prefix))
                    .col(string_uniq(ApiKey::SecretHash))
                    .col(string(ApiKey::Scopes))
                    .col(uuid_null(ApiKey::CreatedBy))
                    .col(timestamp_with_time_zone(ApiKey::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKey::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiKey::RevokedAt))
                    .col(timestamp_with_time_zone_null(ApiKey::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ApiKey::Table, ApiKey::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_key_tenant")
                    .table(ApiKey::Table)
                    .col(ApiKey::TenantId)
                    .to_owned(),
            )
            .await?;
        // SQLite adds one column per ALTER TABLE; every existing row was a user's spend.
        for column in [
            string(Credit::ActorType).default("USER").to_owned(),
            uuid_null(Credit::ActorId),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Credit::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .get_connection()
            .execute_unprepared("UPDATE credit SET actor_id = user_id")
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Credit::ActorId, Credit::ActorType] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Credit::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(ApiKey::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ApiKey {
    Table,
    Id,
    TenantId,
    Name,
    Prefix,
    SecretHash,
    Scopes,
    CreatedBy,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Credit {
    Table,
    ActorType,
    ActorId,
}
