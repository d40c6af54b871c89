//! The one error type every backend handler returns, and how each kind reaches the client.
//!
//! Clients get `{"error": "<snake_case_code>", "message": "..."}` with the matching
//! status. Internal failures (SQL, I/O, a broken invariant) are logged here, once,
//! and reach the client only as `internal`: no SQL text, path or library message
//! leaves the process.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every way a backend request can fail. The variant fixes the HTTP status; the
/// code (where a variant carries one) is the machine-readable `error` field.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed or fails validation.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401 `unauthorized`: no bearer token, or one we do not accept.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: a valid caller without the role or ownership needed.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state (`insufficient_stock`, ...).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413 `payload_too_large`.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 422: well-formed but not processable (`idempotency_key_reused`, ...).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 503: something this answer depends on is unavailable (`auth_unavailable`, ...).
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// 500 `internal`: the database failed. Logged; never shown.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// 500 `internal`: any other internal failure. Logged; never shown.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// 400 `invalid_request` with a message saying what is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "invalid_request",
            message: message.into(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case `error` code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::Unavailable { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Database(_) | Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Database(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(json!({ "error": self.code(), "message": message })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shop\""),
            );
        }
        response
    }
}
