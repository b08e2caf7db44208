//! The core tables: users, tenants, plans, subscriptions, the credit ledger and its
//! counters, and the guarded resources (projects, tasks).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(User::Table)
                    .col(pk_uuid(User::Id))
                    .col(string_uniq(User::Email))
                    .col(string_null(User::Name))
                    .col(string(User::PasswordHash))
                    .col(timestamp_with_time_zone(User::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Tenant::Table)
                    .col(pk_uuid(Tenant::Id))
                    .col(string_uniq(Tenant::Slug))
                    .col(string(Tenant::Name))
                    .col(string_null(Tenant::StripeCustomerId))
                    .col(timestamp_with_time_zone(Tenant::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TenantUser::Table)
                    .col(uuid(TenantUser::TenantId))
                    .col(uuid(TenantUser::UserId))
                    .col(string(TenantUser::Role))
                    .col(timestamp_with_time_zone(TenantUser::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(TenantUser::TenantId)
                            .col(TenantUser::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantUser::Table, TenantUser::TenantId)
                            .to(Tenant::Table, Tenant::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantUser::Table, TenantUser::UserId)
                            .to(User::Table, User::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tenant_user_user")
                    .table(TenantUser::Table)
                    .col(TenantUser::UserId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Plan::Table)
                    .col(pk_uuid(Plan::Id))
                    .col(string_uniq(Plan::Slug))
                    .col(string(Plan::Title))
                    .col(string_null(Plan::Description))
                    .col(integer(Plan::Position))
                    .col(boolean(Plan::Active))
                    .col(timestamp_with_time_zone(Plan::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PlanFeature::Table)
                    .col(pk_uuid(PlanFeature::Id))
                    .col(uuid(PlanFeature::PlanId))
                    .col(string(PlanFeature::Name))
                    .col(string(PlanFeature::Title))
                    .col(string(PlanFeature::Type))
                    .col(big_integer(PlanFeature::Value))
                    .col(integer(PlanFeature::Order))
                    .foreign_key(
                        ForeignKey::create()
                            .from(PlanFeature::Table, PlanFeature::PlanId)
                            .to(Plan::Table, Plan::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_plan_feature_plan_name")
                    .table(PlanFeature::Table)
                    .col(PlanFeature::PlanId)
                    .col(PlanFeature::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TenantSubscription::Table)
                    .col(pk_uuid(TenantSubscription::TenantId))
                    .col(uuid(TenantSubscription::PlanId))
                    .col(string(TenantSubscription::Status))
                    .col(timestamp_with_time_zone_null(
                        TenantSubscription::CurrentPeriodStart,
                    ))
                    .col(timestamp_with_time_zone_null(
                        TenantSubscription::CurrentPeriodEnd,
                    ))
                    .col(string_null(TenantSubscription::StripeSubscriptionId))
                    .col(timestamp_with_time_zone(TenantSubscription::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantSubscription::Table, TenantSubscription::TenantId)
                            .to(Tenant::Table, Tenant::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TenantSubscription::Table, TenantSubscription::PlanId)
                            .to(Plan::Table, Plan::Id),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Credit::Table)
                    .col(pk_uuid(Credit::Id))
                    .col(uuid(Credit::TenantId))
                    .col(uuid_null(Credit::UserId))
                    .col(string(Credit::Type))
                    .col(big_integer(Credit::Amount))
                    .col(string_null(Credit::ObjectId))
                    .col(string_null(Credit::IdempotencyKey))
                    .col(string(Credit::Feature))
                    .col(timestamp_with_time_zone(Credit::PeriodStart))
                    .col(timestamp_with_time_zone(Credit::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Credit::Table, Credit::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // History pages walk (tenant, id) backwards: uuid v7 ids are time-ordered.
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_tenant_id")
                    .table(Credit::Table)
                    .col(Credit::TenantId)
                    .col(Credit::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CreditUsage::Table)
                    .col(uuid(CreditUsage::TenantId))
                    .col(string(CreditUsage::Feature))
                    .col(timestamp_with_time_zone(CreditUsage::PeriodStart))
                    .col(big_integer(CreditUsage::Used))
                    .primary_key(
                        Index::create()
                            .col(CreditUsage::TenantId)
                            .col(CreditUsage::Feature)
                            .col(CreditUsage::PeriodStart),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CreditUsage::Table, CreditUsage::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Project::Table)
                    .col(pk_uuid(Project::Id))
                    .col(uuid(Project::TenantId))
                    .col(string(Project::Name))
                    .col(string_null(Project::Description))
                    .col(uuid(Project::CreatedBy))
                    .col(timestamp_with_time_zone(Project::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Project::Table, Project::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_project_tenant")
                    .table(Project::Table)
                    .col(Project::TenantId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Task::Table)
                    .col(pk_uuid(Task::Id))
                    .col(uuid(Task::TenantId))
                    .col(uuid(Task::ProjectId))
                    .col(string(Task::Title))
                    .col(uuid(Task::CreatedBy))
                    .col(timestamp_with_time_zone(Task::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Task::Table, Task::ProjectId)
                            .to(Project::Table, Project::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_task_project")
                    .table(Task::Table)
                    .col(Task::ProjectId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Task::Table.into_iden(),
            Project::Table.into_iden(),
            CreditUsage::Table.into_iden(),
            Credit::Table.into_iden(),
            TenantSubscription::Table.into_iden(),
            PlanFeature::Table.into_iden(),
            Plan::Table.into_iden(),
            TenantUser::Table.into_iden(),
            Tenant::Table.into_iden(),
            User::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum User {
    Table,
    Id,
    Email,
    Name,
    PasswordHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    Id,
    Slug,
    Name,
    StripeCustomerId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TenantUser {
    Table,
    TenantId,
    UserId,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Plan {
    Table,
    Id,
    Slug,
    Title,
    Description,
    Position,
    Active,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PlanFeature {
    Table,
    Id,
    PlanId,
    Name,
    Title,
    Type,
    Value,
    Order,
}

#[derive(DeriveIden)]
enum TenantSubscription {
    Table,
    TenantId,
    PlanId,
    Status,
    CurrentPeriodStart,
    CurrentPeriodEnd,
    StripeSubscriptionId,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Credit {
    Table,
    Id,
    TenantId,
    UserId,
    Type,
    Amount,
    ObjectId,
    IdempotencyKey,
    Feature,
    PeriodStart,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CreditUsage {
    Table,
    TenantId,
    Feature,
    PeriodStart,
    Used,
}

#[derive(DeriveIden)]
enum Project {
    Table,
    Id,
    TenantId,
    Name,
    Description,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Task {
    Table,
    Id,
    TenantId,
    ProjectId,
    Title,
    CreatedBy,
    CreatedAt,
}
