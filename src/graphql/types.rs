//! The GraphQL-facing types, built from entities and domain values with `From`, so that a new
//! column never changes the public schema by accident. Their `///` lines are the
//! descriptions clients read in `schema.graphql` and GraphiQL.

use async_graphql::ID;
use uuid::Uuid;

use crate::error::AppError;

mod accounts;
mod billing;
mod catalog;
mod ledger;
mod page;
mod resources;

pub use accounts::*;
pub use billing::*;
pub use catalog::*;
pub use ledger::*;
pub use page::*;
pub use resources::*;

/// Saturates a stored 64-bit count into GraphQL's 32-bit `Int`.
fn int(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX })
}

/// Parses a GraphQL `ID` argument, naming the argument when it is not a Tollgate id.
pub fn parse_id(id: &ID, argument: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id.as_str())
        .map_err(|_| AppError::bad_input(format!("{argument} is not a valid id")))
}
