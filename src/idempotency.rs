//! Idempotency keys of guarded mutations (DESIGN.md invariant 6). A key is claimed inside the
//! guard's transaction, so the claim commits with the spend and the resource, or not at all:
//! a replay finds the committed claim and returns the original resource without charging; a
//! concurrent duplicate waits on the claim's row and then does the same. Keys are per tenant
//! and are forgotten after the configured retention.

use chrono::{DateTime, Duration, Utc};
use entity::idempotency_key;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, EntityTrait, QueryFilter, prelude::*, sea_query::OnConflict,
};
use sha2::{Digest, Sha256};

use crate::{db::Database, error::AppError};

/// What a guarded request asked for, to tell a replay from a reuse of its key.
pub struct Fingerprint {
    pub operation: &'static str,
    pub hash: String,
}

impl Fingerprint {
    /// `parts` are the request's normalized inputs, in a fixed order.
    pub fn new(operation: &'static str, parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(operation.as_bytes());
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        Fingerprint {
            operation,
            hash: format!("{:x}", hasher.finalize()),
        }
    }
}

/// The outcome of claiming a key.
pub enum Claim {
    /// The key is new: go on and create `resource_id`.
    Claimed,
    /// The key created this resource already, for the same request.
    Replay(Uuid),
}

/// Claims `key` for a request creating `resource_id`, inside the guard's transaction.
pub async fn claim(
    txn: &impl ConnectionTrait,
    tenant_id: Uuid,
    key: &str,
    request: &Fingerprint,
    resource_id: Uuid,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<Claim, AppError> {
    // An expired key is free again, even before the purge has run.
    idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::TenantId.eq(tenant_id))
        .filter(idempotency_key::Column::Key.eq(key))
        .filter(idempotency_key::Column::CreatedAt.lt(now - retention))
        .exec(txn)
        .await?;
    let row = idempotency_key::ActiveModel {
        tenant_id: Set(tenant_id),
        key: Set(key.to_owned()),
        operation: Set(request.operation.to_owned()),
        request_hash: Set(request.hash.clone()),
        resource_id: Set(resource_id),
        created_at: Set(now),
    };
    let inserted = idempotency_key::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                idempotency_key::Column::TenantId,
                idempotency_key::Column::Key,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if inserted == 1 {
        return Ok(Claim::Claimed);
    }
    let existing = idempotency_key::Entity::find_by_id((tenant_id, key.to_owned()))
        .one(txn)
        .await?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("idempotency key vanished")))?;
    if existing.operation != request.operation || existing.request_hash != request.hash {
        return Err(AppError::IdempotencyKeyReused);
    }
    Ok(Claim::Replay(existing.resource_id))
}

/// Deletes keys older than `retention`; returns how many.
pub async fn purge(db: &Database, retention: Duration) -> Result<u64, AppError> {
    let result = idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::CreatedAt.lt(Utc::now() - retention))
        .exec(&db.write)
        .await?;
    Ok(result.rows_affected)
}

/// Purges expired keys every `interval`, for as long as the process runs.
pub fn spawn_purger(db: Database, retention: Duration, interval: std::time::Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            match purge(&db, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(idempotency.purged = n, "expired idempotency keys purged"),
                Err(e) => e.log(),
            }
        }
    });
}
