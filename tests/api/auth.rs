use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::helpers::{JWT_SECRET, error_code, spawn_app};

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
