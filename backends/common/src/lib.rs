//! `shop-common`: what every demo shop backend (catalog, inventory, payments,
//! orders) shares, so each service crate holds only its own behaviour.
//!
//! - [`auth`]: the [`Caller`] extractor, bearer tokens checked against the
//!   provider's JWKS;
//! - [`error`]: [`AppError`], the one error type and its JSON answers;
//! - [`db`]: the service's SQLite file with embedded migrations;
//! - [`server`]: command-line arguments, JSON logs, `/healthz`, serving;
//! - `testing` (feature `test-util`): a loopback token issuer and test servers.

#![forbid(unsafe_code)]

pub mod auth;
pub mod db;
pub mod error;
pub mod server;
#[cfg(feature = "test-util")]
pub mod testing;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

pub use auth::{Auth, AuthConfig, Caller};

/// The state of a service that needs only its database and token checks (catalog,
/// inventory, payments): handlers extract the pool, and `Caller` finds the [`Auth`].
#[derive(Clone)]
pub struct ServiceState {
    /// The service's SQLite database.
    pub db: sqlx::SqlitePool,
    /// Verifies callers' tokens.
    pub auth: Auth,
}

impl axum::extract::FromRef<ServiceState> for Auth {
    fn from_ref(state: &ServiceState) -> Auth {
        state.auth.clone()
    }
}
pub use error::AppError;
pub use server::{parse_args, run, serve, service_router, ServiceArgs, StartError};

/// A JSON request body whose rejections are [`AppError`]s: 400
/// `invalid_request` saying what is wrong (413 for an oversized body), in the
/// same JSON shape as every other error.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::PayloadTooLarge)
            }
            Err(rejection) => Err(AppError::invalid(rejection.body_text())),
        }
    }
}

/// A fresh random identifier (UUID v4, lowercase hyphenated); unique in practice.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The current time as RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
/// Fixed width, so these strings sort in time order.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Whether `code` looks like an ISO 4217 currency code: three ASCII capitals.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Whether `id` is an acceptable client-chosen identifier (SKU, reservation or
/// order id, idempotency key): 1 to 128 ASCII letters, digits, `-`, `_`, `.` or `:`.
pub fn is_identifier(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}
