//! The usage reporter when Stripe misbehaves in ways that are not the events' fault: a key
//! Stripe no longer accepts, and one send that hangs while the others could go.

use std::time::Duration;

use crate::{
    fake_stripe::{Answer, FakeStripe},
    operability::{metrics_page, sample},
    stripe::{eventually, link_customer, reports, stripe_app},
};

#[tokio::test]
async fn a_refused_key_keeps_usage_pending_and_it_all_goes_out_once_the_key_works() {
    let fake = FakeStripe::start().await;
    fake.with(|r| r.refuse_key = true);
    let app = stripe_app(&fake, |c| c.stripe.max_attempts = 2).await;
    let (token, tenant) = app.owner_with_tenant("rolled-key").await;
    link_customer(&app, &tenant, "cus_rolled").await;
    let project = app.project_id(&token, &tenant).await;
    app.create_task(&token, &project, "while the key is bad")
        .await;
    // Many more refusals than max_attempts: nothing is given up on.
    eventually("Stripe refused the key several times", || async {
        fake.with(|r| r.meter_requests.len() >= 8)
    })
    .await;
    let pending = reports(&app, &token, &tenant).await;
    assert_eq!(pending.len(), 2);
    for report in &pending {
        assert_eq!(report["status"], "PENDING", "{report}");
        assert_eq!(
            report["attempts"], 0,
            "a refused key is no attempt: {report}"
        );
        assert!(
            report["lastError"].as_str().unwrap().contains("401"),
            "{report}"
        );
    }
    let page = metrics_page(&app).await;
    let unauthorized = sample(
        &page,
        "tollgate_stripe_meter_events_total{outcome=\"unauthorized\"}",
    );
    assert!(unauthorized.is_some_and(|n| n >= 8.0), "{page}");
    // The key is fixed: everything is delivered, once.
    fake.with(|r| r.refuse_key = false);
    eventually("everything is delivered", || async {
        let r = reports(&app, &token, &tenant).await;
        r.len() == 2 && r.iter().all(|r| r["status"] == "DELIVERED")
    })
    .await;
    assert_eq!(fake.with(|r| r.accepted.len()), 2);
}

#[tokio::test]
async fn one_hanging_send_holds_up_no_other_event() {
    let fake = FakeStripe::start().await;
    // The first send hangs far longer than the others take; the next one fails once.
    fake.script([
        Answer::Stall(Duration::from_secs(30)),
        Answer::Fail(500, None),
    ]);
    let app = stripe_app(&fake, |c| {
        c.stripe.request_timeout_ms = 20_000;
        c.stripe.claim_seconds = 60;
    })
    .await;
    let (token, tenant) = app.owner_with_tenant("straggler").await;
    link_customer(&app, &tenant, "cus_straggler").await;
    let project = app.project_id(&token, &tenant).await;
    for i in 0..4 {
        app.create_task(&token, &project, &format!("t{i}")).await;
    }
    // Four of the five events (the project's and the tasks') are delivered — one of them
    // after a retry — while the first send is still hanging.
    eventually("every event but the hanging one is delivered", || async {
        let r = reports(&app, &token, &tenant).await;
        r.iter().filter(|r| r["status"] == "DELIVERED").count() == 4
    })
    .await;
    let hanging: Vec<_> = reports(&app, &token, &tenant)
        .await
        .into_iter()
        .filter(|r| r["status"] != "DELIVERED")
        .collect();
    assert_eq!(hanging.len(), 1);
    assert_eq!(hanging[0]["status"], "PENDING");
    assert_eq!(
        hanging[0]["attempts"], 0,
        "still in flight: {:?}",
        hanging[0]
    );
}
