//! API keys for servers: created by a tenant's OWNER or ADMIN (or a platform admin, or the
//! CLI), shown once, stored as a hash, scoped, confined to their tenant, revocable; and the
//! actor every ledger row records.

use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

const CREATE: &str = "mutation($t: ID, $name: String!, $scopes: [ApiScope!]!, $exp: DateTime) { \
    createApiKey(tenantId: $t, name: $name, scopes: $scopes, expiresAt: $exp) { secret \
    apiKey { id tenantId name prefix scopes expiresAt revokedAt lastUsedAt } } }";

const CONSUME: &str = "mutation($input: ConsumeCreditsInput!) { consumeCredits(input: $input) { \
    replayed credit { id amount actor { type id } user { id } } } }";

const CHECK: &str =
    "query($t: ID!) { checkCredits(tenantId: $t, amount: 1) { allowed remaining } }";

async fn create_key(app: &TestApp, token: &str, tenant: Option<&str>, scopes: Value) -> Value {
    let body = app
        .gql(
            Some(token),
            CREATE,
            json!({ "t": tenant, "name": "billing-backend", "scopes": scopes }),
        )
        .await;
    body["data"]["createApiKey"].clone()
}

async fn spend(app: &TestApp, secret: &str, tenant: &str, key: &str) -> Value {
    app.gql(
        Some(secret),
        CONSUME,
        json!({ "input": { "tenantId": tenant, "amount": 1, "idempotencyKey": key } }),
    )
    .await
}

#[tokio::test]
async fn an_owner_creates_a_key_whose_secret_is_shown_once_and_kept_as_a_hash() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;

    let created = create_key(&app, &token, Some(&tenant), json!(["CREDITS_CONSUME"])).await;
    let listed = app
        .gql(
            Some(&token),
            "query($t: ID!) { apiKeys(tenantId: $t) { id name prefix scopes revokedAt } }",
            json!({ "t": tenant }),
        )
        .await;

    let secret = created["secret"].as_str().expect("secret");
    assert!(
        secret.starts_with("tg_sk_") && secret.len() > 40,
        "{secret}"
    );
    let key = &created["apiKey"];
    assert_eq!(key["tenantId"], json!(tenant));
    assert_eq!(key["scopes"], json!(["CREDITS_CONSUME"]));
    assert!(secret.starts_with(key["prefix"].as_str().expect("prefix")));
    assert_eq!(
        listed["data"]["apiKeys"],
        json!([{ "id": key["id"], "name": "billing-backend", "prefix": key["prefix"],
                 "scopes": ["CREDITS_CONSUME"], "revokedAt": null }])
    );
    // Nothing the database holds is the secret.
    let db_text = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM api_key WHERE secret_hash = '{secret}' OR name = '{secret}' \
             OR prefix = '{secret}' OR scopes = '{secret}'"
        ))
        .await;
    assert_eq!(db_text, 0);
}

#[tokio::test]
async fn a_key_spends_for_its_tenant_and_the_ledger_names_it_as_the_actor() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let (_, member) = app.sign_up("mia@example.com").await;
    app.add_member(&tenant, &member, "MEMBER").await;
    let (_, stranger) = app.sign_up("eve@example.com").await;
    let created = create_key(
        &app,
        &token,
        Some(&tenant),
        json!(["CREDITS_CONSUME", "CREDITS_READ"]),
    )
    .await;
    let secret = created["secret"].as_str().expect("secret");
    let key_id = created["apiKey"]["id"].clone();

    let alone = spend(&app, secret, &tenant, "a").await;
    let for_member = app
        .gql(
            Some(secret),
            CONSUME,
            json!({ "input": { "tenantId": tenant, "amount": 1, "idempotencyKey": "b",
                               "userId": member } }),
        )
        .await;
    let for_stranger = app
        .gql(
            Some(secret),
            CONSUME,
            json!({ "input": { "tenantId": tenant, "amount": 1, "idempotencyKey": "c",
                               "userId": stranger } }),
        )
        .await;
    let checked = app.gql(Some(secret), CHECK, json!({ "t": tenant })).await;
    let history = app
        .gql(
            Some(secret),
            "query($t: ID!) { creditHistory(tenantId: $t) { nodes { actor { type id } } } }",
            json!({ "t": tenant }),
        )
        .await;
    let me = app.gql(Some(secret), "{ me { id } }", json!({})).await;

    assert!(alone["errors"].is_null(), "{alone}");
    assert_eq!(
        alone["data"]["consumeCredits"]["credit"]["actor"],
        json!({ "type": "API_KEY", "id": key_id })
    );
    assert!(alone["data"]["consumeCredits"]["credit"]["user"].is_null());
    assert_eq!(
        for_member["data"]["consumeCredits"]["credit"]["user"]["id"],
        json!(member),
        "{for_member}"
    );
    assert_eq!(
        error_code(&for_stranger),
        Some("BAD_USER_INPUT"),
        "{for_stranger}"
    );
    assert_eq!(checked["data"]["checkCredits"]["remaining"], 8, "{checked}");
    let actors = &history["data"]["creditHistory"]["nodes"];
    assert_eq!(actors.as_array().map(Vec::len), Some(2), "{history}");
    assert_eq!(actors[0]["actor"]["type"], "API_KEY");
    // A user's own spend names the user.
    let project = app.create_project(&token, &tenant, "Mine").await;
    assert!(project["errors"].is_null(), "{project}");
    let history = app
        .gql(
            Some(&token),
            "query($t: ID!) { creditHistory(tenantId: $t, first: 1) { nodes { actor { type id } } } }",
            json!({ "t": tenant }),
        )
        .await;
    assert_eq!(
        history["data"]["creditHistory"]["nodes"][0]["actor"]["type"],
        "USER"
    );
    // What asks for a user is not for a key.
    assert!(me["data"]["me"].is_null(), "{me}");
    let project = app.create_project(secret, &tenant, "Nope").await;
    assert_eq!(error_code(&project), Some("FORBIDDEN"), "{project}");
    let verify = app.cli(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test]
async fn a_tenant_key_touches_nothing_of_another_tenant_and_needs_its_scopes() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let (other_token, other) = app.owner_with_tenant("globex").await;
    let consume_only = create_key(&app, &token, Some(&tenant), json!(["CREDITS_CONSUME"])).await;
    let read_only = create_key(&app, &token, Some(&tenant), json!(["CREDITS_READ"])).await;
    let consume_only = consume_only["secret"].as_str().expect("secret");
    let read_only = read_only["secret"].as_str().expect("secret");

    let foreign_spend = spend(&app, consume_only, &other, "x").await;
    let foreign_check = app.gql(Some(read_only), CHECK, json!({ "t": other })).await;
    let foreign_history = app
        .gql(
            Some(read_only),
            "query($t: ID!) { creditHistory(tenantId: $t) { nodes { id } } }",
            json!({ "t": other }),
        )
        .await;
    let unknown = app
        .gql(
            Some(read_only),
            CHECK,
            json!({ "t": uuid::Uuid::now_v7().to_string() }),
        )
        .await;
    let read_spends = spend(&app, read_only, &tenant, "y").await;
    let consume_reads = app
        .gql(Some(consume_only), CHECK, json!({ "t": tenant }))
        .await;
    let other_lists = app
        .gql(
            Some(&other_token),
            "query($t: ID!) { apiKeys(tenantId: $t) { id } }",
            json!({ "t": tenant }),
        )
        .await;

    // Another tenant answers as one that does not exist.
    assert_eq!(
        error_code(&foreign_spend),
        Some("FORBIDDEN"),
        "{foreign_spend}"
    );
    assert_eq!(
        error_code(&foreign_check),
        Some("FORBIDDEN"),
        "{foreign_check}"
    );
    assert_eq!(error_code(&unknown), Some("FORBIDDEN"), "{unknown}");
    assert_eq!(error_code(&foreign_history), Some("FORBIDDEN"));
    assert_eq!(error_code(&read_spends), Some("FORBIDDEN"), "{read_spends}");
    assert_eq!(
        error_code(&consume_reads),
        Some("FORBIDDEN"),
        "{consume_reads}"
    );
    assert_eq!(error_code(&other_lists), Some("FORBIDDEN"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 0);
}

#[tokio::test]
async fn only_owners_and_admins_make_tenant_keys_and_only_platform_admins_platform_keys() {
    let app = spawn_app_with(|c| c.platform_admins = vec!["Root@Example.com".into()]).await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let (member_token, member) = app.sign_up("mia@example.com").await;
    app.add_member(&tenant, &member, "MEMBER").await;
    let (root, _) = app.sign_up("root@example.com").await;

    let by_member = app
        .gql(
            Some(&member_token),
            CREATE,
            json!({ "t": tenant, "name": "k", "scopes": ["CREDITS_READ"] }),
        )
        .await;
    let platform_by_owner = app
        .gql(
            Some(&token),
            CREATE,
            json!({ "t": null, "name": "k", "scopes": ["CREDITS_READ"] }),
        )
        .await;
    let platform = create_key(&app, &root, None, json!(["CREDITS_CONSUME"])).await;
    let no_scope = app
        .gql(
            Some(&token),
            CREATE,
            json!({ "t": tenant, "name": "k", "scopes": [] }),
        )
        .await;

    assert_eq!(error_code(&by_member), Some("FORBIDDEN"), "{by_member}");
    assert_eq!(error_code(&platform_by_owner), Some("FORBIDDEN"));
    assert_eq!(error_code(&no_scope), Some("BAD_USER_INPUT"));
    assert!(platform["apiKey"]["tenantId"].is_null(), "{platform}");
    let secret = platform["secret"].as_str().expect("secret");
    let spent = spend(&app, secret, &tenant, "p").await;
    assert!(spent["errors"].is_null(), "{spent}");
    let nowhere = spend(&app, secret, &uuid::Uuid::now_v7().to_string(), "q").await;
    assert_eq!(error_code(&nowhere), Some("NOT_FOUND"), "{nowhere}");
}

#[tokio::test]
async fn a_revoked_or_expired_key_is_unauthenticated_from_the_next_request_on() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let created = create_key(&app, &token, Some(&tenant), json!(["CREDITS_CONSUME"])).await;
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let expiring = app
        .gql(
            Some(&token),
            CREATE,
            json!({ "t": tenant, "name": "short", "scopes": ["CREDITS_CONSUME"],
                    "exp": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339() }),
        )
        .await;
    let expiring = expiring["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(spend(&app, &secret, &tenant, "1").await["errors"].is_null());
    assert!(spend(&app, &expiring, &tenant, "2").await["errors"].is_null());

    let revoked = app
        .gql(
            Some(&token),
            "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
            json!({ "id": created["apiKey"]["id"] }),
        )
        .await;
    assert!(
        revoked["data"]["revokeApiKey"]["revokedAt"].is_string(),
        "{revoked}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // A revoked key reads and spends nothing from the next request on (its revocation is
    // checked in the request's own query or statement); an expired or unknown one is refused
    // before anything runs.
    let spend_query = json!({ "query": CONSUME, "variables": { "input": {
        "tenantId": tenant, "amount": 1, "idempotencyKey": "3" } } });
    let read_query = json!({ "query": "query($t: ID!) { tenant(id: $t) { id } }",
                             "variables": { "t": tenant } });
    let replay_query = json!({ "query": CONSUME, "variables": { "input": {
        "tenantId": tenant, "amount": 1, "idempotencyKey": "1" } } });
    let public = json!({ "query": "{ creditTypes { value } }" });
    for (case, secret, body) in [
        ("revoked, spending", secret.as_str(), &spend_query),
        ("revoked, replaying", secret.as_str(), &replay_query),
        ("revoked, reading", secret.as_str(), &read_query),
        ("expired", expiring.as_str(), &public),
        (
            "unknown",
            "tg_sk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &public,
        ),
    ] {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(secret)
            .json(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 401, "{case}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(error_code(&body), Some("UNAUTHENTICATED"), "{case}");
    }
    assert_eq!(app.scalar("SELECT COUNT(*) FROM credit").await, 2);
}

#[tokio::test]
async fn the_cli_creates_a_platform_key_from_the_server_s_machine() {
    let app = spawn_app().await;
    let (_, tenant) = app.owner_with_tenant("acme").await;

    let out = app.cli(&[
        "api-key",
        "create",
        "--platform",
        "--name",
        "ops",
        "--scopes",
        "CREDITS_CONSUME,CREDITS_READ",
    ]);
    let bad = app.cli(&[
        "api-key",
        "create",
        "--platform",
        "--name",
        "ops",
        "--scopes",
        "EVERYTHING",
    ]);

    assert!(out.status.success(), "{out:?}");
    assert!(!bad.status.success());
    let secret = String::from_utf8(out.stdout).expect("utf-8");
    let secret = secret.trim();
    assert!(secret.starts_with("tg_sk_"), "{secret}");
    let spent = spend(&app, secret, &tenant, "cli").await;
    assert!(spent["errors"].is_null(), "{spent}");
    let checked = app.gql(Some(secret), CHECK, json!({ "t": tenant })).await;
    assert_eq!(
        checked["data"]["checkCredits"]["allowed"], true,
        "{checked}"
    );
}

#[tokio::test]
async fn history_filters_by_actor_and_object() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let created = create_key(&app, &token, Some(&tenant), json!(["CREDITS_CONSUME"])).await;
    let secret = created["secret"].as_str().expect("secret");
    for (who, object, key) in [
        (secret, "job-1", "a"),
        (secret, "job-2", "b"),
        (&token[..], "job-1", "c"),
    ] {
        let body = app
            .gql(
                Some(who),
                CONSUME,
                json!({ "input": { "tenantId": tenant, "amount": 1, "idempotencyKey": key,
                                   "objectId": object } }),
            )
            .await;
        assert!(body["errors"].is_null(), "{body}");
    }
    let count = |filter: Value| {
        let (app, token, tenant) = (&app, &token, &tenant);
        async move {
            let body = app
                .gql(
                    Some(token),
                    "query($t: ID!, $f: CreditHistoryFilter) { creditHistory(tenantId: $t, filter: $f) { nodes { objectId } } }",
                    json!({ "t": tenant, "f": filter }),
                )
                .await;
            body["data"]["creditHistory"]["nodes"]
                .as_array()
                .map(Vec::len)
                .unwrap_or_else(|| panic!("{body}"))
        }
    };

    assert_eq!(count(json!({ "actor": "API_KEY" })).await, 2);
    assert_eq!(count(json!({ "actor": "USER" })).await, 1);
    assert_eq!(
        count(json!({ "actorId": created["apiKey"]["id"] })).await,
        2
    );
    assert_eq!(count(json!({ "objectId": "job-1" })).await, 2);
    assert_eq!(
        count(json!({ "objectId": "job-1", "actor": "API_KEY" })).await,
        1
    );
}

#[tokio::test]
async fn tenants_are_created_and_addressed_by_the_saas_s_own_ids() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let out = app.cli(&[
        "api-key",
        "create",
        "--platform",
        "--name",
        "provisioning",
        "--scopes",
        "TENANTS_WRITE,CREDITS_CONSUME,CREDITS_READ",
    ]);
    assert!(out.status.success(), "{out:?}");
    let platform = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let tenant_key = create_key(&app, &token, Some(&tenant), json!(["CREDITS_CONSUME"])).await;
    let tenant_key = tenant_key["secret"].as_str().expect("secret");
    const CREATE_TENANT: &str = "mutation($input: CreateTenantInput!) { createTenant(input: $input) \
        { id slug externalId subscription { plan { slug } } } }";

    app.sign_up("owner7@example.com").await;
    let created = app
        .gql(
            Some(&platform),
            CREATE_TENANT,
            json!({ "input": { "name": "Cust 7", "slug": "cust-7", "externalId": "cust_7",
                               "ownerEmail": "Owner7@example.com" } }),
        )
        .await;
    let again = app
        .gql(
            Some(&platform),
            CREATE_TENANT,
            json!({ "input": { "name": "Other", "slug": "other", "externalId": "cust_7",
                               "ownerEmail": "owner7@example.com" } }),
        )
        .await;
    let ownerless = app
        .gql(
            Some(&platform),
            CREATE_TENANT,
            json!({ "input": { "name": "Nobody's", "slug": "nobodys" } }),
        )
        .await;
    let unknown_owner = app
        .gql(
            Some(&platform),
            CREATE_TENANT,
            json!({ "input": { "name": "Ghost's", "slug": "ghosts",
                               "ownerEmail": "ghost@example.com" } }),
        )
        .await;
    let by_tenant_key = app
        .gql(
            Some(tenant_key),
            CREATE_TENANT,
            json!({ "input": { "name": "X", "slug": "x", "externalId": "x" } }),
        )
        .await;
    let by_user = app
        .gql(
            Some(&token),
            CREATE_TENANT,
            json!({ "input": { "name": "Mine", "slug": "mine", "externalId": "mine_1" } }),
        )
        .await;

    assert!(created["errors"].is_null(), "{created}");
    let created = &created["data"]["createTenant"];
    assert_eq!(created["externalId"], "cust_7");
    assert_eq!(created["subscription"]["plan"]["slug"], "free");
    assert_eq!(error_code(&again), Some("BAD_USER_INPUT"), "{again}");
    assert_eq!(
        error_code(&ownerless),
        Some("BAD_USER_INPUT"),
        "{ownerless}"
    );
    assert_eq!(
        error_code(&unknown_owner),
        Some("BAD_USER_INPUT"),
        "{unknown_owner}"
    );
    assert_eq!(
        error_code(&by_tenant_key),
        Some("FORBIDDEN"),
        "{by_tenant_key}"
    );
    assert_eq!(
        by_user["data"]["createTenant"]["externalId"], "mine_1",
        "{by_user}"
    );
    // A tenant a platform key made has exactly one OWNER: the user it named.
    let owners = app
        .scalar(
            "SELECT COUNT(*) FROM tenant_user u JOIN tenant t ON t.id = u.tenant_id \
             JOIN \"user\" o ON o.id = u.user_id \
             WHERE t.external_id = 'cust_7' AND u.role = 'OWNER' AND o.email = 'owner7@example.com'",
        )
        .await;
    assert_eq!(owners, 1);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM tenant WHERE slug IN ('nobodys', 'ghosts')")
            .await,
        0
    );

    let found = app
        .gql(
            Some(&platform),
            "{ tenantByExternalId(externalId: \"cust_7\") { id externalId } }",
            json!({}),
        )
        .await;
    let missing = app
        .gql(
            Some(&platform),
            "{ tenantByExternalId(externalId: \"nobody\") { id } }",
            json!({}),
        )
        .await;
    let spent = app
        .gql(
            Some(&platform),
            CONSUME,
            json!({ "input": { "tenantExternalId": "cust_7", "amount": 2, "idempotencyKey": "e1" } }),
        )
        .await;
    let checked = app
        .gql(
            Some(&platform),
            "{ checkCredits(tenantExternalId: \"cust_7\", amount: 1) { remaining } }",
            json!({}),
        )
        .await;
    let unknown = app
        .gql(
            Some(&platform),
            CONSUME,
            json!({ "input": { "tenantExternalId": "nobody", "amount": 1, "idempotencyKey": "e2" } }),
        )
        .await;
    let both = app
        .gql(
            Some(&platform),
            CONSUME,
            json!({ "input": { "tenantId": tenant, "tenantExternalId": "cust_7", "amount": 1,
                               "idempotencyKey": "e3" } }),
        )
        .await;
    let foreign = app
        .gql(
            Some(tenant_key),
            CONSUME,
            json!({ "input": { "tenantExternalId": "cust_7", "amount": 1, "idempotencyKey": "e4" } }),
        )
        .await;

    assert_eq!(
        found["data"]["tenantByExternalId"]["id"], created["id"],
        "{found}"
    );
    assert!(missing["data"]["tenantByExternalId"].is_null(), "{missing}");
    assert!(spent["errors"].is_null(), "{spent}");
    assert_eq!(checked["data"]["checkCredits"]["remaining"], 8, "{checked}");
    assert_eq!(error_code(&unknown), Some("NOT_FOUND"), "{unknown}");
    assert_eq!(error_code(&both), Some("BAD_USER_INPUT"), "{both}");
    assert_eq!(error_code(&foreign), Some("FORBIDDEN"), "{foreign}");
}

#[tokio::test]
async fn a_key_s_last_use_is_recorded_without_a_write_per_request() {
    let app = spawn_app().await;
    let (token, tenant) = app.owner_with_tenant("acme").await;
    let created = create_key(&app, &token, Some(&tenant), json!(["CREDITS_READ"])).await;
    let secret = created["secret"].as_str().expect("secret");
    assert!(created["apiKey"]["lastUsedAt"].is_null());
    let listed = || async {
        let body = app
            .gql(
                Some(&token),
                "query($t: ID!) { apiKeys(tenantId: $t) { lastUsedAt } }",
                json!({ "t": tenant }),
            )
            .await;
        body["data"]["apiKeys"][0]["lastUsedAt"].clone()
    };

    for _ in 0..5 {
        let checked = app.gql(Some(secret), CHECK, json!({ "t": tenant })).await;
        assert!(checked["errors"].is_null(), "{checked}");
    }
    // Written in the background, once.
    let mut first = Value::Null;
    for _ in 0..50 {
        first = listed().await;
        if first.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(first.is_string(), "lastUsedAt was never recorded");
    app.gql(Some(secret), CHECK, json!({ "t": tenant })).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(listed().await, first, "not rewritten within five minutes");
}
