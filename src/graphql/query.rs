//! Query resolvers: read arguments, call the domain, map the result.

use async_graphql::{Context, ErrorExtensions, ID, Object, ResultExt};

use crate::{
    auth::{self, ApiScope},
    billing,
    consume::{self, Cost},
    credits::{self, HistoryFilter},
    error::AppError,
    graphql::{
        state,
        types::{
            ApiKey, Credit, CreditAlert, CreditAlertRules, CreditCheck, CreditConnection,
            CreditHistoryFilter, CreditPack, CreditReservation, CreditType, Invitation, Member,
            Plan, PlanFeatureUsage, Project, Task, Tenant, UsageBasedUnit, UsageReport,
            UsageReportConnection, User, WebhookDelivery, WebhookDeliveryConnection,
            WebhookEndpoint, encode_cursor, page, page_complexity, parse_id, tenant_ref,
        },
        viewer, webhook_caller,
    },
    members, plans, projects, tenants,
};

/// What can be read. Catalogue fields are public; tenant fields are for members.
pub struct Query;

/// What can be read. Catalogue fields are public; tenant fields are for members.
#[Object]
impl Query {
    /// What each kind of guarded action costs. Public.
    async fn credit_types(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<CreditType>> {
        Ok(state(ctx)?
            .config
            .credit_types
            .iter()
            .map(CreditType::from)
            .collect())
    }

    /// The plans on offer, with their limits. Public.
    async fn plans(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Plan>> {
        let plans = plans::plans(&state(ctx)?.db.read).await.extend()?;
        Ok(plans.into_iter().map(Plan::from).collect())
    }

    /// The units usage is measured in. Public.
    async fn usage_based_units(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<UsageBasedUnit>> {
        Ok(state(ctx)?
            .config
            .usage_based_units
            .iter()
            .map(UsageBasedUnit::from)
            .collect())
    }

    /// The signed-in user; null when anonymous.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let me = auth::me(&state(ctx)?.db, viewer(ctx)).await.extend()?;
        Ok(me.map(User::from))
    }

    /// A tenant by your own id for it (`externalId`), if you may see it: a member, or an API
    /// key that may touch it. Null when none has that id.
    async fn tenant_by_external_id(
        &self,
        ctx: &Context<'_>,
        external_id: String,
    ) -> async_graphql::Result<Option<Tenant>> {
        let db = &state(ctx)?.db;
        let id = match tenants::by_external_id(db, &external_id).await {
            Ok(id) => id,
            Err(AppError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.extend()),
        };
        let tenant = tenants::tenant(db, viewer(ctx), id).await;
        Ok(tenant.extend()?.map(Tenant::from))
    }

    /// A project of a tenant you are a member of; null when deleted or not yours.
    async fn project(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Project>> {
        let id = parse_id(&id, "id").extend()?;
        let project = auth::visible_project(&state(ctx)?.db, viewer(ctx), id).await;
        Ok(project.extend()?.map(Project::from))
    }

    /// A task of a tenant you are a member of; null when it or its project is deleted, or not
    /// yours.
    async fn task(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Task>> {
        let id = parse_id(&id, "id").extend()?;
        let task = projects::visible_task(&state(ctx)?.db, viewer(ctx), id).await;
        Ok(task.extend()?.map(Task::from))
    }

    /// The credit packs for sale (`createCreditPurchase`).
    async fn credit_packs(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<CreditPack>> {
        let config = &state(ctx)?.config;
        Ok(config.credit_packs.iter().map(CreditPack::from).collect())
    }

    /// A reservation of a tenant (members, or a key with `CREDITS_READ` or
    /// `CREDITS_CONSUME`); null when the tenant has none with this id.
    async fn reservation(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        id: ID,
    ) -> async_graphql::Result<Option<CreditReservation>> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let id = parse_id(&id, "id").extend()?;
        let found = crate::reservations::get(&state(ctx)?.db, viewer(ctx), tenant_id, id).await;
        Ok(found.extend()?.map(|r| CreditReservation::new(r, false)))
    }

    /// A tenant's members, the OWNER first (members only).
    async fn members(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
    ) -> async_graphql::Result<Vec<Member>> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let rows = members::members(&state(ctx)?.db, viewer(ctx), tenant_id).await;
        Ok(rows.extend()?.into_iter().map(Member::from).collect())
    }

    /// A tenant's pending invitations, newest first (OWNER and ADMIN).
    async fn invitations(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
    ) -> async_graphql::Result<Vec<Invitation>> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let rows = members::invitations(&state(ctx)?.db, viewer(ctx), tenant_id).await;
        Ok(rows.extend()?.into_iter().map(Invitation::from).collect())
    }

    /// A tenant you are a member of.
    async fn tenant(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Tenant>> {
        let id = parse_id(&id, "id").extend()?;
        let tenant = tenants::tenant(&state(ctx)?.db, viewer(ctx), id).await;
        Ok(tenant.extend()?.map(Tenant::from))
    }

    /// A tenant's usage of one feature of its plan (default `credits`); null when no plan
    /// defines the feature. Members only.
    async fn plan_feature_usage(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = "credits")] feature: String,
    ) -> async_graphql::Result<Option<PlanFeatureUsage>> {
        let state = state(ctx)?;
        let db = &state.db;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let now = state.clock.now();
        let usage = credits::usage(
            db,
            viewer(ctx),
            tenant_id,
            &feature,
            now,
            ApiScope::CreditsRead,
        );
        let usage = usage.await;
        Ok(usage.extend()?.map(PlanFeatureUsage::from))
    }

    /// Whether an action would be allowed now — a catalogue `creditType`, or an explicit
    /// `amount` of a `feature` — by the same rule the guard applies. Writes nothing, holds
    /// nothing: a spend may still be refused if others spend first. Members only.
    #[allow(clippy::too_many_arguments)]
    async fn check_credits(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        tenant_external_id: Option<String>,
        credit_type: Option<String>,
        amount: Option<i32>,
        feature: Option<String>,
    ) -> async_graphql::Result<CreditCheck> {
        let state = state(ctx)?;
        let external = tenant_external_id.as_deref();
        let tenant_id = tenant_ref(&state.db, tenant_id.as_ref(), external)
            .await
            .extend()?;
        let cost = Cost::from_input(credit_type, amount.map(i64::from), feature, state).extend()?;
        let check = consume::check(state, viewer(ctx), tenant_id, &cost).await;
        Ok(check.extend()?.into())
    }

    /// A tenant's API keys, newest first, revoked ones included (never their secrets).
    /// OWNER and ADMIN only.
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
    ) -> async_graphql::Result<Vec<ApiKey>> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let keys = auth::api_keys::list(&state(ctx)?.db, viewer(ctx), tenant_id).await;
        Ok(keys.extend()?.into_iter().map(ApiKey::from).collect())
    }

    /// The tenant's credit ledger, newest first, `first` (at most 100) at a time. Members only.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn credit_history(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
        filter: Option<CreditHistoryFilter>,
    ) -> async_graphql::Result<CreditConnection> {
        let db = &state(ctx)?.db;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let (first, after) = page(first, after.as_deref()).extend()?;
        let filter = filter.unwrap_or_default();
        let filter = HistoryFilter {
            movement: filter.movement.map(Into::into),
            credit_type: filter.kind,
            user_id: filter
                .user_id
                .map(|id| parse_id(&id, "filter.userId"))
                .transpose()
                .extend()?,
            from: filter.from,
            to: filter.to,
            actor_type: filter.actor.map(Into::into),
            actor_id: filter
                .actor_id
                .map(|id| parse_id(&id, "filter.actorId"))
                .transpose()
                .extend()?,
            object_id: filter.object_id,
        };
        let (rows, more) = credits::history(db, viewer(ctx), tenant_id, first, after, &filter)
            .await
            .extend()?;
        let rows = rows
            .into_iter()
            .map(|row| (encode_cursor(row.id), Credit::from(row)))
            .collect();
        let connection = CreditConnection::new(rows, after.is_some(), more);
        Ok(connection)
    }

    /// The tenant's billable usage as reported to Stripe, newest first, `first` (at most
    /// 100) at a time: what was sent, what Stripe accepted, what failed and why. OWNER and
    /// ADMIN only.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn usage_reports(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<UsageReportConnection> {
        let db = &state(ctx)?.db;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let (first, after) = page(first, after.as_deref()).extend()?;
        let (rows, more) = billing::outbox::reports(db, viewer(ctx), tenant_id, first, after)
            .await
            .extend()?;
        let rows = rows
            .into_iter()
            .map(|row| (encode_cursor(row.id), UsageReport::from(row)))
            .collect();
        Ok(UsageReportConnection::new(rows, after.is_some(), more))
    }

    /// The alert rules that apply to a tenant's feature: its own, or the platform's defaults.
    /// Members, or a key with `CREDITS_READ`.
    async fn credit_alert_rules(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = "credits")] feature: String,
    ) -> async_graphql::Result<CreditAlertRules> {
        let state = state(ctx)?;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let rules = credits::alerts::rules(&state.db, viewer(ctx), tenant_id, &feature)
            .await
            .extend()?;
        Ok(rules.into())
    }

    /// The alerts that fired for a tenant's feature in a period (default: the period that
    /// counts now), in the order they first fired. Members, or a key with `CREDITS_READ`.
    async fn credit_alerts(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = "credits")] feature: String,
        period_start: Option<chrono::DateTime<chrono::Utc>>,
    ) -> async_graphql::Result<Vec<CreditAlert>> {
        let state = state(ctx)?;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let now = state.clock.now();
        let alerts = credits::alerts::alerts(
            &state.db,
            viewer(ctx),
            tenant_id,
            &feature,
            period_start,
            now,
        )
        .await
        .extend()?;
        Ok(alerts.into_iter().map(Into::into).collect())
    }

    /// A tenant's webhook endpoints, or — without `tenantId` — the platform's (every
    /// tenant's events). Their secrets are never shown again.
    async fn webhook_endpoints(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> async_graphql::Result<Vec<WebhookEndpoint>> {
        let tenant_id = tenant_id.map(|t| parse_id(&t, "tenantId"));
        let tenant_id = tenant_id.transpose().extend()?;
        let endpoints = webhook_caller(ctx)?.list(tenant_id).await.extend()?;
        Ok(endpoints.into_iter().map(Into::into).collect())
    }

    /// The deliveries to a webhook endpoint, newest first: status, attempts, the last HTTP
    /// status and error.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        endpoint_id: ID,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<WebhookDeliveryConnection> {
        let endpoint_id = parse_id(&endpoint_id, "endpointId").extend()?;
        let (first, after) = page(first, after.as_deref()).extend()?;
        let (rows, more) = webhook_caller(ctx)?
            .deliveries(endpoint_id, first, after)
            .await
            .extend()?;
        let rows = rows
            .into_iter()
            .map(|row| (encode_cursor(row.id), WebhookDelivery::from(row)))
            .collect();
        Ok(WebhookDeliveryConnection::new(rows, after.is_some(), more))
    }

    /// The webhook event types an endpoint can ask for.
    async fn webhook_event_types(&self) -> Vec<String> {
        crate::webhooks::events::TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    }
}
