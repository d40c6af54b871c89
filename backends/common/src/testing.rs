//! Test support for the backends (feature `test-util`): [`TestIdp`], a loopback
//! stand-in for the OpenID Provider that serves discovery and a JWKS and mints
//! tokens, and [`TestServer`], a router served on a free loopback port.
//!
//! Panics on setup failures: it is only ever used from tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::{install_crypto_provider, Auth, AuthConfig};

/// The audience [`TestIdp`] tokens carry unless told otherwise; the services' default.
pub const AUDIENCE: &str = "shop-api";

/// A router served on `127.0.0.1:<free port>` until dropped or stopped.
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves `router` on a free loopback port; ready to accept when this returns.
    pub async fn start(router: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::serve(listener, router)
    }

    fn serve(listener: tokio::net::TcpListener, router: Router) -> Self {
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits for that.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

struct IdpState {
    issuer: String,
    keys: Mutex<Vec<TestKey>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
}

/// A loopback token issuer: `/.well-known/openid-configuration` and `/jwks`
/// like a real provider, plus token minting with any claims.
pub struct TestIdp {
    state: Arc<IdpState>,
    _server: TestServer,
}

impl TestIdp {
    /// Starts the issuer with one ES256 signing key.
    pub async fn start() -> Self {
        install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        let server = TestServer::serve(listener, router);
        let idp = Self {
            state,
            _server: server,
        };
        idp.add_key(Algorithm::ES256);
        idp
    }

    /// The issuer URL (`http://127.0.0.1:<port>`), as tokens carry it in `iss`.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The JWKS URL the discovery document names.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }

    /// A verifier for this issuer and [`AUDIENCE`] using discovery, with a short
    /// refetch cooldown so tests do not wait.
    pub fn auth(&self) -> Auth {
        let mut config = AuthConfig::new(self.issuer(), AUDIENCE);
        config.refetch_cooldown = Duration::from_millis(200);
        Auth::new(config).expect("HTTP client")
    }

    /// Adds a new current signing key (RS256 or ES256) and returns its `kid`;
    /// older keys stay published.
    pub fn add_key(&self, alg: Algorithm) -> String {
        let encoding = match alg {
            Algorithm::ES256 => {
                use p256::pkcs8::EncodePrivateKey;
                let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
                EncodingKey::from_ec_der(key.to_pkcs8_der().expect("encode EC key").as_bytes())
            }
            Algorithm::RS256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
                EncodingKey::from_rsa_der(key.to_pkcs1_der().expect("encode RSA key").as_bytes())
            }
            other => panic!("TestIdp signs with RS256 or ES256, not {other:?}"),
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("JWK");
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).expect("thumbprint");
        jwk.common.key_id = Some(kid.clone());
        self.state.keys.lock().expect("keys lock").push(TestKey {
            kid: kid.clone(),
            alg,
            encoding,
            jwk,
        });
        kid
    }

    /// While `down`, discovery and JWKS answer 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many times `/jwks` was requested (while up).
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// A token for `sub` signed with the current key: issuer, audience
    /// [`AUDIENCE`], valid for five minutes, no roles, empty scope. Adjust
    /// with the builder methods, then [`TokenBuilder::sign`].
    pub fn token(&self, sub: &str) -> TokenBuilder<'_> {
        let now = now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.state.issuer));
        claims.insert("sub".into(), json!(sub));
        claims.insert("aud".into(), json!(AUDIENCE));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + 300));
        claims.insert("scope".into(), json!(""));
        claims.insert("roles".into(), json!([]));
        TokenBuilder { idp: self, claims }
    }
}

/// Claims of a token being minted by [`TestIdp::token`].
pub struct TokenBuilder<'a> {
    idp: &'a TestIdp,
    claims: Map<String, Value>,
}

impl TokenBuilder<'_> {
    /// Sets the `roles` claim.
    pub fn roles(self, roles: &[&str]) -> Self {
        self.claim("roles", json!(roles))
    }

    /// Sets the space-separated `scope` claim.
    pub fn scope(self, scope: &str) -> Self {
        self.claim("scope", json!(scope))
    }

    /// Sets `aud` (a string; use [`Self::claim`] for an array).
    pub fn audience(self, aud: &str) -> Self {
        self.claim("aud", json!(aud))
    }

    /// Sets `iss`.
    pub fn issuer(self, iss: &str) -> Self {
        self.claim("iss", json!(iss))
    }

    /// Sets `exp` to now plus `secs` (negative: already expired).
    pub fn expires_in(self, secs: i64) -> Self {
        self.claim("exp", json!(now() as i64 + secs))
    }

    /// Sets `nbf` to now plus `secs`.
    pub fn not_before_in(self, secs: i64) -> Self {
        self.claim("nbf", json!(now() as i64 + secs))
    }

    /// Sets any claim; `Value::Null` removes it.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        if value.is_null() {
            self.claims.remove(name);
        } else {
            self.claims.insert(name.to_string(), value);
        }
        self
    }

    /// The claims as they would be signed.
    pub fn claims(&self) -> Value {
        Value::Object(self.claims.clone())
    }

    /// Signs with the issuer's newest key, naming it in `kid`.
    pub fn sign(self) -> String {
        let keys = self.idp.state.keys.lock().expect("keys lock");
        let key = keys.last().expect("TestIdp has a key");
        let mut header = Header::new(key.alg);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &self.claims, &key.encoding).expect("sign")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn discovery(State(state): State<Arc<IdpState>>) -> Response {
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    Json(json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{}/jwks", state.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<IdpState>>) -> Response {
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = state.keys.lock().expect("keys lock");
    Json(JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .into_response()
}
