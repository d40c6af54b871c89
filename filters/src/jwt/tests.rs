//! Filter-level tests without a network: keys are installed directly into the provider.
//! Fetching, refresh and RSA are covered by `tests/jwt_provider.rs` against a local JWKS
//! server.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};

use super::*;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "shop-api";

struct TestKeys {
    ec: EncodingKey,
    ed: EncodingKey,
    jwks: String,
}

fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::rngs::OsRng;
        let ec = p256::ecdsa::SigningKey::random(&mut rng);
        let point = ec.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            panic!("uncompressed point has coordinates");
        };
        let ed = ed25519_dalek::SigningKey::generate(&mut rng);
        let jwks = json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
              "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
              "x": URL_SAFE_NO_PAD.encode(ed.verifying_key().as_bytes()) },
        ]});
        TestKeys {
            ec: EncodingKey::from_ec_der(ec.to_pkcs8_der().expect("pkcs8").as_bytes()),
            ed: EncodingKey::from_ed_der(ed.to_pkcs8_der().expect("pkcs8").as_bytes()),
            jwks: jwks.to_string(),
        }
    })
}

fn now() -> u64 {
    unix_now()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now() + 300, "iat": now(),
        "scope": "openid orders:write", "roles": ["customer"]
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    let key = match alg {
        Algorithm::EdDSA => &keys().ed,
        _ => &keys().ec,
    };
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn es256(claims: &Value) -> String {
    sign(Algorithm::ES256, Some("ec-1"), claims)
}

fn provider_spec() -> ProviderSpec {
    let mut spec = ProviderSpec::new(ISSUER);
    spec.audience = Some(AUDIENCE.into());
    spec
}

fn loaded_provider() -> Arc<Provider> {
    let provider = Provider::new(&provider_spec()).expect("valid spec");
    provider
        .install_jwks(keys().jwks.as_bytes())
        .expect("valid jwks");
    provider
}

fn filter(spec: JwtSpec) -> JwtFilter {
    JwtFilter::new(&spec, loaded_provider()).expect("valid filter")
}

fn request(authorization: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/orders", None).expect("request");
    if let Some(value) = authorization {
        req.append_header("authorization", value).expect("header");
    }
    req
}

/// Runs the request hook, which must decide without waiting.
fn decide(f: &JwtFilter, req: &RequestHeader) -> (Action, RequestCtx) {
    let mut ctx = RequestCtx::default();
    let view = RequestView {
        header: req,
        path: "/api/orders",
        host: "",
        peer: None,
    };
    let Step::Done(action) = f.request_filter(view, &mut ctx) else {
        panic!("keys are loaded: the filter decides without waiting");
    };
    (action, ctx)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Status and `WWW-Authenticate` of a refusal, plus the recorded reason.
fn refusal(action: Action, ctx: &RequestCtx) -> (u16, String, FailureReason) {
    let Action::Respond(answer) = action else {
        panic!("expected a refusal");
    };
    let challenge = answer
        .headers
        .iter()
        .find(|(n, _)| n == WWW_AUTHENTICATE)
        .and_then(|(_, v)| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(JwtRejection(reason)) = ctx.extensions.get::<JwtRejection>().copied() else {
        panic!("a refusal records its reason");
    };
    (answer.status.as_u16(), challenge, reason)
}

#[test]
fn valid_es256_and_eddsa_tokens_are_admitted_with_their_identity() {
    let f = filter(JwtSpec::new("main"));
    for token in [
        es256(&claims()),
        sign(Algorithm::EdDSA, Some("ed-1"), &claims()),
    ] {
        let (action, ctx) = decide(&f, &request(Some(&bearer(&token))));
        assert!(matches!(action, Action::Continue), "{action:?}");
        assert_eq!(ctx.user.as_deref(), Some("alice"));
        let identity = ctx.extensions.get::<Arc<Identity>>().expect("identity");
        assert!(identity.has_role("customer"));
    }
    assert_eq!(f.provider().stats().accepted, 2);
}

#[test]
fn no_bearer_token_is_401_without_an_error_code() {
    let f = filter(JwtSpec::new("main"));
    for auth in [None, Some("Basic dXNlcjpwYXNz")] {
        let (action, ctx) = decide(&f, &request(auth));
        assert_eq!(
            refusal(action, &ctx),
            (
                401,
                "Bearer realm=\"meshgate\"".to_string(),
                FailureReason::MissingToken
            )
        );
    }
}

#[test]
fn bad_tokens_are_401_invalid_token_with_their_reason() {
    let f = filter(JwtSpec::new("main"));
    let mut expired = claims();
    expired["exp"] = json!(now() - 120);
    let mut early = claims();
    early["nbf"] = json!(now() + 120);
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("other-api");
    let mut wrong_iss = claims();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_exp = claims();
    no_exp.as_object_mut().map(|c| c.remove("exp"));
    let mut no_sub = claims();
    no_sub.as_object_mut().map(|c| c.remove("sub"));
    let good = es256(&claims());
    let (head, rest) = good.split_once('.').expect("dots");
    let (payload, _) = rest.split_once('.').expect("dots");
    let tampered = format!(
        "{head}.{}.{}",
        URL_SAFE_NO_PAD.encode(claims().to_string().replace("alice", "admin")),
        rest.split_once('.').map(|(_, s)| s).unwrap_or_default()
    );
    let none = format!(
        "{}.{payload}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"ec-1"}"#)
    );
    let cases = [
        (es256(&expired), FailureReason::Expired),
        (es256(&early), FailureReason::NotYetValid),
        (es256(&wrong_aud), FailureReason::WrongAudience),
        (es256(&wrong_iss), FailureReason::WrongIssuer),
        (es256(&no_exp), FailureReason::MissingClaim),
        (es256(&no_sub), FailureReason::MissingClaim),
        (tampered, FailureReason::BadSignature),
        (none, FailureReason::AlgorithmNotAllowed),
        (
            sign(Algorithm::ES256, Some("ed-1"), &claims()),
            FailureReason::KeyMismatch,
        ),
        (format!("{head}.{payload}"), FailureReason::Malformed),
        ("a.b.c".to_string(), FailureReason::Malformed),
    ];
    for (token, reason) in cases {
        let (action, ctx) = decide(&f, &request(Some(&bearer(&token))));
        assert_eq!(
            refusal(action, &ctx),
            (
                401,
                "Bearer realm=\"meshgate\", error=\"invalid_token\"".to_string(),
                reason
            ),
            "{reason:?}"
        );
        assert!(ctx.extensions.get::<Arc<Identity>>().is_none());
    }
    let stats = f.provider().stats();
    assert_eq!(stats.failures(FailureReason::Expired), 1);
    assert_eq!(stats.accepted, 0);
}

#[test]
fn leeway_admits_a_token_that_expired_moments_ago() {
    let f = filter(JwtSpec::new("main"));
    let mut c = claims();
    c["exp"] = json!(now() - 10);
    let (action, _) = decide(&f, &request(Some(&bearer(&es256(&c)))));
    assert!(matches!(action, Action::Continue), "{action:?}");
}

#[test]
fn missing_scopes_or_roles_are_403_insufficient_scope() {
    let mut spec = JwtSpec::new("main");
    spec.scopes = vec!["orders:write".into(), "orders:admin".into()];
    let f = filter(spec);
    let token = bearer(&es256(&claims()));
    let (action, ctx) = decide(&f, &request(Some(&token)));
    assert_eq!(
        refusal(action, &ctx),
        (
            403,
            "Bearer realm=\"meshgate\", error=\"insufficient_scope\", scope=\"orders:write orders:admin\""
                .to_string(),
            FailureReason::InsufficientScope
        )
    );
    assert_eq!(
        ctx.user.as_deref(),
        Some("alice"),
        "the refused caller is known"
    );

    let mut spec = JwtSpec::new("main");
    spec.roles = vec!["admin".into(), "support".into()];
    let f = filter(spec);
    let (action, ctx) = decide(&f, &request(Some(&token)));
    assert_eq!(
        refusal(action, &ctx),
        (
            403,
            "Bearer realm=\"meshgate\", error=\"insufficient_scope\"".to_string(),
            FailureReason::MissingRole
        )
    );

    let mut spec = JwtSpec::new("main");
    spec.scopes = vec!["orders:write".into()];
    spec.roles = vec!["admin".into(), "customer".into()];
    let (action, _) = decide(&filter(spec), &request(Some(&token)));
    assert!(
        matches!(action, Action::Continue),
        "all scopes, any role: {action:?}"
    );
}

#[test]
fn scp_arrays_count_as_scopes() {
    let mut spec = JwtSpec::new("main");
    spec.scopes = vec!["orders:read".into()];
    let f = filter(spec);
    let mut c = claims();
    c["scp"] = json!(["orders:read"]);
    let (action, _) = decide(&f, &request(Some(&bearer(&es256(&c)))));
    assert!(matches!(action, Action::Continue), "{action:?}");
}

#[test]
fn a_cached_token_is_not_verified_again() {
    let f = filter(JwtSpec::new("main"));
    let token = bearer(&es256(&claims()));
    for _ in 0..5 {
        let (action, ctx) = decide(&f, &request(Some(&token)));
        assert!(matches!(action, Action::Continue));
        assert_eq!(ctx.user.as_deref(), Some("alice"));
    }
    let stats = f.provider().stats();
    assert_eq!(stats.signature_checks, 1);
    assert_eq!(stats.token_cache_hits, 4);
    assert_eq!(stats.token_cache_entries, 1);
    // Route policy still applies to cached identities.
    let mut spec = JwtSpec::new("main");
    spec.roles = vec!["admin".into()];
    let strict = JwtFilter::new(&spec, Arc::clone(f.provider())).expect("valid");
    let (action, ctx) = decide(&strict, &request(Some(&token)));
    assert_eq!(refusal(action, &ctx).0, 403);
    assert_eq!(f.provider().stats().signature_checks, 1);
}

#[test]
fn refused_tokens_are_not_cached() {
    let f = filter(JwtSpec::new("main"));
    let mut c = claims();
    c["aud"] = json!("other");
    let token = bearer(&es256(&c));
    for _ in 0..3 {
        let (action, _) = decide(&f, &request(Some(&token)));
        assert!(matches!(action, Action::Respond(_)));
    }
    let stats = f.provider().stats();
    assert_eq!(stats.signature_checks, 3);
    assert_eq!(stats.token_cache_hits, 0);
}

fn upstream_with_spoofed_identity() -> RequestHeader {
    let mut up = RequestHeader::build("GET", b"/orders", None).expect("request");
    up.append_header("x-meshgate-sub", "admin").expect("h");
    up.append_header("x-meshgate-sub", "root").expect("h");
    up.append_header("X-Meshgate-Roles", "admin").expect("h");
    up
}

fn values(up: &RequestHeader, name: &HeaderName) -> Vec<String> {
    up.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect()
}

#[test]
fn the_verified_identity_replaces_client_sent_headers() {
    let f = filter(JwtSpec::new("main"));
    let mut c = claims();
    c["roles"] = json!(["customer", "admin"]);
    let (_, mut ctx) = decide(&f, &request(Some(&bearer(&es256(&c)))));
    let mut up = upstream_with_spoofed_identity();
    f.upstream_request_filter(&mut up, &mut ctx);
    assert_eq!(values(&up, &SUB_HEADER), ["alice"]);
    assert_eq!(values(&up, &ROLES_HEADER), ["customer,admin"]);

    // No roles in the token: no roles header at all, not the client's.
    let mut c = claims();
    c.as_object_mut().map(|c| c.remove("roles"));
    let (_, mut ctx) = decide(&f, &request(Some(&bearer(&es256(&c)))));
    let mut up = upstream_with_spoofed_identity();
    f.upstream_request_filter(&mut up, &mut ctx);
    assert_eq!(values(&up, &SUB_HEADER), ["alice"]);
    assert!(values(&up, &ROLES_HEADER).is_empty());
}

#[test]
fn client_sent_identity_headers_are_stripped_even_without_forwarding() {
    let mut spec = JwtSpec::new("main");
    spec.forward_claims = false;
    let f = filter(spec);
    let (_, mut ctx) = decide(&f, &request(Some(&bearer(&es256(&claims())))));
    let mut up = upstream_with_spoofed_identity();
    f.upstream_request_filter(&mut up, &mut ctx);
    assert!(values(&up, &SUB_HEADER).is_empty());
    assert!(values(&up, &ROLES_HEADER).is_empty());
}

#[test]
fn the_filter_needs_an_audience_and_a_valid_spec() {
    let provider = Provider::new(&ProviderSpec::new(ISSUER)).expect("valid spec");
    let mut spec = JwtSpec::new("main");
    spec.scopes = vec!["bad scope".into()];
    let errors = JwtFilter::new(&spec, provider).expect_err("invalid");
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["scopes[0]", "provider"]);
    assert!(errors[1].message.contains("audience"));
}

#[test]
fn providers_are_reused_only_for_the_same_verification_settings() {
    let spec = provider_spec();
    let provider = Provider::new(&spec).expect("valid");
    let mut same = spec.clone();
    same.client_secret = Some(Secret::new("rotated"));
    same.scopes = vec!["openid".into()];
    assert!(provider.is_compatible(&same));
    let mut other = spec.clone();
    other.audience = Some("other-api".into());
    assert!(!provider.is_compatible(&other));
    let mut other = spec.clone();
    other.algorithms = vec!["ES256".into()];
    assert!(!provider.is_compatible(&other));
    let mut other = spec;
    other.jwks_uri = Some("https://idp.test/keys".into());
    assert!(!provider.is_compatible(&other));
    let mut bad = provider_spec();
    bad.algorithms = vec!["HS256".into()];
    assert!(Provider::new(&bad).is_err());
}

#[tokio::test]
async fn with_no_keys_ever_loaded_requests_fail_closed() {
    // Port 1 on loopback refuses connections at once.
    let mut spec = ProviderSpec::new("http://127.0.0.1:1");
    spec.audience = Some(AUDIENCE.into());
    let provider = Provider::new(&spec).expect("valid");
    let f = JwtFilter::new(&JwtSpec::new("main"), provider).expect("valid");
    let mut c = claims();
    c["iss"] = json!("http://127.0.0.1:1");
    let req = request(Some(&bearer(&es256(&c))));
    let view = RequestView {
        header: &req,
        path: "/",
        host: "",
        peer: None,
    };
    let mut ctx = RequestCtx::default();
    let Step::Wait(wait) = f.request_filter(view, &mut ctx) else {
        panic!("the first request waits for the initial key fetch");
    };
    let action = wait.await;
    assert_eq!(refusal(action, &ctx).2, FailureReason::NoKeys);
    // Within the cooldown, the next request is refused without another attempt.
    let mut ctx = RequestCtx::default();
    let Step::Done(action) = f.request_filter(view, &mut ctx) else {
        panic!("no refetch within the cooldown");
    };
    assert_eq!(refusal(action, &ctx).2, FailureReason::NoKeys);
    let stats = f.provider().stats();
    assert_eq!(stats.fetches(FetchOutcome::Unreachable), 1);
    assert_eq!(stats.total_fetches(), 1);
    assert_eq!(stats.jwks_refetch_suppressed, 1);
    assert!(matches!(
        f.provider().last_fetch_error(),
        Some(FetchError::Unreachable(_))
    ));
    assert!(!f.provider().has_keys());
}

#[test]
fn a_cached_token_with_bytes_added_or_changed_is_checked_again_and_refused() {
    let f = filter(JwtSpec::new("main"));
    let good = es256(&claims());
    let (action, _) = decide(&f, &request(Some(&bearer(&good))));
    assert!(matches!(action, Action::Continue), "{action:?}");
    // Cached now: the same token is admitted without the byte check...
    let (action, _) = decide(&f, &request(Some(&bearer(&good))));
    assert!(matches!(action, Action::Continue), "{action:?}");
    // ...but any other bytes are a different cache key, and get every check.
    for odd in [
        format!("{good}="),
        format!("{good} x"),
        format!("{good},{good}"),
        good.replacen('.', "..", 1),
    ] {
        let (action, ctx) = decide(&f, &request(Some(&bearer(&odd))));
        let (status, _, reason) = refusal(action, &ctx);
        assert_eq!(status, 401, "{odd}");
        assert!(
            matches!(reason, FailureReason::Malformed),
            "{odd}: {reason:?}"
        );
    }
}
