//! Stripe's webhook events (`POST /webhooks/stripe`, served by `http::webhooks`): subscriptions
//! and completed Checkouts. The signature is checked on the raw body before anything is parsed
//! (HMAC-SHA256, 300 s tolerance: async-stripe-webhook's `construct_event`). Each event is processed once,
//! in one transaction with the record of its id: a replay is answered 200 and changes
//! nothing. An event older than the one that last changed a subscription is ignored, so
//! Stripe's retries and reordering never put a tenant back on an older state.

use chrono::{DateTime, Utc};
use entity::{
    credit::ActorType,
    credit_grant::{GrantCategory, GrantStatus},
};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, prelude::*};
use stripe_shared::{
    CheckoutSession, CheckoutSessionMode, CheckoutSessionPaymentStatus, Subscription,
};
use stripe_webhook::{EventObject, Webhook, WebhookError};

use super::sessions::{MAX_PACKS, PACK_METADATA_KEY, QUANTITY_METADATA_KEY, TENANT_METADATA_KEY};
use crate::{
    config::Config,
    credits,
    db::{Database, PerBackend},
    plans::{self, StripeSubscriptionChange},
    webhooks,
};
use serde_json::json;

/// Why an event was not taken.
#[derive(Debug)]
pub enum Rejected {
    /// Not a genuine, fresh Stripe event (HTTP 400): nothing was recorded.
    Invalid(&'static str),
    /// It could not be processed (HTTP 500): not acknowledged, so Stripe sends it again.
    Failed(DbErr),
}

/// Checks a webhook's signature against `secret` on the raw `payload` (before anything is
/// parsed), then records the event and applies it; what it did.
pub async fn handle(
    db: &Database,
    config: &Config,
    secret: &str,
    payload: &str,
    signature: &str,
) -> Result<&'static str, Rejected> {
    let event = match Webhook::construct_event(payload, signature, secret) {
        Ok(event) => event,
        Err(e) => {
            let message = match e {
                WebhookError::BadTimestamp(_) => {
                    "the signature's timestamp is more than 300 s away from now"
                }
                WebhookError::BadParse(_) => "the body is not a Stripe event",
                WebhookError::BadKey | WebhookError::BadHeader(_) | WebhookError::BadSignature => {
                    "the Stripe-Signature does not match the body"
                }
            };
            tracing::warn!(error.cause = %e, "Stripe webhook rejected");
            return Err(Rejected::Invalid(message));
        }
    };
    let created = DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let received = Received {
        id: event.id.as_str(),
        kind: event.type_.as_str(),
        created,
    };
    match process(db, config, &received, event.data.object).await {
        Ok(effect) => {
            tracing::info!(
                stripe.event.id = received.id,
                stripe.event.type = received.kind,
                effect,
                "Stripe webhook"
            );
            Ok(effect)
        }
        Err(e) => {
            tracing::error!(stripe.event.id = received.id, error.cause = %e, "Stripe webhook could not be processed");
            Err(Rejected::Failed(e))
        }
    }
}

struct Received<'a> {
    id: &'a str,
    kind: &'a str,
    created: DateTime<Utc>,
}

/// Records the event and applies it, in one transaction. Returns what it did.
async fn process(
    db: &Database,
    config: &Config,
    event: &Received<'_>,
    object: EventObject,
) -> Result<&'static str, DbErr> {
    static RECORD: PerBackend = PerBackend::new(|_| {
        "INSERT INTO stripe_event (id, type, created_at, processed_at) \
         VALUES (:id, :type, :created, :now) ON CONFLICT (id) DO NOTHING"
            .to_owned()
    });
    let txn = db.begin_write().await?;
    let record = RECORD.get(txn.get_database_backend()).bind(|name| {
        Some(match name {
            "id" => event.id.into(),
            "type" => event.kind.into(),
            "created" => event.created.into(),
            "now" => Utc::now().into(),
            _ => return None,
        })
    })?;
    let first = txn.execute_raw(record).await?.rows_affected() == 1;
    if !first {
        txn.rollback().await?;
        return Ok("replay ignored");
    }
    let effect = match object {
        EventObject::CustomerSubscriptionCreated(s)
        | EventObject::CustomerSubscriptionUpdated(s) => {
            subscription_changed(&txn, config, &s, false, event.created).await?
        }
        EventObject::CustomerSubscriptionDeleted(s) => {
            subscription_changed(&txn, config, &s, true, event.created).await?
        }
        EventObject::CheckoutSessionCompleted(s) if s.mode == CheckoutSessionMode::Payment => {
            pack_paid(&txn, config, &s).await?
        }
        EventObject::CheckoutSessionCompleted(s) => checkout_completed(&txn, &s).await?,
        EventObject::CheckoutSessionAsyncPaymentSucceeded(s) => pack_paid(&txn, config, &s).await?,
        EventObject::ChargeRefunded(charge) => match charge.payment_intent.as_ref() {
            // The share of the credits the refunded share of the charge bought.
            Some(payment) => {
                let (paid, refunded) = (charge.amount.max(1), charge.amount_refunded.max(0));
                let share = |g: &entity::credit_grant::Model| {
                    let credits = i128::from(g.amount) * i128::from(refunded);
                    i64::try_from((credits + i128::from(paid) - 1) / i128::from(paid))
                        .unwrap_or(i64::MAX)
                };
                claw_back(&txn, payment.id().as_str(), share, "payment refunded").await?
            }
            None => "refund of no payment ignored",
        },
        EventObject::ChargeDisputeCreated(dispute) => match dispute.payment_intent.as_ref() {
            Some(payment) => {
                claw_back(
                    &txn,
                    payment.id().as_str(),
                    |g| g.amount,
                    "payment disputed",
                )
                .await?
            }
            None => "dispute of no payment ignored",
        },
        _ => "event type ignored",
    };
    txn.commit().await?;
    Ok(effect)
}

/// `checkout.session.completed`: the session's `client_reference_id` is the tenant (Tollgate
/// sets it); its customer becomes the tenant's Stripe customer.
async fn checkout_completed(
    txn: &DatabaseTransaction,
    session: &CheckoutSession,
) -> Result<&'static str, DbErr> {
    let tenant = session
        .client_reference_id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok());
    let (Some(tenant), Some(customer)) = (tenant, &session.customer) else {
        return Ok("checkout without a tenant or a customer ignored");
    };
    let linked = link_customer(txn, tenant, customer.id().as_str(), true).await?;
    Ok(if linked {
        "customer linked to tenant"
    } else {
        "checkout for an unknown tenant ignored"
    })
}

/// A credit pack's Checkout Session, paid (`checkout.session.completed` with
/// `payment_status=paid`, or `checkout.session.async_payment_succeeded`): a `PAID` grant of
/// the pack's credits × quantity, once per session however often or in whatever order the
/// events come (the grant's unique source reference is the session's id).
async fn pack_paid(
    txn: &DatabaseTransaction,
    config: &Config,
    session: &CheckoutSession,
) -> Result<&'static str, DbErr> {
    if matches!(session.payment_status, CheckoutSessionPaymentStatus::Unpaid) {
        return Ok("pack checkout completed, payment not yet received: nothing granted");
    }
    let metadata = session.metadata.as_ref();
    let value = |key: &str| metadata.and_then(|m| m.get(key)).map(String::as_str);
    let tenant = value(TENANT_METADATA_KEY).and_then(|t| Uuid::parse_str(t).ok());
    let pack = value(PACK_METADATA_KEY).and_then(|p| config.find_credit_pack(p));
    let quantity = value(QUANTITY_METADATA_KEY)
        .and_then(|q| q.parse::<i64>().ok())
        .filter(|q| (1..=i64::try_from(MAX_PACKS).unwrap_or(i64::MAX)).contains(q));
    let (Some(tenant), Some(pack), Some(quantity)) = (tenant, pack, quantity) else {
        return Ok("payment checkout without a tenant, a known pack and a quantity ignored");
    };
    // Also whether the tenant exists: an unknown one is acknowledged, not retried forever.
    let exists = match &session.customer {
        Some(customer) => link_customer(txn, tenant, customer.id().as_str(), false).await?,
        None => {
            static EXISTS: PerBackend =
                PerBackend::new(|_| "SELECT id FROM tenant WHERE id = :tenant".to_owned());
            let statement = EXISTS
                .get(txn.get_database_backend())
                .bind(|name| (name == "tenant").then(|| tenant.into()))?;
            txn.query_one_raw(statement).await?.is_some()
        }
    };
    if !exists {
        return Ok("pack checkout for an unknown tenant ignored");
    }
    let now = Utc::now();
    let grant = entity::credit_grant::Model {
        tenant_id: tenant,
        id: Uuid::now_v7(),
        feature: pack.feature.clone(),
        category: GrantCategory::Paid,
        source: "STRIPE_CHECKOUT".to_owned(),
        source_ref: session.id.to_string(),
        amount: pack.credits.saturating_mul(quantity),
        remaining: pack.credits.saturating_mul(quantity),
        priority: credits::grants::DEFAULT_PRIORITY,
        effective_at: now,
        expires_at: pack
            .expires_in_days
            .map(|days| now + chrono::Duration::days(i64::from(days))),
        status: GrantStatus::Active,
        reason: Some(format!("bought {quantity} × {}", pack.name)),
        payment_ref: session.payment_intent.as_ref().map(|p| p.id().to_string()),
        actor_type: ActorType::System,
        actor_id: None,
        created_at: now,
    };
    Ok(match credits::grants::grant_once(txn, &grant).await? {
        true => "credit pack granted",
        false => "credit pack already granted for this session",
    })
}

/// A refund or dispute of a pack's payment: takes back what is left of its grant, up to the
/// share refunded (all of it for a dispute), never twice.
async fn claw_back(
    txn: &DatabaseTransaction,
    payment: &str,
    target: impl Fn(&entity::credit_grant::Model) -> i64,
    reason: &str,
) -> Result<&'static str, DbErr> {
    let taken = credits::grants::claw_back(txn, payment, target, reason, Utc::now()).await?;
    Ok(match taken {
        None => "payment of no credit pack ignored",
        Some(0) => "nothing more to take back",
        Some(_) => "credits taken back",
    })
}

/// Makes `customer` the tenant's Stripe customer — always (`replace`), or only when it has
/// none yet. Whether the tenant exists.
async fn link_customer(
    txn: &DatabaseTransaction,
    tenant: Uuid,
    customer: &str,
    replace: bool,
) -> Result<bool, DbErr> {
    static REPLACE: PerBackend = PerBackend::new(|_| {
        "UPDATE tenant SET stripe_customer_id = :customer WHERE id = :tenant".to_owned()
    });
    static FIRST: PerBackend = PerBackend::new(|_| {
        "UPDATE tenant SET stripe_customer_id = COALESCE(stripe_customer_id, :customer) \
         WHERE id = :tenant"
            .to_owned()
    });
    let sql = if replace { &REPLACE } else { &FIRST };
    let statement = sql
        .get(txn.get_database_backend())
        .bind(|name| match name {
            "tenant" => Some(tenant.into()),
            "customer" => Some(customer.into()),
            _ => None,
        })?;
    let result = txn.execute_raw(statement).await?;
    Ok(result.rows_affected() == 1)
}

/// `customer.subscription.*`: the tenant (by the subscription's metadata, else by its
/// customer) moves to the plan of the first item whose price a plan names, with that item's
/// period — if the subscription's status is entitled (`stripe.entitled_statuses`); any other
/// status puts it on `default_plan`, the real status still shown. A subscription none of
/// whose prices names a plan (an add-on, one made in the Dashboard) is not the tenant's plan
/// and changes nothing. A deleted subscription puts the tenant back on `default_plan` with
/// calendar months — only if it is the tenant's plan subscription.
async fn subscription_changed(
    txn: &DatabaseTransaction,
    config: &Config,
    subscription: &Subscription,
    deleted: bool,
    event_at: DateTime<Utc>,
) -> Result<&'static str, DbErr> {
    let backend = txn.get_database_backend();
    let item = subscription
        .items
        .data
        .iter()
        .find(|item| config.plan_for_price(item.price.id.as_str()).is_some());
    let Some(item) = item else {
        tracing::info!(
            stripe.subscription.id = subscription.id.as_str(),
            "no price of the subscription names a configured plan: not a plan subscription, ignored"
        );
        return Ok("subscription without a plan price ignored");
    };
    let customer = subscription.customer.id().as_str();
    let by_metadata = subscription
        .metadata
        .get(TENANT_METADATA_KEY)
        .and_then(|id| Uuid::parse_str(id).ok());
    let tenant: Option<Uuid> = match by_metadata {
        Some(tenant) if link_customer(txn, tenant, customer, false).await? => Some(tenant),
        _ => {
            static BY_CUSTOMER: PerBackend = PerBackend::new(|_| {
                "SELECT id FROM tenant WHERE stripe_customer_id = :customer \
                 ORDER BY created_at LIMIT 1"
                    .to_owned()
            });
            let statement = BY_CUSTOMER
                .get(backend)
                .bind(|name| (name == "customer").then(|| customer.into()))?;
            let row = txn.query_one_raw(statement).await?;
            row.map(|r| r.try_get("", "id")).transpose()?
        }
    };
    let Some(tenant) = tenant else {
        tracing::warn!(
            stripe.subscription.id = subscription.id.as_str(),
            "subscription of no known tenant ignored"
        );
        return Ok("subscription of an unknown customer ignored");
    };
    let status = subscription.status.as_str();
    let entitled = !deleted && config.is_entitled(status);
    let (plan, period, subscription_id, cancel_at_period_end) = if deleted {
        (config.default_plan.clone(), None, None, false)
    } else {
        let plan = match config.plan_for_price(item.price.id.as_str()) {
            Some(plan) if entitled => plan.slug.clone(),
            _ => config.default_plan.clone(),
        };
        let period = DateTime::from_timestamp(item.current_period_start, 0)
            .zip(DateTime::from_timestamp(item.current_period_end, 0));
        if !entitled {
            tracing::info!(
                stripe.subscription.id = subscription.id.as_str(),
                stripe.subscription.status = status,
                "subscription status is not entitled: the tenant is on the default plan"
            );
        }
        (
            plan,
            period,
            Some(subscription.id.as_str().to_owned()),
            subscription.cancel_at_period_end,
        )
    };
    let change = StripeSubscriptionChange {
        tenant_id: tenant,
        plan: &plan,
        status: subscription.status.as_str(),
        period,
        subscription_id: subscription_id.as_deref(),
        cancel_at_period_end,
        event_at,
        ends: deleted.then(|| subscription.id.as_str()),
    };
    let changed = plans::record_stripe_subscription(txn, &change).await?;
    if changed {
        let now = Utc::now();
        let feature = credits::CREDITS_FEATURE;
        let balance = credits::balance::balance(&mut &*txn, tenant, feature, now).await?;
        let event = webhooks::NewEvent {
            tenant_id: Some(tenant),
            kind: "subscription.updated",
            data: credits::balance::with_balance(
                json!({
                    "plan": plan,
                    "status": change.status,
                    "currentPeriodStart": period.map(|p| p.0),
                    "currentPeriodEnd": period.map(|p| p.1),
                    "cancelAtPeriodEnd": cancel_at_period_end,
                    "ended": deleted,
                    "stripeSubscriptionId": subscription.id.as_str(),
                }),
                &balance,
            ),
        };
        webhooks::record(&mut &*txn, &event, now).await?;
        // A new limit or period: thresholds may hold, or stop holding.
        credits::alerts::reconcile_plan(&mut &*txn, tenant, now).await?;
    }
    Ok(match (changed, deleted) {
        (false, true) => "not the tenant's plan subscription, or older than its state; ignored",
        (false, false) => "older than the subscription's state; ignored",
        (true, false) => "subscription updated",
        (true, true) => "subscription ended; back on the default plan",
    })
}
