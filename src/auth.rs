//! Who is calling: access tokens (`tokens`), accounts and passwords (`accounts`, hashed on
//! `hashing`'s bounded threads), the `Viewer` taken from `Authorization: Bearer`, and who may
//! do what in a tenant (`tenancy`). A token that is present but invalid is an error, never an
//! anonymous caller.

mod accounts;
pub mod api_keys;
mod hashing;
mod tenancy;
mod tokens;

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicBool, Ordering},
};

use entity::user;
use sea_orm::prelude::Uuid;

pub use accounts::{SignUp, find_by_email, normalize_email, sign_in, sign_up};
pub use api_keys::ApiScope;
pub use hashing::Hasher;
pub use tenancy::{
    KEY_STANDING, PerViewer, STANDING, member_row, require_admin, require_member, standing_in,
    standing_of, visible, visible_project,
};
pub use tokens::Keys;

use crate::{
    db::{Database, PerBackend, Shape},
    error::AppError,
};
use tokens::Identity;

/// SHA-256 of `bytes` in lower-case hex: how secrets are stored (API keys, invitation tokens)
/// and how a guarded request is fingerprinted (`idempotency`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    lower_hex(&Sha256::digest(bytes))
}

/// `bytes` in lower-case hex, two digits each.
pub fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// The caller of one request: nobody, the user a verified token names, or an API key. The
/// token is checked here (signature, expiry, issuer, audience); the user's row is checked by
/// the database in the same query that reads what the request asks for (`tenancy`), so a
/// signed-in read costs one database call. A token whose user no longer exists makes the
/// request `UNAUTHENTICATED` (HTTP 401) as soon as a query finds it missing. An API key is
/// looked up when the request arrives, and checked again (not revoked) by every query that
/// reads a tenant's data for it.
#[derive(Clone, Debug, Default)]
pub struct Viewer(Option<Caller>);

#[derive(Clone, Debug)]
enum Caller {
    User(Token),
    Key(Arc<Key>),
}

#[derive(Clone, Debug)]
struct Token {
    user_id: Uuid,
    /// Set once a query found no row for `user_id`.
    gone: Arc<AtomicBool>,
}

/// An API key's standing, as read when the request arrived.
#[derive(Debug)]
pub struct Key {
    pub id: Uuid,
    /// `None`: a platform key.
    pub tenant_id: Option<Uuid>,
    pub scopes: Vec<ApiScope>,
    /// Set once a query found the key revoked since.
    gone: AtomicBool,
}

impl Viewer {
    pub const ANONYMOUS: Viewer = Viewer(None);

    /// The viewer of a verified token naming `user_id`.
    pub fn signed_in(user_id: Uuid) -> Self {
        Viewer(Some(Caller::User(Token {
            user_id,
            gone: Arc::new(AtomicBool::new(false)),
        })))
    }

    /// The viewer of a valid API key.
    pub fn with_key(id: Uuid, tenant_id: Option<Uuid>, scopes: Vec<ApiScope>) -> Self {
        Viewer(Some(Caller::Key(Arc::new(Key {
            id,
            tenant_id,
            scopes,
            gone: AtomicBool::new(false),
        }))))
    }

    /// The id of the user the token names, if any.
    pub fn id(&self) -> Option<Uuid> {
        match &self.0 {
            Some(Caller::User(t)) => Some(t.user_id),
            _ => None,
        }
    }

    /// The API key, if the caller is one.
    pub fn key(&self) -> Option<&Key> {
        match &self.0 {
            Some(Caller::Key(key)) => Some(key),
            _ => None,
        }
    }

    /// Who the request is from, for rate limits: the user's id or the key's.
    pub fn caller_id(&self) -> Option<Uuid> {
        match &self.0 {
            Some(Caller::User(t)) => Some(t.user_id),
            Some(Caller::Key(k)) => Some(k.id),
            None => None,
        }
    }

    /// The signed-in user's id; `UNAUTHENTICATED` when anonymous, `FORBIDDEN` for an API key
    /// (what asks for a user is not for servers).
    pub fn require(&self) -> Result<Uuid, AppError> {
        match &self.0 {
            Some(Caller::User(t)) => Ok(t.user_id),
            Some(Caller::Key(_)) => Err(AppError::Forbidden),
            None => Err(AppError::Unauthenticated(
                "sign in first: send Authorization: Bearer <token>",
            )),
        }
    }

    /// What a `STANDING` query binds as `:user`: the user's id, or the API key's. A key must
    /// hold one of `scopes`; a tenant key is refused for another tenant as a user is
    /// (`FORBIDDEN`).
    pub fn standing_id(&self, scopes: &[ApiScope]) -> Result<Uuid, AppError> {
        match &self.0 {
            Some(Caller::Key(key)) if scopes.iter().any(|s| key.scopes.contains(s)) => Ok(key.id),
            Some(Caller::Key(_)) => Err(AppError::Forbidden),
            _ => self.require(),
        }
    }

    /// Records that the token's user (or the key) does not exist any more (the request will
    /// be answered 401) and returns the error to give.
    pub fn user_gone(&self) -> AppError {
        match &self.0 {
            Some(Caller::User(token)) => token.gone.store(true, Ordering::Relaxed),
            Some(Caller::Key(key)) => key.gone.store(true, Ordering::Relaxed),
            None => {}
        }
        AppError::Unauthenticated("invalid or expired token")
    }

    /// Whether a query found the token's user (or the key) missing.
    pub fn is_gone(&self) -> bool {
        match &self.0 {
            Some(Caller::User(t)) => t.gone.load(Ordering::Relaxed),
            Some(Caller::Key(k)) => k.gone.load(Ordering::Relaxed),
            None => false,
        }
    }
}

/// The viewer of a request from its `Authorization` header value (if any). Tollgate's own
/// tokens need no database call; an identity provider's token is matched to its user (and
/// the user created on a first visit), which does.
pub async fn authenticate(
    db: &Database,
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
    if token.starts_with(api_keys::SECRET_PREFIX) {
        return api_keys::authenticate(db, keys.known_api_keys(), token).await;
    }
    let user_id = match keys.verify(token)? {
        Identity::User(id) => id,
        Identity::External(claims) => {
            accounts::external_user(&db.read, claims)
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

#[cfg(test)]
mod digest_tests {
    use super::sha256_hex;

    /// Stored secrets (API keys, invitation tokens) are compared by this text: it must stay
    /// SHA-256's standard lower-case hex (FIPS 180-2's "abc" example).
    #[test]
    fn secrets_hash_to_standard_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
