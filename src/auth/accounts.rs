//! Accounts: sign-up and sign-in with a password (hashed on `Hasher`'s threads), and the
//! accounts an external identity provider's users get.

use chrono::Utc;
use entity::user;
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, QueryFilter, prelude::*};

use super::{Hasher, Keys, tokens::ExternalClaims};
use crate::error::AppError;

/// Bounds on sign-up input; the password cap keeps argon2's work per request bounded.
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 256;
const MAX_EMAIL: usize = 254;
const MAX_NAME: usize = 100;

/// The user an external identity provider's `sub` signs in: found by the `sub`; else, on a
/// first visit with a verified `email` claim, a new account — or the account with that email,
/// linked now, but only if Tollgate knows that account's email to be verified and no other
/// provider user has it. An unverified account with that email (anyone can sign up with any
/// address) is never linked: whoever made it first would own what the provider's user does.
/// Without a verified email, nobody.
pub(super) async fn external_user(
    db: &impl ConnectionTrait,
    claims: ExternalClaims,
) -> Result<Option<user::Model>, AppError> {
    let by_subject = || {
        user::Entity::find()
            .filter(user::Column::ExternalSubject.eq(claims.sub.as_str()))
            .one(db)
    };
    if let Some(user) = by_subject().await? {
        return Ok(Some(user));
    }
    let (Some(email), Some(true)) = (&claims.email, claims.email_verified) else {
        return Ok(None);
    };
    let Ok(email) = normalize_email(email) else {
        return Ok(None);
    };
    let written = match find_by_email(db, &email).await? {
        Some(existing) if existing.external_subject.is_some() => return Ok(None),
        Some(existing) if existing.email_verified_at.is_none() => {
            return Err(AppError::Unauthenticated(
                "an account with this email exists but its address is not verified: it cannot be linked to this identity provider",
            ));
        }
        Some(existing) => {
            let mut linked: user::ActiveModel = existing.into();
            linked.external_subject = Set(Some(claims.sub.clone()));
            linked.update(db).await.map(Some)
        }
        None => {
            let name = claims
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| n.chars().take(MAX_NAME).collect());
            user::ActiveModel {
                id: Set(Uuid::now_v7()),
                email: Set(email),
                name: Set(name),
                // No password: this user signs in through the provider only.
                password_hash: Set(dummy_hash()),
                created_at: Set(Utc::now()),
                external_subject: Set(Some(claims.sub.clone())),
                email_verified_at: Set(Some(Utc::now())),
            }
            .insert(db)
            .await
            .map(Some)
        }
    };
    match written {
        Ok(user) => Ok(user),
        // Two first requests of one user raced: the other one wrote it.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Ok(by_subject().await?)
        }
        Err(e) => Err(e.into()),
    }
}

pub struct SignUp {
    pub email: String,
    pub password: String,
    pub name: String,
}

/// Creates a user and returns it with a token.
pub async fn sign_up(
    db: &impl ConnectionTrait,
    keys: &Keys,
    hasher: &Hasher,
    input: SignUp,
) -> Result<(user::Model, String), AppError> {
    let email = normalize_email(&input.email)?;
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(AppError::bad_input(format!(
            "name must be 1 to {MAX_NAME} characters"
        )));
    }
    let length = input.password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(AppError::bad_input(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    if find_by_email(db, &email).await?.is_some() {
        return Err(AppError::bad_input(
            "an account with this email already exists",
        ));
    }
    let password_hash = hasher.hash(input.password).await?;
    let inserted = user::ActiveModel {
        id: Set(Uuid::now_v7()),
        email: Set(email),
        name: Set(Some(name)),
        password_hash: Set(password_hash),
        created_at: Set(Utc::now()),
        external_subject: Set(None),
        email_verified_at: Set(None),
    }
    .insert(db)
    .await;
    let user = match inserted {
        Ok(user) => user,
        // Two sign-ups with one email raced past the check above.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            return Err(AppError::bad_input(
                "an account with this email already exists",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let token = keys.mint(user.id)?;
    Ok((user, token))
}

/// Checks an email and password; the same error whichever is wrong.
pub async fn sign_in(
    db: &impl ConnectionTrait,
    keys: &Keys,
    hasher: &Hasher,
    email: &str,
    password: String,
) -> Result<(user::Model, String), AppError> {
    const REFUSED: AppError = AppError::Unauthenticated("wrong email or password");
    let user = match normalize_email(email) {
        Ok(email) => find_by_email(db, &email).await?,
        Err(_) => None,
    };
    let Some(user) = user else {
        // Spend the same time as a real check, so timing does not reveal who has an account.
        hasher.verify(password, dummy_hash()).await?;
        return Err(REFUSED);
    };
    if !hasher.verify(password, user.password_hash.clone()).await? {
        return Err(REFUSED);
    }
    let token = keys.mint(user.id)?;
    Ok((user, token))
}

pub async fn find_by_email(
    db: &impl ConnectionTrait,
    email: &str,
) -> Result<Option<user::Model>, AppError> {
    Ok(user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .one(db)
        .await?)
}

pub fn normalize_email(email: &str) -> Result<String, AppError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= MAX_EMAIL
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(AppError::bad_input("email is not a valid address"))
    }
}

/// A valid argon2 hash of a random password, to verify against when the user is unknown.
fn dummy_hash() -> String {
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Xr2B4GgGGGmqgRLqV0wqFJ6lZfa1TeW6o5dxhymFhcM"
        .to_owned()
}
