//! Signed webhooks Tollgate sends: endpoints (a tenant's, or the platform's — `tenant_id`
//! null — for every tenant's events: few, a reference table), the events to send (recorded in
//! the transaction of the change they tell of, fanned out to endpoints once by a dispatcher),
//! and one delivery per endpoint and event (plus one per replay), retried on a schedule and
//! never deleted. Events and deliveries are keyed by tenant; those about no tenant (a platform
//! endpoint's test event) are the nil tenant's.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Endpoint::Table)
                    .col(uuid(Endpoint::Id).primary_key())
                    .col(uuid_null(Endpoint::TenantId))
                    .col(string(Endpoint::Url))
                    .col(string_null(Endpoint::Description))
                    .col(string(Endpoint::EventTypes))
                    .col(string(Endpoint::Secret))
                    .col(string_null(Endpoint::PreviousSecret))
                    .col(timestamp_with_time_zone_null(Endpoint::PreviousSecretUntil))
                    .col(boolean(Endpoint::Enabled))
                    .col(string_null(Endpoint::DisabledReason))
                    .col(timestamp_with_time_zone_null(Endpoint::FailingSince))
                    .col(timestamp_with_time_zone(Endpoint::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Endpoint::Table, Endpoint::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_endpoint_tenant")
                    .table(Endpoint::Table)
                    .col(Endpoint::TenantId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Event::Table)
                    .col(uuid(Event::TenantId))
                    .col(uuid(Event::Id))
                    .col(string(Event::Type))
                    .col(text(Event::Payload))
                    .col(timestamp_with_time_zone(Event::CreatedAt))
                    .col(timestamp_with_time_zone_null(Event::DispatchedAt))
                    .primary_key(Index::create().col(Event::TenantId).col(Event::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_event_dispatch")
                    .table(Event::Table)
                    .col(Event::DispatchedAt)
                    .col(Event::CreatedAt)
                    .to_owned(),
            )
            .await?;
        // An event by its id alone (a platform endpoint replays any tenant's).
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_event_id")
                    .table(Event::Table)
                    .col(Event::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Delivery::Table)
                    .col(uuid(Delivery::TenantId))
                    .col(uuid(Delivery::Id))
                    .col(uuid(Delivery::EndpointId))
                    .col(uuid(Delivery::EventId))
                    .col(string(Delivery::Status))
                    .col(integer(Delivery::Attempts))
                    .col(timestamp_with_time_zone(Delivery::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(Delivery::ClaimedUntil))
                    .col(integer_null(Delivery::LastStatusCode))
                    .col(string_null(Delivery::LastError))
                    .col(timestamp_with_time_zone_null(Delivery::DeliveredAt))
                    .col(timestamp_with_time_zone(Delivery::CreatedAt))
                    .primary_key(Index::create().col(Delivery::TenantId).col(Delivery::Id))
                    .to_owned(),
            )
            .await?;
        // A delivery by its id alone (a sender settles what it claimed).
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_delivery_id")
                    .table(Delivery::Table)
                    .col(Delivery::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_delivery_due")
                    .table(Delivery::Table)
                    .col(Delivery::Status)
                    .col(Delivery::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_delivery_endpoint")
                    .table(Delivery::Table)
                    .col(Delivery::EndpointId)
                    .col(Delivery::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Delivery::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Event::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Endpoint::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Endpoint {
    #[sea_orm(iden = "webhook_endpoint")]
    Table,
    Id,
    TenantId,
    Url,
    Description,
    EventTypes,
    Secret,
    PreviousSecret,
    PreviousSecretUntil,
    Enabled,
    DisabledReason,
    FailingSince,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Event {
    #[sea_orm(iden = "webhook_event")]
    Table,
    Id,
    TenantId,
    Type,
    Payload,
    CreatedAt,
    DispatchedAt,
}

#[derive(DeriveIden)]
enum Delivery {
    #[sea_orm(iden = "webhook_delivery")]
    Table,
    Id,
    EndpointId,
    EventId,
    TenantId,
    Status,
    Attempts,
    NextAttemptAt,
    ClaimedUntil,
    LastStatusCode,
    LastError,
    DeliveredAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    Id,
}
