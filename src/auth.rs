//! Who is calling: access tokens (`tokens`), accounts and passwords (`accounts`, hashed on
//! `hashing`'s bounded threads), the `Viewer` taken from `Authorization: Bearer`, and who may
//! do what in a tenant (`tenancy`). A token that is present but invalid is an error, never an
//! anonymous caller.

mod accounts;
mod hashing;
mod tenancy;
mod tokens;

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicBool, Ordering},
};

use entity::user;
use sea_orm::{ConnectionTrait, prelude::Uuid};

pub use accounts::{SignUp, find_by_email, normalize_email, sign_in, sign_up};
pub use hashing::Hasher;
pub use tenancy::{
    STANDING, require_admin, require_member, standing_in, standing_of, visible_project,
};
pub use tokens::Keys;

use crate::{
    db::{Database, PerBackend, Shape},
    error::AppError,
};
use tokens::Identity;

/// The caller of one request: nobody, or the user a verified token names. The token is
/// checked here (signature, expiry, issuer, audience); the user's row is checked by the
/// database in the same query that reads what the request asks for (`tenancy`), so a signed-in
/// read costs one database call. A token whose user no longer exists makes the request
/// `UNAUTHENTICATED` (HTTP 401) as soon as a query finds it missing.
#[derive(Clone, Debug, Default)]
pub struct Viewer(Option<Token>);

#[derive(Clone, Debug)]
struct Token {
    user_id: Uuid,
    /// Set once a query found no row for `user_id`.
    gone: Arc<AtomicBool>,
}

impl Viewer {
    pub const ANONYMOUS: Viewer = Viewer(None);

    /// The viewer of a verified token naming `user_id`.
    pub fn signed_in(user_id: Uuid) -> Self {
        Viewer(Some(Token {
            user_id,
            gone: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// The id of the user the token names, if any.
    pub fn id(&self) -> Option<Uuid> {
        self.0.as_ref().map(|t| t.user_id)
    }

    /// The signed-in user's id, or `UNAUTHENTICATED`.
    pub fn require(&self) -> Result<Uuid, AppError> {
        self.id().ok_or(AppError::Unauthenticated(
            "sign in first: send Authorization: Bearer <token>",
        ))
    }

    /// Records that the token's user does not exist (the request will be answered 401) and
    /// returns the error to give.
    pub fn user_gone(&self) -> AppError {
        if let Some(token) = &self.0 {
            token.gone.store(true, Ordering::Relaxed);
        }
        AppError::Unauthenticated("invalid or expired token")
    }

    /// Whether a query found the token's user missing.
    pub fn is_gone(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|t| t.gone.load(Ordering::Relaxed))
    }
}

/// The viewer of a request from its `Authorization` header value (if any). Tollgate's own
/// tokens need no database call; an identity provider's token is matched to its user (and
/// the user created on a first visit), which does.
pub async fn authenticate(
    db: &impl ConnectionTrait,
    keys: &Keys,
    authorization: Option<&str>,
) -> Result<Viewer, AppError> {
    let Some(header) = authorization else {
        return Ok(Viewer::ANONYMOUS);
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AppError::Unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    let user_id = match keys.verify(token)? {
        Identity::User(id) => id,
        Identity::External(claims) => {
            accounts::external_user(db, claims)
                .await?
                .ok_or(AppError::Unauthenticated("invalid or expired token"))?
                .id
        }
    };
    Ok(Viewer::signed_in(user_id))
}

/// The signed-in user's row; `None` when anonymous, `UNAUTHENTICATED` when the token's user
/// is gone. One query.
pub async fn me(db: &Database, viewer: &Viewer) -> Result<Option<user::Model>, AppError> {
    static SQL: PerBackend =
        PerBackend::new(|_| "SELECT * FROM \"user\" WHERE id = :user".to_owned());
    static SHAPE: LazyLock<Shape> = LazyLock::new(Shape::of::<user::Entity>);
    let Some(id) = viewer.id() else {
        return Ok(None);
    };
    let statement = SQL
        .get(db.backend())
        .bind(|name| (name == "user").then(|| id.into()))?;
    match db.query_one(&statement, &SHAPE).await? {
        Some(row) => Ok(Some(row.model::<user::Entity>()?)),
        None => Err(viewer.user_gone()),
    }
}
