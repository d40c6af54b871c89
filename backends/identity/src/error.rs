//! The one error type every handler returns, and how each kind reaches the client.
//!
//! Protocol endpoints answer RFC 6749 §5.2 JSON (`{"error": "invalid_grant", ...}`),
//! the browser-facing pages answer a small HTML page, and resource endpoints answer
//! RFC 6750 `WWW-Authenticate: Bearer`. Internal failures are logged here, once, and
//! the client only sees `server_error`: no key material, path or library message
//! ever leaves the process.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::html;

#[derive(Debug)]
pub enum AppError {
    /// An OAuth 2.0 error answered as JSON (token and revocation endpoints).
    OAuth {
        status: StatusCode,
        code: &'static str,
        description: String,
    },
    /// A page for the browser: shown instead of redirecting when the redirect
    /// target is not (yet) trusted.
    Page {
        status: StatusCode,
        title: &'static str,
        message: String,
    },
    /// A bearer-token failure at a resource endpoint (`/userinfo`).
    Bearer {
        status: StatusCode,
        code: &'static str,
        description: &'static str,
    },
    /// Anything that is our fault. The detail is logged, never sent.
    Internal(String),
}

impl AppError {
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::oauth(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::oauth(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::oauth(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    pub fn oauth(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self::OAuth {
            status,
            code,
            description: description.into(),
        }
    }

    pub fn page(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self::Page {
            status,
            title,
            message: message.into(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::OAuth {
                status,
                code,
                description,
            } => {
                let mut response = (
                    status,
                    Json(json!({ "error": code, "error_description": description })),
                )
                    .into_response();
                let headers = response.headers_mut();
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if code == "invalid_client" {
                    // RFC 6749 §5.2: a 401 must tell the client which scheme to use.
                    headers.insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"identity\""),
                    );
                }
                response
            }
            AppError::Page {
                status,
                title,
                message,
            } => (status, html::error_page(title, &message)).into_response(),
            AppError::Bearer {
                status,
                code,
                description,
            } => {
                let challenge =
                    format!("Bearer realm=\"identity\", error=\"{code}\", error_description=\"{description}\"");
                let mut response = (
                    status,
                    Json(json!({ "error": code, "error_description": description })),
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, value);
                }
                response
            }
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({ "error": "server_error" })),
                )
                    .into_response()
            }
        }
    }
}
