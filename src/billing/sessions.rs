//! Stripe-hosted pages a tenant's OWNER or ADMIN is sent to: Checkout (subscribe to a plan)
//! and the billing portal (manage the subscription). Both answer a URL; what the customer
//! does there comes back as webhooks.

use std::collections::HashMap;

use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_shared::CheckoutSessionMode;
use uuid::Uuid;

use super::StripeHttp as Client;
use crate::{
    auth::{self, Viewer},
    config::Config,
    db::Database,
    error::AppError,
    plans, tenants,
};

/// What a billing page needs from the process.
pub struct Billing<'a> {
    pub db: &'a Database,
    /// `None` when Stripe is not configured.
    pub stripe: Option<&'a Client>,
    pub config: &'a Config,
}

/// A Checkout page to ask for: which tenant subscribes to which plan.
pub struct Checkout {
    pub tenant_id: Uuid,
    pub plan_slug: String,
}

/// For a billing page of `tenant_id`: the Stripe client (`BAD_USER_INPUT` when Stripe is not
/// configured), the tenant, and the viewer's email — an OWNER or ADMIN only.
async fn access<'a>(
    billing: &Billing<'a>,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<(&'a Client, entity::tenant::Model, String), AppError> {
    auth::require_admin(billing.db, viewer, tenant_id).await?;
    let client = billing
        .stripe
        .ok_or_else(|| AppError::bad_input("billing is not configured on this server"))?;
    let user = auth::me(billing.db, viewer)
        .await?
        .ok_or_else(|| viewer.user_gone())?;
    let tenant = tenants::find(&billing.db.read, tenant_id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    Ok((client, tenant, user.email))
}

/// The metadata key, on the subscription Checkout creates, that names the tenant: webhooks
/// find the tenant by it even before `checkout.session.completed` links the customer.
pub const TENANT_METADATA_KEY: &str = "tollgate_tenant_id";

/// A Checkout page where `tenant_id` subscribes to `plan_slug` (its first Stripe price, plus
/// the metered prices of the usage-based units). The tenant's Stripe customer is reused when
/// it has one; otherwise Checkout creates one for `email`. A tenant that already pays (an
/// entitled plan subscription) is refused: a second subscription would bill it twice — plan
/// changes go through the billing portal.
pub async fn checkout(
    billing: &Billing<'_>,
    viewer: &Viewer,
    request: Checkout,
) -> Result<String, AppError> {
    let (tenant_id, plan_slug) = (request.tenant_id, request.plan_slug.as_str());
    let (client, tenant, email) = access(billing, viewer, tenant_id).await?;
    let (config, customer) = (billing.config, tenant.stripe_customer_id.as_deref());
    let current = plans::tenant_subscriptions(&billing.db.read, &[tenant_id]).await?;
    if let Some((subscription, _)) = current.get(&tenant_id)
        && subscription.stripe_subscription_id.is_some()
        && config.is_entitled(&subscription.status)
    {
        return Err(AppError::bad_input(format!(
            "this tenant already has a paid subscription ({}): change its plan in the billing portal (createBillingPortalSession)",
            subscription.status
        )));
    }
    let plan = config
        .plans
        .iter()
        .find(|p| p.slug == plan_slug)
        .ok_or_else(|| AppError::bad_input(format!("there is no plan {plan_slug:?}")))?;
    let price = plan.stripe_price_ids.first().ok_or_else(|| {
        AppError::bad_input(format!(
            "plan {plan_slug:?} has no Stripe price: it cannot be bought"
        ))
    })?;
    let mut line_items = vec![line_item(price, Some(1))];
    line_items.extend(
        config
            .usage_based_units
            .iter()
            .filter_map(|u| u.stripe_price_id.as_deref())
            .map(|metered| line_item(metered, None)),
    );
    let metadata = HashMap::from([(TENANT_METADATA_KEY.to_owned(), tenant_id.to_string())]);
    let mut subscription = CreateCheckoutSessionSubscriptionData::new();
    subscription.metadata = Some(metadata.clone());
    let request = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .line_items(line_items)
        .client_reference_id(tenant_id.to_string())
        .metadata(metadata)
        .subscription_data(subscription)
        .success_url(config.stripe.checkout_success_url.as_str())
        .cancel_url(config.stripe.checkout_cancel_url.as_str());
    open(client, request, customer, &email).await
}

/// The metadata keys a pack purchase's Checkout Session carries: which pack, how many.
pub const PACK_METADATA_KEY: &str = "tollgate_pack";
pub const QUANTITY_METADATA_KEY: &str = "tollgate_quantity";

/// The most packs one purchase may hold.
pub const MAX_PACKS: u64 = 100;

/// A Checkout page (`mode=payment`) where `tenant_id` buys `quantity` of credit pack `pack`.
/// The credits are granted when Stripe says the payment succeeded (a webhook), not before.
pub async fn purchase(
    billing: &Billing<'_>,
    viewer: &Viewer,
    tenant_id: Uuid,
    pack: &str,
    quantity: u64,
) -> Result<String, AppError> {
    let (client, tenant, email) = access(billing, viewer, tenant_id).await?;
    let config = billing.config;
    let pack = config
        .find_credit_pack(pack)
        .ok_or_else(|| AppError::bad_input(format!("there is no credit pack {pack:?}")))?;
    if !(1..=MAX_PACKS).contains(&quantity) {
        return Err(AppError::bad_input(format!(
            "quantity must be between 1 and {MAX_PACKS}"
        )));
    }
    let metadata = HashMap::from([
        (TENANT_METADATA_KEY.to_owned(), tenant_id.to_string()),
        (PACK_METADATA_KEY.to_owned(), pack.value.clone()),
        (QUANTITY_METADATA_KEY.to_owned(), quantity.to_string()),
    ]);
    let request = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .line_items(vec![line_item(&pack.stripe_price_id, Some(quantity))])
        .client_reference_id(tenant_id.to_string())
        .metadata(metadata)
        .success_url(config.stripe.checkout_success_url.as_str())
        .cancel_url(config.stripe.checkout_cancel_url.as_str());
    open(
        client,
        request,
        tenant.stripe_customer_id.as_deref(),
        &email,
    )
    .await
}

/// Creates the Checkout Session `request` for the tenant's Stripe `customer` (when it has
/// one; else Checkout creates one for `email`) and answers its page's URL.
async fn open(
    client: &Client,
    request: CreateCheckoutSession,
    customer: Option<&str>,
    email: &str,
) -> Result<String, AppError> {
    let request = match customer {
        Some(customer) => request.customer(customer),
        None => request.customer_email(email),
    };
    let session = request
        .send(client)
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("creating a Checkout session: {e}")))?;
    session.url.ok_or_else(|| {
        AppError::Internal(anyhow::anyhow!("Stripe returned a session without a url"))
    })
}

fn line_item(price: &str, quantity: Option<u64>) -> CreateCheckoutSessionLineItems {
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price = Some(price.to_owned());
    item.quantity = quantity;
    item
}

/// A billing-portal page for the tenant's Stripe customer (OWNER or ADMIN; the tenant must
/// have subscribed through Checkout first).
pub async fn portal(
    billing: &Billing<'_>,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<String, AppError> {
    let (client, tenant, _) = access(billing, viewer, tenant_id).await?;
    let customer = tenant.stripe_customer_id.ok_or_else(|| {
        AppError::bad_input(
            "the tenant has no Stripe customer yet: subscribe through Checkout first",
        )
    })?;
    let session = CreateBillingPortalSession::new()
        .customer(customer.as_str())
        .return_url(billing.config.stripe.portal_return_url.as_str())
        .send(client)
        .await
        .map_err(|e| {
            AppError::Internal(anyhow::anyhow!("creating a billing portal session: {e}"))
        })?;
    Ok(session.url)
}
