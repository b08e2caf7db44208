//! The GraphQL-facing types, built from entities and domain values with `From`, so that a new
//! column never changes the public schema by accident. Their `///` lines are the
//! descriptions clients read in `schema.graphql` and GraphiQL.

use async_graphql::ID;
use uuid::Uuid;

use crate::error::AppError;

mod accounts;
mod alerts;
mod billing;
mod catalog;
mod grants;
mod keys;
mod ledger;
mod page;
mod resources;
mod teams;
mod webhooks;

pub use accounts::*;
pub use alerts::*;
pub use billing::*;
pub use catalog::*;
pub use grants::*;
pub use keys::*;
pub use ledger::*;
pub use page::*;
pub use resources::*;
pub use teams::*;
pub use webhooks::*;

/// How many items a list without a page size counts as in a request's complexity
/// (`User.memberships`: as many as `tenants.max_per_user` allows by default).
pub const LIST_COMPLEXITY: usize = 20;

/// A page's complexity: its selection once per row it may hold (`first`, default 20).
pub fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let rows = usize::try_from(first.unwrap_or(20)).unwrap_or(0);
    1 + rows.max(1).saturating_mul(child_complexity)
}

/// Saturates a stored 64-bit count into GraphQL's 32-bit `Int`.
fn int(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX })
}

/// The tenant an operation names: by `tenantId` or by `tenantExternalId` (one query), exactly
/// one of them.
pub async fn tenant_ref(
    db: &crate::db::Database,
    tenant_id: Option<&ID>,
    external_id: Option<&str>,
) -> Result<Uuid, AppError> {
    match (tenant_id, external_id) {
        (Some(id), None) => parse_id(id, "tenantId"),
        (None, Some(external)) => crate::tenants::by_external_id(db, external).await,
        _ => Err(AppError::bad_input(
            "give exactly one of tenantId and tenantExternalId",
        )),
    }
}

/// Parses a GraphQL `ID` argument, naming the argument when it is not a Tollgate id.
pub fn parse_id(id: &ID, argument: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id.as_str())
        .map_err(|_| AppError::bad_input(format!("{argument} is not a valid id")))
}
