//! Credits beyond the plan: grants (promotional, paid, rolled over), what each spend (and each
//! refund) took from or gave back to which grant (`credit_allocation`), and the ledger's
//! movement kind (`SPEND` by default; `GRANT`, `EXPIRY`, `VOID` name a grant in `grant_id`;
//! `REFUND` names the spend in `refund_of`), with a `reason`; and reservations, credits held
//! like a spend until confirmed, released or expired.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Grant::Table)
                    .col(uuid(Grant::TenantId))
                    .col(uuid(Grant::Id))
                    .col(string(Grant::Feature))
                    .col(string(Grant::Category))
                    .col(string(Grant::Source))
                    .col(string(Grant::SourceRef))
                    .col(big_integer(Grant::Amount))
                    .col(big_integer(Grant::Remaining))
                    .col(integer(Grant::Priority))
                    .col(timestamp_with_time_zone(Grant::EffectiveAt))
                    .col(timestamp_with_time_zone_null(Grant::ExpiresAt))
                    .col(string(Grant::Status))
                    .col(string_null(Grant::Reason))
                    .col(string_null(Grant::PaymentRef))
                    .col(string(Grant::ActorType))
                    .col(uuid_null(Grant::ActorId))
                    .col(timestamp_with_time_zone(Grant::CreatedAt))
                    .primary_key(Index::create().col(Grant::TenantId).col(Grant::Id))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Grant::Table, Grant::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // One grant per source reference: a Stripe Checkout Session grants once.
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_grant_source")
                    .table(Grant::Table)
                    .col(Grant::TenantId)
                    .col(Grant::Source)
                    .col(Grant::SourceRef)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // A purchased grant by its Stripe payment (refunds and disputes claw it back).
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_grant_payment")
                    .table(Grant::Table)
                    .col(Grant::PaymentRef)
                    .to_owned(),
            )
            .await?;
        // The spendable grants of a tenant's feature (the guard's slow path, usage).
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_grant_spendable")
                    .table(Grant::Table)
                    .col(Grant::TenantId)
                    .col(Grant::Feature)
                    .col(Grant::Status)
                    .to_owned(),
            )
            .await?;
        // The sweeper's due grants.
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_grant_expiry")
                    .table(Grant::Table)
                    .col(Grant::Status)
                    .col(Grant::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Allocation::Table)
                    .col(uuid(Allocation::TenantId))
                    .col(uuid(Allocation::CreditId))
                    .col(uuid(Allocation::GrantId))
                    .col(big_integer(Allocation::Amount))
                    .primary_key(
                        Index::create()
                            .col(Allocation::TenantId)
                            .col(Allocation::CreditId)
                            .col(Allocation::GrantId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_allocation_grant")
                    .table(Allocation::Table)
                    .col(Allocation::TenantId)
                    .col(Allocation::GrantId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Credit::Table)
                    .add_column(string(Credit::Kind).default("SPEND"))
                    .to_owned(),
            )
            .await?;
        for column in [Credit::GrantId, Credit::RefundOf] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Credit::Table)
                        .add_column(uuid_null(column))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Credit::Table)
                    .add_column(string_null(Credit::Reason))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Reservation::Table)
                    .col(uuid(Reservation::Id))
                    .col(uuid(Reservation::TenantId))
                    .col(string(Reservation::Feature))
                    .col(string(Reservation::CreditType))
                    .col(big_integer(Reservation::Amount))
                    .col(big_integer_null(Reservation::ConfirmedAmount))
                    .col(string_null(Reservation::ObjectId))
                    .col(string(Reservation::Status))
                    .col(timestamp_with_time_zone(Reservation::ExpiresAt))
                    .col(timestamp_with_time_zone(Reservation::CreatedAt))
                    .col(timestamp_with_time_zone_null(Reservation::SettledAt))
                    .col(string(Reservation::ActorType))
                    .col(uuid_null(Reservation::ActorId))
                    .primary_key(
                        Index::create()
                            .col(Reservation::TenantId)
                            .col(Reservation::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Reservation::Table, Reservation::TenantId)
                            .to(Tenant::Table, Tenant::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // The sweeper's due holds.
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_reservation_expiry")
                    .table(Reservation::Table)
                    .col(Reservation::Status)
                    .col(Reservation::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        // Usage refunded after it was sent to Stripe: left on the invoice, shown in reports.
        manager
            .alter_table(
                Table::alter()
                    .table(UsageEvent::Table)
                    .add_column(big_integer(UsageEvent::RefundedQuantity).default(0))
                    .to_owned(),
            )
            .await?;
        // A spend's refunds, found under the lock of its counter row.
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_refund_of")
                    .table(Credit::Table)
                    .col(Credit::TenantId)
                    .col(Credit::RefundOf)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(UsageEvent::Table)
                    .drop_column(UsageEvent::RefundedQuantity)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_credit_refund_of")
                    .table(Credit::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Credit::Reason,
            Credit::RefundOf,
            Credit::GrantId,
            Credit::Kind,
        ] {
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
            .drop_table(Table::drop().table(Reservation::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Allocation::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Grant::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Grant {
    #[sea_orm(iden = "credit_grant")]
    Table,
    TenantId,
    Id,
    Feature,
    Category,
    Source,
    SourceRef,
    Amount,
    Remaining,
    Priority,
    EffectiveAt,
    ExpiresAt,
    Status,
    Reason,
    PaymentRef,
    ActorType,
    ActorId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Allocation {
    #[sea_orm(iden = "credit_allocation")]
    Table,
    TenantId,
    CreditId,
    GrantId,
    Amount,
}

#[derive(DeriveIden)]
enum Reservation {
    #[sea_orm(iden = "credit_reservation")]
    Table,
    Id,
    TenantId,
    Feature,
    CreditType,
    Amount,
    ConfirmedAmount,
    ObjectId,
    Status,
    ExpiresAt,
    CreatedAt,
    SettledAt,
    ActorType,
    ActorId,
}

#[derive(DeriveIden)]
enum Credit {
    Table,
    TenantId,
    Kind,
    GrantId,
    RefundOf,
    Reason,
}

#[derive(DeriveIden)]
enum UsageEvent {
    Table,
    RefundedQuantity,
}

#[derive(DeriveIden)]
enum Tenant {
    Table,
    Id,
}
