//! End-to-end protocol tests against `app(state)` with `oneshot` requests: the
//! login form is parsed and posted like a browser would, tokens are verified
//! against the published JWKS with `jsonwebtoken`. Only the back-channel logout
//! and the binary test open sockets, on 127.0.0.1:0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, Params as ArgonParams};
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::BodyExt;
use identity::keys::{install_crypto_provider, KEY_FILE};
use identity::{app, AppState, Clients, KeyStore, Settings, Users};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const ISSUER: &str = "http://127.0.0.1:3001";
const WEB_SECRET: &str = "web-secret-for-tests";
const CALLBACK: &str = "http://127.0.0.1:3000/auth/callback";
const HOME: &str = "http://127.0.0.1:3000/";

// ------------------------------------------------------------------ fixtures

/// RSA key generation is slow in debug builds: generate one key file per test
/// binary and copy it into each test's data directory.
fn template_keys() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        KeyStore::load_or_create(dir.path(), false).expect("generate keys");
        dir
    })
    .path()
}

fn data_dir_with_keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(template_keys().join(KEY_FILE), dir.path().join(KEY_FILE)).expect("copy keys");
    dir
}

/// Users with cheap argon2 parameters so tests stay fast.
fn users_yaml() -> &'static str {
    static YAML: OnceLock<String> = OnceLock::new();
    YAML.get_or_init(|| {
        let argon = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            ArgonParams::new(256, 1, 1, None).expect("params"),
        );
        let hash = |pw: &str| {
            let salt = SaltString::encode_b64(&rand_bytes::<16>()).expect("salt");
            argon
                .hash_password(pw.as_bytes(), &salt)
                .expect("hash")
                .to_string()
        };
        format!(
            r#"
users:
  - username: alice
    password_hash: "{}"
    name: Alice Liddell
    email: alice@shop.example
    roles: [customer]
  - username: admin
    password_hash: "{}"
    name: Shop Admin
    email: admin@shop.example
    roles: [customer, admin]
"#,
            hash("alice"),
            hash("admin")
        )
    })
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut buf = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf
}

fn clients_yaml(backchannel: Option<&str>) -> String {
    let backchannel = backchannel
        .map(|uri| format!("    backchannel_logout_uri: {uri}\n"))
        .unwrap_or_default();
    format!(
        r#"
clients:
  - client_id: web
    client_secret: ${{WEB_SECRET}}
    redirect_uris: ["{CALLBACK}", "http://localhost:3000/auth/callback"]
    post_logout_redirect_uris: ["{HOME}"]
{backchannel}    audience: shop-api
    scopes: [openid, profile, email, offline_access, "orders:read", "orders:write"]
  - client_id: spa
    public: true
    redirect_uris: ["http://127.0.0.1:5173/cb"]
    scopes: [openid, profile]
  - client_id: es
    client_secret: es-secret
    redirect_uris: ["http://127.0.0.1:4000/cb"]
    audience: es-api
    scopes: [openid, email]
    signing_alg: ES256
"#
    )
}

struct Harness {
    state: AppState,
    router: Router,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Self::with_backchannel(None)
    }

    fn with_backchannel(uri: Option<&str>) -> Self {
        install_crypto_provider();
        let dir = data_dir_with_keys();
        let keys = KeyStore::load_or_create(dir.path(), false).expect("keys");
        let users = Users::from_yaml(users_yaml()).expect("users");
        let clients = Clients::from_yaml(&clients_yaml(uri), |name| {
            (name == "WEB_SECRET").then(|| WEB_SECRET.to_string())
        })
        .expect("clients");
        let state = AppState::new(Settings::new(ISSUER), users, clients, keys).expect("state");
        Self {
            router: app(state.clone()),
            state,
            dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).expect("request"))
            .await
    }

    async fn post_form(&self, uri: &str, auth: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let mut builder =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        self.send(builder.body(Body::from(encode(form))).expect("request"))
            .await
    }

    async fn jwks(&self) -> JwkSet {
        let reply = self.get("/jwks").await;
        assert_eq!(reply.status, StatusCode::OK);
        serde_json::from_str(&reply.body).expect("jwks json")
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn location(&self) -> url::Url {
        let location = self
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no Location: {} {}", self.status, self.body));
        url::Url::parse(location).expect("absolute Location")
    }
}

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn query_map(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn web_basic() -> String {
    basic("web", WEB_SECRET)
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes::<32>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

struct AuthRequest<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    scope: &'a str,
}

const WEB: AuthRequest<'static> = AuthRequest {
    client_id: "web",
    redirect_uri: CALLBACK,
    scope: "openid profile email offline_access orders:read",
};

fn authorize_uri(req: &AuthRequest, challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", req.client_id),
        ("redirect_uri", req.redirect_uri),
        ("scope", req.scope),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    pairs.extend_from_slice(extra);
    format!("/authorize?{}", encode(&pairs))
}

/// The hidden `auth_request` field of a login form.
fn form_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in: {html}"))
        + marker.len();
    let end = html[start..].find('"').expect("closing quote") + start;
    html[start..end].to_string()
}

fn form_action(html: &str) -> String {
    let marker = "action=\"";
    let start = html.find(marker).expect("form action") + marker.len();
    let end = html[start..].find('"').expect("closing quote") + start;
    html[start..end].to_string()
}

/// Browser part of the flow: show the form, post credentials, return the
/// redirect back to the client.
async fn login_redirect(
    h: &Harness,
    req: &AuthRequest<'_>,
    challenge: &str,
    user: &str,
    pw: &str,
) -> url::Url {
    let page = h.get(&authorize_uri(req, challenge, &[])).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("name=\"username\""));
    assert!(page.body.contains("name=\"password\""));
    let auth_request = form_field(&page.body, "auth_request");
    let action = form_action(&page.body);
    let reply = h
        .post_form(
            &action,
            None,
            &[
                ("auth_request", &auth_request),
                ("username", user),
                ("password", pw),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    reply.location()
}

async fn login_code(h: &Harness, req: &AuthRequest<'_>, challenge: &str) -> String {
    let target = login_redirect(h, req, challenge, "alice", "alice").await;
    let q = query_map(&target);
    q.get("code").cloned().expect("code in redirect")
}

async fn exchange(h: &Harness, code: &str, verifier: &str) -> Reply {
    h.post_form(
        "/token",
        Some(&web_basic()),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// Logs alice in to `web` and returns the token response.
async fn tokens(h: &Harness) -> Value {
    let p = pkce();
    let code = login_code(h, &WEB, &p.challenge).await;
    let reply = exchange(h, &code, &p.verifier).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.json()
}

async fn refresh(h: &Harness, refresh_token: &str) -> Reply {
    h.post_form(
        "/token",
        Some(&web_basic()),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

async fn userinfo(h: &Harness, access_token: &str) -> Reply {
    h.send(
        Request::get("/userinfo")
            .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

/// Verifies `token` against the JWKS exactly as a resource server would.
fn verify(jwks: &JwkSet, token: &str, aud: &str) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(token).expect("header");
    let kid = header.kid.clone().expect("kid");
    let jwk = jwks.find(&kid).expect("kid published");
    let key = DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("valid signature and claims");
    (header, data.claims)
}

fn str_claim<'a>(claims: &'a Value, name: &str) -> &'a str {
    claims[name]
        .as_str()
        .unwrap_or_else(|| panic!("claim {name} missing in {claims}"))
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn discovery_lists_endpoints_and_capabilities() {
    let h = Harness::new();
    let reply = h.get("/.well-known/openid-configuration").await;
    assert_eq!(reply.status, StatusCode::OK);
    let d = reply.json();
    assert_eq!(d["issuer"], ISSUER);
    for (key, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("jwks_uri", "/jwks"),
        ("revocation_endpoint", "/revoke"),
        ("end_session_endpoint", "/logout"),
    ] {
        assert_eq!(d[key], format!("{ISSUER}{path}"), "{key}");
    }
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256", "ES256"])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["backchannel_logout_session_supported"], true);
    assert!(d["scopes_supported"]
        .as_array()
        .is_some_and(|s| s.contains(&Value::from("orders:write"))));
    assert!(d["claims_supported"]
        .as_array()
        .is_some_and(|s| s.contains(&Value::from("roles"))));
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);

    let jwks = h.jwks().await;
    assert_eq!(jwks.keys.len(), 2);
    for jwk in &jwks.keys {
        assert!(jwk.common.key_id.is_some(), "kid on every key");
    }
}

#[tokio::test]
async fn full_code_flow_with_pkce_issues_verifiable_tokens() {
    let h = Harness::new();
    let p = pkce();
    let target = login_redirect(&h, &WEB, &p.challenge, "alice", "alice").await;
    assert_eq!(
        format!(
            "{}://{}{}",
            target.scheme(),
            target.authority(),
            target.path()
        ),
        CALLBACK
    );
    let q = query_map(&target);
    assert_eq!(q.get("state").map(String::as_str), Some("st-123"));
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(ISSUER),
        "RFC 9207 iss"
    );
    let code = q.get("code").expect("code");

    let reply = exchange(&h, code, &p.verifier).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply
            .headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let t = reply.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(
        t["scope"],
        "openid profile email offline_access orders:read"
    );
    assert!(t["refresh_token"].as_str().is_some_and(|r| r.len() >= 43));

    let jwks = h.jwks().await;
    let (header, at) = verify(&jwks, str_claim(&t, "access_token"), "shop-api");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(at["iss"], ISSUER);
    assert_eq!(at["sub"], "alice");
    assert_eq!(at["aud"], "shop-api");
    assert_eq!(
        at["scope"],
        "openid profile email offline_access orders:read"
    );
    assert_eq!(at["roles"], serde_json::json!(["customer"]));
    assert_eq!(at["client_id"], "web");
    assert_eq!(at["azp"], "web");
    for claim in ["exp", "iat", "nbf"] {
        assert!(at[claim].is_u64(), "{claim}");
    }
    assert!(at["exp"].as_u64() > at["iat"].as_u64());
    assert!(!str_claim(&at, "jti").is_empty());
    let sid = str_claim(&at, "sid").to_string();

    let (header, id) = verify(&jwks, str_claim(&t, "id_token"), "web");
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(id["iss"], ISSUER);
    assert_eq!(id["aud"], "web");
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["sid"], sid.as_str());
    assert_eq!(id["name"], "Alice Liddell");
    assert_eq!(id["email"], "alice@shop.example");
    assert_eq!(id["preferred_username"], "alice");
    assert!(id["auth_time"].is_u64());
    let expected_at_hash =
        URL_SAFE_NO_PAD.encode(&Sha256::digest(str_claim(&t, "access_token").as_bytes())[..16]);
    assert_eq!(id["at_hash"], expected_at_hash.as_str());
}

#[tokio::test]
async fn es256_client_gets_es256_tokens() {
    let h = Harness::new();
    let p = pkce();
    let req = AuthRequest {
        client_id: "es",
        redirect_uri: "http://127.0.0.1:4000/cb",
        scope: "openid email",
    };
    let code = login_code(&h, &req, &p.challenge).await;
    let reply = h
        .post_form(
            "/token",
            None,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", req.redirect_uri),
                ("code_verifier", &p.verifier),
                ("client_id", "es"),
                ("client_secret", "es-secret"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let t = reply.json();
    let jwks = h.jwks().await;
    let (header, at) = verify(&jwks, str_claim(&t, "access_token"), "es-api");
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(at["scope"], "openid email");
    let (_, id) = verify(&jwks, str_claim(&t, "id_token"), "es");
    assert!(id.get("name").is_none(), "no profile scope, no name");
    assert_eq!(id["email"], "alice@shop.example");
}

#[tokio::test]
async fn public_client_uses_pkce_without_secret() {
    let h = Harness::new();
    let p = pkce();
    let req = AuthRequest {
        client_id: "spa",
        redirect_uri: "http://127.0.0.1:5173/cb",
        scope: "openid profile orders:write",
    };
    let code = login_code(&h, &req, &p.challenge).await;
    let reply = h
        .post_form(
            "/token",
            None,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", req.redirect_uri),
                ("code_verifier", &p.verifier),
                ("client_id", "spa"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.json()["scope"],
        "openid profile",
        "unregistered scope dropped"
    );
}

#[tokio::test]
async fn pkce_wrong_verifier_is_rejected() {
    let h = Harness::new();
    let p = pkce();
    let code = login_code(&h, &WEB, &p.challenge).await;
    let reply = exchange(&h, &code, &pkce().verifier).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_grant");
    // One attempt per code: the right verifier no longer helps.
    let reply = exchange(&h, &code, &p.verifier).await;
    assert_eq!(reply.json()["error"], "invalid_grant");
    // Missing verifier is a malformed request.
    let code = login_code(&h, &WEB, &p.challenge).await;
    let reply = h
        .post_form(
            "/token",
            Some(&web_basic()),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
            ],
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_request");
}

#[tokio::test]
async fn pkce_plain_and_missing_challenge_are_rejected() {
    let h = Harness::new();
    let p = pkce();
    for (label, pairs) in [
        (
            "plain",
            vec![
                ("code_challenge", p.verifier.as_str()),
                ("code_challenge_method", "plain"),
            ],
        ),
        (
            "method missing",
            vec![("code_challenge", p.challenge.as_str())],
        ),
        ("challenge missing", vec![("code_challenge_method", "S256")]),
    ] {
        let mut all = vec![
            ("response_type", "code"),
            ("client_id", "web"),
            ("redirect_uri", CALLBACK),
            ("scope", "openid"),
            ("state", "s1"),
        ];
        all.extend(pairs);
        let reply = h.get(&format!("/authorize?{}", encode(&all))).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{label}: {}", reply.body);
        let q = query_map(&reply.location());
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_request"),
            "{label}"
        );
        assert_eq!(q.get("state").map(String::as_str), Some("s1"), "{label}");
        assert_eq!(q.get("iss").map(String::as_str), Some(ISSUER), "{label}");
    }
}

#[tokio::test]
async fn authorization_request_errors() {
    let h = Harness::new();
    let p = pkce();
    // Unknown client and unregistered redirect_uri: an error page, never a redirect.
    let unknown = AuthRequest {
        client_id: "nope",
        ..WEB
    };
    let reply = h.get(&authorize_uri(&unknown, &p.challenge, &[])).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.headers.get(header::LOCATION).is_none());
    assert!(reply.body.contains("not registered"));
    for evil in [
        "http://evil.example/cb",
        "http://127.0.0.1:3000/auth/callback/",
        "http://127.0.0.1:3000/auth/callback?x=1",
    ] {
        let req = AuthRequest {
            redirect_uri: evil,
            ..WEB
        };
        let reply = h.get(&authorize_uri(&req, &p.challenge, &[])).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{evil}");
        assert!(reply.headers.get(header::LOCATION).is_none(), "{evil}");
        assert!(reply.body.contains("<html"), "{evil}");
    }
    // After the redirect_uri is trusted, errors go back to the client.
    let no_openid = AuthRequest {
        scope: "profile",
        ..WEB
    };
    let reply = h.get(&authorize_uri(&no_openid, &p.challenge, &[])).await;
    assert_eq!(
        query_map(&reply.location())
            .get("error")
            .map(String::as_str),
        Some("invalid_scope")
    );
    let reply = h
        .get(&authorize_uri(
            &WEB,
            &p.challenge,
            &[("response_type", "token")],
        ))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "repeated parameter");
    let reply = h
        .get(&authorize_uri(&WEB, &p.challenge, &[("prompt", "none")]))
        .await;
    assert_eq!(
        query_map(&reply.location())
            .get("error")
            .map(String::as_str),
        Some("login_required")
    );
    // Garbage never panics.
    for uri in [
        "/authorize",
        "/authorize?%ff%fe=%00",
        "/authorize?client_id=web&redirect_uri=%zz",
    ] {
        let reply = h.get(uri).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
    }
}

#[tokio::test]
async fn wrong_redirect_uri_at_token_endpoint_is_rejected() {
    let h = Harness::new();
    let p = pkce();
    let code = login_code(&h, &WEB, &p.challenge).await;
    let reply = h
        .post_form(
            "/token",
            Some(&web_basic()),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://localhost:3000/auth/callback"),
                ("code_verifier", &p.verifier),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn code_replay_is_rejected_and_revokes_issued_tokens() {
    let h = Harness::new();
    let p = pkce();
    let code = login_code(&h, &WEB, &p.challenge).await;
    let first = exchange(&h, &code, &p.verifier).await;
    assert_eq!(first.status, StatusCode::OK);
    let t = first.json();
    assert_eq!(
        userinfo(&h, str_claim(&t, "access_token")).await.status,
        StatusCode::OK
    );

    let replay = exchange(&h, &code, &p.verifier).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.json()["error"], "invalid_grant");

    let r = refresh(&h, str_claim(&t, "refresh_token")).await;
    assert_eq!(r.json()["error"], "invalid_grant", "refresh family revoked");
    let u = userinfo(&h, str_claim(&t, "access_token")).await;
    assert_eq!(u.status, StatusCode::UNAUTHORIZED, "access token revoked");
}

#[tokio::test]
async fn code_is_bound_to_its_client() {
    let h = Harness::new();
    let p = pkce();
    let code = login_code(&h, &WEB, &p.challenge).await;
    let reply = h
        .post_form(
            "/token",
            Some(&basic("es", "es-secret")),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &p.verifier),
            ],
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn refresh_rotates_tokens() {
    let h = Harness::new();
    let t = tokens(&h).await;
    let jwks = h.jwks().await;
    let (_, first_at) = verify(&jwks, str_claim(&t, "access_token"), "shop-api");

    let r1 = refresh(&h, str_claim(&t, "refresh_token")).await;
    assert_eq!(r1.status, StatusCode::OK, "{}", r1.body);
    let t1 = r1.json();
    assert_ne!(t1["refresh_token"], t["refresh_token"], "rotated");
    let (_, at) = verify(&jwks, str_claim(&t1, "access_token"), "shop-api");
    assert_ne!(at["jti"], first_at["jti"]);
    assert_eq!(at["sid"], first_at["sid"]);
    assert_eq!(at["scope"], first_at["scope"]);
    let (_, id) = verify(&jwks, str_claim(&t1, "id_token"), "web");
    assert!(id.get("nonce").is_none(), "refreshed ID token has no nonce");
    assert_eq!(id["sid"], first_at["sid"]);

    // The chain keeps working with the newest token.
    let r2 = refresh(&h, str_claim(&t1, "refresh_token")).await;
    assert_eq!(r2.status, StatusCode::OK);

    // Narrowing scope is allowed, widening is not.
    let t2 = r2.json();
    let narrow = h
        .post_form(
            "/token",
            Some(&web_basic()),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_claim(&t2, "refresh_token")),
                ("scope", "openid catalog:write"),
            ],
        )
        .await;
    assert_eq!(narrow.json()["error"], "invalid_scope");
    let narrow = h
        .post_form(
            "/token",
            Some(&web_basic()),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_claim(&t2, "refresh_token")),
                ("scope", "openid"),
            ],
        )
        .await;
    assert_eq!(narrow.status, StatusCode::OK, "{}", narrow.body);
    assert_eq!(narrow.json()["scope"], "openid");

    // Another client cannot use (or burn) web's refresh token.
    let t3 = narrow.json();
    let other = h
        .post_form(
            "/token",
            Some(&basic("es", "es-secret")),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_claim(&t3, "refresh_token")),
            ],
        )
        .await;
    assert_eq!(other.json()["error"], "invalid_grant");
    assert_eq!(
        refresh(&h, str_claim(&t3, "refresh_token")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_family() {
    let h = Harness::new();
    let t = tokens(&h).await;
    let old = str_claim(&t, "refresh_token").to_string();
    let rotated = refresh(&h, &old).await.json();
    let new = str_claim(&rotated, "refresh_token").to_string();

    let reuse = refresh(&h, &old).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse.json()["error"], "invalid_grant");
    // The legitimate holder's newer token is dead too, and so are the access tokens.
    assert_eq!(refresh(&h, &new).await.json()["error"], "invalid_grant");
    assert_eq!(
        userinfo(&h, str_claim(&rotated, "access_token"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        userinfo(&h, str_claim(&t, "access_token")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A different login is unaffected.
    let other = tokens(&h).await;
    assert_eq!(
        refresh(&h, str_claim(&other, "refresh_token")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn revoke_endpoint() {
    let h = Harness::new();
    let t = tokens(&h).await;

    // Refresh token: the family goes.
    let reply = h
        .post_form(
            "/revoke",
            Some(&web_basic()),
            &[("token", str_claim(&t, "refresh_token"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        refresh(&h, str_claim(&t, "refresh_token")).await.json()["error"],
        "invalid_grant"
    );
    assert_eq!(
        userinfo(&h, str_claim(&t, "access_token")).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Access token, by jti.
    let t = tokens(&h).await;
    assert_eq!(
        userinfo(&h, str_claim(&t, "access_token")).await.status,
        StatusCode::OK
    );
    let reply = h
        .post_form(
            "/revoke",
            Some(&web_basic()),
            &[
                ("token", str_claim(&t, "access_token")),
                ("token_type_hint", "access_token"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        userinfo(&h, str_claim(&t, "access_token")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&h, str_claim(&t, "refresh_token")).await.status,
        StatusCode::OK
    );

    // Unknown tokens: 200 all the same.
    for token in ["nonsense", "a.b.c", &"x".repeat(5000)] {
        let reply = h
            .post_form("/revoke", Some(&web_basic()), &[("token", token)])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // Another client cannot revoke web's tokens.
    let t = tokens(&h).await;
    let reply = h
        .post_form(
            "/revoke",
            Some(&basic("es", "es-secret")),
            &[("token", str_claim(&t, "refresh_token"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        refresh(&h, str_claim(&t, "refresh_token")).await.status,
        StatusCode::OK
    );
    // Bad credentials are refused.
    let reply = h
        .post_form("/revoke", Some(&basic("web", "wrong")), &[("token", "x")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "invalid_client");
}

#[tokio::test]
async fn userinfo_returns_claims_for_a_valid_access_token() {
    let h = Harness::new();
    let p = pkce();
    let code = {
        let target = login_redirect(&h, &WEB, &p.challenge, "admin", "admin").await;
        query_map(&target).get("code").cloned().expect("code")
    };
    let t = exchange(&h, &code, &p.verifier).await.json();
    let reply = userinfo(&h, str_claim(&t, "access_token")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let u = reply.json();
    assert_eq!(u["sub"], "admin");
    assert_eq!(u["name"], "Shop Admin");
    assert_eq!(u["email"], "admin@shop.example");
    assert_eq!(u["preferred_username"], "admin");
    assert_eq!(u["roles"], serde_json::json!(["customer", "admin"]));

    let missing = h.get("/userinfo").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(missing
        .headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer")));
    // An ID token is not an access token; neither is garbage.
    for bad in [str_claim(&t, "id_token"), "a.b.c", "x", &"y".repeat(20_000)] {
        assert_eq!(userinfo(&h, bad).await.status, StatusCode::UNAUTHORIZED);
    }
    // A tampered payload fails the signature check.
    let access = str_claim(&t, "access_token");
    let parts: Vec<&str> = access.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    claims["roles"] = serde_json::json!(["root"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(userinfo(&h, &forged).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn client_authentication() {
    let h = Harness::new();
    let form = |code: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", "v"),
        ]
    };
    // Wrong secret, unknown client, no credentials, two methods at once.
    let reply = h
        .post_form("/token", Some(&basic("web", "nope")), &form("c"))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "invalid_client");
    assert!(reply.headers.get(header::WWW_AUTHENTICATE).is_some());
    let reply = h
        .post_form("/token", Some(&basic("ghost", "x")), &form("c"))
        .await;
    assert_eq!(reply.json()["error"], "invalid_client");
    let mut no_secret = form("c");
    no_secret.push(("client_id", "web"));
    let reply = h.post_form("/token", None, &no_secret).await;
    assert_eq!(
        reply.json()["error"],
        "invalid_client",
        "confidential client needs a secret"
    );
    let mut both = form("c");
    both.push(("client_secret", WEB_SECRET));
    let reply = h.post_form("/token", Some(&web_basic()), &both).await;
    assert_eq!(reply.json()["error"], "invalid_request");
    let mut spa_with_secret = form("c");
    spa_with_secret.extend([("client_id", "spa"), ("client_secret", "guess")]);
    let reply = h.post_form("/token", None, &spa_with_secret).await;
    assert_eq!(reply.json()["error"], "invalid_client");
    // Malformed requests.
    let reply = h
        .post_form("/token", Some(&web_basic()), &[("grant_type", "password")])
        .await;
    assert_eq!(reply.json()["error"], "unsupported_grant_type");
    let reply = h.post_form("/token", Some(&web_basic()), &[]).await;
    assert_eq!(reply.json()["error"], "invalid_request");
    let reply = h
        .post_form(
            "/token",
            Some(&web_basic()),
            &[("grant_type", "refresh_token"), ("grant_type", "x")],
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_request");
    let reply = h
        .send(
            Request::post("/token")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_request");
    let reply = h
        .send(
            Request::post("/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, "Basic %%%")
                .body(Body::from("grant_type=refresh_token"))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_client");
    let huge = "a=".to_string() + &"b".repeat(100_000);
    let reply = h
        .send(
            Request::post("/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(huge))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn wrong_password_gives_no_enumeration_hint() {
    let h = Harness::new();
    let p = pkce();
    let page = h.get(&authorize_uri(&WEB, &p.challenge, &[])).await;
    let auth_request = form_field(&page.body, "auth_request");
    let attempt = |user: &'static str, pw: &'static str| {
        let auth_request = auth_request.clone();
        let h = &h;
        async move {
            h.post_form(
                "/login",
                None,
                &[
                    ("auth_request", &auth_request),
                    ("username", user),
                    ("password", pw),
                ],
            )
            .await
        }
    };
    let wrong_password = attempt("alice", "wrong").await;
    let unknown_user = attempt("mallory", "wrong").await;
    assert_eq!(wrong_password.status, StatusCode::OK);
    assert_eq!(wrong_password.status, unknown_user.status);
    assert_eq!(wrong_password.body, unknown_user.body, "identical pages");
    assert!(wrong_password
        .body
        .contains("Invalid username or password."));
    assert!(wrong_password.headers.get(header::LOCATION).is_none());
    // The form can be retried; a correct password then succeeds.
    let ok = attempt("alice", "alice").await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    // The pending request is single-use.
    let again = attempt("alice", "alice").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);

    // Attempts per login form are limited.
    let page = h.get(&authorize_uri(&WEB, &p.challenge, &[])).await;
    let auth_request = form_field(&page.body, "auth_request");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = h
            .post_form(
                "/login",
                None,
                &[
                    ("auth_request", &auth_request),
                    ("username", "alice"),
                    ("password", "x"),
                ],
            )
            .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses[..5], [StatusCode::OK; 5]);
    assert_eq!(statuses[5], StatusCode::BAD_REQUEST);
    // A forged or missing request id is an error page.
    let reply = h
        .post_form(
            "/login",
            None,
            &[
                ("auth_request", "forged"),
                ("username", "alice"),
                ("password", "alice"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = h.post_form("/login", None, &[("username", "alice")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn login_page_escapes_and_locks_down() {
    let h = Harness::new();
    let p = pkce();
    let page = h
        .get(&authorize_uri(
            &WEB,
            &p.challenge,
            &[("login_hint", "\"><script>alert(1)</script>")],
        ))
        .await;
    assert!(!page.body.contains("<script>"));
    assert!(page.body.contains("&lt;script&gt;"));
    let csp = page
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(
        page.headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

/// A tiny relying party that records what arrives at its back-channel URI.
async fn backchannel_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::routing::post;
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = received.clone();
    let router = Router::new().route(
        "/auth/backchannel-logout",
        post(
            move |axum::Form(form): axum::Form<HashMap<String, String>>| {
                let sink = sink.clone();
                async move {
                    if let Some(token) = form.get("logout_token") {
                        sink.lock().expect("lock").push(token.clone());
                    }
                    StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}/auth/backchannel-logout"), received)
}

#[tokio::test]
async fn logout_sends_backchannel_logout_token_and_ends_the_session() {
    let (uri, received) = backchannel_receiver().await;
    let h = Harness::with_backchannel(Some(&uri));
    let t = tokens(&h).await;
    let other = tokens(&h).await;
    let jwks = h.jwks().await;
    let (_, id) = verify(&jwks, str_claim(&t, "id_token"), "web");

    let reply = h
        .get(&format!(
            "/logout?{}",
            encode(&[
                ("id_token_hint", str_claim(&t, "id_token")),
                ("post_logout_redirect_uri", HOME),
                ("state", "bye"),
            ])
        ))
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
    let target = reply.location();
    assert!(target.as_str().starts_with(HOME));
    assert_eq!(
        query_map(&target).get("state").map(String::as_str),
        Some("bye")
    );

    let tokens_received = received.lock().expect("lock").clone();
    assert_eq!(
        tokens_received.len(),
        1,
        "one notification for the one client"
    );
    let (header, lt) = verify(&jwks, &tokens_received[0], "web");
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    assert_eq!(lt["iss"], ISSUER);
    assert_eq!(lt["aud"], "web");
    assert_eq!(lt["sub"], "alice");
    assert_eq!(lt["sid"], id["sid"]);
    assert!(lt["iat"].is_u64());
    assert!(!str_claim(&lt, "jti").is_empty());
    assert_eq!(
        lt["events"],
        serde_json::json!({ "http://schemas.openid.net/event/backchannel-logout": {} })
    );
    assert!(lt.get("nonce").is_none(), "logout tokens carry no nonce");

    // The session's tokens are dead; another session is not.
    assert_eq!(
        refresh(&h, str_claim(&t, "refresh_token")).await.json()["error"],
        "invalid_grant"
    );
    assert_eq!(
        userinfo(&h, str_claim(&t, "access_token")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&h, str_claim(&other, "refresh_token")).await.status,
        StatusCode::OK
    );

    // Logging out again is harmless and does not notify twice.
    let reply = h
        .get(&format!(
            "/logout?{}",
            encode(&[("id_token_hint", str_claim(&t, "id_token"))])
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("Signed out"));
    assert_eq!(received.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn logout_refuses_unregistered_targets_and_bad_hints() {
    let h = Harness::new();
    let t = tokens(&h).await;
    let hint = str_claim(&t, "id_token");
    for (label, pairs) in [
        (
            "unregistered uri",
            vec![
                ("id_token_hint", hint),
                ("post_logout_redirect_uri", "http://evil.example/"),
            ],
        ),
        (
            "uri without client",
            vec![("post_logout_redirect_uri", HOME)],
        ),
        ("forged hint", vec![("id_token_hint", "a.b.c")]),
        (
            "access token as hint",
            vec![("id_token_hint", str_claim(&t, "access_token"))],
        ),
        (
            "client mismatch",
            vec![("id_token_hint", hint), ("client_id", "es")],
        ),
    ] {
        let reply = h.get(&format!("/logout?{}", encode(&pairs))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{label}");
        assert!(reply.headers.get(header::LOCATION).is_none(), "{label}");
    }
    // Session untouched by all of the above.
    assert_eq!(
        refresh(&h, str_claim(&t, "refresh_token")).await.status,
        StatusCode::OK
    );
    // client_id alone may use a registered target.
    let reply = h
        .get(&format!(
            "/logout?{}",
            encode(&[("client_id", "web"), ("post_logout_redirect_uri", HOME)])
        ))
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
}

#[tokio::test]
async fn keys_persist_across_restart_and_rotation_keeps_old_keys() {
    let h = Harness::new();
    let dir: PathBuf = h.dir.path().to_path_buf();
    let t = tokens(&h).await;
    let before = h.jwks().await;
    let rs_kid = h
        .state
        .keys
        .current_kid(identity::SigningAlg::RS256)
        .map(str::to_string);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Written by the template generation: the file must be private.
        let mode = std::fs::metadata(template_keys().join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Restart: same keys, same kids.
    let restarted = KeyStore::load_or_create(&dir, false).expect("reload");
    assert_eq!(
        restarted
            .current_kid(identity::SigningAlg::RS256)
            .map(str::to_string),
        rs_kid
    );
    assert_eq!(restarted.jwks(), &before);

    // Rotation: new current keys, old ones still published and still verifying.
    let rotated = KeyStore::load_or_create(&dir, true).expect("rotate");
    let new_kid = rotated
        .current_kid(identity::SigningAlg::RS256)
        .map(str::to_string);
    assert_ne!(new_kid, rs_kid);
    assert_eq!(rotated.jwks().keys.len(), 4);
    assert_eq!(
        rotated.jwks().keys[0].common.key_id,
        new_kid,
        "the current RS256 key leads the JWKS"
    );
    for jwk in &before.keys {
        assert!(rotated
            .jwks()
            .find(jwk.common.key_id.as_deref().unwrap_or_default())
            .is_some());
    }
    verify(rotated.jwks(), str_claim(&t, "access_token"), "shop-api");
    verify(rotated.jwks(), str_claim(&t, "id_token"), "web");
    // And the rotation itself persisted.
    let again = KeyStore::load_or_create(&dir, false).expect("reload after rotation");
    assert_eq!(
        again
            .current_kid(identity::SigningAlg::RS256)
            .map(str::to_string),
        new_kid
    );
    assert_eq!(again.jwks().keys.len(), 4);

    // A corrupt key file is an error, never silently replaced.
    std::fs::write(dir.join(KEY_FILE), "{not json").expect("write");
    assert!(KeyStore::load_or_create(&dir, false).is_err());
}

#[tokio::test]
async fn binary_prints_listening_line_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let data = data_dir_with_keys();
    let users = data.path().join("users.yaml");
    std::fs::write(&users, users_yaml()).expect("users");
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/clients.yaml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_identity"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--users")
        .arg(&users)
        .arg("--clients")
        .arg(&clients)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn identity");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("listening line in time")
        .expect("read")
        .expect("a line");
    let base = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let discovery: Value = serde_json::from_str(
        &http
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await
            .expect("discovery")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(
        discovery["issuer"],
        base.as_str(),
        "issuer defaults to the bound address"
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn issuer_with_a_path_nests_every_endpoint() {
    let dir = data_dir_with_keys();
    let keys = KeyStore::load_or_create(dir.path(), false).expect("keys");
    let users = Users::from_yaml(users_yaml()).expect("users");
    let clients =
        Clients::from_yaml(&clients_yaml(None), |_| Some(WEB_SECRET.into())).expect("clients");
    let issuer = "http://127.0.0.1:3001/idp";
    let router = app(AppState::new(Settings::new(issuer), users, clients, keys).expect("state"));
    let send = |uri: String| {
        let router = router.clone();
        async move {
            router
                .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
                .await
                .expect("infallible")
        }
    };
    let reply = send("/idp/.well-known/openid-configuration".into()).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let body = reply.into_body().collect().await.expect("body").to_bytes();
    let d: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(d["issuer"], issuer);
    assert_eq!(d["token_endpoint"], format!("{issuer}/token"));
    let p = pkce();
    let reply = send(format!("/idp{}", authorize_uri(&WEB, &p.challenge, &[]))).await;
    let body = reply.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(form_action(&String::from_utf8_lossy(&body)), "/idp/login");
    assert_eq!(
        send("/.well-known/openid-configuration".into())
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}
