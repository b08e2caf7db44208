//! Mutation resolvers: read arguments, call the domain, map the result.

use async_graphql::{Context, ErrorExtensions, ID, Object, ResultExt};
use chrono::{DateTime, Utc};

use crate::{
    auth::{
        self, ApiScope, SignUp,
        api_keys::{self, NewApiKey},
    },
    billing::{self, Checkout},
    consume,
    credits::{
        grants::{self, NewGrant},
        refunds,
    },
    error::AppError,
    graphql::{
        ClientAddress, IdempotencyHeader, state,
        types::{
            ApiKey, ApiKeyCreated, ApiScopeGql, AuthPayload, BillingPortalSession, CheckoutSession,
            ConsumeCreditsInput, CreateProjectInput, CreateTaskInput, CreateTenantInput,
            CreateWebhookEndpointInput, CreditAlertRuleInput, CreditAlertRules, CreditGrant,
            CreditGrantCreated, CreditRefund, CreditReservation, CreditSpend, GrantCreditsInput,
            Invitation, InvitationCreated, Member, Membership, Project, RefundCreditInput,
            ReserveCreditsInput, Role, SignUpInput, Task, Tenant, UpdateWebhookEndpointInput,
            WebhookDelivery, WebhookEndpoint, WebhookEndpointCreated, WebhookSecretRotated,
            parse_id,
        },
        viewer, webhook_caller,
    },
    members,
    projects::{self, NewProject, NewTask},
    reservations,
    tenants::{self, NewTenant},
    webhooks::endpoints::{Change, NewEndpoint},
};

/// What can be changed.
pub struct Mutation;

/// Confirms or releases a reservation.
async fn settle(
    ctx: &Context<'_>,
    tenant_id: ID,
    id: ID,
    how: reservations::Settle,
) -> async_graphql::Result<CreditReservation> {
    let state = state(ctx)?;
    let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
    let id = parse_id(&id, "id").extend()?;
    let settled = reservations::settle(&state.db, viewer(ctx), &state.clock, tenant_id, id, how)
        .await
        .extend()?;
    changed(ctx, tenant_id);
    Ok(CreditReservation::new(settled, false))
}

/// Tells the tenant's live-balance subscribers, on every replica, to read again: call it
/// after a change committed.
fn changed(ctx: &Context<'_>, tenant_id: uuid::Uuid) {
    if let Ok(state) = state(ctx) {
        state
            .changes
            .publish(crate::live::Change::Tenant(tenant_id));
    }
}

/// One sign-in or sign-up attempt from the request's address: `RATE_LIMITED` past
/// `rate_limit.auth_per_minute`.
async fn set_alert_rules(
    ctx: &Context<'_>,
    tenant_id: uuid::Uuid,
    feature: &str,
    rules: Option<Vec<crate::credits::alerts::Rule>>,
) -> async_graphql::Result<CreditAlertRules> {
    let state = state(ctx)?;
    let now = state.clock.now();
    let set =
        crate::credits::alerts::set_rules(&state.db, viewer(ctx), tenant_id, feature, rules, now)
            .await
            .extend()?;
    // Rules that hold fire at once: the tenant's event subscribers hear of it.
    changed(ctx, tenant_id);
    Ok(set.into())
}

fn auth_attempt(ctx: &Context<'_>, state: &crate::state::AppState) -> Result<(), AppError> {
    match ctx.data_opt::<ClientAddress>() {
        Some(address) => state.limits.check_auth(address.0),
        None => Ok(()),
    }
}

/// The request's `Idempotency-Key` header, used when the argument is not given.
fn header_key(ctx: &Context<'_>) -> Option<String> {
    ctx.data_opt::<IdempotencyHeader>().map(|h| h.0.clone())
}

/// What can be changed. Guarded mutations spend credits, or refuse and write nothing.
#[Object]
impl Mutation {
    /// Creates an account and signs it in.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        input: SignUpInput,
    ) -> async_graphql::Result<AuthPayload> {
        let state = state(ctx)?;
        auth_attempt(ctx, state).extend()?;
        let input = SignUp {
            email: input.email,
            password: input.password,
            name: input.name,
        };
        let (user, token) = auth::sign_up(&state.db.write, &state.keys, &state.hasher, input)
            .await
            .extend()?;
        Ok(AuthPayload {
            token,
            user: user.into(),
        })
    }

    /// Signs in with an email and password.
    async fn sign_in(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let state = state(ctx)?;
        auth_attempt(ctx, state).extend()?;
        let (user, token) =
            auth::sign_in(&state.db.read, &state.keys, &state.hasher, &email, password)
                .await
                .extend()?;
        Ok(AuthPayload {
            token,
            user: user.into(),
        })
    }

    /// Creates a tenant on the default plan: you become its OWNER. A platform API key with
    /// `TENANTS_WRITE` may create one too, naming its OWNER (`ownerEmail`, an existing user).
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        input: CreateTenantInput,
    ) -> async_graphql::Result<Tenant> {
        let state = state(ctx)?;
        let input = NewTenant {
            name: input.name,
            slug: input.slug,
            external_id: input.external_id,
            owner_email: input.owner_email,
        };
        let tenant = tenants::create_tenant(&state.db, &state.config, viewer(ctx), input)
            .await
            .extend()?;
        Ok(tenant.into())
    }

    /// Invites `email` into a tenant as ADMIN or MEMBER (OWNER and ADMIN only). The answer
    /// holds the one-time token for `acceptInvitation` (and the configured accept URL);
    /// Tollgate sends no mail. Expires after `tenants.invitation_ttl_hours` (7 days).
    async fn invite_member(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        email: String,
        #[graphql(default_with = "Role::Member")] role: Role,
    ) -> async_graphql::Result<InvitationCreated> {
        let state = state(ctx)?;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let (db, config) = (&state.db, &state.config);
        let invited = members::invite(db, config, viewer(ctx), tenant_id, &email, role.into());
        Ok(invited.await.extend()?.into())
    }

    /// Revokes a pending invitation (OWNER and ADMIN).
    async fn revoke_invitation(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        id: ID,
    ) -> async_graphql::Result<Invitation> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let id = parse_id(&id, "id").extend()?;
        let revoked = members::revoke_invitation(&state(ctx)?.db, viewer(ctx), tenant_id, id);
        Ok(revoked.await.extend()?.into())
    }

    /// Joins the tenant an invitation is for: the signed-in user's email must be the invited
    /// one (`INVITATION_EMAIL_MISMATCH`); usable once (`INVITATION_NOT_FOUND` after),
    /// before it expires (`INVITATION_EXPIRED`).
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<Membership> {
        let state = state(ctx)?;
        let (membership, _) = members::accept(&state.db, &state.config, viewer(ctx), &token)
            .await
            .extend()?;
        let tenant = tenants::find(&state.db.write, membership.tenant_id)
            .await
            .extend()?
            .ok_or_else(|| AppError::NotFound("tenant").extend())?;
        Ok(Membership {
            tenant: tenant.into(),
            role: membership.role.into(),
        })
    }

    /// Sets a member's role to ADMIN or MEMBER (OWNER and ADMIN). The OWNER's role changes
    /// only by `transferOwnership` (`LAST_OWNER`).
    async fn change_member_role(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        user_id: ID,
        role: Role,
    ) -> async_graphql::Result<Member> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let user_id = parse_id(&user_id, "userId").extend()?;
        let db = &state(ctx)?.db;
        let member = members::change_role(db, viewer(ctx), tenant_id, user_id, role.into());
        let member = member.await.extend()?;
        changed(ctx, tenant_id);
        Ok(member.into())
    }

    /// Removes a member (OWNER and ADMIN; never the OWNER: `LAST_OWNER`). They lose access on
    /// their very next request.
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        user_id: ID,
    ) -> async_graphql::Result<bool> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let user_id = parse_id(&user_id, "userId").extend()?;
        let db = &state(ctx)?.db;
        members::remove(db, viewer(ctx), tenant_id, user_id)
            .await
            .extend()?;
        // Their subscriptions read again, are refused, and end.
        changed(ctx, tenant_id);
        Ok(true)
    }

    /// Leaves a tenant (the OWNER cannot: `LAST_OWNER`; transfer ownership first).
    async fn leave_tenant(&self, ctx: &Context<'_>, tenant_id: ID) -> async_graphql::Result<bool> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        members::leave(&state(ctx)?.db, viewer(ctx), tenant_id)
            .await
            .extend()?;
        changed(ctx, tenant_id);
        Ok(true)
    }

    /// Makes a member the OWNER and you, the OWNER, an ADMIN, in one transaction: the tenant
    /// has exactly one OWNER at every instant.
    async fn transfer_ownership(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        to_user_id: ID,
    ) -> async_graphql::Result<Member> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let to = parse_id(&to_user_id, "toUserId").extend()?;
        let db = &state(ctx)?.db;
        let member = members::transfer_ownership(db, viewer(ctx), tenant_id, to).await;
        let member = member.extend()?;
        changed(ctx, tenant_id);
        Ok(member.into())
    }

    /// Creates a project, spending `credit-project-creation` credits of the tenant.
    /// Refused with `INSUFFICIENT_CREDITS` or `FEATURE_NOT_INCLUDED`, writing nothing.
    /// With an `idempotencyKey` (or an `Idempotency-Key` header), a repeat returns the
    /// first result and charges nothing; the key with other input is `IDEMPOTENCY_KEY_REUSED`.
    async fn create_project(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        input: CreateProjectInput,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Project> {
        let input = NewProject {
            tenant_id: parse_id(&tenant_id, "tenantId").extend()?,
            name: input.name,
            description: input.description,
            idempotency_key: idempotency_key.or_else(|| header_key(ctx)),
        };
        let project = projects::create_project(state(ctx)?, viewer(ctx), input).await;
        Ok(project.extend()?.into())
    }

    /// Creates a task in a project, spending `credit-task-creation` credits of its tenant.
    /// Refused with `INSUFFICIENT_CREDITS` or `FEATURE_NOT_INCLUDED`, writing nothing.
    /// Idempotent with an `idempotencyKey` or `Idempotency-Key` header, as `createProject`.
    async fn create_task(
        &self,
        ctx: &Context<'_>,
        project_id: ID,
        input: CreateTaskInput,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Task> {
        let input = NewTask {
            project_id: parse_id(&project_id, "projectId").extend()?,
            title: input.title,
            idempotency_key: idempotency_key.or_else(|| header_key(ctx)),
        };
        let task = projects::create_task(state(ctx)?, viewer(ctx), input).await;
        Ok(task.extend()?.into())
    }

    /// Deletes a project and its tasks (members). Nothing is refunded; the ledger keeps
    /// pointing at them.
    async fn delete_project(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Project> {
        let id = parse_id(&id, "id").extend()?;
        let project = projects::delete_project(&state(ctx)?.db, viewer(ctx), id).await;
        Ok(project.extend()?.into())
    }

    /// Deletes a task (members). Nothing is refunded; the ledger keeps pointing at it.
    async fn delete_task(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Task> {
        let id = parse_id(&id, "id").extend()?;
        let task = projects::delete_task(&state(ctx)?.db, viewer(ctx), id).await;
        Ok(task.extend()?.into())
    }

    /// Spends credits for an action of your own: a catalogue `creditType`, or an explicit
    /// `amount` of a `feature`. The same guard as `createTask`: the whole cost or nothing,
    /// refused with `INSUFFICIENT_CREDITS` (with its figures) or `FEATURE_NOT_INCLUDED`; a
    /// retry with the same `idempotencyKey` returns the first spend with `replayed: true`.
    async fn consume_credits(
        &self,
        ctx: &Context<'_>,
        input: ConsumeCreditsInput,
    ) -> async_graphql::Result<CreditSpend> {
        let state = state(ctx)?;
        let request = input.into_request(state).await.extend()?;
        let consumed = consume::consume(state, viewer(ctx), request).await;
        Ok(CreditSpend::new(consumed.extend()?))
    }

    /// Grants a tenant credits beyond its plan's allowance, spent after the allowance in burn
    /// order (priority, soonest expiry, promotional before paid, oldest). An API key with
    /// `CREDITS_GRANT` (a tenant key for its own tenant) or a platform admin. Idempotent on
    /// `idempotencyKey`.
    async fn grant_credits(
        &self,
        ctx: &Context<'_>,
        input: GrantCreditsInput,
    ) -> async_graphql::Result<CreditGrantCreated> {
        let state = state(ctx)?;
        let tenant_id = super::types::tenant_ref(
            &state.db,
            input.tenant_id.as_ref(),
            input.tenant_external_id.as_deref(),
        )
        .await
        .extend()?;
        let actor = grants::authorize(
            &state.db,
            viewer(ctx),
            &state.config.platform_admins,
            tenant_id,
        )
        .await
        .extend()?;
        let grant = NewGrant {
            tenant_id,
            feature: input
                .feature
                .unwrap_or_else(|| crate::credits::CREDITS_FEATURE.to_owned()),
            amount: i64::from(input.amount),
            category: input
                .category
                .map_or(entity::credit_grant::GrantCategory::Promotional, Into::into),
            priority: input.priority.unwrap_or(grants::DEFAULT_PRIORITY),
            effective_at: input.effective_at,
            expires_at: input.expires_at,
            reason: input.reason,
            source: "API",
            source_ref: input.idempotency_key.clone(),
        };
        let retention = crate::idempotency::retention(&state.config);
        let (grant, replayed) = grants::grant(
            &state.db,
            actor,
            grant,
            (&input.idempotency_key, retention),
            state.clock.now(),
        )
        .await
        .extend()?;
        changed(ctx, tenant_id);
        Ok(CreditGrantCreated {
            grant: grant.into(),
            replayed,
        })
    }

    /// Gives back a spend, or part of it, to exactly the buckets that paid it, newest first
    /// (the grants in reverse burn order, then the allowance); never more than was spent. A
    /// bucket that no longer exists is restored for the record only (`lapsed`). The tenant's
    /// OWNER or ADMIN, or an API key with `CREDITS_GRANT`.
    async fn refund_credit(
        &self,
        ctx: &Context<'_>,
        input: RefundCreditInput,
    ) -> async_graphql::Result<CreditRefund> {
        let state = state(ctx)?;
        let tenant_id = super::types::tenant_ref(
            &state.db,
            input.tenant_id.as_ref(),
            input.tenant_external_id.as_deref(),
        )
        .await
        .extend()?;
        let actor = refunds::authorize(&state.db, viewer(ctx), tenant_id)
            .await
            .extend()?;
        let request = refunds::Refund {
            tenant_id,
            credit_id: parse_id(&input.credit_id, "creditId").extend()?,
            amount: input.amount.map(i64::from),
            reason: input.reason,
            idempotency_key: input.idempotency_key,
        };
        let refunded = refunds::refund(
            &state.db,
            actor,
            request,
            crate::idempotency::retention(&state.config),
            state.clock.now(),
        )
        .await
        .extend()?;
        changed(ctx, tenant_id);
        Ok(CreditRefund {
            credit: refunded.credit.into(),
            buckets: refunded.returned.into_iter().map(Into::into).collect(),
            replayed: refunded.replayed,
        })
    }

    /// Holds credits for work whose cost is known only afterwards: like a spend (the whole
    /// amount or nothing, counted against the limit, paid by the allowance and then grants),
    /// until `confirmReservation`, `releaseReservation` or its expiry. Members, or a key with
    /// `CREDITS_CONSUME`.
    async fn reserve_credits(
        &self,
        ctx: &Context<'_>,
        input: ReserveCreditsInput,
    ) -> async_graphql::Result<CreditReservation> {
        let state = state(ctx)?;
        let tenant_id = super::types::tenant_ref(
            &state.db,
            input.tenant_id.as_ref(),
            input.tenant_external_id.as_deref(),
        )
        .await
        .extend()?;
        let request = reservations::Reserve {
            tenant_id,
            cost: consume::Cost::from_input(
                input.credit_type,
                input.amount.map(i64::from),
                input.feature,
                state,
            )
            .extend()?,
            object_id: input.object_id,
            ttl_seconds: input.ttl_seconds.map(i64::from),
            idempotency_key: input.idempotency_key,
        };
        let reserved = reservations::reserve(state, viewer(ctx), request)
            .await
            .extend()?;
        Ok(CreditReservation::new(
            reserved.reservation,
            reserved.replayed,
        ))
    }

    /// Turns a pending reservation into a spend of `amount` (at most what is held) and gives
    /// the rest back. `RESERVATION_NOT_PENDING` once it was confirmed, released or expired.
    async fn confirm_reservation(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        id: ID,
        amount: i32,
    ) -> async_graphql::Result<CreditReservation> {
        settle(
            ctx,
            tenant_id,
            id,
            reservations::Settle::Confirm(amount.into()),
        )
        .await
    }

    /// Gives a pending reservation back in full. `RESERVATION_NOT_PENDING` once it was
    /// confirmed, released or expired.
    async fn release_reservation(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        id: ID,
    ) -> async_graphql::Result<CreditReservation> {
        settle(ctx, tenant_id, id, reservations::Settle::Release).await
    }

    /// Voids what is left of an `ACTIVE` grant: no longer spendable; the history records the
    /// credits taken back. Who may grant may void.
    async fn void_credit_grant(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        id: ID,
        reason: Option<String>,
    ) -> async_graphql::Result<CreditGrant> {
        let state = state(ctx)?;
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let grant_id = parse_id(&id, "id").extend()?;
        let actor = grants::authorize(
            &state.db,
            viewer(ctx),
            &state.config.platform_admins,
            tenant_id,
        )
        .await
        .extend()?;
        let grant = grants::void(
            &state.db,
            actor,
            tenant_id,
            grant_id,
            reason,
            state.clock.now(),
        )
        .await
        .extend()?;
        changed(ctx, tenant_id);
        Ok(grant.into())
    }

    /// Creates an API key for a server: a tenant's (`tenantId`; its OWNER or ADMIN), or a
    /// platform key (`tenantId` null; a platform admin, see `platform_admins`). The secret is
    /// in the answer, and only there.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        name: String,
        scopes: Vec<ApiScopeGql>,
        expires_at: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<ApiKeyCreated> {
        let state = state(ctx)?;
        let request = NewApiKey {
            tenant_id: tenant_id
                .map(|id| parse_id(&id, "tenantId"))
                .transpose()
                .extend()?,
            name,
            scopes: scopes.into_iter().map(ApiScope::from).collect(),
            expires_at,
        };
        let admins = &state.config.platform_admins;
        let (key, secret) = api_keys::create(&state.db, viewer(ctx), admins, request)
            .await
            .extend()?;
        Ok(ApiKeyCreated {
            api_key: key.into(),
            secret,
        })
    }

    /// Revokes an API key: refused from the next request on, on every replica.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ApiKey> {
        let state = state(ctx)?;
        let id = parse_id(&id, "id").extend()?;
        let admins = &state.config.platform_admins;
        let key = api_keys::revoke(&state.db, viewer(ctx), admins, id).await;
        Ok(key.extend()?.into())
    }

    /// A Stripe Checkout page where the tenant subscribes to `planSlug` (a plan with a Stripe
    /// price). OWNER and ADMIN only. When the customer pays, Stripe's webhooks move the tenant
    /// to the plan; nothing changes before that.
    async fn create_checkout_session(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        plan_slug: String,
    ) -> async_graphql::Result<CheckoutSession> {
        let request = Checkout {
            tenant_id: parse_id(&tenant_id, "tenantId").extend()?,
            plan_slug,
        };
        // Boxed, as are the other Stripe calls: their futures are ~14 KB, and the future of
        // every mutation is as large as its largest resolver's (async-graphql copies it twice
        // per request, so unboxed they cost every `createTask` ~28 KB of copying).
        let url = Box::pin(billing::checkout(
            &state(ctx)?.billing(),
            viewer(ctx),
            request,
        ))
        .await;
        Ok(CheckoutSession { url: url.extend()? })
    }

    /// A Stripe Checkout page (a one-time payment) where the tenant buys `quantity` (1–100) of
    /// credit pack `pack` (see `creditPacks`). OWNER and ADMIN only. The credits are granted
    /// (a `PAID` grant) when Stripe says the payment succeeded, once per session.
    async fn create_credit_purchase(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        pack: String,
        #[graphql(default = 1)] quantity: i32,
    ) -> async_graphql::Result<CheckoutSession> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let quantity = u64::try_from(quantity).unwrap_or(0);
        let url = Box::pin(billing::purchase(
            &state(ctx)?.billing(),
            viewer(ctx),
            tenant_id,
            &pack,
            quantity,
        ))
        .await;
        Ok(CheckoutSession { url: url.extend()? })
    }

    /// A Stripe billing portal page where the tenant's subscription, payment methods and
    /// invoices are managed. OWNER and ADMIN only; the tenant must have subscribed first.
    async fn create_billing_portal_session(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
    ) -> async_graphql::Result<BillingPortalSession> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let url = Box::pin(billing::portal(
            &state(ctx)?.billing(),
            viewer(ctx),
            tenant_id,
        ))
        .await;
        Ok(BillingPortalSession { url: url.extend()? })
    }

    /// Sets a tenant's own alert rules for a feature, replacing the platform's defaults (an
    /// empty list: no threshold alerts; `credits.depleted` and `credits.limit_reached` are
    /// sent whatever the rules). Its OWNER or ADMIN, or a key with `WEBHOOKS_WRITE`. Rules
    /// that already hold fire at once; alerts whose rule is gone resolve.
    async fn set_credit_alert_rules(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = "credits")] feature: String,
        rules: Vec<CreditAlertRuleInput>,
    ) -> async_graphql::Result<CreditAlertRules> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        let rules = rules.into_iter().map(Into::into).collect();
        set_alert_rules(ctx, tenant_id, &feature, Some(rules)).await
    }

    /// Puts a tenant's feature back on the platform's default alert rules.
    async fn reset_credit_alert_rules(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = "credits")] feature: String,
    ) -> async_graphql::Result<CreditAlertRules> {
        let tenant_id = parse_id(&tenant_id, "tenantId").extend()?;
        set_alert_rules(ctx, tenant_id, &feature, None).await
    }

    /// A webhook endpoint: the tenant's events (its OWNER or ADMIN, or a key with
    /// `WEBHOOKS_WRITE`), or — without `tenantId` — every tenant's (a platform admin or a
    /// platform key). The answer holds its signing secret, shown this once.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookEndpointInput,
    ) -> async_graphql::Result<WebhookEndpointCreated> {
        let tenant_id = input.tenant_id.as_ref().map(|t| parse_id(t, "tenantId"));
        let new = NewEndpoint {
            tenant_id: tenant_id.transpose().extend()?,
            url: input.url,
            description: input.description,
            event_types: input.event_types.unwrap_or_default(),
        };
        let now = state(ctx)?.clock.now();
        let (endpoint, secret) = webhook_caller(ctx)?.create(new, now).await.extend()?;
        let endpoint = endpoint.into();
        Ok(WebhookEndpointCreated { endpoint, secret })
    }

    /// Changes a webhook endpoint's URL, description, event types, or turns it off or on.
    async fn update_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: UpdateWebhookEndpointInput,
    ) -> async_graphql::Result<WebhookEndpoint> {
        let id = parse_id(&input.id, "id").extend()?;
        let change = Change {
            url: input.url,
            description: input.description,
            event_types: input.event_types,
            enabled: input.enabled,
        };
        let endpoint = webhook_caller(ctx)?.update(id, change).await;
        Ok(endpoint.extend()?.into())
    }

    /// A new signing secret for an endpoint, shown this once. The old one keeps signing
    /// beside it for 24 hours, so receivers can switch without losing a webhook.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<WebhookSecretRotated> {
        let id = parse_id(&id, "id").extend()?;
        let now = state(ctx)?.clock.now();
        let (endpoint, secret) = webhook_caller(ctx)?.rotate(id, now).await.extend()?;
        let endpoint = endpoint.into();
        Ok(WebhookSecretRotated { endpoint, secret })
    }

    /// Deletes a webhook endpoint; its deliveries are kept (those not yet made fail).
    /// Returns its id.
    async fn delete_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ID> {
        let uuid = parse_id(&id, "id").extend()?;
        webhook_caller(ctx)?.delete(uuid).await.extend()?;
        Ok(id)
    }

    /// Sends a `webhook.test` event to one endpoint now; returns its delivery.
    async fn send_test_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<WebhookDelivery> {
        let id = parse_id(&id, "id").extend()?;
        let now = state(ctx)?.clock.now();
        let delivery = webhook_caller(ctx)?.send_test(id, now).await;
        Ok(delivery.extend()?.into())
    }

    /// Sends an event to an endpoint again, as a new delivery with the same `webhook-id`
    /// (receivers deduplicate on it).
    async fn replay_webhook_event(
        &self,
        ctx: &Context<'_>,
        endpoint_id: ID,
        event_id: ID,
    ) -> async_graphql::Result<WebhookDelivery> {
        let endpoint_id = parse_id(&endpoint_id, "endpointId").extend()?;
        let event_id = parse_id(&event_id, "eventId").extend()?;
        let now = state(ctx)?.clock.now();
        let delivery = webhook_caller(ctx)?
            .replay(endpoint_id, event_id, now)
            .await;
        Ok(delivery.extend()?.into())
    }
}
