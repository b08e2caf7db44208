use serde_json::json;

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn create_tenant_makes_the_caller_owner_on_the_default_plan() {
    let app = spawn_app().await;
    let (token, _) = app.sign_up("ann@example.com").await;

    let body = app
        .gql(
            Some(&token),
            "mutation { createTenant(input: {name: \"Acme\", slug: \"acme\"}) { id slug name plan { slug features { name type value } } } }",
            json!({}),
        )
        .await;
    let me = app
        .gql(
            Some(&token),
            "{ me { memberships { role tenant { slug } } } }",
            json!({}),
        )
        .await;

    let tenant = &body["data"]["createTenant"];
    assert_eq!(tenant["slug"], "acme");
    assert_eq!(tenant["name"], "Acme");
    assert_eq!(tenant["plan"]["slug"], "free");
    assert_eq!(
        tenant["plan"]["features"],
        json!([{ "name": "credits", "type": "MONTHLY", "value": 10 }])
    );
    assert_eq!(
        me["data"]["me"]["memberships"],
        json!([{ "role": "OWNER", "tenant": { "slug": "acme" } }])
    );
    let fetched = app
        .gql(
            Some(&token),
            "query($id: ID!) { tenant(id: $id) { slug } }",
            json!({ "id": tenant["id"] }),
        )
        .await;
    assert_eq!(fetched["data"]["tenant"]["slug"], "acme");
}

#[tokio::test]
async fn create_tenant_requires_a_signed_in_user() {
    let app = spawn_app().await;

    let body = app
        .gql(
            None,
            "mutation { createTenant(input: {name: \"Acme\", slug: \"acme\"}) { id } }",
            json!({}),
        )
        .await;

    assert_eq!(error_code(&body), Some("UNAUTHENTICATED"));
}

#[tokio::test]
async fn create_tenant_rejects_taken_and_malformed_slugs() {
    let app = spawn_app().await;
    let (token, _) = app.owner_with_tenant("acme").await;

    for slug in ["acme", "Not Valid", "-edge", "", &"a".repeat(49)] {
        let body = app
            .gql(
                Some(&token),
                "mutation($s: String!) { createTenant(input: {name: \"X\", slug: $s}) { id } }",
                json!({ "s": slug }),
            )
            .await;
        assert_eq!(
            error_code(&body),
            Some("BAD_USER_INPUT"),
            "slug {slug:?}: {body}"
        );
    }
}

#[tokio::test]
async fn another_tenants_data_is_never_returned_nor_spent() {
    let app = spawn_app().await;
    let (ann, ann_tenant) = app.owner_with_tenant("ann").await;
    let ann_project = app.project_id(&ann, &ann_tenant).await;
    let (bob, _) = app.owner_with_tenant("bob").await;
    let vars = json!({ "t": ann_tenant, "p": ann_project });

    let reads = [
        "query($t: ID!) { tenant(id: $t) { id name } }",
        "query($t: ID!) { planFeatureUsage(tenantId: $t) { used } }",
        "query($t: ID!) { creditHistory(tenantId: $t) { nodes { id } } }",
    ];
    for query in reads {
        let body = app.gql(Some(&bob), query, vars.clone()).await;
        assert_eq!(error_code(&body), Some("FORBIDDEN"), "{query}: {body}");
        assert!(
            body["data"].is_null()
                || body["data"]
                    .as_object()
                    .is_some_and(|d| d.values().all(|v| v.is_null())),
            "{body}"
        );
    }
    let project = app
        .gql(
            Some(&bob),
            "mutation($t: ID!) { createProject(tenantId: $t, input: {name: \"x\"}) { id } }",
            vars.clone(),
        )
        .await;
    let task = app
        .gql(
            Some(&bob),
            "mutation($p: ID!) { createTask(projectId: $p, input: {title: \"x\"}) { id } }",
            vars.clone(),
        )
        .await;
    let me = app
        .gql(
            Some(&bob),
            "{ me { memberships { tenant { slug } } } }",
            json!({}),
        )
        .await;

    assert_eq!(error_code(&project), Some("FORBIDDEN"));
    assert_eq!(error_code(&task), Some("NOT_FOUND"));
    assert_eq!(
        me["data"]["me"]["memberships"],
        json!([{ "tenant": { "slug": "bob" } }])
    );
    // Nothing was spent from Ann's tenant by Bob's attempts.
    assert_eq!(app.usage(&ann, &ann_tenant).await["used"], 2);
}

#[tokio::test]
async fn tenant_scoped_fields_need_a_signed_in_user() {
    let app = spawn_app().await;
    let (_, tenant) = app.owner_with_tenant("acme").await;

    let body = app
        .gql(
            None,
            "query($t: ID!) { planFeatureUsage(tenantId: $t) { used } }",
            json!({ "t": tenant }),
        )
        .await;

    assert_eq!(error_code(&body), Some("UNAUTHENTICATED"));
}
