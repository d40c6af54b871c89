//! The `jwt` filter against a tiny local OpenID Provider (discovery + JWKS on a free
//! loopback port, keys generated per run): key loading, single-flight refresh and its
//! cooldown, provider outages, fetch bounds, and the bad-token list of issue 5 with real
//! RS256 and ES256 signatures.
//!
//! The server counts the documents it serves, so "one fetch" is measured where it matters.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgate_filters::jwt::{
    FailureReason, FetchError, FetchOutcome, JwtFilter, JwtRejection, JwtSpec, Provider,
    ProviderSpec, ROLES_HEADER, SUB_HEADER,
};
use meshgate_filters::units::HumanDuration;
use meshgate_filters::{Action, Filter, RequestCtx, RequestView, Step};
use p256::pkcs8::EncodePrivateKey;
use pingora::http::RequestHeader;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const AUDIENCE: &str = "shop-api";

// ---------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------

struct Keys {
    rsa: EncodingKey,
    rsa_public_pem: String,
    rsa_jwk: Value,
    ec: EncodingKey,
    ec_jwk: Value,
    ec2: EncodingKey,
    ec2_jwk: Value,
}

/// Keys generated once per test binary: a 2048-bit RSA key takes seconds in a debug build.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::rngs::OsRng;
        let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa keygen");
        let public = rsa.to_public_key();
        let rsa_jwk = json!({
            "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        let (ec, ec_jwk) = ec_key("ec-1");
        let (ec2, ec2_jwk) = ec_key("ec-2");
        Keys {
            rsa: EncodingKey::from_rsa_der(rsa.to_pkcs1_der().expect("pkcs1").as_bytes()),
            rsa_public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
            rsa_jwk,
            ec,
            ec_jwk,
            ec2,
            ec2_jwk,
        }
    })
}

fn ec_key(kid: &str) -> (EncodingKey, Value) {
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        panic!("uncompressed point has coordinates");
    };
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    });
    let der = key.to_pkcs8_der().expect("pkcs8");
    (EncodingKey::from_ec_der(der.as_bytes()), jwk)
}

fn jwks(keys: &[&Value]) -> Value {
    json!({ "keys": keys })
}

fn default_jwks() -> Value {
    jwks(&[&keys().rsa_jwk, &keys().ec_jwk])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer, "aud": AUDIENCE, "sub": "alice", "exp": now() + 300, "iat": now(),
        "scope": "openid orders:write", "roles": ["customer"], "sid": "s1",
        // Makes every token distinct, so the verified-token cache does not hide a check.
        "jti": format!("{:x}", rand::random::<u64>()),
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa-1", &keys().rsa, claims)
}

fn es256(claims: &Value) -> String {
    sign(Algorithm::ES256, "ec-1", &keys().ec, claims)
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// An HS256 token whose HMAC key is `secret`, built by hand: the point is a token no
/// honest library would produce for this key set.
fn hs256_with_secret(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign")
}

// ---------------------------------------------------------------------------------------
// A tiny OpenID Provider
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Every document answers this status.
    Status(u16),
    /// Accept, then never answer.
    Hang,
    /// JWKS of 300 KiB.
    Huge,
}

struct IdpState {
    issuer: String,
    /// What discovery claims as issuer (normally `issuer`).
    discovery_issuer: Mutex<String>,
    jwks: Mutex<Value>,
    mode: Mutex<Mode>,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
}

/// The test provider; its accept loop stops (and the port refuses connections) on
/// [`Idp::stop`] or drop.
struct Idp {
    state: Arc<IdpState>,
    accept: JoinHandle<()>,
}

impl Idp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let issuer = format!("http://{addr}");
        let state = Arc::new(IdpState {
            discovery_issuer: Mutex::new(issuer.clone()),
            issuer,
            jwks: Mutex::new(default_jwks()),
            mode: Mutex::new(Mode::Normal),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { state, accept }
    }

    fn issuer(&self) -> &str {
        &self.state.issuer
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().expect("lock") = jwks;
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("lock") = mode;
    }

    fn stop(&self) {
        self.accept.abort();
    }

    /// A provider spec for this server with `audience` set.
    fn spec(&self) -> ProviderSpec {
        let mut spec = ProviderSpec::new(self.issuer());
        spec.audience = Some(AUDIENCE.into());
        spec
    }

    fn claims(&self) -> Value {
        claims(self.issuer())
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(
    state: Arc<IdpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mode = *state.mode.lock().expect("lock");
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/.well-known/openid-configuration" => {
            state.discovery_hits.fetch_add(1, Ordering::SeqCst);
        }
        "/jwks" => {
            state.jwks_hits.fetch_add(1, Ordering::SeqCst);
        }
        _ => return Ok(respond(StatusCode::NOT_FOUND, String::new())),
    }
    match mode {
        Mode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(respond(status, "down".into()));
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Mode::Huge if path == "/jwks" => {
            let padding = "x".repeat(300 * 1024);
            return Ok(respond(
                StatusCode::OK,
                json!({ "keys": [], "padding": padding }).to_string(),
            ));
        }
        Mode::Normal | Mode::Huge => {}
    }
    let body = if path == "/jwks" {
        state.jwks.lock().expect("lock").to_string()
    } else {
        let issuer = state.discovery_issuer.lock().expect("lock").clone();
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{}/jwks", state.issuer),
            "authorization_endpoint": format!("{}/authorize", state.issuer),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })
        .to_string()
    };
    Ok(respond(StatusCode::OK, body))
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

// ---------------------------------------------------------------------------------------
// Driving the filter
// ---------------------------------------------------------------------------------------

fn filter(provider: &Arc<Provider>, spec: JwtSpec) -> Arc<JwtFilter> {
    Arc::new(JwtFilter::new(&spec, Arc::clone(provider)).expect("valid filter"))
}

fn request(authorization: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/orders", None).expect("request");
    if let Some(value) = authorization {
        req.append_header("authorization", value).expect("header");
    }
    req
}

struct Outcome {
    action: Action,
    ctx: RequestCtx,
    waited: bool,
}

impl Outcome {
    fn admitted(&self) -> bool {
        matches!(self.action, Action::Continue)
    }

    fn status(&self) -> u16 {
        match &self.action {
            Action::Continue => 0,
            Action::Respond(answer) => answer.status.as_u16(),
        }
    }

    fn reason(&self) -> Option<FailureReason> {
        self.ctx.extensions.get::<JwtRejection>().map(|r| r.0)
    }

    fn challenge(&self) -> Option<String> {
        let Action::Respond(answer) = &self.action else {
            return None;
        };
        answer
            .headers
            .iter()
            .find(|(n, _)| n == http::header::WWW_AUTHENTICATE)
            .and_then(|(_, v)| v.to_str().ok())
            .map(String::from)
    }
}

async fn run(filter: &JwtFilter, authorization: Option<&str>) -> Outcome {
    let req = request(authorization);
    let mut ctx = RequestCtx::default();
    let view = RequestView {
        header: &req,
        path: "/api/orders",
        host: "",
        peer: None,
    };
    let (action, waited) = match filter.request_filter(view, &mut ctx) {
        Step::Done(action) => (action, false),
        Step::Wait(wait) => (wait.await, true),
    };
    Outcome {
        action,
        ctx,
        waited,
    }
}

async fn run_token(filter: &JwtFilter, token: &str) -> Outcome {
    run(filter, Some(&format!("Bearer {token}"))).await
}

/// Runs `tokens` concurrently, one task each.
async fn run_all(filter: &Arc<JwtFilter>, tokens: Vec<String>) -> Vec<Outcome> {
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let filter = Arc::clone(filter);
            tokio::spawn(async move { run_token(&filter, &token).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

/// Polls `cond` every 10 ms until it holds, failing after `deadline`.
async fn eventually(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A token naming a random `kid`, with a junk signature: what a flood looks like (no key
/// is ever found, so the signature is never looked at).
fn random_kid_token(issuer: &str) -> String {
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": format!("made-up-{:x}", rand::random::<u64>()) });
    format!(
        "{}.{}.{}",
        b64(&header.to_string()),
        b64(&claims(issuer).to_string()),
        b64("junk signature")
    )
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Named `jwt` so `cargo test -p meshgate-filters jwt` runs these with the unit tests.
mod jwt {
    use super::*;

    #[tokio::test]
    async fn valid_rs256_and_es256_tokens_pass_with_keys_from_discovery() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));

        let first = run_token(&f, &rs256(&idp.claims())).await;
        assert!(first.admitted(), "{:?}", first.reason());
        assert!(
            first.waited,
            "the first request waits for the initial fetch"
        );
        assert_eq!(first.ctx.user.as_deref(), Some("alice"));

        let second = run_token(&f, &es256(&idp.claims())).await;
        assert!(second.admitted(), "{:?}", second.reason());
        assert!(!second.waited, "keys are cached");

        assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (1, 1));
        let stats = provider.stats();
        assert_eq!(stats.fetches(FetchOutcome::Ok), 1);
        assert_eq!(stats.keys_loaded, 2);
        assert_eq!(stats.accepted, 2);
    }

    #[tokio::test]
    async fn an_explicit_jwks_uri_skips_discovery() {
        let idp = Idp::start().await;
        let mut spec = idp.spec();
        spec.jwks_uri = Some(format!("{}/jwks", idp.issuer()));
        let provider = Provider::new(&spec).expect("valid");
        provider.prefetch().await.expect("prefetch");
        assert!(provider.has_keys());
        let f = filter(&provider, JwtSpec::new("main"));
        let out = run_token(&f, &rs256(&idp.claims())).await;
        assert!(out.admitted() && !out.waited);
        assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (0, 1));
        // Fresh keys: a second prefetch does nothing.
        provider.prefetch().await.expect("prefetch");
        assert_eq!(idp.jwks_hits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_share_one_fetch() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        let tokens = (0..50).map(|_| es256(&idp.claims())).collect();
        let outcomes = run_all(&f, tokens).await;
        assert!(outcomes.iter().all(Outcome::admitted));
        assert_eq!(idp.jwks_hits(), 1);
        assert_eq!(provider.stats().total_fetches(), 1);
    }

    #[tokio::test]
    async fn alg_none_and_hmac_signed_with_the_public_key_are_refused() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        provider.prefetch().await.expect("keys");
        let f = filter(&provider, JwtSpec::new("main"));
        let claims = idp.claims();
        let payload = b64(&claims.to_string());
        let unsigned = [
            format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#)),
            format!("{}.{payload}.c2ln", b64(r#"{"alg":"none","kid":"rsa-1"}"#)),
            format!("{}.{payload}.c2ln", b64(r#"{"alg":"NONE"}"#)),
        ];
        for token in &unsigned {
            let out = run_token(&f, token).await;
            assert_eq!(out.status(), 401, "{token}");
            assert!(matches!(
                out.reason(),
                Some(FailureReason::AlgorithmNotAllowed | FailureReason::Malformed)
            ));
        }
        // The classic confusion: HS256 keyed with the RSA public key, as PEM and as raw n.
        let pem = keys().rsa_public_pem.as_bytes();
        for token in [
            hs256_with_secret("rsa-1", &claims, pem),
            hs256_with_secret("rsa-1", &claims, keys().rsa_jwk["n"].to_string().as_bytes()),
        ] {
            let out = run_token(&f, &token).await;
            assert_eq!(out.status(), 401);
            assert_eq!(out.reason(), Some(FailureReason::AlgorithmNotAllowed));
            assert_eq!(
                out.challenge().as_deref(),
                Some("Bearer realm=\"meshgate\", error=\"invalid_token\"")
            );
        }
        // And no configuration can allow it.
        let mut spec = idp.spec();
        spec.algorithms = vec!["RS256".into(), "HS256".into()];
        let errors = Provider::new(&spec).expect_err("HS256 is a config error");
        assert_eq!(errors[0].path, "algorithms[1]");
        assert_eq!(
            provider.stats().signature_checks,
            0,
            "refused before any key use"
        );
    }

    #[tokio::test]
    async fn claims_are_checked_after_the_signature() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        provider.prefetch().await.expect("keys");
        let f = filter(&provider, JwtSpec::new("main"));
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut c = idp.claims();
            edit(&mut c);
            rs256(&c)
        };
        let cases: Vec<(String, FailureReason)> = vec![
            (
                with(&|c| c["exp"] = json!(now() - 120)),
                FailureReason::Expired,
            ),
            (
                with(&|c| c["nbf"] = json!(now() + 120)),
                FailureReason::NotYetValid,
            ),
            (
                with(&|c| c["aud"] = json!("billing-api")),
                FailureReason::WrongAudience,
            ),
            (
                with(&|c| c["aud"] = json!(["billing-api", "web"])),
                FailureReason::WrongAudience,
            ),
            (
                with(&|c| c["iss"] = json!("http://127.0.0.1:1")),
                FailureReason::WrongIssuer,
            ),
            (
                with(&|c| {
                    c.as_object_mut().map(|m| m.remove("exp"));
                }),
                FailureReason::MissingClaim,
            ),
            (
                with(&|c| {
                    c.as_object_mut().map(|m| m.remove("iss"));
                }),
                FailureReason::MissingClaim,
            ),
            (
                with(&|c| {
                    c.as_object_mut().map(|m| m.remove("aud"));
                }),
                FailureReason::MissingClaim,
            ),
            (
                with(&|c| c["exp"] = json!("tomorrow")),
                FailureReason::Malformed,
            ),
        ];
        for (token, reason) in cases {
            let out = run_token(&f, &token).await;
            assert_eq!((out.status(), out.reason()), (401, Some(reason)));
        }
        // An audience list containing ours, and an `exp` within the leeway, are fine.
        for token in [
            with(&|c| c["aud"] = json!(["web", AUDIENCE])),
            with(&|c| c["exp"] = json!(now() - 5)),
            with(&|c| c["nbf"] = json!(now() + 5)),
        ] {
            assert!(run_token(&f, &token).await.admitted());
        }
    }

    #[tokio::test]
    async fn malformed_tokens_and_headers_are_401() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        provider.prefetch().await.expect("keys");
        let f = filter(&provider, JwtSpec::new("main"));
        let good = rs256(&idp.claims());
        let parts: Vec<&str> = good.split('.').collect();
        let huge_header = format!(
            "{}.{}.{}",
            b64(&format!(
                r#"{{"alg":"RS256","kid":"rsa-1","pad":"{}"}}"#,
                "x".repeat(1 << 20)
            )),
            parts[1],
            parts[2]
        );
        let cases = [
            format!("Bearer {}.{}", parts[0], parts[1]),
            format!("Bearer {good}.{}", parts[2]),
            format!("Bearer {}.%%%%.{}", parts[0], parts[2]),
            format!("Bearer {}.{}.{}", parts[0], "Zm9v!!", parts[2]),
            format!("Bearer {}.{}.{}", b64("garbage"), parts[1], parts[2]),
            format!("Bearer {huge_header}"),
            format!("Bearer {good} {good}"),
            "Bearer ".to_string(),
        ];
        for auth in &cases {
            let out = run(&f, Some(auth)).await;
            assert_eq!(out.status(), 401, "{}", &auth[..auth.len().min(60)]);
            assert_eq!(out.reason(), Some(FailureReason::Malformed));
            assert_eq!(
                out.challenge().as_deref(),
                Some("Bearer realm=\"meshgate\", error=\"invalid_token\"")
            );
        }
        // Two Authorization headers, even both valid, are refused.
        let mut req = request(Some(&format!("Bearer {good}")));
        req.append_header("authorization", format!("Bearer {good}"))
            .expect("header");
        let mut ctx = RequestCtx::default();
        let view = RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        assert!(matches!(
            f.request_filter(view, &mut ctx),
            Step::Done(Action::Respond(_))
        ));
        // A payload swapped under a valid signature fails the signature, before any claim
        // is read.
        let swapped = format!("Bearer {}.{}.{}", parts[0], b64("not json"), parts[2]);
        assert_eq!(
            run(&f, Some(&swapped)).await.reason(),
            Some(FailureReason::BadSignature)
        );
        // Nothing from the token reaches the answer: the standard JSON body, a fixed challenge.
        let out = run(&f, Some(&format!("Bearer {}", parts[0]))).await;
        let Action::Respond(answer) = &out.action else {
            panic!("refused");
        };
        assert!(answer.body.is_none(), "the standard JSON error body");
        assert_eq!(answer.headers.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_kid_flood_costs_at_most_one_fetch_per_cooldown() {
        let idp = Idp::start().await;
        let mut spec = idp.spec();
        spec.jwks_refetch_cooldown = HumanDuration(Duration::from_millis(500));
        let provider = Provider::new(&spec).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        assert!(run_token(&f, &rs256(&idp.claims())).await.admitted());
        assert_eq!(idp.jwks_hits(), 1);

        // Right after a fetch: refused at once, no fetch.
        let tokens = (0..200).map(|_| random_kid_token(idp.issuer())).collect();
        let outcomes = run_all(&f, tokens).await;
        assert!(outcomes
            .iter()
            .all(|o| o.reason() == Some(FailureReason::UnknownKey) && !o.waited));
        assert_eq!(idp.jwks_hits(), 1);

        // After the cooldown: the concurrent misses share exactly one refetch.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let tokens = (0..200).map(|_| random_kid_token(idp.issuer())).collect();
        let outcomes = run_all(&f, tokens).await;
        assert!(outcomes
            .iter()
            .all(|o| o.status() == 401 && o.reason() == Some(FailureReason::UnknownKey)));
        assert_eq!(idp.jwks_hits(), 2);
        let stats = provider.stats();
        assert_eq!(stats.total_fetches(), 2);
        assert!(stats.jwks_refetch_suppressed >= 200);
        assert_eq!(stats.failures(FailureReason::UnknownKey), 400);
        // Good tokens were never disturbed.
        assert!(run_token(&f, &es256(&idp.claims())).await.admitted());
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_by_one_refetch() {
        let idp = Idp::start().await;
        let mut spec = idp.spec();
        spec.jwks_refetch_cooldown = HumanDuration(Duration::from_millis(200));
        let provider = Provider::new(&spec).expect("valid");
        provider.prefetch().await.expect("keys");
        let f = filter(&provider, JwtSpec::new("main"));
        idp.set_jwks(jwks(&[&keys().ec_jwk, &keys().ec2_jwk]));
        let rotated = sign(Algorithm::ES256, "ec-2", &keys().ec2, &idp.claims());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let out = run_token(&f, &rotated).await;
        assert!(out.admitted(), "{:?}", out.reason());
        assert!(out.waited);
        assert_eq!(idp.jwks_hits(), 2);
        // The RSA key left the set: its tokens are refused from now on, cached or not.
        let out = run_token(&f, &rs256(&idp.claims())).await;
        assert_eq!(out.reason(), Some(FailureReason::UnknownKey));
    }

    #[tokio::test]
    async fn a_removed_key_stops_vouching_for_cached_tokens() {
        let idp = Idp::start().await;
        let mut spec = idp.spec();
        spec.jwks_refetch_cooldown = HumanDuration(Duration::from_millis(100));
        let provider = Provider::new(&spec).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        let token = rs256(&idp.claims());
        assert!(run_token(&f, &token).await.admitted());
        assert!(run_token(&f, &token).await.admitted());
        assert_eq!(provider.stats().token_cache_hits, 1);
        idp.set_jwks(jwks(&[&keys().ec_jwk]));
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Any unknown kid triggers the refetch that brings the new set.
        let _ = run_token(&f, &random_kid_token(idp.issuer())).await;
        assert_eq!(idp.jwks_hits(), 2);
        let out = run_token(&f, &token).await;
        assert_eq!(out.reason(), Some(FailureReason::UnknownKey));
    }

    #[tokio::test]
    async fn a_provider_that_goes_down_leaves_the_last_good_keys_in_use() {
        let idp = Idp::start().await;
        let mut spec = idp.spec();
        spec.jwks_cache_ttl = HumanDuration(Duration::from_secs(1));
        spec.jwks_refetch_cooldown = HumanDuration(Duration::from_millis(100));
        let provider = Provider::new(&spec).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        assert!(run_token(&f, &rs256(&idp.claims())).await.admitted());
        idp.stop();

        // Keys past their TTL, provider unreachable: a background refresh fails, and new
        // tokens (not in the cache) still verify with the old keys, without waiting.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let out = run_token(&f, &es256(&idp.claims())).await;
        assert!(out.admitted() && !out.waited);
        eventually(
            Duration::from_secs(5),
            "the failed background refresh",
            || provider.stats().fetches(FetchOutcome::Unreachable) >= 1,
        )
        .await;
        let out = run_token(&f, &rs256(&idp.claims())).await;
        assert!(out.admitted(), "{:?}", out.reason());
        assert!(matches!(
            provider.last_fetch_error(),
            Some(FetchError::Unreachable(_))
        ));

        // An unknown kid while down waits for a refresh that fails, then is refused.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let out = run_token(&f, &random_kid_token(idp.issuer())).await;
        assert_eq!(out.reason(), Some(FailureReason::UnknownKey));
        assert!(provider.has_keys());
        assert_eq!(provider.stats().keys_loaded, 2);
    }

    #[tokio::test]
    async fn a_provider_that_never_answered_fails_closed() {
        let idp = Idp::start().await;
        idp.set_mode(Mode::Status(503));
        let provider = Provider::new(&idp.spec()).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        let out = run_token(&f, &rs256(&idp.claims())).await;
        assert_eq!(
            (out.status(), out.reason()),
            (401, Some(FailureReason::NoKeys))
        );
        assert!(out.waited);
        assert_eq!(provider.last_fetch_error(), Some(FetchError::Status(503)));
        assert_eq!(provider.stats().fetches(FetchOutcome::HttpStatus), 1);
        // Within the cooldown: refused without asking the provider again.
        let out = run_token(&f, &rs256(&idp.claims())).await;
        assert_eq!(out.reason(), Some(FailureReason::NoKeys));
        assert!(!out.waited);
        assert_eq!(idp.discovery_hits(), 1);
    }

    #[tokio::test]
    async fn a_hanging_provider_costs_at_most_the_fetch_timeout() {
        let idp = Idp::start().await;
        idp.set_mode(Mode::Hang);
        let provider = Provider::new(&idp.spec()).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        let start = Instant::now();
        let out = run_token(&f, &rs256(&idp.claims())).await;
        let took = start.elapsed();
        assert_eq!(out.reason(), Some(FailureReason::NoKeys));
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(provider.last_fetch_error(), Some(FetchError::Timeout));
        assert_eq!(provider.stats().fetches(FetchOutcome::Timeout), 1);
    }

    #[tokio::test]
    async fn oversized_and_misattributed_documents_are_refused() {
        let idp = Idp::start().await;
        idp.set_mode(Mode::Huge);
        let mut spec = idp.spec();
        spec.jwks_uri = Some(format!("{}/jwks", idp.issuer()));
        let provider = Provider::new(&spec).expect("valid");
        assert_eq!(provider.prefetch().await, Err(FetchError::TooLarge));
        assert_eq!(provider.stats().fetches(FetchOutcome::TooLarge), 1);

        let idp = Idp::start().await;
        *idp.state.discovery_issuer.lock().expect("lock") = "https://evil.test".into();
        let provider = Provider::new(&idp.spec()).expect("valid");
        assert!(matches!(
            provider.prefetch().await,
            Err(FetchError::Invalid(_))
        ));
        assert_eq!(
            idp.jwks_hits(),
            0,
            "keys of an unverified provider are never fetched"
        );
        assert!(!provider.has_keys());
    }

    #[tokio::test]
    async fn a_chunked_oversized_jwks_is_cut_off_while_streaming() {
        // No Content-Length: the bound must hold while the body arrives.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
            for _ in 0..32 {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        });
        let mut spec = ProviderSpec::new(format!("http://{addr}"));
        spec.audience = Some(AUDIENCE.into());
        spec.jwks_uri = Some(format!("http://{addr}/jwks"));
        let provider = Provider::new(&spec).expect("valid");
        assert_eq!(provider.prefetch().await, Err(FetchError::TooLarge));
        server.abort();
    }

    #[tokio::test]
    async fn scopes_and_roles_refusals_are_403_with_the_required_scopes() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        provider.prefetch().await.expect("keys");
        let mut spec = JwtSpec::new("main");
        spec.scopes = vec!["orders:write".into()];
        spec.roles = vec!["customer".into()];
        let f = filter(&provider, spec);
        assert!(run_token(&f, &rs256(&idp.claims())).await.admitted());

        let mut c = idp.claims();
        c["scope"] = json!("openid orders:read");
        let out = run_token(&f, &rs256(&c)).await;
        assert_eq!(out.status(), 403);
        assert_eq!(out.reason(), Some(FailureReason::InsufficientScope));
        assert_eq!(
            out.challenge().as_deref(),
            Some("Bearer realm=\"meshgate\", error=\"insufficient_scope\", scope=\"orders:write\"")
        );

        let mut c = idp.claims();
        c["roles"] = json!(["support"]);
        let out = run_token(&f, &rs256(&c)).await;
        assert_eq!(
            (out.status(), out.reason()),
            (403, Some(FailureReason::MissingRole))
        );

        let out = run(&f, None).await;
        assert_eq!(out.status(), 401);
        assert_eq!(
            out.challenge().as_deref(),
            Some("Bearer realm=\"meshgate\"")
        );
    }

    #[tokio::test]
    async fn upstreams_get_the_verified_identity_never_the_clients_claim() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        let mut c = idp.claims();
        c["roles"] = json!(["customer", "admin"]);
        let mut out = run_token(&f, &rs256(&c)).await;
        assert!(out.admitted());
        let mut up = RequestHeader::build("GET", b"/orders", None).expect("request");
        up.append_header("x-meshgate-sub", "mallory").expect("h");
        up.append_header("x-meshgate-roles", "admin").expect("h");
        f.upstream_request_filter(&mut up, &mut out.ctx);
        let get = |name| {
            up.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(String::from))
                .collect::<Vec<_>>()
        };
        assert_eq!(get(&SUB_HEADER), ["alice"]);
        assert_eq!(get(&ROLES_HEADER), ["customer,admin"]);

        // A refused request forwards nothing, and the spoofed copies are still removed.
        let mut out = run_token(&f, &random_kid_token(idp.issuer())).await;
        assert!(!out.admitted());
        let mut up = RequestHeader::build("GET", b"/orders", None).expect("request");
        up.append_header("x-meshgate-sub", "mallory").expect("h");
        f.upstream_request_filter(&mut up, &mut out.ctx);
        assert!(up.headers.get(&SUB_HEADER).is_none());
    }

    #[tokio::test]
    async fn the_verified_token_cache_spares_signature_checks() {
        let idp = Idp::start().await;
        let provider = Provider::new(&idp.spec()).expect("valid");
        let f = filter(&provider, JwtSpec::new("main"));
        let token = rs256(&idp.claims());
        for _ in 0..10 {
            let out = run_token(&f, &token).await;
            assert!(out.admitted());
            assert_eq!(out.ctx.user.as_deref(), Some("alice"));
        }
        let stats = provider.stats();
        assert_eq!(stats.signature_checks, 1);
        assert_eq!(stats.token_cache_hits, 9);
        assert_eq!(stats.token_cache_entries, 1);
        // A reloaded route filter on the same provider shares the cache.
        let reloaded = filter(&provider, JwtSpec::new("main"));
        assert!(run_token(&reloaded, &token).await.admitted());
        assert_eq!(provider.stats().signature_checks, 1);
    }
}
