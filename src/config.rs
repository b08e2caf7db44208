//! Typed configuration: the built-in defaults (`config/default.toml`, embedded in the binary),
//! then an optional TOML file, then `TOLLGATE_*` environment variables (and `DATABASE_URL`),
//! then command-line flags. Validated once at start-up: a bad value stops the process with a
//! message naming the key. This file holds the types and the layering; the defaults are data.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use entity::plan_feature::FeatureLimitType;

/// The built-in configuration.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything Tollgate reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`127.0.0.1:8080`; port 0 picks a free port).
    pub addr: String,
    /// `sqlite://…` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// HS256 secret for access tokens. Without it a development secret is kept in `data_dir`.
    pub jwt_secret: Option<SecretString>,
    /// Lifetime of the access tokens `signUp`, `signIn` and `tollgate token` mint.
    pub token_ttl_seconds: u64,
    /// Where Tollgate keeps local state it generates (the development JWT secret).
    pub data_dir: PathBuf,
    /// `pretty` (development) or `json` (production).
    pub log_format: LogFormat,
    pub database: DatabaseSettings,
    pub idempotency: IdempotencySettings,
    /// Stripe: optional; without `secret_key` nothing is reported and no session is created.
    pub stripe: StripeSettings,
    /// What one GraphQL request may ask for.
    pub graphql: GraphqlSettings,
    /// HTTP: body size, CORS, client addresses.
    pub http: HttpSettings,
    /// Requests per client, in this process.
    pub rate_limit: RateLimitSettings,
    /// Password hashing: how much of the machine it may take.
    pub auth: AuthSettings,
    /// Tenants: how many one user may belong to.
    pub tenants: TenantSettings,
    /// Credit grants and reservations: how often expired ones are swept.
    pub grants: GrantSettings,
    pub webhooks: WebhookSettings,
    /// Threshold alerts: the platform's default rules.
    pub alerts: AlertSettings,
    /// `GET /metrics`: where it is served and who may read it.
    pub metrics: MetricsSettings,
    /// Access tokens: issuer, audience, leeway; optionally an external identity provider.
    pub jwt: JwtSettings,
    /// The plan every new tenant is subscribed to.
    pub default_plan: String,
    /// Emails of the users who may create and revoke platform API keys (lower-cased).
    pub platform_admins: Vec<String>,
    pub credit_types: Vec<CreditTypeConfig>,
    pub usage_based_units: Vec<UsageBasedUnitConfig>,
    pub plans: Vec<PlanConfig>,
    /// Credit packs sold through Stripe Checkout: each paid purchase becomes a `PAID` grant.
    #[serde(default)]
    pub credit_packs: Vec<CreditPackConfig>,
}

/// A pack of credits for sale (`createCreditPurchase`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPackConfig {
    /// Its id, e.g. `credits-100`.
    pub value: String,
    pub name: String,
    /// Credits granted per pack bought (at least 1).
    pub credits: i64,
    /// The plan feature the credits add to (default `credits`).
    #[serde(default = "credits_feature")]
    pub feature: String,
    /// The Stripe one-time price Checkout charges.
    pub stripe_price_id: String,
    /// Days until the granted credits expire; none: they never do.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

impl Config {
    /// The credit pack `value`.
    pub fn find_credit_pack(&self, value: &str) -> Option<&CreditPackConfig> {
        self.credit_packs.iter().find(|p| p.value == value)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connections in the pool (on SQLite: readers; writes go through one connection).
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing.
    pub acquire_timeout_ms: u64,
    /// SQLite only: how long a statement waits for a lock held by another process.
    pub sqlite_busy_timeout_ms: u64,
    /// Most guards the writer commits together.
    pub max_batch: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long an idempotency key is remembered (after that, the key is free again).
    pub retention_seconds: u64,
    /// How often expired keys are deleted.
    pub purge_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSettings {
    /// Deepest bracket nesting (`{ [ (`) of a document, and of its variables, checked before
    /// anything parses it.
    pub max_nesting: usize,
    /// Deepest selection nesting.
    pub max_depth: usize,
    /// Most fields a request may select in all; a field under a list counts once per item the
    /// list may hold (`memberships`: `tenants.max_per_user`; a connection: its `first`).
    pub max_complexity: usize,
    /// Most aliased fields in one document.
    pub max_aliases: usize,
    /// Most fields at the root of one operation.
    pub max_root_fields: usize,
    /// Most operations in one batched (JSON array) request.
    pub max_batch: usize,
    /// Longest document, in bytes.
    pub max_query_bytes: usize,
    /// Whether the schema can be introspected (GraphiQL needs it).
    pub introspection: bool,
    /// Whether `GET /graphql` serves the GraphiQL page.
    pub graphiql: bool,
    /// Most subscriptions one WebSocket connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// Most WebSocket connections one user (or API key) may hold open, per process.
    pub max_connections_per_user: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request body; past it, 413.
    pub max_body_bytes: usize,
    /// Origins browsers may call the API from (`https://app.example.com`), or `["*"]` for
    /// any. Empty: no CORS headers, so only same-origin pages can.
    pub cors_allowed_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` (its last address: the one the proxy
    /// in front appended). Only behind such a proxy.
    pub trust_forwarded_for: bool,
    /// How long a stopping server waits for requests in flight.
    pub shutdown_timeout_seconds: u64,
    /// How long a client may take to send a request body; past it, 408.
    pub body_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Passwords hashed (argon2, 19 MiB each) at once; 0: one per core.
    pub hashing_concurrency: usize,
    /// Hashes that may wait for a free hasher; past that, `RATE_LIMITED`.
    pub hashing_queue: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// How often a sender looks for events to fan out and deliveries due.
    pub worker_interval_ms: u64,
    /// Deliveries one process has in flight at once.
    pub concurrency: usize,
    /// How long an endpoint has to answer.
    pub timeout_ms: u64,
    /// How long a sender owns a delivery it claimed (longer than `timeout_ms`).
    pub claim_seconds: u64,
    /// The wait before each attempt after the first failed one (Standard Webhooks' schedule:
    /// immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); each wait is jittered by up to
    /// a tenth. Past the last, the delivery fails.
    pub retry_schedule_ms: Vec<u64>,
    /// An endpoint failing for this long (every delivery since) is disabled.
    pub disable_after_failing_hours: u64,
    /// Allow endpoints in private, loopback and link-local ranges (tests; never in production).
    pub allow_private_targets: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// The rules of every tenant and feature whose tenant set none of its own
    /// (`setCreditAlertRules`); checked at start-up.
    pub default_rules: Vec<AlertRuleConfig>,
}

/// One alert rule: `kind` `PERCENT_USED` (threshold 1–100) or `REMAINING_BELOW` (credits).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    pub kind: String,
    pub threshold: i64,
    #[serde(default)]
    pub notify_resolved: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSettings {
    /// How often grants past their expiry are marked `EXPIRED` (with their expiry movement),
    /// and reservations past theirs are released. An expired grant is never spent meanwhile
    /// (the guard checks the time itself); an expired reservation can no longer be confirmed.
    pub sweep_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Tenants one user may belong to (also bounds `me { memberships }`).
    pub max_per_user: u64,
    /// How long an invitation can be accepted.
    pub invitation_ttl_hours: u64,
    /// Where an invitation is accepted in the host app: `{token}` is replaced by the
    /// invitation's token (returned as `acceptUrl`; Tollgate sends no mail).
    #[serde(default)]
    pub invitation_accept_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` on this address of its own (`127.0.0.1:9090`) instead of the API's.
    #[serde(default)]
    pub addr: Option<String>,
    /// Require `Authorization: Bearer <token>` on `GET /metrics`. Never logged.
    #[serde(default, skip_serializing)]
    pub bearer_token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// `signIn` and `signUp` per client address, per minute (against password guessing).
    pub auth_per_minute: u32,
    /// `signIn` and `signUp` from all addresses together, per second (against one client with
    /// many addresses).
    pub auth_global_per_second: u32,
    /// Requests per signed-in user (anonymous: per address), per second, sustained…
    pub requests_per_second: u32,
    /// …and in a burst.
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` Tollgate puts in its tokens and requires.
    pub issuer: String,
    /// The `aud` Tollgate puts in its tokens and requires.
    pub audience: String,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_seconds: u64,
    /// An external identity provider whose RS256 tokens are accepted too (optional).
    #[serde(default)]
    pub external: Option<ExternalIdp>,
}

/// An identity provider (Auth0, Keycloak, …) whose RS256 tokens Tollgate accepts. Users are
/// found by the token's `sub`; a new `sub` with a verified `email` claim gets an account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIdp {
    /// The `iss` of its tokens (required).
    pub issuer: String,
    /// The `aud` its tokens must carry (required).
    pub audience: String,
    /// Its RS256 public key, PEM.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// Its JSON Web Key Set (as served at `/.well-known/jwks.json`), saved to a file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    /// `sk_…`: turns reporting, checkout and the billing portal on. Never logged.
    #[serde(default, skip_serializing)]
    pub secret_key: Option<SecretString>,
    /// `whsec_…`: turns `POST /webhooks/stripe` on. Never logged.
    #[serde(default, skip_serializing)]
    pub webhook_secret: Option<SecretString>,
    /// Where the Stripe API is (tests point it at a fake on 127.0.0.1).
    pub api_base: String,
    /// How often the reporter looks for due usage events.
    pub worker_interval_ms: u64,
    /// Most usage events one reporter claims at a time.
    pub batch_size: u64,
    /// Most meter events one reporter has in flight at once.
    pub concurrency: usize,
    /// Deliveries tried before a usage event is marked `FAILED`.
    pub max_attempts: i32,
    /// How long one Stripe call may take.
    pub request_timeout_ms: u64,
    /// How long a claimed usage event belongs to its reporter (must exceed the request
    /// timeout: then no two reporters ever send one event at the same time).
    pub claim_seconds: u64,
    /// First retry delay; doubled per attempt (with jitter) up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Where Checkout sends the customer back to.
    pub checkout_success_url: String,
    pub checkout_cancel_url: String,
    /// Where the billing portal's "return" link goes.
    pub portal_return_url: String,
    /// Subscription statuses that grant the plan of its price; any other status (incomplete,
    /// unpaid, paused, canceled, …) means `default_plan`.
    pub entitled_statuses: Vec<String>,
}

/// What one kind of action costs, and from which plan feature. The built-in values
/// (`credit-project-creation`, `credit-task-creation`) guard Tollgate's own projects and tasks;
/// any other value is an action of the SaaS's own, spent through `consumeCredits`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreditTypeConfig {
    pub value: String,
    pub name: String,
    pub description: String,
    pub amount: i64,
    /// The plan feature it spends.
    #[serde(default = "credits_feature")]
    pub feature: String,
    /// The Stripe meter this type's spends are reported to: resolved from
    /// `usage_based_units` at validation, never configured here.
    #[serde(skip)]
    pub meter: Option<Meter>,
}

impl CreditTypeConfig {
    /// A spend of `amount` of `feature` named by the caller, not by the catalogue: recorded
    /// as credit type `explicit`. Nothing shows a name or a description of it.
    pub fn explicit(amount: i64, feature: String) -> Self {
        CreditTypeConfig {
            value: EXPLICIT_CREDIT_TYPE.to_owned(),
            name: String::new(),
            description: String::new(),
            amount,
            feature,
            meter: None,
        }
    }
}

/// The plan feature a credit type spends unless it names another.
pub const CREDITS_FEATURE: &str = "credits";

fn credits_feature() -> String {
    CREDITS_FEATURE.to_owned()
}

/// The credit type a spend of an explicit amount (no catalogue entry) is recorded under.
pub const EXPLICIT_CREDIT_TYPE: &str = "explicit";

/// A usage-based unit that is billed through a Stripe Billing Meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub unit: String,
    pub event_name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsageBasedUnitConfig {
    pub name: String,
    pub title: String,
    pub title_plural: String,
    /// The Stripe meter's `event_name` (defaults to `name` when credit types feed the unit).
    #[serde(default)]
    pub event_name: Option<String>,
    /// The credit types whose spends are reported to this unit's meter (defaults:
    /// `project-credits` ← credit-project-creation, `task-credits` ← credit-task-creation).
    #[serde(default)]
    pub credit_types: Vec<String>,
    /// The metered Stripe price (`recurring[meter]` = this meter) Checkout adds to a
    /// subscription, if any.
    #[serde(default)]
    pub stripe_price_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub slug: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub features: Vec<PlanFeatureConfig>,
    /// The Stripe prices of this plan: a subscription webhook naming any of them puts the
    /// tenant on this plan; Checkout sells the first.
    #[serde(default)]
    pub stripe_price_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanFeatureConfig {
    pub name: String,
    pub title: String,
    #[serde(rename = "type")]
    pub kind: FeatureLimitType,
    #[serde(default)]
    pub value: i64,
}

/// Values given on the command line: they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub addr: Option<String>,
    pub database_url: Option<String>,
}

impl Config {
    /// Defaults, then `file` (if any), then the environment, then `overrides`; validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Env::prefixed("TOLLGATE_").ignore(&["CONFIG"]).split("__"));
        let mut config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if let Some(addr) = &overrides.addr {
            config.addr.clone_from(addr);
        }
        if let Some(url) = &overrides.database_url {
            config.database_url.clone_from(url);
        }
        config.validate()?;
        Ok(config)
    }

    /// The built-in configuration, as `cargo run` uses it with no file and no environment
    /// (not yet validated).
    pub fn defaults() -> anyhow::Result<Self> {
        Figment::from(Toml::string(DEFAULTS))
            .extract()
            .map_err(|e| anyhow::anyhow!("the built-in configuration does not load: {e}"))
    }

    /// Checks what serde cannot: references between keys and the fixed credit type values.
    pub fn validate(&mut self) -> anyhow::Result<()> {
        // Credit types: the file's replace the built-in ones of the same value and add the
        // others; the built-in ones the file leaves out keep their defaults.
        let mut merged = Config::defaults()?.credit_types;
        let builtin = merged.len();
        for (i, ct) in self.credit_types.iter().enumerate() {
            let key = format!("credit_types[{i}]");
            let valid_value = (1..=64).contains(&ct.value.len())
                && ct.value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            if !valid_value || ct.value == EXPLICIT_CREDIT_TYPE {
                bail!(
                    "invalid configuration: {key}.value = {:?} must be 1-64 of a-z 0-9 - _ . and not {EXPLICIT_CREDIT_TYPE:?}",
                    ct.value
                );
            }
            if self.credit_types[..i]
                .iter()
                .any(|other| other.value == ct.value)
            {
                bail!(
                    "invalid configuration: {key}.value = {:?} is defined twice",
                    ct.value
                );
            }
            if ct.amount < 1 {
                bail!("invalid configuration: {key}.amount must be at least 1");
            }
            if ct.name.trim().is_empty() {
                bail!("invalid configuration: {key}.name must not be empty");
            }
            match merged[..builtin].iter_mut().find(|d| d.value == ct.value) {
                Some(slot) => *slot = ct.clone(),
                None => merged.push(ct.clone()),
            }
        }
        let configured = std::mem::replace(&mut self.credit_types, merged);

        if self.plans.is_empty() {
            bail!("invalid configuration: plans must define at least one plan");
        }
        for (i, plan) in self.plans.iter().enumerate() {
            if plan.slug.trim().is_empty() {
                bail!("invalid configuration: plans[{i}].slug must not be empty");
            }
            if self.plans[..i].iter().any(|p| p.slug == plan.slug) {
                bail!(
                    "invalid configuration: plans[{i}].slug = {:?} is defined twice",
                    plan.slug
                );
            }
            for (j, f) in plan.features.iter().enumerate() {
                if f.value < 0 {
                    bail!("invalid configuration: plans[{i}].features[{j}].value must be >= 0");
                }
                if plan.features[..j].iter().any(|g| g.name == f.name) {
                    bail!(
                        "invalid configuration: plans[{i}].features[{j}].name = {:?} is defined twice",
                        f.name
                    );
                }
            }
        }
        for (i, pack) in self.credit_packs.iter().enumerate() {
            let key = format!("credit_packs[{i}]");
            if pack.value.trim().is_empty() || pack.name.trim().is_empty() {
                bail!("invalid configuration: {key}.value and .name must not be empty");
            }
            if self.credit_packs[..i].iter().any(|p| p.value == pack.value) {
                bail!(
                    "invalid configuration: {key}.value = {:?} is defined twice",
                    pack.value
                );
            }
            if !(1..=1_000_000_000).contains(&pack.credits) {
                bail!("invalid configuration: {key}.credits must be between 1 and 1000000000");
            }
            if pack.stripe_price_id.trim().is_empty() {
                bail!("invalid configuration: {key}.stripe_price_id must not be empty");
            }
            if !self
                .plans
                .iter()
                .any(|p| p.features.iter().any(|f| f.name == pack.feature))
            {
                bail!(
                    "invalid configuration: {key}.feature = {:?} is not a feature of any plan",
                    pack.feature
                );
            }
        }
        if !self.plans.iter().any(|p| p.slug == self.default_plan) {
            bail!(
                "invalid configuration: default_plan = {:?} names no plan in [[plans]]",
                self.default_plan
            );
        }
        // A built-in type spending `credits` that no plan defines is simply not included
        // (a file's plans may leave projects and tasks out); any other feature must exist.
        let builtin = Config::defaults()?.credit_types;
        for (i, ct) in configured.iter().enumerate() {
            if ct.feature == CREDITS_FEATURE && builtin.iter().any(|b| b.value == ct.value) {
                continue;
            }
            let defined = self
                .plans
                .iter()
                .any(|p| p.features.iter().any(|f| f.name == ct.feature));
            if !defined {
                bail!(
                    "invalid configuration: credit_types[{i}].feature = {:?} is not a feature of any plan",
                    ct.feature
                );
            }
        }
        for email in &mut self.platform_admins {
            *email = email.trim().to_lowercase();
        }
        if self.token_ttl_seconds == 0 {
            bail!("invalid configuration: token_ttl_seconds must be > 0");
        }
        if self.idempotency.retention_seconds == 0 || self.idempotency.purge_interval_seconds == 0 {
            bail!(
                "invalid configuration: idempotency.retention_seconds and idempotency.purge_interval_seconds must be > 0"
            );
        }
        if self.database.max_connections == 0 {
            bail!("invalid configuration: database.max_connections must be > 0");
        }
        let r = &self.rate_limit;
        if r.enabled
            && [
                r.auth_per_minute,
                r.auth_global_per_second,
                r.requests_per_second,
                r.burst,
            ]
            .contains(&0)
        {
            bail!(
                "invalid configuration: rate_limit.auth_per_minute, rate_limit.auth_global_per_second, rate_limit.requests_per_second and rate_limit.burst must be > 0 (or rate_limit.enabled = false)"
            );
        }
        if self.auth.hashing_queue == 0 {
            bail!("invalid configuration: auth.hashing_queue must be > 0");
        }
        if self.tenants.max_per_user == 0 {
            bail!("invalid configuration: tenants.max_per_user must be > 0");
        }
        if self.tenants.invitation_ttl_hours == 0 {
            bail!("invalid configuration: tenants.invitation_ttl_hours must be > 0");
        }
        if let Some(url) = &self.tenants.invitation_accept_url
            && !url.contains("{token}")
        {
            bail!("invalid configuration: tenants.invitation_accept_url must contain {{token}}");
        }
        if self.http.body_timeout_seconds == 0 {
            bail!("invalid configuration: http.body_timeout_seconds must be > 0");
        }
        if self
            .metrics
            .bearer_token
            .as_ref()
            .is_some_and(|t| secrecy::ExposeSecret::expose_secret(t).len() < 16)
        {
            bail!("invalid configuration: metrics.bearer_token must be at least 16 characters");
        }
        let g = &self.graphql;
        if [
            g.max_nesting,
            g.max_depth,
            g.max_complexity,
            g.max_root_fields,
            g.max_batch,
            g.max_query_bytes,
        ]
        .contains(&0)
        {
            bail!("invalid configuration: graphql limits must be > 0");
        }
        if self.http.max_body_bytes < 1024 {
            bail!("invalid configuration: http.max_body_bytes must be at least 1024");
        }
        if let Some(idp) = &self.jwt.external
            && idp.public_key_file.is_none() == idp.jwks_file.is_none()
        {
            bail!(
                "invalid configuration: jwt.external needs exactly one of public_key_file and jwks_file"
            );
        }
        self.validate_stripe()
    }

    /// Stripe's part: settings that keep the reporter safe, prices naming one plan, and each
    /// credit type feeding at most one meter (recorded on the credit type as its `meter`).
    fn validate_stripe(&mut self) -> anyhow::Result<()> {
        let s = &self.stripe;
        if s.worker_interval_ms == 0 || s.batch_size == 0 || s.concurrency == 0 {
            bail!(
                "invalid configuration: stripe.worker_interval_ms, stripe.batch_size and stripe.concurrency must be > 0"
            );
        }
        const STATUSES: [&str; 8] = [
            "active",
            "trialing",
            "past_due",
            "incomplete",
            "incomplete_expired",
            "unpaid",
            "paused",
            "canceled",
        ];
        if let Some(bad) = s
            .entitled_statuses
            .iter()
            .find(|st| !STATUSES.contains(&st.as_str()))
        {
            bail!(
                "invalid configuration: stripe.entitled_statuses: {bad:?} is not a Stripe subscription status ({})",
                STATUSES.join(", ")
            );
        }
        if s.max_attempts <= 0 {
            bail!("invalid configuration: stripe.max_attempts must be > 0");
        }
        if s.claim_seconds.saturating_mul(1000) <= s.request_timeout_ms {
            bail!(
                "invalid configuration: stripe.claim_seconds must be longer than stripe.request_timeout_ms"
            );
        }
        let w = &self.webhooks;
        if w.claim_seconds.saturating_mul(1000) <= w.timeout_ms {
            bail!(
                "invalid configuration: webhooks.claim_seconds must be longer than webhooks.timeout_ms"
            );
        }
        if w.concurrency == 0 {
            bail!("invalid configuration: webhooks.concurrency must be > 0");
        }
        for (i, plan) in self.plans.iter().enumerate() {
            for price in &plan.stripe_price_ids {
                if let Some(other) = self.plans[..i]
                    .iter()
                    .find(|p| p.stripe_price_ids.contains(price))
                {
                    bail!(
                        "invalid configuration: plans[{i}].stripe_price_ids: {price:?} is already a price of plan {:?}",
                        other.slug
                    );
                }
            }
        }
        for ct in &mut self.credit_types {
            ct.meter = None;
        }
        // Without any Stripe key there is no billing: the guard writes no usage events at all
        // (with only the webhook secret, events are kept until a secret key sends them).
        let billing = s.secret_key.is_some() || s.webhook_secret.is_some();
        let mut fed: Vec<(String, String)> = Vec::new();
        for (i, unit) in self.usage_based_units.iter_mut().enumerate() {
            if unit.credit_types.is_empty() {
                unit.credit_types = default_feeds(&unit.name);
            }
            if unit.credit_types.is_empty() {
                continue;
            }
            let event_name = unit.event_name.get_or_insert_with(|| unit.name.clone());
            for value in &unit.credit_types {
                let Some(ct) = self.credit_types.iter_mut().find(|c| &c.value == value) else {
                    bail!(
                        "invalid configuration: usage_based_units[{i}].credit_types: {value:?} is not a known credit type"
                    );
                };
                if let Some((_, other)) = fed.iter().find(|(v, _)| v == value) {
                    bail!(
                        "invalid configuration: usage_based_units[{i}].credit_types: {value:?} already feeds unit {other:?}"
                    );
                }
                fed.push((value.clone(), unit.name.clone()));
                if billing {
                    ct.meter = Some(Meter {
                        unit: unit.name.clone(),
                        event_name: event_name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether a Stripe subscription status grants its plan (`stripe.entitled_statuses`).
    pub fn is_entitled(&self, status: &str) -> bool {
        self.stripe.entitled_statuses.iter().any(|s| s == status)
    }

    /// The plan a Stripe price belongs to.
    pub fn plan_for_price(&self, price_id: &str) -> Option<&PlanConfig> {
        self.plans
            .iter()
            .find(|p| p.stripe_price_ids.iter().any(|id| id == price_id))
    }

    /// The catalogue's credit type `value`, if there is one.
    pub fn find_credit_type(&self, value: &str) -> Option<&CreditTypeConfig> {
        self.credit_types.iter().find(|c| c.value == value)
    }

    /// The credit type configured as `value` (validation guarantees the built-in ones).
    pub fn credit_type(&self, value: &str) -> Result<CreditTypeConfig, crate::error::AppError> {
        self.find_credit_type(value).cloned().ok_or_else(|| {
            crate::error::AppError::Internal(anyhow::anyhow!(
                "credit type {value} is not configured"
            ))
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

/// The credit types that feed a unit when its config names none.
fn default_feeds(unit: &str) -> Vec<String> {
    match unit {
        "project-credits" => vec!["credit-project-creation".to_owned()],
        "task-credits" => vec!["credit-task-creation".to_owned()],
        _ => Vec::new(),
    }
}

/// Makes `data_dir` exist, for state Tollgate generates on first start.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_configuration_loads_and_validates() {
        let mut config = Config::defaults().unwrap();
        config.validate().unwrap();
        assert_eq!(config.default_plan, "free");
        let slugs: Vec<&str> = config.plans.iter().map(|p| p.slug.as_str()).collect();
        assert_eq!(slugs, ["free", "pro", "enterprise"]);
        assert_eq!(config.plans[0].features[0].kind, FeatureLimitType::Monthly);
        for value in ["credit-project-creation", "credit-task-creation"] {
            assert!(config.credit_type(value).is_ok(), "{value}");
        }
        assert_eq!(config.graphql.max_nesting, 64);
        assert!(config.jwt_secret.is_none() && config.stripe.secret_key.is_none());
    }
}
