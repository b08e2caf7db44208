//! DataLoaders: one query for all the keys a response asks for. A loader lives for one
//! request, so nothing is cached across requests.

use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::Loader;
use entity::{tenant_subscription, user};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, QueryFilter, prelude::*};

use crate::{
    error::AppError,
    plans::{self, PlanWithFeatures},
};

/// Users by id (`Credit.user`).
pub struct UserLoader(pub DatabaseConnection);

impl Loader<Uuid> for UserLoader {
    type Value = user::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, user::Model>, Arc<DbErr>> {
        let users = user::Entity::find()
            .filter(user::Column::Id.is_in(ids.iter().copied()))
            .all(&self.0)
            .await
            .map_err(Arc::new)?;
        Ok(users.into_iter().map(|u| (u.id, u)).collect())
    }
}

/// Tenants' subscriptions and plans by tenant id (`Tenant.plan`, `Tenant.subscription`): a
/// list of tenants costs three queries, not three per tenant.
pub struct SubscriptionLoader(pub DatabaseConnection);

impl Loader<Uuid> for SubscriptionLoader {
    type Value = (tenant_subscription::Model, Option<PlanWithFeatures>);
    type Error = Arc<AppError>;

    async fn load(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Arc<AppError>> {
        plans::tenant_subscriptions(&self.0, ids)
            .await
            .map_err(Arc::new)
    }
}
