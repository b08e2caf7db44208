//! Users, tenants and memberships, and the inputs that create them.

use async_graphql::{
    ComplexObject, Context, Enum, ErrorExtensions, ID, InputObject, ResultExt, SimpleObject,
};
use entity::{tenant, tenant_subscription, user};

use super::{Plan, TenantSubscription, parse_id};
use crate::{
    error::AppError,
    graphql::{loaders::Loaders, state, viewer},
    plans::PlanWithFeatures,
    tenants,
};

/// A member's role in a tenant.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "entity::tenant_user::Role")]
pub enum Role {
    /// Created the tenant; can do everything.
    Owner,
    /// Manages the tenant and its billing.
    Admin,
    /// Uses the tenant's resources.
    Member,
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
    /// (Counts in a request's complexity as `tenants.max_per_user` items; default 20.)
    #[graphql(complexity = "super::LIST_COMPLEXITY * child_complexity")]
    async fn memberships(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Membership>> {
        let db = &state(ctx)?.db.read;
        let Some(me) = viewer(ctx).id() else {
            return Ok(Vec::new());
        };
        let id = parse_id(&self.id, "id").map_err(|e| e.extend())?;
        let mut theirs = tenants::memberships(db, id).await.map_err(|e| e.extend())?;
        if id != me {
            let mine = tenants::memberships(db, me).await.map_err(|e| e.extend())?;
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
    /// Your own id for the tenant, if you gave one.
    pub external_id: Option<String>,
}

impl From<tenant::Model> for Tenant {
    fn from(t: tenant::Model) -> Self {
        Tenant {
            id: ID(t.id.to_string()),
            slug: t.slug,
            name: t.name,
            external_id: t.external_id,
        }
    }
}

/// A tenant's subscription and plan, through the request's `Loaders`.
async fn load_subscription(
    ctx: &Context<'_>,
    tenant: &Tenant,
) -> async_graphql::Result<Option<(tenant_subscription::Model, Option<PlanWithFeatures>)>> {
    let id = parse_id(&tenant.id, "id").map_err(|e| e.extend())?;
    let loader = ctx
        .data::<Loaders>()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("no Loaders")).extend())?
        .subscriptions();
    loader.load_one(id).await.map_err(|e| e.extend())
}

#[ComplexObject]
impl Tenant {
    /// The plan the tenant is subscribed to.
    async fn plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Plan>> {
        let subscription = load_subscription(ctx, self).await?;
        Ok(subscription.and_then(|(_, plan)| plan).map(Plan::from))
    }

    /// The tenant's subscription: plan, status and, once Stripe manages it, the billing
    /// period. Members only (as the tenant).
    async fn subscription(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<TenantSubscription>> {
        let subscription = load_subscription(ctx, self).await?;
        Ok(subscription.map(|(s, plan)| TenantSubscription {
            plan: plan.map(Plan::from),
            status: s.status,
            current_period_start: s.current_period_start,
            current_period_end: s.current_period_end,
            cancel_at_period_end: s.cancel_at_period_end,
        }))
    }

    /// The tenant's credit grants, newest first (at most 500): what each holds, until when.
    /// Members, or a key with `CREDITS_READ`.
    #[graphql(complexity = "super::LIST_COMPLEXITY * child_complexity")]
    async fn credit_grants(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::CreditGrant>> {
        let tenant_id = parse_id(&self.id, "id").extend()?;
        let db = &state(ctx)?.db;
        let grants = crate::credits::grants::list(db, super::super::viewer(ctx), tenant_id)
            .await
            .extend()?;
        Ok(grants.into_iter().map(super::CreditGrant::from).collect())
    }

    /// The tenant's projects, newest first, `first` (at most 100) at a time; deleted ones
    /// left out.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn projects(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::ProjectConnection> {
        let tenant_id = parse_id(&self.id, "id").extend()?;
        let (first, after_id) = super::page(first, after.as_deref()).extend()?;
        let db = &state(ctx)?.db;
        let (rows, more) = crate::projects::projects(db, tenant_id, first, after_id)
            .await
            .extend()?;
        let rows = rows
            .into_iter()
            .map(|row| (super::encode_cursor(row.id), super::Project::from(row)))
            .collect();
        Ok(super::ProjectConnection::new(rows, after.is_some(), more))
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
    /// Your own id for the tenant (1 to 255 characters; unique): address it by this in
    /// `consumeCredits`, `checkCredits` and `tenantByExternalId`.
    pub external_id: Option<String>,
    /// Its OWNER, by email (an existing user): required when a platform API key creates the
    /// tenant; a signed-in user owns the tenants they create.
    pub owner_email: Option<String>,
}
