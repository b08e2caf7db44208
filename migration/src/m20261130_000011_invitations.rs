//! Invitations to join a tenant: for one email address, with a role, a one-time token kept
//! only as its SHA-256 hash, an expiry; accepted, revoked or pending.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Invitation::Table)
                    .col(uuid(Invitation::TenantId))
                    .col(uuid(Invitation::Id))
                    .col(string(Invitation::Email))
                    .col(string(Invitation::Role))
                    .col(string(Invitation::TokenHash))
                    .col(uuid(Invitation::InvitedBy))
                    .col(timestamp_with_time_zone(Invitation::CreatedAt))
                    .col(timestamp_with_time_zone(Invitation::ExpiresAt))
                    .col(timestamp_with_time_zone_null(Invitation::AcceptedAt))
                    .col(uuid_null(Invitation::AcceptedBy))
                    .col(timestamp_with_time_zone_null(Invitation::RevokedAt))
                    .primary_key(
                        Index::create()
                            .col(Invitation::TenantId)
                            .col(Invitation::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Invitation::Table, Invitation::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // Accepting finds the invitation by its token alone (random: one row in practice).
        manager
            .create_index(
                Index::create()
                    .name("idx_tenant_invitation_token")
                    .table(Invitation::Table)
                    .col(Invitation::TokenHash)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Invitation::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Invitation {
    #[sea_orm(iden = "tenant_invitation")]
    Table,
    TenantId,
    Id,
    Email,
    Role,
    TokenHash,
    InvitedBy,
    CreatedAt,
    ExpiresAt,
    AcceptedAt,
    AcceptedBy,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    Id,
}
