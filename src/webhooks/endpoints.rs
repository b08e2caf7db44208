//! Webhook endpoints (owns `webhook_endpoint`) and who may manage them: a tenant's OWNER or
//! ADMIN, or a key with `WEBHOOKS_WRITE`, for the tenant's own endpoints; a platform admin or
//! a platform key with `WEBHOOKS_WRITE` for any, and for platform endpoints (every tenant's
//! events). Another tenant's endpoint answers as if it did not exist.

use chrono::{DateTime, Duration, Utc};
use entity::{
    webhook_delivery::{self, DeliveryStatus},
    webhook_endpoint,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::{events, target};
use crate::{
    auth::{self, ApiScope, Viewer},
    config::WebhookSettings,
    db::{self, Database},
    error::AppError,
};

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);

/// The most endpoints one tenant (or the platform) may have.
pub const MAX_PER_OWNER: u64 = 20;

/// Who asks, and the settings the URL check needs.
pub struct Caller<'a> {
    pub db: &'a Database,
    pub viewer: &'a Viewer,
    pub platform_admins: &'a [String],
    pub settings: &'a WebhookSettings,
}

/// An endpoint to create.
pub struct NewEndpoint {
    /// `None`: a platform endpoint.
    pub tenant_id: Option<Uuid>,
    pub url: String,
    pub description: Option<String>,
    /// Empty: every type.
    pub event_types: Vec<String>,
}

/// A change to an endpoint: what is `Some` changes.
#[derive(Default)]
pub struct Change {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

impl Caller<'_> {
    /// Whether the caller may manage the endpoints of `tenant_id` (`None`: the platform's).
    pub async fn authorize(&self, tenant_id: Option<Uuid>) -> Result<(), AppError> {
        match (self.viewer.key(), tenant_id) {
            (Some(key), _) => {
                self.viewer.standing_id(&[ApiScope::WebhooksWrite])?;
                match (key.tenant_id, tenant_id) {
                    (Some(own), Some(t)) if own != t => return Err(AppError::NotFound("tenant")),
                    (Some(_), None) => return Err(AppError::Forbidden),
                    _ => {}
                }
                auth::api_keys::in_force(self.db, self.viewer).await?;
                if let Some(t) = tenant_id {
                    entity::tenant::Entity::find_by_id(t)
                        .one(&self.db.write)
                        .await?
                        .ok_or(AppError::NotFound("tenant"))?;
                }
                Ok(())
            }
            (None, Some(t)) => {
                if self.is_platform_admin().await? {
                    return Ok(());
                }
                auth::require_admin(self.db, self.viewer, t)
                    .await
                    .map(|_| ())
            }
            (None, None) => match self.is_platform_admin().await? {
                true => Ok(()),
                false => Err(AppError::Forbidden),
            },
        }
    }

    async fn is_platform_admin(&self) -> Result<bool, AppError> {
        self.viewer.require()?;
        auth::api_keys::is_platform_admin(self.db, self.viewer, self.platform_admins).await
    }

    /// The endpoint `id`, if the caller may manage it (`NOT_FOUND` otherwise, as for one that
    /// does not exist).
    pub async fn endpoint(&self, id: Uuid) -> Result<webhook_endpoint::Model, AppError> {
        let endpoint = webhook_endpoint::Entity::find_by_id(id)
            .one(&self.db.write)
            .await?
            .ok_or(AppError::NotFound("webhook endpoint"))?;
        match self.authorize(endpoint.tenant_id).await {
            Ok(()) => Ok(endpoint),
            Err(AppError::Internal(e)) => Err(AppError::Internal(e)),
            Err(_) => Err(AppError::NotFound("webhook endpoint")),
        }
    }

    /// Creates an endpoint; returns it and its secret (shown this once).
    pub async fn create(
        &self,
        new: NewEndpoint,
        now: DateTime<Utc>,
    ) -> Result<(webhook_endpoint::Model, String), AppError> {
        self.authorize(new.tenant_id).await?;
        let url = self.checked_url(&new.url).await?;
        let count = webhook_endpoint::Entity::find()
            .filter(match new.tenant_id {
                Some(t) => webhook_endpoint::Column::TenantId.eq(t),
                None => webhook_endpoint::Column::TenantId.is_null(),
            })
            .count(&self.db.write)
            .await?;
        if count >= MAX_PER_OWNER {
            return Err(AppError::bad_input(format!(
                "at most {MAX_PER_OWNER} webhook endpoints each"
            )));
        }
        let secret = super::new_secret();
        let endpoint = webhook_endpoint::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(new.tenant_id),
            url: Set(url),
            description: Set(checked_description(new.description)?),
            event_types: Set(types_column(&new.event_types)?),
            secret: Set(secret.clone()),
            previous_secret: Set(None),
            previous_secret_until: Set(None),
            enabled: Set(true),
            disabled_reason: Set(None),
            failing_since: Set(None),
            created_at: Set(now),
        }
        .insert(&self.db.write)
        .await?;
        Ok((endpoint, secret))
    }

    /// Changes endpoint `id`. Enabling it clears why it was disabled and its failures.
    pub async fn update(
        &self,
        id: Uuid,
        change: Change,
    ) -> Result<webhook_endpoint::Model, AppError> {
        let endpoint = self.endpoint(id).await?;
        let mut active = endpoint.into_active_model();
        if let Some(url) = change.url {
            active.url = Set(self.checked_url(&url).await?);
        }
        if let Some(description) = change.description {
            active.description = Set(checked_description(Some(description))?);
        }
        if let Some(types) = change.event_types {
            active.event_types = Set(types_column(&types)?);
        }
        if let Some(enabled) = change.enabled {
            active.enabled = Set(enabled);
            active.disabled_reason = Set((!enabled).then(|| "disabled by a user".to_owned()));
            active.failing_since = Set(None);
        }
        Ok(active.update(&self.db.write).await?)
    }

    /// A new secret for endpoint `id`, shown this once; the old one keeps signing beside it
    /// for `ROTATION_OVERLAP`.
    pub async fn rotate(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(webhook_endpoint::Model, String), AppError> {
        let endpoint = self.endpoint(id).await?;
        let secret = super::new_secret();
        let mut active = endpoint.clone().into_active_model();
        active.previous_secret = Set(Some(endpoint.secret));
        active.previous_secret_until = Set(Some(now + ROTATION_OVERLAP));
        active.secret = Set(secret.clone());
        Ok((active.update(&self.db.write).await?, secret))
    }

    /// Deletes endpoint `id`. Its deliveries are kept; those not yet made fail ("endpoint
    /// deleted"), in the same transaction.
    pub async fn delete(&self, id: Uuid) -> Result<(), AppError> {
        let endpoint = self.endpoint(id).await?;
        let txn = self.db.write.begin().await?;
        webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::Status,
                sea_orm::sea_query::Expr::value(DeliveryStatus::Failed),
            )
            .col_expr(
                webhook_delivery::Column::LastError,
                sea_orm::sea_query::Expr::value("endpoint deleted"),
            )
            .filter(webhook_delivery::Column::EndpointId.eq(endpoint.id))
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending))
            .exec(&txn)
            .await?;
        webhook_endpoint::Entity::delete_by_id(endpoint.id)
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// The endpoints of `tenant_id` (`None`: the platform's), oldest first.
    pub async fn list(
        &self,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<webhook_endpoint::Model>, AppError> {
        self.authorize(tenant_id).await?;
        Ok(webhook_endpoint::Entity::find()
            .filter(match tenant_id {
                Some(t) => webhook_endpoint::Column::TenantId.eq(t),
                None => webhook_endpoint::Column::TenantId.is_null(),
            })
            .order_by_asc(webhook_endpoint::Column::Id)
            .all(&self.db.write)
            .await?)
    }

    /// The deliveries to endpoint `id`, newest first, `first` after `after` (keyset).
    pub async fn deliveries(
        &self,
        id: Uuid,
        first: u64,
        after: Option<Uuid>,
    ) -> Result<(Vec<webhook_delivery::Model>, bool), AppError> {
        let endpoint = self.endpoint(id).await?;
        let query = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::EndpointId.eq(endpoint.id));
        let column = webhook_delivery::Column::Id;
        Ok(db::keyset(&self.db.write, query, column, first, after).await?)
    }

    /// Sends a `webhook.test` event to endpoint `id` alone (whatever types it asks for);
    /// returns its delivery.
    pub async fn send_test(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<webhook_delivery::Model, AppError> {
        let endpoint = self.endpoint(id).await?;
        let event = events::NewEvent {
            tenant_id: endpoint.tenant_id,
            kind: "webhook.test",
            data: json!({ "endpointId": endpoint.id, "tenantId": endpoint.tenant_id }),
        };
        let txn = self.db.write.begin().await?;
        let event_id = events::record_dispatched(&mut &txn, &event, now).await?;
        let tenant = endpoint.tenant_id.unwrap_or(Uuid::nil());
        let delivery = new_delivery(&endpoint, tenant, event_id, now)
            .insert(&txn)
            .await?;
        txn.commit().await?;
        Ok(delivery)
    }

    /// Sends event `event_id` to endpoint `id` again, as a new delivery (same `webhook-id`).
    /// The event must be one the endpoint could receive: its tenant's, or any for a platform
    /// endpoint.
    pub async fn replay(
        &self,
        id: Uuid,
        event_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<webhook_delivery::Model, AppError> {
        let endpoint = self.endpoint(id).await?;
        let event = entity::webhook_event::Entity::find()
            .filter(entity::webhook_event::Column::Id.eq(event_id))
            .one(&self.db.write)
            .await?
            .filter(|e| endpoint.tenant_id.is_none_or(|t| e.tenant_id == t))
            .ok_or(AppError::NotFound("webhook event"))?;
        Ok(new_delivery(&endpoint, event.tenant_id, event.id, now)
            .insert(&self.db.write)
            .await?)
    }

    async fn checked_url(&self, url: &str) -> Result<String, AppError> {
        let uri = target::parse(url.trim())?;
        target::check(&uri, self.settings.allow_private_targets).await?;
        Ok(uri.to_string())
    }
}

/// A pending delivery of event `event_id` (of tenant `tenant_id`) to `endpoint`, due now.
fn new_delivery(
    endpoint: &webhook_endpoint::Model,
    tenant_id: Uuid,
    event_id: Uuid,
    now: DateTime<Utc>,
) -> webhook_delivery::ActiveModel {
    webhook_delivery::ActiveModel {
        id: Set(Uuid::now_v7()),
        endpoint_id: Set(endpoint.id),
        event_id: Set(event_id),
        tenant_id: Set(tenant_id),
        status: Set(DeliveryStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        claimed_until: Set(None),
        last_status_code: Set(None),
        last_error: Set(None),
        delivered_at: Set(None),
        created_at: Set(now),
    }
}

/// The event types an endpoint lists, as stored (`,a,b,`; empty: all). Unknown types are
/// refused, naming them.
fn types_column(types: &[String]) -> Result<String, AppError> {
    if let Some(unknown) = types.iter().find(|t| !events::TYPES.contains(&t.as_str())) {
        return Err(AppError::bad_input(format!(
            "eventTypes: {unknown:?} is not an event type (one of {})",
            events::TYPES.join(", ")
        )));
    }
    let mut types: Vec<&str> = types.iter().map(String::as_str).collect();
    types.sort_unstable();
    types.dedup();
    Ok(match types.is_empty() {
        true => String::new(),
        false => format!(",{},", types.join(",")),
    })
}

/// The event types stored in an endpoint's row (empty: all).
pub fn types_of(endpoint: &webhook_endpoint::Model) -> Vec<String> {
    endpoint
        .event_types
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn checked_description(description: Option<String>) -> Result<Option<String>, AppError> {
    match description {
        Some(d) if d.len() > 500 => Err(AppError::bad_input("description: at most 500 characters")),
        other => Ok(other.filter(|d| !d.trim().is_empty())),
    }
}
