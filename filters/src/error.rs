//! The one table that maps every locally generated answer to its status code and the
//! stable error code clients see in `{"error": "...", "request_id": "..."}`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// Why the proxy answered a request itself instead of forwarding it.
///
/// Each kind has exactly one status and one machine-readable code; clients can rely on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed or ambiguous request (bad path encoding, Content-Length with Transfer-Encoding).
    BadRequest,
    /// The request lacks valid credentials for the route (e.g. a missing or wrong API key).
    /// Sent with a `WWW-Authenticate` header naming the expected scheme.
    Unauthorized,
    /// The caller is known but not allowed here (e.g. a CORS preflight from an origin the
    /// route does not allow).
    Forbidden,
    /// No route matches the request.
    NoRoute,
    /// The request body is larger than the route's `body_limit`.
    PayloadTooLarge,
    /// The request header block is larger than `runtime.max_header_size`.
    HeaderTooLarge,
    /// A `rate_limit` filter refused the request; sent with `Retry-After` and the
    /// `RateLimit-*` headers.
    RateLimited,
    /// A `bff` route was called without the CSRF header (`X-CSRF: 1`).
    CsrfRequired,
    /// Authentication cannot be decided now: the session store or the identity provider
    /// is unreachable. Fails closed; never passes the request on anonymously.
    AuthUnavailable,
    /// The upstream could not be reached or broke the exchange.
    BadGateway,
    /// Every endpoint of the chosen cluster is unhealthy.
    NoHealthyUpstream,
    /// The upstream did not answer within the route's timeout.
    GatewayTimeout,
    /// A bug or an unexpected internal state; details are only logged.
    Internal,
}

impl ErrorKind {
    /// The HTTP status sent for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::CsrfRequired => StatusCode::UNAUTHORIZED,
            ErrorKind::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code in the JSON error body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::HeaderTooLarge => "request_header_fields_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::CsrfRequired => "csrf_required",
            ErrorKind::AuthUnavailable => "auth_unavailable",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::GatewayTimeout => "gateway_timeout",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// Whether the connection must be closed after answering, because the request framing
    /// can no longer be trusted or the unread body is too large to drain.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::BadRequest | ErrorKind::PayloadTooLarge | ErrorKind::HeaderTooLarge
        )
    }
}

/// An answer produced by the proxy itself.
///
/// Built by filters (returned in [`crate::Action::Respond`]) or by the engine; sent only by
/// the proxy's response writer.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    /// Status line.
    pub status: StatusCode,
    /// The error code for logs and the default JSON body; `None` for non-error answers.
    pub error: Option<ErrorKind>,
    /// Extra headers (e.g. `Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body and its content type; `None` means the standard JSON error body.
    pub body: Option<(HeaderValue, Bytes)>,
    /// Close the downstream connection after this answer.
    pub close: bool,
}

impl LocalResponse {
    /// The standard error answer for `kind`: its status and the JSON error body.
    pub fn error(kind: ErrorKind) -> Self {
        Self {
            status: kind.status(),
            error: Some(kind),
            headers: Vec::new(),
            body: None,
            close: kind.closes_connection(),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON error body for this answer and request id. Request ids are validated
    /// before they get here (hex or a restricted charset), so they need no escaping; the
    /// code is one of our constants.
    pub fn json_error_body(code: &str, request_id: &str) -> Bytes {
        let mut body = String::with_capacity(32 + code.len() + request_id.len());
        body.push_str("{\"error\":\"");
        body.push_str(code);
        body.push_str("\",\"request_id\":\"");
        body.push_str(request_id);
        body.push_str("\"}");
        Bytes::from(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_valid_json() {
        let body = LocalResponse::json_error_body("no_route", "abc123");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc123");
    }

    #[test]
    fn framing_errors_close_the_connection() {
        assert!(LocalResponse::error(ErrorKind::BadRequest).close);
        assert!(LocalResponse::error(ErrorKind::PayloadTooLarge).close);
        assert!(!LocalResponse::error(ErrorKind::NoRoute).close);
        assert_eq!(ErrorKind::HeaderTooLarge.status().as_u16(), 431);
    }

    #[test]
    fn policy_refusals_have_their_status_and_code_and_keep_the_connection() {
        for (kind, status, code) in [
            (ErrorKind::Unauthorized, 401, "unauthorized"),
            (ErrorKind::Forbidden, 403, "forbidden"),
            (ErrorKind::RateLimited, 429, "rate_limited"),
        ] {
            let answer = LocalResponse::error(kind);
            assert_eq!(answer.status.as_u16(), status);
            assert_eq!(kind.code(), code);
            assert!(
                !answer.close,
                "{code}: the request framing is intact, so keep-alive"
            );
        }
    }
}

/// A problem found while compiling a filter's YAML spec into its runtime form.
///
/// `path` is relative to the filter's own key (e.g. `request.set."bad name"`); the config
/// loader prefixes the route and filter position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Path below the filter key; empty for the filter as a whole.
    pub path: String,
    /// What is wrong. Never contains a secret value.
    pub message: String,
}

impl SpecError {
    /// An error at `path` below the filter key.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}
