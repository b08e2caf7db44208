//! Idempotency keys of guarded mutations (DESIGN.md invariant 6). A key is claimed inside the
//! guard's transaction, so the claim commits with the spend and the resource, or not at all:
//! a replay finds the committed claim and returns the original resource without charging; a
//! concurrent duplicate waits on the claim's row and then does the same. Keys are per tenant
//! and are forgotten after the configured retention.

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use entity::idempotency_key;
use sea_orm::{ColumnType, EntityTrait, QueryFilter, prelude::*};

use crate::{
    db::{Database, PerBackend, Session, Shape},
    error::AppError,
};

/// What a guarded request asked for, to tell a replay from a reuse of its key.
pub struct Fingerprint {
    pub operation: &'static str,
    pub hash: String,
}

impl Fingerprint {
    /// `parts` are the request's normalized inputs, in a fixed order.
    pub fn new(operation: &'static str, parts: &[&str]) -> Self {
        // SHA-256 of the operation, then each part with its length before it (so ("ab", "c")
        // and ("a", "bc") differ). Gathered first: one pass of the hasher.
        let mut input =
            Vec::with_capacity(operation.len() + parts.iter().map(|p| 8 + p.len()).sum::<usize>());
        input.extend_from_slice(operation.as_bytes());
        for part in parts {
            input.extend_from_slice(&(part.len() as u64).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        Fingerprint {
            operation,
            hash: crate::auth::sha256_hex(&input),
        }
    }
}

/// The longest idempotency key accepted.
pub const MAX_KEY: usize = 255;

/// A client's idempotency key, when it is an acceptable one.
pub fn check_key(key: Option<String>) -> Result<Option<String>, AppError> {
    match key {
        Some(k) if k.is_empty() || k.len() > MAX_KEY => Err(AppError::bad_input(format!(
            "idempotencyKey must be 1 to {MAX_KEY} bytes"
        ))),
        other => Ok(other),
    }
}

/// How long keys are remembered (`idempotency.retention_seconds`).
pub fn retention(config: &crate::config::Config) -> Duration {
    Duration::seconds(i64::try_from(config.idempotency.retention_seconds).unwrap_or(i64::MAX))
}

/// Claims a key when it is new (`:tenant`, `:key`, `:operation`, `:hash`, `:resource`,
/// `:now`); does nothing when the tenant has it already. With `condition` (SQL), only when it
/// holds: the guard runs the claim inside its own statement on PostgreSQL, made to depend on
/// the CTE that locks the tenant's event numbering, so that lock comes first.
pub fn claim_sql(condition: Option<&str>) -> String {
    let row = match condition {
        Some(condition) => {
            format!("SELECT :tenant, :key, :operation, :hash, :resource, :now WHERE {condition}")
        }
        None => "VALUES (:tenant, :key, :operation, :hash, :resource, :now)".to_owned(),
    };
    format!(
        "INSERT INTO idempotency_key (tenant_id, key, operation, request_hash, resource_id, \
         created_at) {row} ON CONFLICT (tenant_id, key) DO NOTHING"
    )
}

/// Undoes a claim of `key` made in the open transaction (its spend was refused).
pub async fn forget(session: &mut Session, tenant_id: Uuid, key: &str) -> Result<(), AppError> {
    static DELETE: PerBackend = PerBackend::new(|_| {
        "DELETE FROM idempotency_key WHERE tenant_id = :tenant AND key = :key".to_owned()
    });
    let statement = DELETE.get(session.backend()).bind(|name| match name {
        "tenant" => Some(tenant_id.into()),
        "key" => Some(key.into()),
        _ => None,
    })?;
    session.execute(&statement).await?;
    Ok(())
}

/// The outcome of claiming a key.
pub enum Claim {
    /// The key is new: go on and create `resource_id`.
    Claimed,
    /// The key created this resource already, for the same request.
    Replay(Uuid),
}

/// Claims `key` for a request creating `resource_id`, inside the guard's transaction: one
/// statement when the key is new.
pub async fn claim(
    session: &mut Session,
    tenant_id: Uuid,
    key: &str,
    request: &Fingerprint,
    resource_id: Uuid,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<Claim, AppError> {
    static INSERT: PerBackend = PerBackend::new(|_| claim_sql(None));
    static EXISTING: PerBackend = PerBackend::new(|_| {
        "SELECT operation, request_hash, resource_id, created_at FROM idempotency_key \
         WHERE tenant_id = :tenant AND key = :key"
            .to_owned()
    });
    static EXPIRED: PerBackend = PerBackend::new(|_| {
        "DELETE FROM idempotency_key WHERE tenant_id = :tenant AND key = :key AND created_at < :expired"
            .to_owned()
    });
    static SHAPE: LazyLock<Shape> = LazyLock::new(|| {
        Shape::default()
            .with("resource_id", ColumnType::Uuid)
            .with("created_at", ColumnType::TimestampWithTimeZone)
    });
    let backend = session.backend();
    let value = |name: &str| -> Option<sea_orm::Value> {
        Some(match name {
            "tenant" => tenant_id.into(),
            "key" => key.into(),
            "operation" => request.operation.into(),
            "hash" => request.hash.as_str().into(),
            "resource" => resource_id.into(),
            "now" => now.into(),
            "expired" => (now - retention).into(),
            _ => return None,
        })
    };
    for _ in 0..2 {
        if session.execute(&INSERT.get(backend).bind(value)?).await? == 1 {
            return Ok(Claim::Claimed);
        }
        let rows = session
            .query(&EXISTING.get(backend).bind(value)?, &SHAPE)
            .await?;
        let Some(existing) = rows.first() else {
            // Deleted since (by the purge): claim it again.
            continue;
        };
        // An expired key is free again, even before the purge has run.
        if existing.get::<DateTime<Utc>>("created_at")? < now - retention {
            session.execute(&EXPIRED.get(backend).bind(value)?).await?;
            continue;
        }
        if existing.get::<String>("operation")? != request.operation
            || existing.get::<String>("request_hash")? != request.hash
        {
            return Err(AppError::IdempotencyKeyReused);
        }
        return Ok(Claim::Replay(existing.get("resource_id")?));
    }
    Err(AppError::Internal(anyhow::anyhow!(
        "idempotency key {key:?} could not be claimed"
    )))
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

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    /// Fingerprints are stored with their claims: a new build must compute the same ones, or
    /// a retry across an upgrade would read as a reused key. (Values computed independently:
    /// SHA-256 over the operation, then each part's length as 8 big-endian bytes and its
    /// UTF-8.)
    #[test]
    fn fingerprints_stay_what_they_were() {
        let task = Fingerprint::new(
            "createTask",
            &["0190f5a2-7c3e-7d41-9a57-0c8e4f2b6d10", "Zoë 🚀"],
        );
        assert_eq!(
            task.hash,
            "4a852a6d34bff8075bb6759d90d762362ec078cc4679791f39a04b9a1f15ac61"
        );
        let parts = Fingerprint::new("consumeCredits", &["a", "", "bc"]);
        assert_eq!(
            parts.hash,
            "49374199cf093af0420adf9cd83f713b43df19a094f1b7b7f111b3917876a1a6"
        );
    }
}
