//! Access tokens: HS256 JWTs Tollgate signs (`sub`, `exp`, `iss`, `aud`, all required) and,
//! optionally, RS256 tokens of an external identity provider (by PEM key or JWKS file). A
//! token that is present but invalid is an error, never an anonymous caller.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    cache::Bounded,
    config::{Config, ExternalIdp},
    error::AppError,
};

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
pub(super) struct ExternalClaims {
    pub(super) sub: String,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) email_verified: Option<bool>,
    #[serde(default)]
    pub(super) name: Option<String>,
}

/// Who a valid token says the caller is.
pub(super) enum Identity {
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
    verified: Arc<Verified>,
    /// API keys this process has looked up (`api_keys::Known`).
    api_keys: Arc<super::api_keys::Known>,
}

/// Tollgate's own tokens already verified, by their exact text: a client sends the same token
/// with every request, and checking its signature and claims again is a tenth of a cheap
/// request. A token's text is all its verification depends on (the keys are fixed for the
/// process), except time: each hit checks the expiry again, with the same leeway. At most
/// `VERIFIED_MAX` tokens are kept (then the cache starts over), so a flood of distinct tokens
/// costs a bounded amount of memory. Who the user is and whether they still exist is never
/// decided here: the database checks the user's row in the request's own query.
#[derive(Default)]
struct Verified(Bounded<Box<str>, (Uuid, i64), VERIFIED_MAX>);

const VERIFIED_MAX: usize = 4096;
const VERIFIED_MAX_BYTES: usize = 1024;

impl Verified {
    /// The user of a token verified before, if it has not expired since.
    fn get(&self, token: &str, leeway: u64) -> Option<Uuid> {
        let (user_id, exp) = self.0.get(token)?;
        let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
        (exp.saturating_add(leeway) >= Utc::now().timestamp()).then_some(user_id)
    }

    fn keep(&self, token: &str, user_id: Uuid, exp: i64) {
        if token.len() <= VERIFIED_MAX_BYTES {
            self.0.insert(token.into(), (user_id, exp));
        }
    }
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
            verified: Arc::default(),
            api_keys: Arc::default(),
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

    /// The API keys this process has looked up.
    pub(super) fn known_api_keys(&self) -> &super::api_keys::Known {
        &self.api_keys
    }

    pub(super) fn verify(&self, token: &str) -> Result<Identity, AppError> {
        const INVALID: AppError = AppError::Unauthenticated("invalid or expired token");
        if let Some(user_id) = self.verified.get(token, self.validation.leeway) {
            return Ok(Identity::User(user_id));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| INVALID)?;
        match (header.alg, &self.external) {
            (Algorithm::HS256, _) => {
                let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
                    .map_err(|_| INVALID)?;
                let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| INVALID)?;
                self.verified.keep(token, user_id, data.claims.exp);
                Ok(Identity::User(user_id))
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
