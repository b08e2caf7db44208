//! Who is calling: password hashing (argon2), access tokens (HS256 JWT with `exp`, `iss` and
//! `aud` required; optionally RS256 tokens of an external identity provider), the `Viewer`
//! taken from `Authorization: Bearer`, and membership checks. A token that is present but
//! invalid is an error, never an anonymous caller.

mod hashing;

use std::path::Path;

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use entity::{project, tenant_user, user};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, QueryFilter, prelude::*};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, ExternalIdp},
    db,
    error::AppError,
    tenants::Role,
};

/// Bounds on sign-up input; the password cap keeps argon2's work per request bounded.
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 256;
const MAX_EMAIL: usize = 254;
pub(crate) const MAX_NAME: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: i64,
    iss: String,
    aud: String,
}

/// What Tollgate reads from an external identity provider's token.
#[derive(Debug, Deserialize)]
struct ExternalClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    #[serde(default)]
    name: Option<String>,
}

/// Who a valid token says the caller is.
enum Identity {
    /// A Tollgate user, by id.
    User(Uuid),
    /// A user of the external identity provider.
    External(ExternalClaims),
}

/// Signing and verifying keys for access tokens.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_seconds: i64,
    issuer: String,
    audience: String,
    external: Option<External>,
}

/// The external identity provider's keys (by `kid` when it has several) and its rules.
#[derive(Clone)]
struct External {
    keys: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
}

impl External {
    fn load(idp: &ExternalIdp, leeway: u64) -> anyhow::Result<Self> {
        let keys = match (&idp.public_key_file, &idp.jwks_file) {
            (Some(pem), _) => {
                let bytes = std::fs::read(pem).with_context(|| {
                    format!("cannot read jwt.external.public_key_file {}", pem.display())
                })?;
                let key = DecodingKey::from_rsa_pem(&bytes).map_err(|e| {
                    anyhow::anyhow!("invalid configuration: jwt.external.public_key_file is not an RSA public key: {e}")
                })?;
                vec![(None, key)]
            }
            (None, Some(jwks)) => {
                let text = std::fs::read_to_string(jwks).with_context(|| {
                    format!("cannot read jwt.external.jwks_file {}", jwks.display())
                })?;
                let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "invalid configuration: jwt.external.jwks_file is not a JWK set: {e}"
                    )
                })?;
                set.keys
                    .iter()
                    .filter_map(|jwk| {
                        let key = DecodingKey::from_jwk(jwk).ok()?;
                        Some((jwk.common.key_id.clone(), key))
                    })
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        if keys.is_empty() {
            anyhow::bail!("invalid configuration: jwt.external has no usable RSA key");
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&idp.issuer]);
        validation.set_audience(&[&idp.audience]);
        validation.leeway = leeway;
        Ok(External { keys, validation })
    }

    /// The key for a token's `kid`: the one with that id in a key set; the only key when
    /// there is just one without an id (a PEM file), whatever `kid` the token names.
    fn key(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        let by_id = kid.and_then(|kid| {
            self.keys
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid))
                .map(|(_, key)| key)
        });
        by_id.or(match self.keys.as_slice() {
            [(None, key)] => Some(key),
            [(_, key)] if kid.is_none() => Some(key),
            _ => None,
        })
    }
}

impl Keys {
    /// From `jwt_secret`, or a development secret kept in `data_dir` (with a warning).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => development_secret(&config.data_dir)?,
        };
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < 32 {
            anyhow::bail!("invalid configuration: jwt_secret must be at least 32 bytes");
        }
        let jwt = &config.jwt;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&jwt.issuer]);
        validation.set_audience(&[&jwt.audience]);
        validation.leeway = jwt.leeway_seconds;
        let external = jwt
            .external
            .as_ref()
            .map(|idp| External::load(idp, jwt.leeway_seconds))
            .transpose()?;
        Ok(Keys {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            ttl_seconds: i64::try_from(config.token_ttl_seconds).unwrap_or(i64::MAX),
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            external,
        })
    }

    /// A signed token for `user_id`, valid for the configured lifetime.
    pub fn mint(&self, user_id: Uuid) -> Result<String, AppError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            exp: now.saturating_add(self.ttl_seconds),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::Internal(e.into()))
    }

    fn verify(&self, token: &str) -> Result<Identity, AppError> {
        const INVALID: AppError = AppError::Unauthenticated("invalid or expired token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| INVALID)?;
        match (header.alg, &self.external) {
            (Algorithm::HS256, _) => {
                let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
                    .map_err(|_| INVALID)?;
                Uuid::parse_str(&data.claims.sub)
                    .map(Identity::User)
                    .map_err(|_| INVALID)
            }
            (Algorithm::RS256, Some(external)) => {
                let key = external.key(header.kid.as_deref()).ok_or(INVALID)?;
                let data = jsonwebtoken::decode::<ExternalClaims>(token, key, &external.validation)
                    .map_err(|_| INVALID)?;
                Ok(Identity::External(data.claims))
            }
            _ => Err(INVALID),
        }
    }
}

fn development_secret(data_dir: &Path) -> anyhow::Result<SecretString> {
    let path = data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    crate::config::ensure_dir(data_dir)?;
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, &secret)
        .with_context(|| format!("cannot write the development secret {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "TOLLGATE_JWT_SECRET is not set: using a generated development secret; set it in production"
    );
    Ok(SecretString::from(secret))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

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
        Identity::User(id) => user::Entity::find_by_id(id).one(db).await?,
        Identity::External(claims) => external_user(db, claims).await?,
    };
    let user = user.ok_or(AppError::Unauthenticated("invalid or expired token"))?;
    Ok(Viewer(Some(user)))
}

/// The user an external identity provider's `sub` signs in: found by the `sub`; else, on a
/// first visit with a verified `email` claim, a new account — or the account with that email,
/// linked now, but only if Tollgate knows that account's email to be verified and no other
/// provider user has it. An unverified account with that email (anyone can sign up with any
/// address) is never linked: whoever made it first would own what the provider's user does.
/// Without a verified email, nobody.
async fn external_user(
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

pub use hashing::Hasher;

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

/// The viewer's role in `tenant_id`, or `FORBIDDEN` when they are not a member (whether or
/// not the tenant exists, so ids of other tenants reveal nothing).
pub async fn require_member(
    db: &impl ConnectionTrait,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<(user::Model, Role), AppError> {
    let user = viewer.require()?;
    let membership = tenant_user::Entity::find_by_id((tenant_id, user.id))
        .one(db)
        .await?
        .ok_or(AppError::Forbidden)?;
    let role = membership
        .role
        .parse()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("unknown role {}", membership.role)))?;
    Ok((user.clone(), role))
}

/// The viewer if they are an OWNER or ADMIN of `tenant_id`; `FORBIDDEN` otherwise.
pub async fn require_admin(
    db: &impl ConnectionTrait,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<user::Model, AppError> {
    match require_member(db, viewer, tenant_id).await? {
        (user, Role::Owner | Role::Admin) => Ok(user),
        (_, Role::Member) => Err(AppError::Forbidden),
    }
}

/// The project `project_id` if `user_id` is a member of its tenant: one query.
pub async fn visible_project(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    project_id: Uuid,
) -> Result<Option<project::Model>, AppError> {
    let backend = db.get_database_backend();
    let sql = "SELECT p.* FROM project p \
               JOIN tenant_user tu ON tu.tenant_id = p.tenant_id AND tu.user_id = $2 \
               WHERE p.id = $1";
    Ok(project::Entity::find()
        .from_raw_sql(db::statement(
            backend,
            sql,
            [project_id.into(), user_id.into()],
        ))
        .one(db)
        .await?)
}
