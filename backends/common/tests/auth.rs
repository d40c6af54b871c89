//! The bearer-token extractor against a loopback issuer: what is accepted, what
//! is refused with 401/403/503, and how the JWKS cache behaves when keys rotate
//! or the provider is down.

use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shop_common::testing::{TestIdp, TestServer};
use shop_common::{AppError, Auth, AuthConfig, Caller};

async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "sub": caller.sub,
        "roles": caller.roles,
        "scopes": caller.scopes,
        "token_forwardable": caller.authorization() == format!("Bearer {}", caller.token()),
    }))
}

async fn admin_only(caller: Caller) -> Result<&'static str, AppError> {
    caller.require_role("admin")?;
    Ok("welcome")
}

async fn serve(auth: Auth) -> TestServer {
    let router = Router::new()
        .route("/whoami", get(whoami))
        .route("/admin", get(admin_only))
        .with_state(auth);
    TestServer::start(router).await
}

async fn call(server: &TestServer, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn accepts_a_valid_token_and_exposes_its_claims() {
    let idp = TestIdp::start().await;
    let server = serve(idp.auth()).await;
    let token = idp
        .token("alice")
        .roles(&["customer"])
        .scope("openid orders:write")
        .sign();
    let (status, body) = call(&server, "/whoami", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["roles"], json!(["customer"]));
    assert_eq!(body["scopes"], json!(["openid", "orders:write"]));
    assert_eq!(body["token_forwardable"], true);
}

#[tokio::test]
async fn accepts_rs256_and_an_audience_list() {
    let idp = TestIdp::start().await;
    idp.add_key(Algorithm::RS256);
    let server = serve(idp.auth()).await;
    let token = idp
        .token("bob")
        .claim("aud", json!(["other-api", "shop-api"]))
        .sign();
    let (status, body) = call(&server, "/whoami", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], "bob");
}

#[tokio::test]
async fn refuses_missing_and_non_bearer_credentials() {
    let idp = TestIdp::start().await;
    let server = serve(idp.auth()).await;
    let (status, body) = call(&server, "/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

    let response = reqwest::Client::new()
        .get(server.url("/whoami"))
        .basic_auth("alice", Some("alice"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer")));

    let (status, _) = call(&server, "/whoami", Some("not.a.jwt")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refuses_tokens_whose_claims_do_not_fit() {
    let idp = TestIdp::start().await;
    let server = serve(idp.auth()).await;
    let cases = [
        ("expired", idp.token("alice").expires_in(-120).sign()),
        (
            "wrong audience",
            idp.token("alice").audience("other-api").sign(),
        ),
        (
            "no audience",
            idp.token("alice").claim("aud", Value::Null).sign(),
        ),
        (
            "wrong issuer",
            idp.token("alice").issuer("http://evil.example").sign(),
        ),
        (
            "issuer with trailing slash",
            idp.token("alice")
                .issuer(&format!("{}/", idp.issuer()))
                .sign(),
        ),
        (
            "not yet valid",
            idp.token("alice").not_before_in(300).sign(),
        ),
        (
            "no exp",
            idp.token("alice").claim("exp", Value::Null).sign(),
        ),
        (
            "no sub",
            idp.token("alice").claim("sub", Value::Null).sign(),
        ),
        ("empty sub", idp.token("").sign()),
        (
            "roles not an array",
            idp.token("alice").claim("roles", json!("admin")).sign(),
        ),
    ];
    for (name, token) in cases {
        let (status, body) = call(&server, "/whoami", Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["error"], "unauthorized", "{name}");
    }
    // Within the 30 s leeway an expired token still passes.
    let token = idp.token("alice").expires_in(-10).sign();
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refuses_unsigned_hmac_and_tampered_tokens() {
    let idp = TestIdp::start().await;
    let server = serve(idp.auth()).await;
    let good = idp.token("alice").sign();
    let kid = jsonwebtoken::decode_header(&good)
        .expect("header")
        .kid
        .expect("kid");
    let claims = idp.token("alice").roles(&["admin"]).claims();

    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT", "kid": kid })),
        b64(&claims)
    );
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.clone());
    // The classic confusion attack: HMAC keyed with the public JWKS.
    let jwks = reqwest::get(idp.jwks_uri())
        .await
        .expect("jwks")
        .bytes()
        .await
        .expect("jwks body");
    let hs256 =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&jwks)).expect("hs256");
    let (head, rest) = good.split_once('.').expect("token");
    let (_, signature) = rest.split_once('.').expect("token");
    let tampered = format!("{head}.{}.{signature}", b64(&claims));

    for (name, token) in [("none", none), ("hs256", hs256), ("tampered", tampered)] {
        let (status, body) = call(&server, "/whoami", Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
    }
}

#[tokio::test]
async fn role_checks_answer_forbidden() {
    let idp = TestIdp::start().await;
    let server = serve(idp.auth()).await;
    let customer = idp.token("alice").roles(&["customer"]).sign();
    let (status, body) = call(&server, "/admin", Some(&customer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    let admin = idp.token("root").roles(&["customer", "admin"]).sign();
    assert_eq!(
        call(&server, "/admin", Some(&admin)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn fetches_lazily_and_fails_closed_until_the_provider_is_up() {
    let idp = TestIdp::start().await;
    idp.set_down(true);
    let server = serve(idp.auth()).await;
    let token = idp.token("alice").sign();
    let (status, body) = call(&server, "/whoami", Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "auth_unavailable");

    idp.set_down(false);
    // The test verifier's cooldown is 200 ms; poll with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = call(&server, "/whoami", Some(&token)).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn nothing_is_fetched_before_the_first_request() {
    let idp = TestIdp::start().await;
    let server = serve(idp.auth()).await;
    assert_eq!(
        call(&server, "/healthz-is-not-here", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(idp.jwks_fetches(), 0);
    let token = idp.token("alice").sign();
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::OK
    );
    assert_eq!(idp.jwks_fetches(), 1, "keys are cached");
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_cooldown() {
    let idp = TestIdp::start().await;
    let config = AuthConfig::new(idp.issuer(), "shop-api"); // 10 s cooldown
    let server = serve(Auth::new(config).expect("auth")).await;
    let token = idp.token("alice").sign();
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::OK
    );
    assert_eq!(idp.jwks_fetches(), 1);

    // A rotated key inside the cooldown is not fetched again, however many
    // tokens name it.
    idp.add_key(Algorithm::ES256);
    let rotated = idp.token("alice").sign();
    for _ in 0..5 {
        let (status, body) = call(&server, "/whoami", Some(&rotated)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(idp.jwks_fetches(), 1);
    // The old key still verifies.
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn rotation_is_picked_up_and_last_good_keys_survive_an_outage() {
    let idp = TestIdp::start().await;
    let mut config = AuthConfig::new(idp.issuer(), "shop-api");
    config.refetch_cooldown = Duration::from_millis(100);
    config.max_key_age = Duration::ZERO; // every request wants a refresh
    let server = serve(Auth::new(config).expect("auth")).await;
    let first = idp.token("alice").sign();
    assert_eq!(
        call(&server, "/whoami", Some(&first)).await.0,
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_millis(150)).await;
    idp.add_key(Algorithm::RS256);
    let rotated = idp.token("alice").sign();
    let (status, body) = call(&server, "/whoami", Some(&rotated)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    idp.set_down(true);
    tokio::time::sleep(Duration::from_millis(150)).await;
    for token in [&first, &rotated] {
        let (status, body) = call(&server, "/whoami", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn explicit_jwks_uri_skips_discovery() {
    let idp = TestIdp::start().await;
    // An issuer with no discovery document: only the explicit URL can work.
    let mut config = AuthConfig::new(idp.issuer(), "shop-api");
    config.jwks_uri = Some(idp.jwks_uri());
    let mut bad = AuthConfig::new("http://127.0.0.1:1", "shop-api");
    bad.jwks_uri = Some(idp.jwks_uri());
    let token = idp.token("alice").sign();
    let server = serve(Auth::new(config).expect("auth")).await;
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::OK
    );
    // The issuer still has to match.
    let server = serve(Auth::new(bad).expect("auth")).await;
    assert_eq!(
        call(&server, "/whoami", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}
