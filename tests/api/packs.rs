//! Credit packs bought through Stripe Checkout: the grant follows the payment (paid at once,
//! or later by an async payment), once per session however the events race or repeat; a
//! refund or a dispute takes back what is left, never twice.

use serde_json::{Value, json};
use tollgate::config::CreditPackConfig;

use crate::{
    fake_stripe::{FakeStripe, fixture},
    helpers::{TestApp, error_code},
    resilience::verify,
    stripe::{deliver_signed, event, now, stripe_app},
};

const GRANTS: &str = "query($t: ID!) { tenant(id: $t) { creditGrants { amount remaining status category source sourceRef expiresAt reason } } }";

async fn pack_app(fake: &FakeStripe) -> TestApp {
    stripe_app(fake, |c| {
        c.credit_packs = vec![CreditPackConfig {
            value: "credits-100".into(),
            name: "100 credits".into(),
            credits: 100,
            feature: "credits".into(),
            stripe_price_id: "price_pack100".into(),
            expires_in_days: Some(30),
        }];
    })
    .await
}

/// A pack's Checkout Session for `tenant` (Stripe's fixture), `quantity` packs, paid or not.
fn session(id: &str, tenant: &str, quantity: u32, status: &str, payment: &str) -> Value {
    let mut s = fixture("checkout.session");
    s["id"] = json!(id);
    s["mode"] = json!("payment");
    s["status"] = json!("complete");
    s["payment_status"] = json!(status);
    s["payment_intent"] = json!(payment);
    s["client_reference_id"] = json!(tenant);
    s["metadata"] = json!({ "tollgate_tenant_id": tenant, "tollgate_pack": "credits-100", "tollgate_quantity": quantity.to_string() });
    s
}

async fn deliver(app: &TestApp, id: &str, kind: &str, object: Value) -> String {
    let (status, answer) = deliver_signed(app, &event(id, kind, now(), object)).await;
    assert_eq!(status, 200, "{kind}: {answer}");
    answer["effect"].as_str().unwrap_or_default().to_owned()
}

async fn grants(app: &TestApp, token: &str, tenant: &str) -> Vec<Value> {
    let body = app.gql(Some(token), GRANTS, json!({ "t": tenant })).await;
    body["data"]["tenant"]["creditGrants"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone()
}

#[tokio::test]
async fn a_pack_bought_through_checkout_is_granted_once_when_the_payment_succeeds() {
    let fake = FakeStripe::start().await;
    let app = pack_app(&fake).await;
    let (owner, tenant) = app.owner_with_tenant("buyer").await;
    let packs = app
        .gql(
            None,
            "{ creditPacks { value name credits feature expiresInDays } }",
            json!({}),
        )
        .await;
    assert_eq!(
        packs["data"]["creditPacks"],
        json!([{ "value": "credits-100", "name": "100 credits", "credits": 100, "feature": "credits", "expiresInDays": 30 }])
    );
    let buy = "mutation($t: ID!, $p: String!, $q: Int) { createCreditPurchase(tenantId: $t, pack: $p, quantity: $q) { url } }";
    let body = app
        .gql(
            Some(&owner),
            buy,
            json!({ "t": tenant, "p": "credits-100", "q": 2 }),
        )
        .await;
    assert!(
        body["data"]["createCreditPurchase"]["url"].is_string(),
        "{body}"
    );
    let form = fake.with(|r| r.checkout_requests.last().cloned().unwrap());
    assert_eq!(
        form.get("mode").map(String::as_str),
        Some("payment"),
        "{form:?}"
    );
    assert_eq!(
        form.get("line_items[0][price]").map(String::as_str),
        Some("price_pack100")
    );
    assert_eq!(
        form.get("line_items[0][quantity]").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        form.get("metadata[tollgate_pack]").map(String::as_str),
        Some("credits-100")
    );
    for (vars, code) in [
        (
            json!({ "t": tenant, "p": "credits-9", "q": 1 }),
            "BAD_USER_INPUT",
        ),
        (
            json!({ "t": tenant, "p": "credits-100", "q": 0 }),
            "BAD_USER_INPUT",
        ),
    ] {
        let refused = app.gql(Some(&owner), buy, vars).await;
        assert_eq!(error_code(&refused), Some(code), "{refused}");
    }
    let (member, member_id) = app.sign_up("member@example.com").await;
    app.add_member(&tenant, &member_id, "MEMBER").await;
    let by_member = app
        .gql(
            Some(&member),
            buy,
            json!({ "t": tenant, "p": "credits-100", "q": 1 }),
        )
        .await;
    assert_eq!(error_code(&by_member), Some("FORBIDDEN"), "{by_member}");

    // Completed, but a bank transfer has not arrived yet: nothing.
    let unpaid = session("cs_pack_1", &tenant, 2, "unpaid", "pi_pack_1");
    let effect = deliver(&app, "evt_1", "checkout.session.completed", unpaid).await;
    assert!(effect.contains("nothing granted"), "{effect}");
    assert!(grants(&app, &owner, &tenant).await.is_empty());
    // The payment succeeds: 200 credits, paid, expiring in 30 days.
    let paid = session("cs_pack_1", &tenant, 2, "paid", "pi_pack_1");
    let effect = deliver(
        &app,
        "evt_2",
        "checkout.session.async_payment_succeeded",
        paid.clone(),
    )
    .await;
    assert_eq!(effect, "credit pack granted");
    // Repeated, or raced by another event of the same session: still one grant.
    assert_eq!(
        deliver(
            &app,
            "evt_2",
            "checkout.session.async_payment_succeeded",
            paid.clone()
        )
        .await,
        "replay ignored"
    );
    assert_eq!(
        deliver(&app, "evt_3", "checkout.session.completed", paid).await,
        "credit pack already granted for this session"
    );
    let held = grants(&app, &owner, &tenant).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0]["amount"].as_i64(), held[0]["category"].as_str()),
        (Some(200), Some("PAID"))
    );
    assert_eq!(
        (held[0]["source"].as_str(), held[0]["sourceRef"].as_str()),
        (Some("STRIPE_CHECKOUT"), Some("cs_pack_1"))
    );
    assert!(held[0]["expiresAt"].is_string());
    let (sound, report) = verify(&app);
    assert!(sound, "{report}");
}

#[tokio::test]
async fn a_refund_then_a_dispute_take_back_what_is_left_never_twice() {
    let fake = FakeStripe::start().await;
    let app = pack_app(&fake).await;
    let (owner, tenant) = app.owner_with_tenant("refunded").await;
    let paid = session("cs_pack_2", &tenant, 2, "paid", "pi_pack_2");
    assert_eq!(
        deliver(&app, "evt_a", "checkout.session.completed", paid).await,
        "credit pack granted"
    );
    // The free plan's 10 credits, then 50 of the pack.
    let spend = app
        .gql(
            Some(&owner),
            "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { credit { id } } }",
            json!({ "input": { "tenantId": tenant, "amount": 60, "idempotencyKey": "s" } }),
        )
        .await;
    assert!(spend["errors"].is_null(), "{spend}");

    // Half the charge refunded: half the credits (100) taken back of the 150 left.
    let mut charge = fixture("charge");
    charge["payment_intent"] = json!("pi_pack_2");
    charge["amount"] = json!(2000);
    charge["amount_refunded"] = json!(1000);
    assert_eq!(
        deliver(&app, "evt_b", "charge.refunded", charge.clone()).await,
        "credits taken back"
    );
    let held = grants(&app, &owner, &tenant).await;
    assert_eq!(
        (held[0]["remaining"].as_i64(), held[0]["status"].as_str()),
        (Some(50), Some("ACTIVE"))
    );
    // A dispute of the whole charge: the other 100, of which 50 are left; voided.
    let mut dispute = fixture("dispute");
    dispute["payment_intent"] = json!("pi_pack_2");
    assert_eq!(
        deliver(&app, "evt_c", "charge.dispute.created", dispute).await,
        "credits taken back"
    );
    let held = grants(&app, &owner, &tenant).await;
    assert_eq!(
        (held[0]["remaining"].as_i64(), held[0]["status"].as_str()),
        (Some(0), Some("VOIDED"))
    );
    // The rest of the charge refunded after the dispute: nothing more.
    charge["amount_refunded"] = json!(2000);
    assert_eq!(
        deliver(&app, "evt_d", "charge.refunded", charge).await,
        "nothing more to take back"
    );
    // A refund of a payment that bought no pack changes nothing.
    let mut other = fixture("charge");
    other["payment_intent"] = json!("pi_subscription");
    assert_eq!(
        deliver(&app, "evt_e", "charge.refunded", other).await,
        "payment of no credit pack ignored"
    );
    let history = app
        .gql(Some(&owner), "query($t: ID!) { creditHistory(tenantId: $t, filter: { kind: VOID }) { nodes { amount reason } } }", json!({ "t": tenant }))
        .await;
    assert_eq!(
        history["data"]["creditHistory"]["nodes"],
        json!([{ "amount": 50, "reason": "payment disputed" }, { "amount": 100, "reason": "payment refunded" }]),
        "{history}"
    );
    let (sound, report) = verify(&app);
    assert!(sound, "{report}");
}
