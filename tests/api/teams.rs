//! Teams: invitations (one-time, for one email, expiring, revocable), members and roles, and
//! exactly one OWNER per tenant at every instant.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

const INVITE: &str = "mutation($t: ID!, $email: String!, $role: Role) { inviteMember(tenantId: $t, \
    email: $email, role: $role) { token acceptUrl invitation { id email role expiresAt } } }";
const ACCEPT: &str =
    "mutation($token: String!) { acceptInvitation(token: $token) { role tenant { id } } }";
const MEMBERS: &str = "query($t: ID!) { members(tenantId: $t) { role user { email } } }";

async fn invite(app: &TestApp, token: &str, tenant: &str, email: &str, role: &str) -> Value {
    app.gql(
        Some(token),
        INVITE,
        json!({ "t": tenant, "email": email, "role": role }),
    )
    .await
}

fn invitation_token(body: &Value) -> String {
    body["data"]["inviteMember"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

async fn owners(app: &TestApp, tenant: &str) -> i64 {
    app.scalar(&format!(
        "SELECT COUNT(*) FROM tenant_user WHERE role = 'OWNER' AND tenant_id = {}",
        tenant_literal(app, tenant)
    ))
    .await
}

/// A tenant id as a SQL literal of the test's database (a blob on SQLite).
fn tenant_literal(app: &TestApp, tenant: &str) -> String {
    if app.is_postgres() {
        format!("'{tenant}'")
    } else {
        format!("X'{}'", tenant.replace('-', ""))
    }
}

#[tokio::test]
async fn an_invitation_is_accepted_once_by_its_email_and_makes_a_member() {
    let app = spawn_app().await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;

    let invited = invite(&app, &owner, &tenant, "Mia@Example.com", "MEMBER").await;
    let token = invitation_token(&invited);
    let pending = app
        .gql(
            Some(&owner),
            "query($t: ID!) { invitations(tenantId: $t) { email role } }",
            json!({ "t": tenant }),
        )
        .await;
    let (mia, _) = app.sign_up("mia@example.com").await;
    let (eve, _) = app.sign_up("eve@example.com").await;
    let wrong_email = app.gql(Some(&eve), ACCEPT, json!({ "token": token })).await;
    let accepted = app.gql(Some(&mia), ACCEPT, json!({ "token": token })).await;
    let reused = app.gql(Some(&mia), ACCEPT, json!({ "token": token })).await;
    let members = app.gql(Some(&mia), MEMBERS, json!({ "t": tenant })).await;
    let project = app.create_project(&mia, &tenant, "Mia's").await;

    assert!(token.starts_with("tg_inv_"), "{invited}");
    assert!(invited["data"]["inviteMember"]["acceptUrl"].is_null());
    assert_eq!(
        invited["data"]["inviteMember"]["invitation"]["email"],
        "mia@example.com"
    );
    assert_eq!(
        pending["data"]["invitations"],
        json!([{ "email": "mia@example.com", "role": "MEMBER" }])
    );
    assert_eq!(
        error_code(&wrong_email),
        Some("INVITATION_EMAIL_MISMATCH"),
        "{wrong_email}"
    );
    assert_eq!(
        accepted["data"]["acceptInvitation"],
        json!({ "role": "MEMBER", "tenant": { "id": tenant } }),
        "{accepted}"
    );
    assert_eq!(
        error_code(&reused),
        Some("INVITATION_NOT_FOUND"),
        "{reused}"
    );
    assert_eq!(
        members["data"]["members"],
        json!([{ "role": "OWNER", "user": { "email": "acme@example.com" } },
               { "role": "MEMBER", "user": { "email": "mia@example.com" } }])
    );
    assert!(project["errors"].is_null(), "a member spends: {project}");
    // The token itself is kept nowhere.
    let stored = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM tenant_invitation WHERE token_hash = '{token}'"
        ))
        .await;
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn expired_revoked_and_unknown_invitations_are_refused_with_their_codes() {
    let app = spawn_app_with(|c| {
        c.tenants.invitation_accept_url = Some("https://app.example.com/join?t={token}".into());
    })
    .await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (mia, _) = app.sign_up("mia@example.com").await;
    let expiring = invite(&app, &owner, &tenant, "mia@example.com", "MEMBER").await;
    let revoked = invite(&app, &owner, &tenant, "mia@example.com", "ADMIN").await;
    let url = expiring["data"]["inviteMember"]["acceptUrl"].clone();
    use sea_orm::ConnectionTrait;
    app.db()
        .await
        .execute_unprepared(
            "UPDATE tenant_invitation SET expires_at = created_at WHERE email = 'mia@example.com' \
             AND role = 'MEMBER'",
        )
        .await
        .expect("expired");
    let revoke = app
        .gql(
            Some(&owner),
            "mutation($t: ID!, $id: ID!) { revokeInvitation(tenantId: $t, id: $id) { revokedAt } }",
            json!({ "t": tenant, "id": revoked["data"]["inviteMember"]["invitation"]["id"] }),
        )
        .await;

    let expired = app
        .gql(
            Some(&mia),
            ACCEPT,
            json!({ "token": invitation_token(&expiring) }),
        )
        .await;
    let after_revoke = app
        .gql(
            Some(&mia),
            ACCEPT,
            json!({ "token": invitation_token(&revoked) }),
        )
        .await;
    let unknown = app
        .gql(Some(&mia), ACCEPT, json!({ "token": "tg_inv_nothing" }))
        .await;
    let anonymous = app
        .gql(
            None,
            ACCEPT,
            json!({ "token": invitation_token(&expiring) }),
        )
        .await;

    assert_eq!(
        url,
        json!(format!(
            "https://app.example.com/join?t={}",
            invitation_token(&expiring)
        ))
    );
    assert!(
        revoke["data"]["revokeInvitation"]["revokedAt"].is_string(),
        "{revoke}"
    );
    assert_eq!(
        error_code(&expired),
        Some("INVITATION_EXPIRED"),
        "{expired}"
    );
    assert_eq!(error_code(&after_revoke), Some("INVITATION_NOT_FOUND"));
    assert_eq!(error_code(&unknown), Some("INVITATION_NOT_FOUND"));
    assert_eq!(error_code(&anonymous), Some("UNAUTHENTICATED"));
    let members = app.scalar("SELECT COUNT(*) FROM tenant_user").await;
    assert_eq!(members, 1, "nobody joined");
}

#[tokio::test]
async fn only_owners_and_admins_invite_and_members_are_not_invited_twice() {
    let app = spawn_app().await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (mia, _) = app.sign_up("mia@example.com").await;
    let token = invitation_token(&invite(&app, &owner, &tenant, "mia@example.com", "MEMBER").await);
    app.gql(Some(&mia), ACCEPT, json!({ "token": token })).await;

    let by_member = invite(&app, &mia, &tenant, "bob@example.com", "MEMBER").await;
    let twice = invite(&app, &owner, &tenant, "mia@example.com", "ADMIN").await;
    let as_owner = invite(&app, &owner, &tenant, "bob@example.com", "OWNER").await;
    let listed_by_member = app
        .gql(
            Some(&mia),
            "query($t: ID!) { invitations(tenantId: $t) { id } }",
            json!({ "t": tenant }),
        )
        .await;

    assert_eq!(error_code(&by_member), Some("FORBIDDEN"), "{by_member}");
    assert_eq!(error_code(&twice), Some("ALREADY_MEMBER"), "{twice}");
    assert_eq!(error_code(&as_owner), Some("BAD_USER_INPUT"), "{as_owner}");
    assert_eq!(error_code(&listed_by_member), Some("FORBIDDEN"));
}

#[tokio::test]
async fn roles_change_and_removal_takes_effect_on_the_very_next_request() {
    let app = spawn_app().await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (mia, mia_id) = app.sign_up("mia@example.com").await;
    let (bob, bob_id) = app.sign_up("bob@example.com").await;
    let owner_id = app.gql(Some(&owner), "{ me { id } }", json!({})).await["data"]["me"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for (who, email) in [(&mia, "mia@example.com"), (&bob, "bob@example.com")] {
        let token = invitation_token(&invite(&app, &owner, &tenant, email, "MEMBER").await);
        let joined = app.gql(Some(who), ACCEPT, json!({ "token": token })).await;
        assert!(joined["errors"].is_null(), "{joined}");
    }
    const ROLE: &str = "mutation($t: ID!, $u: ID!, $r: Role!) { changeMemberRole(tenantId: $t, \
        userId: $u, role: $r) { role user { email } } }";
    const REMOVE: &str = "mutation($t: ID!, $u: ID!) { removeMember(tenantId: $t, userId: $u) }";
    const LEAVE: &str = "mutation($t: ID!) { leaveTenant(tenantId: $t) }";

    let promoted = app
        .gql(
            Some(&owner),
            ROLE,
            json!({ "t": tenant, "u": mia_id, "r": "ADMIN" }),
        )
        .await;
    let admin_invites = invite(&app, &mia, &tenant, "carl@example.com", "MEMBER").await;
    let demote_owner = app
        .gql(
            Some(&mia),
            ROLE,
            json!({ "t": tenant, "u": owner_id, "r": "MEMBER" }),
        )
        .await;
    let remove_owner = app
        .gql(Some(&mia), REMOVE, json!({ "t": tenant, "u": owner_id }))
        .await;
    let owner_leaves = app.gql(Some(&owner), LEAVE, json!({ "t": tenant })).await;
    let usage_before = app.usage(&bob, &tenant).await;
    let removed = app
        .gql(Some(&mia), REMOVE, json!({ "t": tenant, "u": bob_id }))
        .await;
    let after = app
        .gql(
            Some(&bob),
            "query($t: ID!) { planFeatureUsage(tenantId: $t) { used } }",
            json!({ "t": tenant }),
        )
        .await;
    let spend_after = app.create_project(&bob, &tenant, "too late").await;
    let mia_leaves = app.gql(Some(&mia), LEAVE, json!({ "t": tenant })).await;
    let mia_after = app.gql(Some(&mia), MEMBERS, json!({ "t": tenant })).await;

    assert_eq!(
        promoted["data"]["changeMemberRole"]["role"], "ADMIN",
        "{promoted}"
    );
    assert!(admin_invites["errors"].is_null(), "{admin_invites}");
    assert_eq!(
        error_code(&demote_owner),
        Some("LAST_OWNER"),
        "{demote_owner}"
    );
    assert_eq!(error_code(&remove_owner), Some("LAST_OWNER"));
    assert_eq!(error_code(&owner_leaves), Some("LAST_OWNER"));
    assert!(usage_before["used"].is_number(), "{usage_before}");
    assert_eq!(removed["data"]["removeMember"], true, "{removed}");
    assert_eq!(error_code(&after), Some("FORBIDDEN"), "{after}");
    assert_eq!(error_code(&spend_after), Some("FORBIDDEN"), "{spend_after}");
    assert_eq!(mia_leaves["data"]["leaveTenant"], true, "{mia_leaves}");
    assert_eq!(error_code(&mia_after), Some("FORBIDDEN"));
    assert_eq!(owners(&app, &tenant).await, 1);
}

#[tokio::test]
async fn ownership_moves_in_one_step_and_concurrent_transfers_leave_exactly_one_owner() {
    let app = spawn_app().await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for name in ["mia", "bob", "carl", "dana"] {
        let email = format!("{name}@example.com");
        let (token, id) = app.sign_up(&email).await;
        let invitation = invitation_token(&invite(&app, &owner, &tenant, &email, "MEMBER").await);
        app.gql(Some(&token), ACCEPT, json!({ "token": invitation }))
            .await;
        ids.push(id);
        tokens.push(token);
    }
    const TRANSFER: &str = "mutation($t: ID!, $to: ID!) { transferOwnership(tenantId: $t, \
        toUserId: $to) { role user { email } } }";

    // The owner races four transfers to four members: exactly one wins.
    let raced = join_all(ids.iter().map(|to| {
        let (app, owner, tenant) = (&app, &owner, &tenant);
        async move {
            app.gql(Some(owner), TRANSFER, json!({ "t": tenant, "to": to }))
                .await
        }
    }))
    .await;

    let won: Vec<&Value> = raced.iter().filter(|b| b["errors"].is_null()).collect();
    assert_eq!(won.len(), 1, "{raced:?}");
    assert_eq!(won[0]["data"]["transferOwnership"]["role"], "OWNER");
    for lost in raced.iter().filter(|b| !b["errors"].is_null()) {
        assert_eq!(error_code(lost), Some("FORBIDDEN"), "{lost}");
    }
    assert_eq!(owners(&app, &tenant).await, 1);
    let members = app.gql(Some(&owner), MEMBERS, json!({ "t": tenant })).await;
    let roles: Vec<&str> = members["data"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "OWNER").count(), 1);
    assert!(
        roles.contains(&"ADMIN"),
        "the old owner is an ADMIN: {members}"
    );
    // The old owner may not transfer again.
    let again = app
        .gql(Some(&owner), TRANSFER, json!({ "t": tenant, "to": ids[0] }))
        .await;
    assert_eq!(error_code(&again), Some("FORBIDDEN"));
}

#[tokio::test]
async fn an_invitation_accepted_twice_at_once_makes_one_membership() {
    let app = spawn_app().await;
    let (owner, tenant) = app.owner_with_tenant("acme").await;
    let (mia, _) = app.sign_up("mia@example.com").await;
    let token = invitation_token(&invite(&app, &owner, &tenant, "mia@example.com", "MEMBER").await);

    let raced = join_all((0..6).map(|_| {
        let (app, mia, token) = (&app, &mia, &token);
        async move { app.gql(Some(mia), ACCEPT, json!({ "token": token })).await }
    }))
    .await;

    let ok = raced.iter().filter(|b| b["errors"].is_null()).count();
    assert_eq!(ok, 1, "{raced:?}");
    for lost in raced.iter().filter(|b| !b["errors"].is_null()) {
        let code = error_code(lost);
        assert!(
            matches!(code, Some("INVITATION_NOT_FOUND" | "ALREADY_MEMBER")),
            "{lost}"
        );
    }
    assert_eq!(app.scalar("SELECT COUNT(*) FROM tenant_user").await, 2);
}
