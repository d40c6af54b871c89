//! `identity`: the demo shop's dev OpenID Provider.
//!
//! It implements just enough of OpenID Connect and OAuth 2.0 for a real BFF and
//! real resource servers, and implements it strictly: Authorization Code with
//! mandatory PKCE S256, one-time codes (a replay revokes what they produced),
//! rotating refresh tokens with reuse detection, RFC 7009 revocation,
//! RP-initiated logout with back-channel logout notifications, RFC 9207 `iss`
//! on the authorization response, and RS256/ES256 keys published as a JWKS.
//!
//! Written by hand because no maintained Rust crate provides the server side of
//! OpenID Connect; the pieces that crates do well — JWT signing
//! (`jsonwebtoken`), key generation (`rsa`, `p256`), password hashing
//! (`argon2`), HTTP (`axum`, `reqwest`) — come from crates.
//!
//! State: signing keys are persisted in the data directory; sessions, codes and
//! refresh tokens live in memory (see [`store`]), so a restart logs everyone out.

#![forbid(unsafe_code)]

mod authorize;
mod backchannel;
pub mod claims;
mod client_auth;
pub mod config;
mod discovery;
mod error;
mod html;
pub mod keys;
mod logout;
mod params;
mod revoke;
pub mod store;
mod token;
mod userinfo;

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub use config::{Client, Clients, SigningAlg, User, Users};
pub use error::AppError;
pub use keys::KeyStore;

/// Largest request body accepted anywhere (forms and token requests are tiny).
pub const MAX_BODY: usize = 16 * 1024;

/// Server settings that are not in the users/clients files.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer URL, without a trailing slash. Endpoints live under it.
    pub issuer: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub code_ttl: Duration,
    /// Timeout for each back-channel logout notification.
    pub backchannel_timeout: Duration,
}

impl Settings {
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_string(),
            access_token_ttl: Duration::from_secs(300),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            code_ttl: Duration::from_secs(60),
            backchannel_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("issuer must be an absolute http(s) URL without query or fragment: {0}")]
    Issuer(String),
    #[error("cannot build the HTTP client for back-channel logout: {0}")]
    HttpClient(String),
}

/// Shared, cheaply cloned handle on everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub settings: Settings,
    pub users: Users,
    pub clients: Clients,
    pub keys: KeyStore,
    store: Mutex<store::Store>,
    http: reqwest::Client,
    /// Path part of the issuer (`""` or `/something`); routes are nested under it.
    base_path: String,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    pub fn new(
        settings: Settings,
        users: Users,
        clients: Clients,
        keys: KeyStore,
    ) -> Result<Self, StartError> {
        let issuer = url::Url::parse(&settings.issuer)
            .map_err(|_| StartError::Issuer(settings.issuer.clone()))?;
        if !matches!(issuer.scheme(), "http" | "https")
            || issuer.query().is_some()
            || issuer.fragment().is_some()
        {
            return Err(StartError::Issuer(settings.issuer.clone()));
        }
        let base_path = issuer.path().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            // Back-Channel Logout 1.0 §2.5: the RP answers the POST itself; following a
            // redirect would hand the logout token to whoever the RP points at.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.backchannel_timeout)
            .build()
            .map_err(|e| StartError::HttpClient(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                users,
                clients,
                keys,
                store: Mutex::new(store::Store::default()),
                http,
                base_path,
            }),
        })
    }

    /// The in-memory store. Never held across an `.await`. A poisoned lock is
    /// recovered: every store operation leaves it consistent before it can panic.
    pub(crate) fn store(&self) -> MutexGuard<'_, store::Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.settings.issuer, path)
    }

    /// Drops expired protocol state; the binary calls this periodically.
    pub fn sweep(&self) {
        self.store().sweep(store::now());
    }
}

/// The whole HTTP surface of the provider.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .route("/jwks", get(discovery::jwks))
        .route(
            "/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/login", post(authorize::login))
        .route("/token", post(token::token))
        .route(
            "/userinfo",
            get(userinfo::userinfo).post(userinfo::userinfo),
        )
        .route("/revoke", post(revoke::revoke))
        .route("/logout", get(logout::logout_get).post(logout::logout_post));
    let base_path = state.base_path.clone();
    let router = if base_path.is_empty() {
        routes
    } else {
        Router::new().nest(&base_path, routes)
    };
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(common_headers))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not_found" })),
    )
        .into_response()
}

/// Headers every answer carries; token-bearing answers are never cached.
async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
