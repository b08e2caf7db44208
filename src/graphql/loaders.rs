//! DataLoaders: one query for all the keys a response asks for. A loader lives for one
//! request, so nothing is cached across requests.

use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::Loader;
use entity::user;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, QueryFilter, prelude::*};

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
