//! Every tenant's credit events — its ledger rows and its alert events — numbered 1, 2, 3, …
//! in the order they commit: `credit.seq` and `webhook_event.seq` (null for the events
//! `creditEvents` does not carry), drawn from the tenant's `credit_feed.last_seq` inside the
//! transaction that writes the event. The row's lock makes the numbers dense and their order
//! the commit order; a reader that sees number n sees everything before it.
//!
//! What is there already is numbered by id (UUIDv7: creation order). SQLite, whose write
//! transactions each hold the database's write lock, numbers from the highest number a tenant's
//! events carry and keeps no `credit_feed` rows.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

/// The alert events the feed carries (`credits::feed::ALERT_TYPES`).
const ALERTS: &str = "('credits.threshold_reached', 'credits.threshold_resolved', \
'credits.depleted', 'credits.limit_reached')";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Feed::Table)
                    .col(uuid(Feed::TenantId).primary_key())
                    .col(big_integer(Feed::LastSeq).default(0))
                    .to_owned(),
            )
            .await?;
        for table in [Credit::Table.into_iden(), WebhookEvent::Table.into_iden()] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(big_integer_null(Credit::Seq))
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        for sql in [
            format!(
                "CREATE TABLE credit_feed_backfill AS SELECT tenant_id, id, \
                 ROW_NUMBER() OVER (PARTITION BY tenant_id ORDER BY id) AS n FROM \
                 (SELECT tenant_id, id FROM credit UNION ALL SELECT tenant_id, id \
                 FROM webhook_event WHERE type IN {ALERTS}) e"
            ),
            "CREATE UNIQUE INDEX credit_feed_backfill_id ON credit_feed_backfill (id)".to_owned(),
            "UPDATE credit SET seq = (SELECT b.n FROM credit_feed_backfill b WHERE b.id = credit.id)"
                .to_owned(),
            format!(
                "UPDATE webhook_event SET seq = (SELECT b.n FROM credit_feed_backfill b \
                 WHERE b.id = webhook_event.id) WHERE type IN {ALERTS}"
            ),
            "INSERT INTO credit_feed (tenant_id, last_seq) SELECT t.id, COALESCE((SELECT MAX(b.n) \
             FROM credit_feed_backfill b WHERE b.tenant_id = t.id), 0) FROM tenant t"
                .to_owned(),
            "DROP TABLE credit_feed_backfill".to_owned(),
        ] {
            if sql.starts_with("INSERT INTO credit_feed") && !postgres {
                // SQLite keeps no `credit_feed` rows.
                continue;
            }
            db.execute_unprepared(&sql).await?;
        }
        for (name, table) in [
            ("credit_tenant_seq", Credit::Table.into_iden()),
            ("webhook_event_tenant_seq", WebhookEvent::Table.into_iden()),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(table)
                        .col(Credit::TenantId)
                        .col(Credit::Seq)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("credit_tenant_seq", Credit::Table.into_iden()),
            ("webhook_event_tenant_seq", WebhookEvent::Table.into_iden()),
        ] {
            manager
                .drop_index(Index::drop().name(name).table(table.clone()).to_owned())
                .await?;
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Credit::Seq)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Feed::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Feed {
    #[sea_orm(iden = "credit_feed")]
    Table,
    TenantId,
    LastSeq,
}

#[derive(DeriveIden)]
enum Credit {
    Table,
    TenantId,
    Seq,
}

#[derive(DeriveIden)]
enum WebhookEvent {
    Table,
}
