//! Hostile input at the BFF, against a fake OpenID Provider that hands out whatever ID
//! token a test crafts: state missing, mismatched or replayed; wrong nonce, issuer or
//! audience; `alg: none`; HS256 signed with the public key; expired tokens; open
//! redirects; forged, tampered and truncated cookies; back-channel logout tokens; calls
//! without the CSRF header; a client `Authorization` header on a `bff` route.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgate_tests::backend::Backend;
use meshgate_tests::browser::{Browser, Page};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use reqwest::Method;
use serde_json::{json, Value};

/// A named edit of a token's claims.
type Edit = Box<dyn Fn(&mut Value)>;

const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
const COOKIE: &str = "__Host-meshgate";

/// A provider with one P-256 key whose token endpoint returns `id_token`.
struct FakeOp {
    issuer: String,
    key: EncodingKey,
    public_raw: Vec<u8>,
    id_token: Arc<Mutex<String>>,
    token: Arc<Mutex<TokenAnswer>>,
}

/// How the fake provider's token endpoint answers.
#[derive(Clone)]
struct TokenAnswer {
    expires_in: u64,
    refresh_token: Option<&'static str>,
    /// Status of answers to `grant_type=refresh_token` (200, or 400 = invalid_grant, 503).
    refresh_status: u16,
}

impl Default for TokenAnswer {
    fn default() -> Self {
        Self {
            expires_in: 300,
            refresh_token: Some("opaque-refresh-token"),
            refresh_status: 200,
        }
    }
}

impl FakeOp {
    async fn start() -> FakeOp {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let public_raw = pair.public_key_raw().to_vec();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let id_token = Arc::new(Mutex::new(String::new()));
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&public_raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public_raw[33..65]),
        }]});
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "end_session_endpoint": format!("{issuer}/logout"),
        });
        let token = Arc::new(Mutex::new(TokenAnswer::default()));
        let (tokens, answer) = (id_token.clone(), token.clone());
        let (jwks, discovery) = (jwks.to_string(), discovery.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tokens, answer) = (tokens.clone(), answer.clone());
                let (jwks, discovery) = (jwks.clone(), discovery.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tokens, answer) = (tokens.clone(), answer.clone());
                        let (jwks, discovery) = (jwks.clone(), discovery.clone());
                        async move {
                            use http_body_util::BodyExt as _;
                            let path = req.uri().path().to_string();
                            let form = req.into_body().collect().await.map(|b| b.to_bytes());
                            let refresh = form.is_ok_and(|b| {
                                String::from_utf8_lossy(&b).contains("grant_type=refresh_token")
                            });
                            let a = answer.lock().expect("lock").clone();
                            let (status, body) = match path.as_str() {
                                "/.well-known/openid-configuration" => (200, discovery),
                                "/jwks" => (200, jwks),
                                "/token" if refresh && a.refresh_status == 400 => {
                                    (400, json!({ "error": "invalid_grant" }).to_string())
                                }
                                "/token" if refresh && a.refresh_status != 200 => {
                                    (a.refresh_status, "{}".to_string())
                                }
                                "/token" => {
                                    let at = if refresh {
                                        "refreshed-access-token"
                                    } else {
                                        "opaque-access-token"
                                    };
                                    let mut t = json!({
                                        "access_token": at,
                                        "token_type": "Bearer",
                                        "expires_in": a.expires_in,
                                        "refresh_token": a.refresh_token,
                                    });
                                    if !refresh {
                                        t["id_token"] = json!(tokens.lock().expect("lock").clone());
                                    }
                                    if a.refresh_token.is_none() {
                                        t.as_object_mut().expect("obj").remove("refresh_token");
                                    }
                                    (200, t.to_string())
                                }
                                _ => (404, "{}".to_string()),
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeOp {
            issuer,
            key,
            public_raw,
            id_token,
            token,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    fn claims(&self, nonce: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        json!({ "iss": self.issuer, "aud": "web", "sub": "mallory-or-alice", "sid": "sid-1",
                "iat": now, "exp": now + 300, "nonce": nonce })
    }
}

struct Setup {
    op: FakeOp,
    gw: Meshgate,
    p: Ports,
    api: Backend,
}

async fn setup() -> Setup {
    let op = FakeOp::start().await;
    let api = Backend::start("api").await;
    let p = Ports::new();
    let yaml = format!(
        "{}providers:\n  main: {{ issuer: \"{}\", client_id: web, client_secret: s3cret, audience: shop-api }}\n\
         bff: {{ provider: main, session_key: \"{KEY}\" }}\n\
         clusters:\n  api: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - name: api\n    match: {{ path_prefix: /api }}\n    to: api\n    filters: [ {{ bff: {{}} }} ]\n\
         \x20 - name: open\n    match: {{ path_prefix: /open }}\n    to: api\n    filters: [ {{ bff: {{ require_login: false }} }} ]\n",
        p.preamble(""),
        op.issuer,
        api.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    Setup { op, gw, p, api }
}

/// Starts a login and returns the `state` and `nonce` the edge sent to the provider.
async fn begin(s: &Setup, browser: &mut Browser, return_to: &str) -> (String, String) {
    let r = browser
        .get(&s.p.url(&format!("/auth/login?return_to={return_to}")), &[])
        .await;
    assert_eq!(r.status, 302);
    let url = reqwest::Url::parse(&r.location()).expect("authorize url");
    let param = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .expect(k)
    };
    assert_eq!(param("code_challenge_method"), "S256");
    (param("state"), param("nonce"))
}

async fn callback(s: &Setup, browser: &mut Browser, query: &str) -> Page {
    browser
        .get(&s.p.url(&format!("/auth/callback?{query}")), &[])
        .await
}

/// A login whose ID token is `id_token(claims)`; returns the callback's answer.
async fn login_with(s: &Setup, edit: impl Fn(&mut Value), alg: Option<&str>) -> Page {
    let mut browser = Browser::new();
    let (state, nonce) = begin(s, &mut browser, "/").await;
    let mut claims = s.op.claims(&nonce);
    edit(&mut claims);
    let token = match alg {
        None => s.op.sign(&claims),
        Some("none") => format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ),
        Some("HS256") => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k1".into());
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(&s.op.public_raw),
            )
            .expect("sign")
        }
        Some(other) => panic!("{other}"),
    };
    *s.op.id_token.lock().expect("lock") = token;
    callback(
        s,
        &mut browser,
        &format!("code=c&state={state}&iss={}", s.op.issuer),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_that_fail_any_check_create_no_session() {
    let s = setup().await;
    let ok = login_with(&s, |_| {}, None).await;
    assert_eq!(ok.status, 303, "control: a good token logs in: {}", ok.body);

    let cases: Vec<(&str, Edit, Option<&str>)> = vec![
        (
            "wrong nonce",
            Box::new(|c| c["nonce"] = json!("other")),
            None,
        ),
        (
            "no nonce",
            Box::new(|c| {
                c.as_object_mut().expect("obj").remove("nonce");
            }),
            None,
        ),
        (
            "wrong issuer",
            Box::new(|c| c["iss"] = json!("http://evil")),
            None,
        ),
        (
            "wrong audience",
            Box::new(|c| c["aud"] = json!("other-client")),
            None,
        ),
        ("expired", Box::new(|c| c["exp"] = json!(1_000_000)), None),
        (
            "no exp",
            Box::new(|c| {
                c.as_object_mut().expect("obj").remove("exp");
            }),
            None,
        ),
        (
            "issued in the future",
            Box::new(|c| c["iat"] = json!(99_999_999_999u64)),
            None,
        ),
        ("alg none", Box::new(|_| {}), Some("none")),
        ("HS256 with the public key", Box::new(|_| {}), Some("HS256")),
    ];
    for (what, edit, alg) in cases {
        let r = login_with(&s, edit, alg).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(
            !r.headers
                .get_all("set-cookie")
                .iter()
                .any(|c| c.to_str().unwrap_or("").starts_with(&format!("{COOKIE}="))),
            "{what}: no session cookie"
        );
    }
    // `openidconnect` already refuses an ID token without `exp` when it parses the token
    // response; the other eight fail our checks.
    assert_eq!(
        s.gw.metric(
            "meshgate_bff_callbacks_total",
            &[("outcome", "invalid_id_token")]
        )
        .await,
        Some(8.0)
    );
    assert_eq!(
        s.gw.metric(
            "meshgate_bff_callbacks_total",
            &[("outcome", "exchange_failed")]
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_must_match_once_and_iss_must_be_the_provider() {
    let s = setup().await;
    let mut browser = Browser::new();
    let (state, nonce) = begin(&s, &mut browser, "/").await;
    *s.op.id_token.lock().expect("lock") = s.op.sign(&s.op.claims(&nonce));
    let login_cookie = browser
        .cookie(&format!("{COOKIE}-login"))
        .expect("pre-login cookie")
        .to_string();
    let set = browser.set_cookies.last().expect("set-cookie").clone();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
        "Path=/",
    ] {
        assert!(set.contains(attr), "{attr} in {set}");
    }

    // Mismatched state: refused, and the pending login is spent.
    let r = callback(&s, &mut browser, "code=c&state=forged").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_state"))
    );
    browser.set_cookie(&format!("{COOKIE}-login"), Some(&login_cookie));
    let r = callback(&s, &mut browser, &format!("code=c&state={state}")).await;
    assert_eq!(
        r.status, 400,
        "a pending login is used once, even after a failure"
    );

    // Missing state; no pre-login cookie.
    let (state, nonce) = begin(&s, &mut browser, "/").await;
    *s.op.id_token.lock().expect("lock") = s.op.sign(&s.op.claims(&nonce));
    let login_cookie = browser
        .cookie(&format!("{COOKIE}-login"))
        .expect("cookie")
        .to_string();
    let r = callback(&s, &mut browser, "code=c").await;
    assert_eq!(r.status, 400);
    let mut stranger = Browser::new();
    let r = callback(&s, &mut stranger, &format!("code=c&state={state}")).await;
    assert_eq!(r.status, 400, "no pre-login cookie");

    // Replay: a successful callback, then the same URL with the same cookie again.
    let (state, nonce) = begin(&s, &mut browser, "/").await;
    *s.op.id_token.lock().expect("lock") = s.op.sign(&s.op.claims(&nonce));
    let login_cookie2 = browser
        .cookie(&format!("{COOKIE}-login"))
        .expect("cookie")
        .to_string();
    assert_ne!(login_cookie, login_cookie2);
    let q = format!("code=c&state={state}");
    assert_eq!(callback(&s, &mut browser, &q).await.status, 303);
    browser.set_cookie(&format!("{COOKIE}-login"), Some(&login_cookie2));
    let r = callback(&s, &mut browser, &q).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_state"))
    );

    // RFC 9207: an `iss` naming another provider (a mix-up attack) is refused.
    let mut b2 = Browser::new();
    let (state, nonce) = begin(&s, &mut b2, "/").await;
    *s.op.id_token.lock().expect("lock") = s.op.sign(&s.op.claims(&nonce));
    let r = callback(
        &s,
        &mut b2,
        &format!("code=c&state={state}&iss=http://evil"),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("wrong_issuer"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_to_is_a_same_origin_path_or_the_root() {
    let s = setup().await;
    for (asked, landed) in [
        ("%2F%2Fevil.com", "/"),
        ("%2F%5Cevil.com", "/"),
        ("https%3Aevil.com", "/"),
        ("%2F%252F%252Fevil.com", "/"),
        ("%2Forders%3Fid%3D1", "/orders?id=1"),
    ] {
        let mut browser = Browser::new();
        let (state, nonce) = begin(&s, &mut browser, asked).await;
        *s.op.id_token.lock().expect("lock") = s.op.sign(&s.op.claims(&nonce));
        let r = callback(&s, &mut browser, &format!("code=c&state={state}")).await;
        assert_eq!(r.status, 303);
        assert_eq!(r.location(), landed, "{asked}");
    }
}

async fn logged_in(s: &Setup) -> Browser {
    let mut browser = Browser::new();
    let (state, nonce) = begin(s, &mut browser, "/").await;
    *s.op.id_token.lock().expect("lock") = s.op.sign(&s.op.claims(&nonce));
    assert_eq!(
        callback(s, &mut browser, &format!("code=c&state={state}"))
            .await
            .status,
        303
    );
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cookies_csrf_and_client_tokens_are_not_trusted() {
    let s = setup().await;
    let mut browser = logged_in(&s).await;
    assert_eq!(
        browser.api(Method::GET, &s.p.url("/api/x")).await.status,
        200
    );
    let seen = s.api.last_request().expect("request");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer opaque-access-token")
    );
    let good = browser.cookie(COOKIE).expect("cookie").to_string();
    let (id, secret) = good.split_once('.').expect("id.secret");

    // No CSRF header: refused before anything else.
    s.api.clear_requests();
    let r = browser.get(&s.p.url("/api/x"), &[]).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("csrf_required"))
    );
    let r = browser
        .send(
            Method::POST,
            &s.p.url("/api/x"),
            &[("x-csrf", "0")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(s.api.request_count(), 0, "the upstream was not contacted");

    // Tampered, truncated, a valid id with a wrong secret, garbage.
    let mut flipped = secret.to_string().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    for forged in [
        format!("{id}.{flipped}"),
        good[..good.len() - 3].to_string(),
        id.to_string(),
        format!("{id}.{}", "A".repeat(43)),
        "%00%ff".to_string(),
        "x".repeat(4000),
    ] {
        browser.set_cookie(COOKIE, Some(&forged));
        let r = browser.api(Method::GET, &s.p.url("/api/x")).await;
        assert_eq!(r.status, 401, "{forged:.40}");
        assert!(
            r.headers
                .get_all("set-cookie")
                .iter()
                .any(|c| c.to_str().unwrap_or("").contains("Max-Age=0")),
            "a bad cookie is cleared"
        );
    }
    assert_eq!(s.api.request_count(), 0);

    // A client's own bearer token is not a session.
    let mut anon = Browser::new();
    let r = anon
        .send(
            Method::GET,
            &s.p.url("/api/x"),
            &[("x-csrf", "1"), ("authorization", "Bearer x")],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    let r = anon
        .send(
            Method::GET,
            &s.p.url("/open/x"),
            &[("x-csrf", "1"), ("authorization", "Bearer x")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.api
            .last_request()
            .expect("request")
            .header("authorization"),
        None
    );

    // The real cookie still works: forgeries did not end the session.
    browser.set_cookie(COOKIE, Some(&good));
    assert_eq!(
        browser.api(Method::GET, &s.p.url("/api/x")).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_ends_the_named_session_and_refuses_bad_tokens() {
    let s = setup().await;
    let mut browser = logged_in(&s).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let good = json!({ "iss": s.op.issuer, "aud": "web", "iat": now, "jti": "j1", "sid": "sid-1",
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} } });
    let post = |token: String| {
        let url = s.p.url("/auth/backchannel-logout");
        async move {
            reqwest::Client::new()
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    let edits: Vec<(&str, Edit)> = vec![
        ("nonce", Box::new(|c| c["nonce"] = json!("n"))),
        ("wrong aud", Box::new(|c| c["aud"] = json!("other"))),
        ("wrong iss", Box::new(|c| c["iss"] = json!("http://evil"))),
        (
            "no events",
            Box::new(|c| {
                c.as_object_mut().expect("obj").remove("events");
            }),
        ),
        (
            "no sid or sub",
            Box::new(|c| {
                c.as_object_mut().expect("obj").remove("sid");
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut claims = good.clone();
        edit(&mut claims);
        assert_eq!(post(s.op.sign(&claims)).await, 400, "{what}");
    }
    assert_eq!(post("not-a-jwt".into()).await, 400);
    assert_eq!(
        browser.api(Method::GET, &s.p.url("/api/x")).await.status,
        200,
        "still logged in"
    );

    assert_eq!(post(s.op.sign(&good)).await, 200);
    let r = browser.api(Method::GET, &s.p.url("/api/x")).await;
    assert_eq!(r.status, 401, "the session ended");
    assert_eq!(
        s.gw.metric(
            "meshgate_bff_sessions_ended_total",
            &[("reason", "backchannel")]
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_refused_ends_the_session_and_a_dead_provider_fails_closed() {
    let s = setup().await;
    // Tokens are due for refresh at once (3 s < refresh_before 60 s) and expire in 3 s.
    let set = |f: &dyn Fn(&mut TokenAnswer)| f(&mut s.op.token.lock().expect("lock"));
    set(&|a| a.expires_in = 3);

    // invalid_grant: the session ends, 401, the cookie is cleared.
    set(&|a| a.refresh_status = 400);
    let mut browser = logged_in(&s).await;
    let r = browser.api(Method::GET, &s.p.url("/api/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(browser.cookie(COOKIE).is_none(), "cookie cleared");
    assert_eq!(
        s.gw.metric(
            "meshgate_bff_refreshes_total",
            &[("outcome", "invalid_grant")]
        )
        .await,
        Some(1.0)
    );

    // Provider down: the current token is used while valid, then 503 (never anonymous).
    set(&|a| a.refresh_status = 503);
    let mut browser = logged_in(&s).await;
    let r = browser.api(Method::GET, &s.p.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    s.api.clear_requests();
    let r = browser.api(Method::GET, &s.p.url("/api/x")).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("auth_unavailable"))
    );
    assert_eq!(s.api.request_count(), 0);
    // The provider is back: the same session refreshes and goes on.
    set(&|a| a.refresh_status = 200);
    let r = browser.api(Method::GET, &s.p.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.api
            .last_request()
            .expect("request")
            .header("authorization")
            .as_deref(),
        Some("Bearer refreshed-access-token")
    );

    // No refresh token: the session lasts as long as its access token.
    set(&|a| a.refresh_token = None);
    let mut browser = logged_in(&s).await;
    assert_eq!(
        browser.api(Method::GET, &s.p.url("/api/x")).await.status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert_eq!(
        browser.api(Method::GET, &s.p.url("/api/x")).await.status,
        401
    );
}
