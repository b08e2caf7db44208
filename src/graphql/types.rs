//! The GraphQL-facing types, built from entities and domain values with `From`, so that a new
//! column never changes the public schema by accident. Their `///` lines are the
//! descriptions clients read in `schema.graphql` and GraphiQL.

use async_graphql::{ComplexObject, Context, Enum, ErrorExtensions, ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{credit, project, task, tenant, user};
use uuid::Uuid;

use crate::{
    config::{CreditTypeConfig, UsageBasedUnitConfig},
    credits::{self, FeatureUsage, PlanWithFeatures},
    error::AppError,
    graphql::{loaders::UserLoader, state, viewer},
    tenants,
};

/// Saturates a stored 64-bit count into GraphQL's 32-bit `Int`.
fn int(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX })
}

/// Parses a GraphQL `ID` argument, naming the argument when it is not a Tollgate id.
pub fn parse_id(id: &ID, argument: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id.as_str())
        .map_err(|_| AppError::bad_input(format!("{argument} is not a valid id")))
}

/// How a plan limits a feature.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::credits::FeatureLimitType")]
pub enum FeatureLimitType {
    /// The plan does not include the feature: every use is refused.
    NotIncluded,
    /// Included without a limit; uses are still recorded.
    Included,
    /// Up to `value` uses per billing period (the calendar month in UTC unless Stripe says otherwise).
    Monthly,
    /// Up to `value` uses over the tenant's lifetime.
    Max,
    /// No limit; uses are still recorded.
    Unlimited,
}

/// A member's role in a tenant.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::tenants::Role")]
pub enum Role {
    /// Created the tenant; can do everything.
    Owner,
    /// Manages the tenant and its billing.
    Admin,
    /// Uses the tenant's resources.
    Member,
}

/// A kind of guarded action and what it costs.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditType {
    /// Stable identifier, e.g. `credit-task-creation`.
    pub value: String,
    /// Human-readable name.
    pub name: String,
    /// When these credits are spent.
    pub description: String,
    /// Credits one action costs.
    pub amount: i32,
}

impl From<&CreditTypeConfig> for CreditType {
    fn from(c: &CreditTypeConfig) -> Self {
        CreditType {
            value: c.value.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            amount: int(c.amount),
        }
    }
}

/// A unit usage is measured and billed in.
#[derive(SimpleObject, Clone, Debug)]
pub struct UsageBasedUnit {
    /// Stable identifier, e.g. `task-credits`.
    pub name: String,
    /// Singular label.
    pub title: String,
    /// Plural label.
    pub title_plural: String,
}

impl From<&UsageBasedUnitConfig> for UsageBasedUnit {
    fn from(u: &UsageBasedUnitConfig) -> Self {
        UsageBasedUnit {
            name: u.name.clone(),
            title: u.title.clone(),
            title_plural: u.title_plural.clone(),
        }
    }
}

/// A subscription plan.
#[derive(SimpleObject, Clone, Debug)]
pub struct Plan {
    /// The plan's id.
    pub id: ID,
    /// Stable identifier, e.g. `free`.
    pub slug: String,
    /// Display name.
    pub title: String,
    /// Longer text for a pricing page.
    pub description: Option<String>,
    /// The plan's limits, in display order.
    pub features: Vec<PlanFeature>,
}

impl From<PlanWithFeatures> for Plan {
    fn from(p: PlanWithFeatures) -> Self {
        Plan {
            id: ID(p.plan.id.to_string()),
            slug: p.plan.slug,
            title: p.plan.title,
            description: p.plan.description,
            features: p
                .features
                .into_iter()
                .map(|f| PlanFeature {
                    name: f.name,
                    title: f.title,
                    kind: f
                        .kind
                        .parse::<credits::FeatureLimitType>()
                        .map_or(FeatureLimitType::NotIncluded, Into::into),
                    value: int(f.value),
                    order: f.order,
                })
                .collect(),
        }
    }
}

/// One limit of a plan.
#[derive(SimpleObject, Clone, Debug)]
pub struct PlanFeature {
    /// Stable identifier, e.g. `credits`.
    pub name: String,
    /// Display name.
    pub title: String,
    /// How `value` limits the feature.
    #[graphql(name = "type")]
    pub kind: FeatureLimitType,
    /// The limit, for `MONTHLY` and `MAX`.
    pub value: i32,
    /// Display order within the plan.
    pub order: i32,
}

/// Where a tenant stands on one feature of its plan.
#[derive(SimpleObject, Clone, Debug)]
pub struct PlanFeatureUsage {
    /// The feature, e.g. `credits`.
    pub name: String,
    /// Display name.
    pub title: String,
    /// How the tenant's plan limits the feature.
    #[graphql(name = "type")]
    pub kind: FeatureLimitType,
    /// The limit, for `MONTHLY` and `MAX`.
    pub value: i32,
    /// Used in the current period (lifetime for `MAX`).
    pub used: i32,
    /// Left in the current period; null when unlimited.
    pub remaining: Option<i32>,
    /// True for `INCLUDED` and `UNLIMITED`.
    pub unlimited: bool,
    /// Whether the feature can be used now.
    pub enabled: bool,
    /// Why not, when `enabled` is false; null when enabled.
    pub message: Option<String>,
    /// The counting period, for `MONTHLY` features.
    pub period: Option<UsagePeriod>,
}

impl From<FeatureUsage> for PlanFeatureUsage {
    fn from(u: FeatureUsage) -> Self {
        PlanFeatureUsage {
            remaining: u.remaining().map(int),
            unlimited: matches!(
                u.kind,
                credits::FeatureLimitType::Included | credits::FeatureLimitType::Unlimited
            ),
            period: u.period.and_then(|p| {
                Some(UsagePeriod {
                    start: p.start,
                    end: p.end?,
                })
            }),
            name: u.name,
            title: u.title,
            kind: u.kind.into(),
            value: int(u.value),
            used: int(u.used),
            enabled: u.enabled,
            message: u.message,
        }
    }
}

/// A counting period in UTC.
#[derive(SimpleObject, Clone, Copy, Debug)]
pub struct UsagePeriod {
    /// Inclusive.
    pub start: DateTime<Utc>,
    /// Exclusive: when the usage resets.
    pub end: DateTime<Utc>,
}

/// One row of the credit ledger: credits a guarded action spent.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Credit {
    /// The ledger row's id.
    pub id: ID,
    /// When the credits were spent.
    pub created_at: DateTime<Utc>,
    /// The credit type's value, e.g. `credit-task-creation`.
    #[graphql(name = "type")]
    pub kind: String,
    /// Credits spent.
    pub amount: i32,
    /// The id of the resource the credits paid for (the new Project's or Task's id).
    pub object_id: Option<String>,
    #[graphql(skip)]
    pub user_id: Option<Uuid>,
}

impl From<credit::Model> for Credit {
    fn from(c: credit::Model) -> Self {
        Credit {
            id: ID(c.id.to_string()),
            created_at: c.created_at,
            kind: c.kind,
            amount: int(c.amount),
            object_id: c.object_id,
            user_id: c.user_id,
        }
    }
}

#[ComplexObject]
impl Credit {
    /// Who spent the credits (batched: one query for a whole page).
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(id) = self.user_id else {
            return Ok(None);
        };
        let loader = ctx.data::<async_graphql::dataloader::DataLoader<UserLoader>>()?;
        let user = loader
            .load_one(id)
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("loading users: {e}")).extend())?;
        Ok(user.map(User::from))
    }

    /// The credit type, as currently configured.
    async fn credit_type(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<CreditType>> {
        Ok(state(ctx)?
            .config
            .credit_types
            .iter()
            .find(|c| c.value == self.kind)
            .map(CreditType::from))
    }
}

/// A page of the credit ledger (a Relay connection), newest first.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditConnection {
    /// The page's rows with their cursors.
    pub edges: Vec<CreditEdge>,
    /// The page's rows.
    pub nodes: Vec<Credit>,
    /// Where the page stands in the ledger.
    pub page_info: PageInfo,
}

/// A ledger row and its cursor.
#[derive(SimpleObject, Clone, Debug)]
pub struct CreditEdge {
    /// Pass as `after` to get the rows that follow this one.
    pub cursor: String,
    /// The ledger row.
    pub node: Credit,
}

/// Relay page information.
#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    /// Whether rows follow this page.
    pub has_next_page: bool,
    /// Whether rows precede this page (true when `after` was given).
    pub has_previous_page: bool,
    /// The cursor of the first row of the page.
    pub start_cursor: Option<String>,
    /// The cursor of the last row of the page: pass it as `after` for the next page.
    pub end_cursor: Option<String>,
}

impl CreditConnection {
    /// A page from `(cursor, row)` pairs.
    pub fn new(rows: Vec<(String, Credit)>, has_previous_page: bool, has_next_page: bool) -> Self {
        let page_info = PageInfo {
            has_next_page,
            has_previous_page,
            start_cursor: rows.first().map(|(c, _)| c.clone()),
            end_cursor: rows.last().map(|(c, _)| c.clone()),
        };
        CreditConnection {
            nodes: rows.iter().map(|(_, n)| n.clone()).collect(),
            edges: rows
                .into_iter()
                .map(|(cursor, node)| CreditEdge { cursor, node })
                .collect(),
            page_info,
        }
    }
}

/// Filters for `creditHistory`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct CreditHistoryFilter {
    /// Only this credit type (its value).
    #[graphql(name = "type")]
    pub kind: Option<String>,
    /// Only credits this user spent.
    pub user_id: Option<ID>,
    /// Only credits spent at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only credits spent before this time.
    pub to: Option<DateTime<Utc>>,
}

/// A token and the user it signs in.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// The signed-in user.
    pub user: User,
}

/// A person who signs in.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct User {
    /// The user's id (the `sub` of their tokens).
    pub id: ID,
    /// Lower-cased email address.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
}

impl From<user::Model> for User {
    fn from(u: user::Model) -> Self {
        User {
            id: ID(u.id.to_string()),
            email: u.email,
            name: u.name,
        }
    }
}

#[ComplexObject]
impl User {
    /// The tenants this user belongs to. For another user, only the tenants you share.
    async fn memberships(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Membership>> {
        let db = &state(ctx)?.db.read;
        let Some(me) = viewer(ctx).user() else {
            return Ok(Vec::new());
        };
        let id = parse_id(&self.id, "id").map_err(|e| e.extend())?;
        let mut theirs = tenants::memberships(db, id).await.map_err(|e| e.extend())?;
        if id != me.id {
            let mine = tenants::memberships(db, me.id)
                .await
                .map_err(|e| e.extend())?;
            theirs.retain(|(t, _)| mine.iter().any(|(m, _)| m.id == t.id));
        }
        Ok(theirs
            .into_iter()
            .map(|(tenant, role)| Membership {
                tenant: tenant.into(),
                role: role.into(),
            })
            .collect())
    }
}

/// A user's place in a tenant.
#[derive(SimpleObject, Clone, Debug)]
pub struct Membership {
    /// The tenant.
    pub tenant: Tenant,
    /// The user's role in it.
    pub role: Role,
}

/// A workspace: holds a plan and spends credits.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Tenant {
    /// The tenant's id.
    pub id: ID,
    /// Unique, URL-safe name.
    pub slug: String,
    /// Display name.
    pub name: String,
}

impl From<tenant::Model> for Tenant {
    fn from(t: tenant::Model) -> Self {
        Tenant {
            id: ID(t.id.to_string()),
            slug: t.slug,
            name: t.name,
        }
    }
}

#[ComplexObject]
impl Tenant {
    /// The plan the tenant is subscribed to.
    async fn plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Plan>> {
        let id = parse_id(&self.id, "id").map_err(|e| e.extend())?;
        let plan = credits::tenant_plan(&state(ctx)?.db.read, id)
            .await
            .map_err(|e| e.extend())?;
        Ok(plan.map(Plan::from))
    }
}

/// A project (creating one costs `credit-project-creation`).
#[derive(SimpleObject, Clone, Debug)]
pub struct Project {
    /// The project's id (the `objectId` of the credits that paid for it).
    pub id: ID,
    /// The tenant that owns it.
    pub tenant_id: ID,
    /// Display name.
    pub name: String,
    /// Optional longer text.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<project::Model> for Project {
    fn from(p: project::Model) -> Self {
        Project {
            id: ID(p.id.to_string()),
            tenant_id: ID(p.tenant_id.to_string()),
            name: p.name,
            description: p.description,
            created_at: p.created_at,
        }
    }
}

/// A task in a project (creating one costs `credit-task-creation`).
#[derive(SimpleObject, Clone, Debug)]
pub struct Task {
    /// The task's id (the `objectId` of the credits that paid for it).
    pub id: ID,
    /// The project it belongs to.
    pub project_id: ID,
    /// What to do.
    pub title: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<task::Model> for Task {
    fn from(t: task::Model) -> Self {
        Task {
            id: ID(t.id.to_string()),
            project_id: ID(t.project_id.to_string()),
            title: t.title,
            created_at: t.created_at,
        }
    }
}

/// Input of `signUp`. (No `Debug`: it holds a password.)
#[derive(InputObject)]
pub struct SignUpInput {
    /// Your email address; it signs you in.
    pub email: String,
    /// At least 8 characters.
    pub password: String,
    /// Your display name (1 to 100 characters).
    pub name: String,
}

/// Input of `createTenant`.
#[derive(InputObject, Debug)]
pub struct CreateTenantInput {
    /// Display name (1 to 100 characters).
    pub name: String,
    /// Lower-case letters, digits and inner hyphens; unique.
    pub slug: String,
}

/// Input of `createProject`.
#[derive(InputObject, Debug)]
pub struct CreateProjectInput {
    /// 1 to 200 characters.
    pub name: String,
    /// Optional longer text (at most 2,000 characters).
    pub description: Option<String>,
}

/// Input of `createTask`.
#[derive(InputObject, Debug)]
pub struct CreateTaskInput {
    /// 1 to 200 characters.
    pub title: String,
}
