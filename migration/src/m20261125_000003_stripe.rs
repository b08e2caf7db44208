//! Stripe: the usage-event outbox the reporter drains into Billing Meters, the ids of the
//! webhook events already processed, and what a subscription needs beyond the plan (whether
//! it ends at the period's end; the time of the Stripe event that last changed it, so an
//! older event arriving late cannot undo a newer one).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UsageEvent::Table)
                    .col(pk_uuid(UsageEvent::Id))
                    .col(uuid(UsageEvent::TenantId))
                    .col(uuid(UsageEvent::CreditId))
                    .col(string(UsageEvent::Unit))
                    .col(string(UsageEvent::EventName))
                    .col(string(UsageEvent::StripeCustomerId))
                    .col(big_integer(UsageEvent::Quantity))
                    .col(string_uniq(UsageEvent::Identifier))
                    .col(string(UsageEvent::Status))
                    .col(integer(UsageEvent::Attempts).default(0))
                    .col(text_null(UsageEvent::LastError))
                    .col(timestamp_with_time_zone(UsageEvent::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(UsageEvent::ClaimedUntil))
                    .col(timestamp_with_time_zone_null(UsageEvent::ReportedAt))
                    .col(timestamp_with_time_zone(UsageEvent::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(UsageEvent::Table, UsageEvent::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_event_due")
                    .table(UsageEvent::Table)
                    .col(UsageEvent::Status)
                    .col(UsageEvent::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_event_tenant")
                    .table(UsageEvent::Table)
                    .col(UsageEvent::TenantId)
                    .col(UsageEvent::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(StripeEvent::Table)
                    .col(string(StripeEvent::Id).primary_key())
                    .col(string(StripeEvent::Type))
                    .col(timestamp_with_time_zone(StripeEvent::CreatedAt))
                    .col(timestamp_with_time_zone(StripeEvent::ProcessedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(TenantSubscription::Table)
                    .add_column(boolean(TenantSubscription::CancelAtPeriodEnd).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(TenantSubscription::Table)
                    .add_column(timestamp_with_time_zone_null(
                        TenantSubscription::StripeEventAt,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tenant_stripe_customer_id")
                    .table(Tenant::Table)
                    .col(Tenant::StripeCustomerId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_tenant_stripe_customer_id")
                    .table(Tenant::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            TenantSubscription::StripeEventAt,
            TenantSubscription::CancelAtPeriodEnd,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(TenantSubscription::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(StripeEvent::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UsageEvent::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum UsageEvent {
    Table,
    Id,
    TenantId,
    CreditId,
    Unit,
    EventName,
    StripeCustomerId,
    Quantity,
    Identifier,
    Status,
    Attempts,
    LastError,
    NextAttemptAt,
    ClaimedUntil,
    ReportedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum StripeEvent {
    Table,
    Id,
    Type,
    CreatedAt,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum TenantSubscription {
    Table,
    CancelAtPeriodEnd,
    StripeEventAt,
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    Id,
    StripeCustomerId,
}
