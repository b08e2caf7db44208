//! DataLoaders: one query for all the keys a response asks for. A loader lives for one
//! request, so nothing is cached across requests.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use async_graphql::dataloader::{DataLoader, Loader};
use entity::{credit_allocation, tenant_subscription, user};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, QueryFilter, prelude::*};

use crate::{
    error::AppError,
    plans::{self, PlanWithFeatures},
};

/// One request's loaders, each made the first time a resolver needs it (most requests need
/// none).
pub struct Loaders {
    db: DatabaseConnection,
    users: OnceLock<DataLoader<UserLoader>>,
    subscriptions: OnceLock<DataLoader<SubscriptionLoader>>,
    allocations: OnceLock<DataLoader<AllocationLoader>>,
}

impl Loaders {
    pub fn new(db: DatabaseConnection) -> Self {
        Loaders {
            db,
            users: OnceLock::new(),
            subscriptions: OnceLock::new(),
            allocations: OnceLock::new(),
        }
    }

    pub fn users(&self) -> &DataLoader<UserLoader> {
        self.users
            .get_or_init(|| DataLoader::new(UserLoader(self.db.clone()), tokio::spawn))
    }

    pub fn allocations(&self) -> &DataLoader<AllocationLoader> {
        self.allocations
            .get_or_init(|| DataLoader::new(AllocationLoader(self.db.clone()), tokio::spawn))
    }

    pub fn subscriptions(&self) -> &DataLoader<SubscriptionLoader> {
        self.subscriptions
            .get_or_init(|| DataLoader::new(SubscriptionLoader(self.db.clone()), tokio::spawn))
    }
}

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

/// What grants paid of spends, by ledger row id (`Credit.allocations`).
pub struct AllocationLoader(pub DatabaseConnection);

impl Loader<Uuid> for AllocationLoader {
    type Value = Vec<credit_allocation::Model>;
    type Error = Arc<DbErr>;

    async fn load(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Arc<DbErr>> {
        let rows = credit_allocation::Entity::find()
            .filter(credit_allocation::Column::CreditId.is_in(ids.iter().copied()))
            .all(&self.0)
            .await
            .map_err(Arc::new)?;
        let mut by_credit: HashMap<Uuid, Self::Value> = HashMap::new();
        for row in rows {
            by_credit.entry(row.credit_id).or_default().push(row);
        }
        Ok(by_credit)
    }
}
