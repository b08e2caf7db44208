//! Who is calling: access tokens (`tokens`), accounts and passwords (`accounts`, hashed on
//! `hashing`'s bounded threads), the `Viewer` taken from `Authorization: Bearer`, and who may
//! do what in a tenant (`tenancy`). A token that is present but invalid is an error, never an
//! anonymous caller.

mod accounts;
mod hashing;
mod tenancy;
mod tokens;

use entity::user;
use sea_orm::{ConnectionTrait, EntityTrait};

pub use accounts::{SignUp, find_by_email, normalize_email, sign_in, sign_up};
pub use hashing::Hasher;
pub use tenancy::{require_admin, require_member, visible_project};
pub use tokens::Keys;

use crate::{db, error::AppError};
use tokens::Identity;

/// The caller of one request: a signed-in user or nobody.
#[derive(Clone, Debug, Default)]
pub struct Viewer(Option<user::Model>);

impl Viewer {
    pub const ANONYMOUS: Viewer = Viewer(None);

    pub fn user(&self) -> Option<&user::Model> {
        self.0.as_ref()
    }

    /// The signed-in user, or `UNAUTHENTICATED`.
    pub fn require(&self) -> Result<&user::Model, AppError> {
        self.0.as_ref().ok_or(AppError::Unauthenticated(
            "sign in first: send Authorization: Bearer <token>",
        ))
    }
}

/// The viewer of a request from its `Authorization` header value (if any).
pub async fn authenticate(
    db: &impl ConnectionTrait,
    keys: &Keys,
    authorization: Option<&str>,
) -> Result<Viewer, AppError> {
    let Some(header) = authorization else {
        return Ok(Viewer(None));
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AppError::Unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    let user = match keys.verify(token)? {
        Identity::User(id) => {
            // Raw, without sea-orm's `LIMIT ?` (the key is unique): a bound LIMIT made SQLite
            // re-prepare the statement on every request.
            let sql = "SELECT * FROM \"user\" WHERE id = $1";
            user::Entity::find()
                .from_raw_sql(db::statement(db.get_database_backend(), sql, [id.into()]))
                .one(db)
                .await?
        }
        Identity::External(claims) => accounts::external_user(db, claims).await?,
    };
    let user = user.ok_or(AppError::Unauthenticated("invalid or expired token"))?;
    Ok(Viewer(Some(user)))
}
