use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::helpers::{JWT_SECRET, error_code, spawn_app, spawn_app_with};

const ME: &str = "{ me { id email name } }";

#[tokio::test]
async fn sign_up_returns_a_token_that_identifies_the_user() {
    let app = spawn_app().await;

    let (token, id) = app.sign_up("Ann@Example.com").await;
    let body = app.gql(Some(&token), ME, json!({})).await;

    assert_eq!(body["data"]["me"]["id"], id.as_str());
    assert_eq!(body["data"]["me"]["email"], "ann@example.com");
    assert_eq!(body["data"]["me"]["name"], "Ann");
}

#[tokio::test]
async fn sign_up_rejects_a_taken_email_whatever_its_case() {
    let app = spawn_app().await;
    app.sign_up("ann@example.com").await;

    let body = app
        .gql(
            None,
            "mutation { signUp(input: {email: \"ANN@example.com\", password: \"12345678\", name: \"Ann\"}) { token } }",
            json!({}),
        )
        .await;

    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"));
}

#[tokio::test]
async fn sign_up_rejects_bad_input_with_bad_user_input() {
    let app = spawn_app().await;
    let cases = [
        ("ann@example.com", "short", "Ann"),
        ("not-an-email", "long enough", "Ann"),
        ("ann@example.com", "long enough", "   "),
        ("ann@example.com", "long enough", &"n".repeat(101)),
    ];
    for (email, password, name) in cases {
        let body = app
            .gql(
                None,
                "mutation($i: SignUpInput!) { signUp(input: $i) { token } }",
                json!({ "i": { "email": email, "password": password, "name": name } }),
            )
            .await;
        assert_eq!(
            error_code(&body),
            Some("BAD_USER_INPUT"),
            "{email} / {password} / {name}: {body}"
        );
    }
}

#[tokio::test]
async fn sign_in_returns_a_token_for_the_right_password_only() {
    let app = spawn_app().await;
    let (_, id) = app.sign_up("ann@example.com").await;
    let sign_in = "mutation($e: String!, $p: String!) { signIn(email: $e, password: $p) { token user { id } } }";

    let ok = app
        .gql(
            None,
            sign_in,
            json!({ "e": "ANN@example.com", "p": "correct horse" }),
        )
        .await;
    let wrong = app
        .gql(
            None,
            sign_in,
            json!({ "e": "ann@example.com", "p": "wrong horse" }),
        )
        .await;
    let unknown = app
        .gql(
            None,
            sign_in,
            json!({ "e": "bob@example.com", "p": "correct horse" }),
        )
        .await;

    assert_eq!(ok["data"]["signIn"]["user"]["id"], id.as_str());
    let token = ok["data"]["signIn"]["token"].as_str().expect("token");
    let me = app.gql(Some(token), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["id"], id.as_str());
    assert_eq!(error_code(&wrong), Some("UNAUTHENTICATED"));
    assert_eq!(error_code(&unknown), Some("UNAUTHENTICATED"));
    assert_eq!(
        wrong["errors"][0]["message"],
        unknown["errors"][0]["message"]
    );
}

#[tokio::test]
async fn me_is_null_when_anonymous() {
    let app = spawn_app().await;

    let body = app.gql(None, ME, json!({})).await;

    assert!(body["errors"].is_null(), "{body}");
    assert!(body["data"]["me"].is_null());
}

fn sign(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}

#[tokio::test]
async fn every_invalid_token_is_unauthenticated_never_anonymous() {
    let app = spawn_app().await;
    let (_, id) = app.sign_up("ann@example.com").await;
    let now = Utc::now().timestamp();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(json!({ "sub": id, "exp": now + 600 }).to_string())
    );
    let claims = |sub: &str, exp: i64| json!({ "sub": sub, "exp": exp, "iss": "tollgate", "aud": "tollgate" });
    let without = |key: &str| {
        let mut c = claims(&id, now + 600);
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let with = |key: &str, value: &str| {
        let mut c = claims(&id, now + 600);
        c[key] = json!(value);
        c
    };
    // The control: a token made like Tollgate's own is accepted.
    let good = sign(claims(&id, now + 600), JWT_SECRET);
    let body = app.gql(Some(&good), "{ me { id } }", json!({})).await;
    assert_eq!(body["data"]["me"]["id"], json!(id), "{body}");
    let cases = [
        ("garbage", "not.a.token".to_owned()),
        (
            "wrong key",
            sign(
                claims(&id, now + 600),
                "another-secret-another-secret-another-secret",
            ),
        ),
        ("alg none", unsigned),
        ("expired", sign(claims(&id, now - 3600), JWT_SECRET)),
        ("no exp", sign(without("exp"), JWT_SECRET)),
        ("no iss", sign(without("iss"), JWT_SECRET)),
        ("no aud", sign(without("aud"), JWT_SECRET)),
        ("another issuer", sign(with("iss", "evil"), JWT_SECRET)),
        (
            "another audience",
            sign(with("aud", "other-api"), JWT_SECRET),
        ),
        (
            "unknown user",
            sign(
                claims(&uuid::Uuid::now_v7().to_string(), now + 600),
                JWT_SECRET,
            ),
        ),
    ];

    for (case, token) in cases {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&token)
            .json(&json!({ "query": "{ me { id } creditTypes { value } }" }))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 401, "{case}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(error_code(&body), Some("UNAUTHENTICATED"), "{case}: {body}");
        assert!(body["data"].is_null(), "{case}: no data for a bad token");
    }
}

#[tokio::test]
async fn a_token_accepted_before_is_refused_once_it_expires() {
    // Verified tokens are remembered: the expiry must still be checked on every request.
    let app = spawn_app_with(|c| c.jwt.leeway_seconds = 0).await;
    let (_, id) = app.sign_up("ann@example.com").await;
    let exp = Utc::now().timestamp() + 2;
    let token = sign(
        json!({ "sub": id, "exp": exp, "iss": "tollgate", "aud": "tollgate" }),
        JWT_SECRET,
    );
    let before = app.gql(Some(&token), "{ me { id } }", json!({})).await;
    assert_eq!(before["data"]["me"]["id"], json!(id), "{before}");
    let again = app.gql(Some(&token), "{ me { id } }", json!({})).await;
    assert_eq!(again["data"]["me"]["id"], json!(id), "{again}");

    while Utc::now().timestamp() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let after = app.gql(Some(&token), "{ me { id } }", json!({})).await;

    assert_eq!(error_code(&after), Some("UNAUTHENTICATED"), "{after}");
    assert!(after["data"].is_null(), "{after}");
}

#[tokio::test]
async fn the_token_command_mints_a_token_for_an_existing_user() {
    let app = spawn_app().await;
    let (_, id) = app.sign_up("ann@example.com").await;

    let out = app.cli(&["token", "--email", "Ann@example.com"]);
    let missing = app.cli(&["token", "--email", "nobody@example.com"]);

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let me = app.gql(Some(token.trim()), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["id"], id.as_str());
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user"));
}

/// An RSA key pair made with openssl: (private PEM, public PEM).
fn rsa_pair(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join("idp.key");
    let public = dir.join("idp.pub");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["genrsa", "-out", private.to_str().unwrap(), "2048"]);
    run(&[
        "rsa",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(private).unwrap(),
        std::fs::read(public).unwrap(),
    )
}

fn idp_token(private: &[u8], kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(private).expect("RSA key"),
    )
    .expect("token encodes")
}

/// A server that accepts the RS256 tokens of `https://idp.example` (audience
/// `tollgate-api`) by a PEM public key made in `dir`; with the private key, in PEM.
async fn idp_app(dir: &std::path::Path) -> (crate::helpers::TestApp, Vec<u8>) {
    let (private, _) = rsa_pair(dir);
    let key_path = dir.join("idp.pub");
    let app = spawn_app_with(move |c| {
        c.jwt.external = Some(tollgate::config::ExternalIdp {
            issuer: "https://idp.example".into(),
            audience: "tollgate-api".into(),
            public_key_file: Some(key_path),
            jwks_file: None,
        });
    })
    .await;
    (app, private)
}

#[tokio::test]
async fn tokens_of_an_external_identity_provider_sign_users_in_by_sub() {
    let dir = tempfile::tempdir().unwrap();
    let (app, private) = idp_app(dir.path()).await;
    let now = Utc::now().timestamp();
    let claims = |sub: &str, email: &str, verified: bool| {
        json!({ "sub": sub, "exp": now + 600, "iss": "https://idp.example", "aud": "tollgate-api",
                "email": email, "email_verified": verified, "name": "Idp User" })
    };
    // First visit: an account is made for the provider's user.
    let token = idp_token(&private, None, claims("idp|42", "Idp@Example.com", true));
    let first = app.gql(Some(&token), ME, json!({})).await;
    assert_eq!(first["data"]["me"]["email"], "idp@example.com", "{first}");
    assert_eq!(first["data"]["me"]["name"], "Idp User");
    // Later visits: the same account, by `sub` (the email may even change at the provider).
    let token = idp_token(
        &private,
        None,
        claims("idp|42", "renamed@example.com", true),
    );
    let again = app.gql(Some(&token), ME, json!({})).await;
    assert_eq!(again["data"]["me"]["id"], first["data"]["me"]["id"]);
    // The provider's user can do what any user can.
    let tenant = app.create_tenant(&token, "idp-tenant").await;
    assert!(!tenant.is_empty());
    // A provider's user without a verified email gets nothing.
    let unverified = idp_token(&private, None, claims("idp|7", "ann@example.com", false));
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&unverified)
        .json(&json!({ "query": ME }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // A single configured key accepts whatever `kid` the provider puts in the header (Auth0,
    // Keycloak and Okta always send one).
    let with_kid = idp_token(
        &private,
        Some("auth0-key-1"),
        claims("idp|42", "idp@example.com", true),
    );
    let body = app.gql(Some(&with_kid), ME, json!({})).await;
    assert_eq!(
        body["data"]["me"]["id"], first["data"]["me"]["id"],
        "{body}"
    );

    // Refused: another audience, another issuer, expired, HS256 claiming the provider.
    let mut wrong_aud = claims("idp|42", "idp@example.com", true);
    wrong_aud["aud"] = json!("another-api");
    let mut wrong_iss = claims("idp|42", "idp@example.com", true);
    wrong_iss["iss"] = json!("https://evil.example");
    let mut expired = claims("idp|42", "idp@example.com", true);
    expired["exp"] = json!(now - 3600);
    let other = tempfile::tempdir().unwrap();
    let (other_private, _) = rsa_pair(other.path());
    let forged = idp_token(
        &other_private,
        None,
        claims("idp|42", "idp@example.com", true),
    );
    for (case, token) in [
        ("audience", idp_token(&private, None, wrong_aud)),
        ("issuer", idp_token(&private, None, wrong_iss)),
        ("expired", idp_token(&private, None, expired)),
        ("another key", forged),
    ] {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&token)
            .json(&json!({ "query": ME }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{case}");
    }
}

#[tokio::test]
async fn an_account_made_first_with_a_victims_email_is_never_linked_to_the_victims_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (app, private) = idp_app(dir.path()).await;
    // The attacker signs up first with the victim's address (nobody verifies it)…
    let (attacker, attacker_id) = app.sign_up("victim@example.com").await;
    let trap = app.create_tenant(&attacker, "trap").await;
    // …then the victim arrives through the identity provider, with a verified email.
    let now = Utc::now().timestamp();
    let victim = idp_token(
        &private,
        None,
        json!({ "sub": "idp|victim", "exp": now + 600, "iss": "https://idp.example",
                "aud": "tollgate-api", "email": "victim@example.com", "email_verified": true }),
    );
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&victim)
        .json(&json!({ "query": "mutation { createTenant(input: {name: \"Victim Inc\", slug: \"victim\"}) { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("UNAUTHENTICATED"), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not verified"),
        "{body}"
    );
    // Nothing the victim did lands with the attacker, and the attacker's account is unlinked.
    let mine = app
        .gql(
            Some(&attacker),
            "{ me { id memberships { tenant { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(mine["data"]["me"]["id"], json!(attacker_id));
    assert_eq!(
        mine["data"]["me"]["memberships"],
        json!([{ "tenant": { "id": trap } }]),
        "{mine}"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM \"user\" WHERE external_subject IS NOT NULL")
            .await,
        0
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM tenant").await, 1);
}

#[tokio::test]
async fn an_external_provider_can_be_given_as_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = rsa_pair(dir.path());
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(&private).unwrap(),
        jsonwebtoken::Algorithm::RS256,
    )
    .unwrap();
    jwk.common.key_id = Some("key-2026".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let app = spawn_app_with(move |c| {
        c.jwt.external = Some(tollgate::config::ExternalIdp {
            issuer: "https://idp.example".into(),
            audience: "tollgate-api".into(),
            public_key_file: None,
            jwks_file: Some(jwks),
        });
    })
    .await;
    let now = Utc::now().timestamp();
    let claims = json!({ "sub": "idp|1", "exp": now + 600, "iss": "https://idp.example",
                         "aud": "tollgate-api", "email": "jwks@example.com", "email_verified": true });
    let token = idp_token(&private, Some("key-2026"), claims.clone());
    let body = app.gql(Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(body["data"]["me"]["email"], "jwks@example.com", "{body}");
    let unknown_kid = idp_token(&private, Some("key-1999"), claims);
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&unknown_kid)
        .json(&json!({ "query": "{ me { email } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
