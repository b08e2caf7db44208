//! Threshold alerts. A tenant's own rules per feature (`credit_alert_rule`; that a tenant set
//! its rules at all, even to none, is `credit_alert_setting` — without it the platform's
//! default rules from config apply), and what fired (`credit_alert`): one row per tenant,
//! feature, period and rule key, its unique key what makes an alert fire once however many
//! replicas race to it. `credit_usage.grants_used` counts what grants paid in the period, so
//! that "percent used" is of the allowance plus the grants; `credit_usage.alert_at` is the
//! consumption (`used + grants_used`) at which the next rule would start to hold (null: not
//! known yet), so that a spend finds out whether to look at its alerts from the counter row
//! it updates anyway.

use sea_orm_migration::{prelude::*, schema::*};

/// Each counter's `grants_used`, as the ledger says (`tollgate verify` checks the same sum).
const GRANTS_USED_SQL: &str = "UPDATE credit_usage SET grants_used = COALESCE((SELECT \
SUM(CASE WHEN c.kind = 'REFUND' THEN -a.amount ELSE a.amount END) FROM credit c \
JOIN credit_allocation a ON a.tenant_id = c.tenant_id AND a.credit_id = c.id \
WHERE c.tenant_id = credit_usage.tenant_id AND c.feature = credit_usage.feature \
AND c.period_start = credit_usage.period_start AND c.kind IN ('SPEND', 'REFUND')), 0)";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for mut column in [
            big_integer(CreditUsage::GrantsUsed).default(0).to_owned(),
            big_integer_null(CreditUsage::AlertAt),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(CreditUsage::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // What grants paid in each period so far, from the ledger: spends less refunds.
        manager
            .get_connection()
            .execute_unprepared(GRANTS_USED_SQL)
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Setting::Table)
                    .col(uuid(Setting::TenantId))
                    .col(string(Setting::Feature))
                    .col(timestamp_with_time_zone(Setting::UpdatedAt))
                    .primary_key(Index::create().col(Setting::TenantId).col(Setting::Feature))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AlertRule::Table)
                    .col(uuid(AlertRule::TenantId))
                    .col(string(AlertRule::Feature))
                    .col(string(AlertRule::RuleKey))
                    .col(string(AlertRule::Kind))
                    .col(big_integer(AlertRule::Threshold))
                    .col(boolean(AlertRule::NotifyResolved))
                    .col(timestamp_with_time_zone(AlertRule::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(AlertRule::TenantId)
                            .col(AlertRule::Feature)
                            .col(AlertRule::RuleKey),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Alert::Table)
                    .col(uuid(Alert::TenantId))
                    .col(uuid(Alert::Id))
                    .col(string(Alert::Feature))
                    .col(timestamp_with_time_zone(Alert::PeriodStart))
                    .col(string(Alert::RuleKey))
                    .col(string(Alert::Kind))
                    .col(big_integer(Alert::Threshold))
                    .col(boolean(Alert::NotifyResolved))
                    .col(string(Alert::State))
                    .col(integer(Alert::TimesReached))
                    .col(timestamp_with_time_zone(Alert::ReachedAt))
                    .col(timestamp_with_time_zone_null(Alert::ResolvedAt))
                    .col(big_integer(Alert::Used))
                    .col(big_integer_null(Alert::Lim))
                    .col(big_integer_null(Alert::Available))
                    .primary_key(Index::create().col(Alert::TenantId).col(Alert::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_credit_alert_once")
                    .table(Alert::Table)
                    .col(Alert::TenantId)
                    .col(Alert::Feature)
                    .col(Alert::PeriodStart)
                    .col(Alert::RuleKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Alert::Table.into_iden(),
            AlertRule::Table.into_iden(),
            Setting::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        for column in [CreditUsage::AlertAt, CreditUsage::GrantsUsed] {
            manager
                .alter_table(
                    Table::alter()
                        .table(CreditUsage::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum CreditUsage {
    Table,
    GrantsUsed,
    AlertAt,
}

#[derive(DeriveIden)]
enum Setting {
    #[sea_orm(iden = "credit_alert_setting")]
    Table,
    TenantId,
    Feature,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AlertRule {
    #[sea_orm(iden = "credit_alert_rule")]
    Table,
    TenantId,
    Feature,
    RuleKey,
    Kind,
    Threshold,
    NotifyResolved,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Alert {
    #[sea_orm(iden = "credit_alert")]
    Table,
    TenantId,
    Id,
    Feature,
    PeriodStart,
    RuleKey,
    Kind,
    Threshold,
    NotifyResolved,
    State,
    TimesReached,
    ReachedAt,
    ResolvedAt,
    Used,
    Lim,
    Available,
}
