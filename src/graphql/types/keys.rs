//! API keys for servers, and who made a spend.

use async_graphql::{Enum, ID, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{api_key, credit::ActorType};

use crate::auth::api_keys::scopes_of;

/// What an API key may do.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "ApiScope", remote = "crate::auth::ApiScope")]
pub enum ApiScopeGql {
    /// `consumeCredits` (and the spend's `usage`).
    CreditsConsume,
    /// `checkCredits`, `planFeatureUsage`, `creditHistory`.
    CreditsRead,
    /// `grantCredits`, `voidCreditGrant`, `refundCredit` (made only by a platform admin).
    CreditsGrant,
    /// `createTenant` (platform keys).
    TenantsWrite,
    /// Webhook endpoints and their deliveries (a tenant key: its own; a platform key: all).
    WebhooksWrite,
}

/// An API key (never its secret).
#[derive(SimpleObject, Clone, Debug)]
pub struct ApiKey {
    /// The key's id.
    pub id: ID,
    /// The tenant it may touch; null for a platform key (any tenant).
    pub tenant_id: Option<ID>,
    /// What it is for, e.g. `billing-backend`.
    pub name: String,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    /// What it may do.
    pub scopes: Vec<ApiScopeGql>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working; null: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked; null while it works.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (to within a few minutes).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<api_key::Model> for ApiKey {
    fn from(k: api_key::Model) -> Self {
        ApiKey {
            scopes: scopes_of(&k).into_iter().map(ApiScopeGql::from).collect(),
            id: ID(k.id.to_string()),
            tenant_id: k.tenant_id.map(|t| ID(t.to_string())),
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A new API key and its secret, shown this once: send it as `Authorization: Bearer
/// tg_sk_…`. Only its hash is kept.
#[derive(SimpleObject, Clone, Debug)]
pub struct ApiKeyCreated {
    /// The key.
    pub api_key: ApiKey,
    /// The secret (`tg_sk_…`). Store it now: it cannot be read again.
    pub secret: String,
}

/// Who made a spend.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::credit::ActorType")]
pub enum ActorKind {
    /// A signed-in user.
    User,
    /// A server with an API key.
    ApiKey,
    /// Tollgate itself.
    System,
}

/// Who made a spend: its kind, and the user's or the API key's id.
#[derive(SimpleObject, Clone, Debug)]
pub struct Actor {
    /// A user, an API key or the system.
    #[graphql(name = "type")]
    pub kind: ActorKind,
    /// The user's or the API key's id; null for the system.
    pub id: Option<ID>,
}

impl Actor {
    pub fn new(kind: ActorType, id: Option<uuid::Uuid>) -> Self {
        Actor {
            kind: kind.into(),
            id: id.map(|id| ID(id.to_string())),
        }
    }
}
