//! Correcting usage already sent to Stripe: a refund of a spend whose meter event Stripe
//! received less than a day ago cancels that event (a `CANCEL` row of the outbox, sent as a
//! meter event adjustment before `send_by`) and, when part of the spend stands, reports that
//! part again as a new event, held back (`WAITING`) until the cancel has gone through.
//! `adjusts` names the event a `CANCEL` row cancels, or the one a re-report replaces.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for mut column in [
            string(UsageEvent::Kind).default("METER_EVENT").to_owned(),
            uuid_null(UsageEvent::Adjusts),
            timestamp_with_time_zone_null(UsageEvent::SendBy),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageEvent::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // A spend's usage events, locked together by a refund or a settled cancel.
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_event_credit")
                    .table(UsageEvent::Table)
                    .col(UsageEvent::TenantId)
                    .col(UsageEvent::CreditId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_usage_event_credit")
                    .table(UsageEvent::Table)
                    .to_owned(),
            )
            .await?;
        for column in [UsageEvent::SendBy, UsageEvent::Adjusts, UsageEvent::Kind] {
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageEvent::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum UsageEvent {
    Table,
    TenantId,
    CreditId,
    Kind,
    Adjusts,
    SendBy,
}
