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

use sea_orm::ConnectionTrait;

use super::StripeHttp;
use crate::{config::Config, error::AppError, plans};

/// The metadata key, on the subscription Checkout creates, that names the tenant: webhooks
/// find the tenant by it even before `checkout.session.completed` links the customer.
pub const TENANT_METADATA_KEY: &str = "tollgate_tenant_id";

/// A Checkout page where `tenant_id` subscribes to `plan_slug` (its first Stripe price, plus
/// the metered prices of the usage-based units). The tenant's Stripe customer is reused when
/// it has one; otherwise Checkout creates one for `email`. A tenant that already pays (an
/// entitled plan subscription) is refused: a second subscription would bill it twice — plan
/// changes go through the billing portal.
pub async fn checkout(
    db: &impl ConnectionTrait,
    client: &StripeHttp,
    config: &Config,
    tenant_id: Uuid,
    customer: Option<&str>,
    email: &str,
    plan_slug: &str,
) -> Result<String, AppError> {
    let current = plans::tenant_subscriptions(db, &[tenant_id]).await?;
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
    let mut request = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .line_items(line_items)
        .client_reference_id(tenant_id.to_string())
        .metadata(metadata)
        .subscription_data(subscription)
        .success_url(config.stripe.checkout_success_url.as_str())
        .cancel_url(config.stripe.checkout_cancel_url.as_str());
    request = match customer {
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

/// A billing-portal page for the tenant's Stripe customer.
pub async fn portal(
    client: &StripeHttp,
    config: &Config,
    customer: &str,
) -> Result<String, AppError> {
    let session = CreateBillingPortalSession::new()
        .customer(customer)
        .return_url(config.stripe.portal_return_url.as_str())
        .send(client)
        .await
        .map_err(|e| {
            AppError::Internal(anyhow::anyhow!("creating a billing portal session: {e}"))
        })?;
    Ok(session.url)
}
