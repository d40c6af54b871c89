//! Bearer-token authentication: the [`Caller`] extractor accepts a request only
//! with a JWT signed by the configured OpenID Provider for this audience.
//!
//! Keys come from the provider's JWKS (found through
//! `{issuer}/.well-known/openid-configuration`, or named with `--jwks-uri`). They
//! are fetched lazily on the first request, because the provider may start after
//! the service, and cached. A token whose `kid` is not in the cache triggers a
//! refetch, at most one per cooldown, so key rotation is picked up without letting
//! junk tokens hammer the provider; the cache is also refreshed once it is older
//! than `max_key_age` so a withdrawn key stops verifying. A failed fetch keeps the
//! last good keys. With no keys at all every request is refused with 503: the
//! service fails closed.
//!
//! Only RS256 and ES256 are accepted, and each key only for its own algorithm,
//! so neither `alg: none` nor an HMAC token "signed" with a public key can pass.
//! `iss` must match exactly, `aud` must contain the audience, `exp` and `nbf`
//! are checked with 30 s of leeway.
//!
//! `jsonwebtoken` does the cryptography and claim checks. The JWKS cache is
//! written here because the crates that fetch JWKS either fetch at start-up,
//! bring their own HTTP and crypto stacks, or lack the keep-last-good and
//! cooldown policy above.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::AppError;

/// Longest token we try to parse; anything larger is not an access token of ours.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest discovery or JWKS document we read.
const MAX_DOCUMENT_LEN: usize = 256 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Where keys come from and what a token must say. Built once at start-up.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Expected `iss`, compared exactly; discovery lives under it.
    pub issuer: String,
    /// A token's `aud` must contain this value.
    pub audience: String,
    /// Explicit JWKS URL; when `None` it is read from the discovery document.
    pub jwks_uri: Option<String>,
    /// Minimum time between two fetch attempts.
    pub refetch_cooldown: Duration,
    /// Keys older than this are refetched (in the background of a request that
    /// still verifies with the cached keys).
    pub max_key_age: Duration,
    /// Timeout of each discovery or JWKS request.
    pub fetch_timeout: Duration,
}

impl AuthConfig {
    /// Defaults: discovery, 10 s refetch cooldown, 5 min key age, 3 s fetch timeout.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_uri: None,
            refetch_cooldown: Duration::from_secs(10),
            max_key_age: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is missing, malformed, badly signed or its claims do not fit.
    #[error("{0}")]
    Invalid(String),
    /// No verification keys could ever be loaded: nothing can be accepted.
    #[error("token verification keys are unavailable")]
    Unavailable,
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(message) => AppError::Unauthorized(message),
            AuthError::Unavailable => AppError::Unavailable {
                code: "auth_unavailable",
                message: e.to_string(),
            },
        }
    }
}

/// The token verifier with its JWKS cache. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthConfig,
    http: reqwest::Client,
    /// Never held across an `.await`.
    keys: RwLock<Arc<KeySet>>,
    /// Serialises fetches; holds the discovered JWKS URL.
    fetch: tokio::sync::Mutex<FetchState>,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
    fetched_at: Option<Instant>,
    /// Bumped by every successful fetch, so a waiter can tell one happened.
    generation: u64,
}

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    discovered_jwks_uri: Option<String>,
}

impl KeySet {
    /// Keys that may have signed a token with this header: the one with its `kid`,
    /// or, for a token without `kid`, every key for its algorithm.
    fn matching(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&VerifyKey> {
        self.keys
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .collect()
    }
}

#[derive(Deserialize)]
struct TokenClaims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

impl Auth {
    /// A verifier for `config`. Fetches nothing until the first token arrives.
    pub fn new(config: AuthConfig) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            // The provider is a mesh peer, not something to reach through a
            // proxy configured for the host.
            .no_proxy()
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                http,
                keys: RwLock::new(Arc::new(KeySet::default())),
                fetch: tokio::sync::Mutex::new(FetchState::default()),
            }),
        })
    }

    /// The configuration this verifier enforces.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Verifies `token` and returns the caller it names. `Invalid` for any token
    /// we do not accept; `Unavailable` only when no key has ever been loaded.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("token is too long".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("token is malformed".into()))?;
        let alg = header.alg;
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Invalid(format!(
                "signing algorithm {alg:?} is not accepted"
            )));
        }
        let kid = header.kid.as_deref();

        let mut keys = self.keys();
        if keys.matching(kid, alg).is_empty() {
            // Unknown key: wait for a fetch (ours or a concurrent one).
            self.refresh(keys.generation, true).await;
            keys = self.keys();
        } else if keys
            .fetched_at
            .is_some_and(|at| at.elapsed() >= self.inner.config.max_key_age)
        {
            // Known key but stale cache: refresh unless someone already is.
            self.refresh(keys.generation, false).await;
            keys = self.keys();
        }
        let candidates = keys.matching(kid, alg);
        if candidates.is_empty() {
            return Err(if keys.keys.is_empty() {
                AuthError::Unavailable
            } else {
                AuthError::Invalid("token is signed by an unknown key".into())
            });
        }

        let config = &self.inner.config;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let mut failure = String::from("token signature is invalid");
        for key in candidates {
            match jsonwebtoken::decode::<TokenClaims>(token, &key.key, &validation) {
                Ok(data) if data.claims.sub.is_empty() => {
                    return Err(AuthError::Invalid("token has an empty sub".into()))
                }
                Ok(data) => return Ok(Caller::new(data.claims, token)),
                Err(e) => failure = format!("token rejected: {e}"),
            }
        }
        Err(AuthError::Invalid(failure))
    }

    fn keys(&self) -> Arc<KeySet> {
        match self.inner.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetches the JWKS unless a fetch succeeded since `seen_generation` or the
    /// cooldown has not passed. With `wait == false` it gives up at once when
    /// another request is already fetching.
    async fn refresh(&self, seen_generation: u64, wait: bool) {
        let mut state = if wait {
            self.inner.fetch.lock().await
        } else {
            match self.inner.fetch.try_lock() {
                Ok(state) => state,
                Err(_) => return,
            }
        };
        if self.keys().generation != seen_generation {
            return;
        }
        let cooldown = self.inner.config.refetch_cooldown;
        if state.last_attempt.is_some_and(|at| at.elapsed() < cooldown) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(&mut state).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "loaded token verification keys");
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    generation: seen_generation + 1,
                });
                match self.inner.keys.write() {
                    Ok(mut slot) => *slot = set,
                    Err(poisoned) => *poisoned.into_inner() = set,
                }
            }
            Err(e) => {
                // The discovered URL may be what changed: rediscover next time.
                state.discovered_jwks_uri = None;
                tracing::warn!(error = %e, "cannot load token verification keys; keeping the last good ones");
            }
        }
    }

    async fn fetch(&self, state: &mut FetchState) -> Result<Vec<VerifyKey>, String> {
        let config = &self.inner.config;
        let jwks_uri = match (&config.jwks_uri, &state.discovered_jwks_uri) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    config.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url).await?;
                // OpenID Connect Discovery §4.3: the document must name our issuer.
                if discovery.issuer != config.issuer {
                    return Err(format!(
                        "discovery names issuer {:?}, expected {:?}",
                        discovery.issuer, config.issuer
                    ));
                }
                state.discovered_jwks_uri = Some(discovery.jwks_uri.clone());
                discovery.jwks_uri
            }
        };
        let document: JwksDocument = self.get_json(&jwks_uri).await?;
        let keys: Vec<VerifyKey> = document.keys.into_iter().filter_map(verify_key).collect();
        if keys.is_empty() {
            return Err(format!("{jwks_uri} has no usable RS256 or ES256 key"));
        }
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_LEN as u64)
        {
            return Err(format!("GET {url}: document too large"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > MAX_DOCUMENT_LEN {
            return Err(format!("GET {url}: document too large"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
    }
}

/// One JWKS entry as a verification key, or `None` when it is not an RS256/ES256
/// signing key (symmetric and unknown key types are skipped, never trusted).
fn verify_key(value: serde_json::Value) -> Option<VerifyKey> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let (alg, key_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|a| a != key_alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Makes `jsonwebtoken` use RustCrypto whatever other crates in the build
/// enable: with two backends compiled in it would refuse to pick one.
pub fn install_crypto_provider() {
    let _already_installed = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
    );
}

/// The authenticated caller of a request, from a verified access token.
///
/// As an extractor it answers 401 `unauthorized` when the `Authorization: Bearer`
/// token is missing or not accepted, and 503 `auth_unavailable` when no keys could
/// be loaded. The state must provide an [`Auth`] through `FromRef`.
#[derive(Clone)]
pub struct Caller {
    /// The token's `sub`; never empty.
    pub sub: String,
    /// The token's `roles` claim (empty when absent).
    pub roles: Vec<String>,
    /// The token's space-separated `scope`, split (empty when absent).
    pub scopes: Vec<String>,
    token: String,
}

impl Caller {
    fn new(claims: TokenClaims, token: &str) -> Self {
        Self {
            sub: claims.sub,
            roles: claims.roles,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            token: token.to_string(),
        }
    }

    /// Whether the token grants `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// `Ok` when the caller has `role`, 403 `forbidden` otherwise.
    pub fn require_role(&self, role: &str) -> Result<(), AppError> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this requires the {role} role"
            )))
        }
    }

    /// The verified token as received, for forwarding to other services.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `Bearer <token>`: the `Authorization` value to forward on calls made for
    /// this caller.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

impl std::fmt::Debug for Caller {
    // The token is a credential: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("sub", &self.sub)
            .field("roles", &self.roles)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| AppError::Unauthorized("a bearer token is required".into()))?;
        Ok(Auth::from_ref(state).verify(token).await?)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
