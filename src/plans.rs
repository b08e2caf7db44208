//! Plans and subscriptions: the configured plans mirrored into the database at start-up,
//! the plan a tenant is on, and subscribing a tenant to one. Owns the `plan`, `plan_feature`
//! and `tenant_subscription` tables: nothing else writes them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{plan, plan_feature, tenant_subscription};
use sea_orm::{
    ActiveValue::Set,
    ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    prelude::*,
    sea_query::{Expr, OnConflict},
};

use crate::{
    config::Config,
    db::{Database, Sql},
    error::AppError,
};

/// A plan with its features, in their configured order.
#[derive(Clone, Debug)]
pub struct PlanWithFeatures {
    pub plan: plan::Model,
    pub features: Vec<plan_feature::Model>,
}

/// The configured plans, in config order.
pub async fn plans(db: &impl ConnectionTrait) -> Result<Vec<PlanWithFeatures>, AppError> {
    let plans = plan::Entity::find()
        .filter(plan::Column::Active.eq(true))
        .order_by_asc(plan::Column::Position)
        .all(db)
        .await?;
    let mut features = plan_feature::Entity::find()
        .filter(plan_feature::Column::PlanId.is_in(plans.iter().map(|p| p.id)))
        .order_by_asc(plan_feature::Column::Order)
        .all(db)
        .await?;
    Ok(plans
        .into_iter()
        .map(|plan| {
            let (own, rest) = features.drain(..).partition(|f| f.plan_id == plan.id);
            features = rest;
            PlanWithFeatures {
                plan,
                features: own,
            }
        })
        .collect())
}

/// Tenants' subscriptions with the plan each is on, for many tenants in three queries
/// (subscriptions, plans, features) whatever their number. A tenant without a
/// subscription is absent.
pub async fn tenant_subscriptions(
    db: &impl ConnectionTrait,
    tenant_ids: &[Uuid],
) -> Result<HashMap<Uuid, (tenant_subscription::Model, Option<PlanWithFeatures>)>, AppError> {
    let subscriptions = tenant_subscription::Entity::find()
        .filter(tenant_subscription::Column::TenantId.is_in(tenant_ids.iter().copied()))
        .all(db)
        .await?;
    let plans = plan::Entity::find()
        .filter(plan::Column::Id.is_in(subscriptions.iter().map(|s| s.plan_id)))
        .all(db)
        .await?;
    let features = plan_feature::Entity::find()
        .filter(plan_feature::Column::PlanId.is_in(plans.iter().map(|p| p.id)))
        .order_by_asc(plan_feature::Column::Order)
        .all(db)
        .await?;
    let with_features = |plan: &plan::Model| PlanWithFeatures {
        plan: plan.clone(),
        features: features
            .iter()
            .filter(|f| f.plan_id == plan.id)
            .cloned()
            .collect(),
    };
    Ok(subscriptions
        .into_iter()
        .map(|s| {
            let plan = plans.iter().find(|p| p.id == s.plan_id).map(with_features);
            (s.tenant_id, (s, plan))
        })
        .collect())
}

/// What a Stripe subscription event says of a tenant's plan subscription.
pub struct StripeSubscriptionChange<'a> {
    pub tenant_id: Uuid,
    /// The plan the tenant is on now (the default plan when the status is not entitled).
    pub plan: &'a str,
    pub status: &'a str,
    /// The subscription's current period; `None`: calendar months.
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub subscription_id: Option<&'a str>,
    pub cancel_at_period_end: bool,
    /// When Stripe created the event: an older event than the last one applied changes nothing.
    pub event_at: DateTime<Utc>,
    /// For a deletion: the id of the subscription that ended. Only the tenant's own plan
    /// subscription ending changes anything.
    pub ends: Option<&'a str>,
}

/// Applies a Stripe subscription event to the tenant's subscription (inside the caller's
/// transaction); whether it changed anything. Safe against Stripe's reordering and retries.
pub async fn record_stripe_subscription(
    txn: &impl ConnectionTrait,
    change: &StripeSubscriptionChange<'_>,
) -> Result<bool, DbErr> {
    let ended = match change.ends {
        Some(_) => " AND stripe_subscription_id = :ended",
        None => "",
    };
    let sql = Sql::new(
        txn.get_database_backend(),
        &format!(
            "UPDATE tenant_subscription SET \
             plan_id = COALESCE((SELECT id FROM plan WHERE slug = :plan), plan_id), \
             status = :status, current_period_start = :start, current_period_end = :end, \
             stripe_subscription_id = :subscription, cancel_at_period_end = :cancel, \
             stripe_event_at = :event_at, updated_at = :now \
             WHERE tenant_id = :tenant AND (stripe_event_at IS NULL OR stripe_event_at <= :event_at){ended}"
        ),
    );
    let statement = sql.bind(|name| {
        Some(match name {
            "tenant" => change.tenant_id.into(),
            "plan" => change.plan.into(),
            "status" => change.status.into(),
            "start" => change.period.map(|p| p.0).into(),
            "end" => change.period.map(|p| p.1).into(),
            "subscription" => change.subscription_id.map(str::to_owned).into(),
            "cancel" => change.cancel_at_period_end.into(),
            "event_at" => change.event_at.into(),
            "now" => Utc::now().into(),
            "ended" => change.ends.into(),
            _ => return None,
        })
    })?;
    let result = txn.execute_raw(statement).await?;
    Ok(result.rows_affected() == 1)
}

/// Subscribes a tenant to the plan `slug` (inside the caller's transaction).
pub async fn subscribe(
    txn: &impl ConnectionTrait,
    tenant_id: Uuid,
    slug: &str,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let plan = plan::Entity::find()
        .filter(plan::Column::Slug.eq(slug))
        .one(txn)
        .await?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("plan {slug} is not in the database")))?;
    tenant_subscription::ActiveModel {
        tenant_id: Set(tenant_id),
        plan_id: Set(plan.id),
        status: Set("active".to_owned()),
        current_period_start: Set(None),
        current_period_end: Set(None),
        stripe_subscription_id: Set(None),
        updated_at: Set(now),
        cancel_at_period_end: Set(false),
        stripe_event_at: Set(None),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// Makes the `plan` and `plan_feature` tables say what the config says. Safe to run from
/// many replicas at once (upserts); plans dropped from the config stay, inactive, for the
/// tenants still on them.
pub async fn sync_plans(db: &Database, config: &Config) -> Result<(), DbErr> {
    let txn = db.begin_write().await?;
    let now = Utc::now();
    plan::Entity::update_many()
        .col_expr(plan::Column::Active, Expr::value(false))
        .exec(&txn)
        .await?;
    for (position, cfg) in config.plans.iter().enumerate() {
        let row = plan::ActiveModel {
            id: Set(Uuid::now_v7()),
            slug: Set(cfg.slug.clone()),
            title: Set(cfg.title.clone()),
            description: Set(cfg.description.clone()),
            position: Set(i32::try_from(position).unwrap_or(i32::MAX)),
            active: Set(true),
            created_at: Set(now),
        };
        plan::Entity::insert(row)
            .on_conflict(
                OnConflict::column(plan::Column::Slug)
                    .update_columns([
                        plan::Column::Title,
                        plan::Column::Description,
                        plan::Column::Position,
                        plan::Column::Active,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        let plan_id = plan::Entity::find()
            .filter(plan::Column::Slug.eq(cfg.slug.as_str()))
            .one(&txn)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("plan {}", cfg.slug)))?
            .id;
        for (order, f) in cfg.features.iter().enumerate() {
            let row = plan_feature::ActiveModel {
                id: Set(Uuid::now_v7()),
                plan_id: Set(plan_id),
                name: Set(f.name.clone()),
                title: Set(f.title.clone()),
                kind: Set(f.kind),
                value: Set(f.value),
                order: Set(i32::try_from(order).unwrap_or(i32::MAX)),
            };
            plan_feature::Entity::insert(row)
                .on_conflict(
                    OnConflict::columns([plan_feature::Column::PlanId, plan_feature::Column::Name])
                        .update_columns([
                            plan_feature::Column::Title,
                            plan_feature::Column::Kind,
                            plan_feature::Column::Value,
                            plan_feature::Column::Order,
                        ])
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        let names: Vec<String> = cfg.features.iter().map(|f| f.name.clone()).collect();
        plan_feature::Entity::delete_many()
            .filter(plan_feature::Column::PlanId.eq(plan_id))
            .filter(plan_feature::Column::Name.is_not_in(names))
            .exec(&txn)
            .await?;
    }
    txn.commit().await
}
