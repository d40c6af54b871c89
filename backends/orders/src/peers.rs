//! Calls to catalog, inventory and payments, all through the sidecar's outbound
//! listener: every request goes to the `--outbound` base URL with `Host` naming
//! the service, so the sidecar (not this app) picks endpoints, originates mTLS
//! and applies retries and breakers. The caller's `Authorization` is forwarded,
//! so each service checks the user's own token; `x-request-id` and
//! `traceparent` are passed on for tracing.
//!
//! Each call has its own timeout and never hangs. Outcomes are sorted into
//! [`CallError::Rejected`] (the service answered 4xx: a decision) and
//! [`CallError::Unavailable`] (no answer, 5xx, or garbage: the outcome is
//! unknown), because the saga compensates differently for each.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest answer body read from a peer.
const MAX_ANSWER: usize = 256 * 1024;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service answered 4xx with this `error` code: it decided, and did nothing.
    #[error("{service} refused: {status} {code}")]
    Rejected {
        service: &'static str,
        status: u16,
        code: String,
    },
    /// No usable answer (connection failure, timeout, 5xx, unreadable body):
    /// the call may or may not have taken effect.
    #[error("{service} unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
}

impl CallError {
    /// Whether the service refused with this `error` code.
    pub fn is_rejection(&self, expected: &str) -> bool {
        matches!(self, Self::Rejected { code, .. } if code == expected)
    }
}

/// A catalog product, as far as orders needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct Product {
    /// The product's id.
    pub sku: String,
    /// Display name, copied into the order line.
    pub name: String,
    /// Unit price in minor units.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}

#[derive(Deserialize)]
struct PaymentAnswer {
    payment_id: String,
}

/// What orders reads of `GET /payments?order_id=`.
#[derive(Deserialize)]
struct PaymentList {
    payments: Vec<PaymentEntry>,
}

/// One payment of [`PaymentList`].
#[derive(Deserialize)]
struct PaymentEntry {
    payment_id: String,
    status: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// What each outbound call carries from the incoming request.
#[derive(Debug, Clone)]
pub struct Forward {
    authorization: HeaderValue,
    passthrough: Vec<(HeaderName, HeaderValue)>,
}

impl Forward {
    /// Forwards `authorization` (`Bearer <token>`) plus the tracing headers of `incoming`.
    pub fn new(authorization: &str, incoming: &HeaderMap) -> Result<Self, String> {
        let mut authorization =
            HeaderValue::from_str(authorization).map_err(|e| format!("authorization: {e}"))?;
        authorization.set_sensitive(true);
        let passthrough = ["x-request-id", "traceparent", "tracestate"]
            .into_iter()
            .filter_map(|name| {
                incoming
                    .get(name)
                    .map(|v| (HeaderName::from_static(name), v.clone()))
            })
            .collect();
        Ok(Self {
            authorization,
            passthrough,
        })
    }
}

/// The outbound client. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    http: reqwest::Client,
    base: String,
}

impl Peers {
    /// A client for the sidecar at `outbound` (e.g. `http://127.0.0.1:15001`);
    /// every call, body included, is bounded by `timeout`.
    pub fn new(outbound: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The sidecar is the proxy; a host proxy setting must not add another.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: outbound.trim_end_matches('/').to_string(),
        })
    }

    /// `GET /products/{sku}` at catalog; `Ok(None)` when catalog says 404.
    pub async fn product(&self, fwd: &Forward, sku: &str) -> Result<Option<Product>, CallError> {
        match self
            .call(
                "catalog",
                Method::GET,
                &format!("/products/{sku}"),
                fwd,
                None,
                None,
            )
            .await
        {
            Ok(product) => Ok(Some(product)),
            Err(CallError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reserves `items` (`[{sku, quantity}]`) under `reservation_id`.
    pub async fn reserve(
        &self,
        fwd: &Forward,
        reservation_id: &str,
        items: Value,
    ) -> Result<(), CallError> {
        let body = json!({ "reservation_id": reservation_id, "items": items });
        self.call::<Value>(
            "inventory",
            Method::POST,
            "/reservations",
            fwd,
            None,
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Returns a reservation's stock (idempotent; also for an unknown id).
    pub async fn release(&self, fwd: &Forward, reservation_id: &str) -> Result<(), CallError> {
        let path = format!("/reservations/{reservation_id}/release");
        self.call::<Value>("inventory", Method::POST, &path, fwd, None, None)
            .await
            .map(drop)
    }

    /// Marks a reservation's stock sold (idempotent).
    pub async fn commit(&self, fwd: &Forward, reservation_id: &str) -> Result<(), CallError> {
        let path = format!("/reservations/{reservation_id}/commit");
        self.call::<Value>("inventory", Method::POST, &path, fwd, None, None)
            .await
            .map(drop)
    }

    /// Authorises a payment for `order_id` with `Idempotency-Key: <order_id>`, so
    /// a retry of this call (by us or the sidecar) never charges twice. Returns
    /// the payment id.
    pub async fn authorize(
        &self,
        fwd: &Forward,
        order_id: &str,
        amount_cents: i64,
        currency: &str,
    ) -> Result<String, CallError> {
        let body =
            json!({ "order_id": order_id, "amount_cents": amount_cents, "currency": currency });
        let answer: PaymentAnswer = self
            .call(
                "payments",
                Method::POST,
                "/payments",
                fwd,
                Some(order_id),
                Some(body),
            )
            .await?;
        Ok(answer.payment_id)
    }

    /// Ids of the payments for `order_id` that are still `authorized`.
    pub async fn authorized_payments(
        &self,
        fwd: &Forward,
        order_id: &str,
    ) -> Result<Vec<String>, CallError> {
        let path = format!("/payments?order_id={order_id}");
        let list: PaymentList = self
            .call("payments", Method::GET, &path, fwd, None, None)
            .await?;
        Ok(list
            .payments
            .into_iter()
            .filter(|p| p.status == "authorized")
            .map(|p| p.payment_id)
            .collect())
    }

    /// Refunds a payment (idempotent).
    pub async fn refund(&self, fwd: &Forward, payment_id: &str) -> Result<(), CallError> {
        let path = format!("/payments/{payment_id}/refund");
        self.call::<Value>("payments", Method::POST, &path, fwd, None, None)
            .await
            .map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        service: &'static str,
        method: Method,
        path: &str,
        fwd: &Forward,
        idempotency_key: Option<&str>,
        body: Option<Value>,
    ) -> Result<T, CallError> {
        let unavailable = |detail: String| CallError::Unavailable { service, detail };
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(header::HOST, service)
            .header(header::AUTHORIZATION, fwd.authorization.clone());
        for (name, value) in &fwd.passthrough {
            request = request.header(name, value);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        if bytes.len() > MAX_ANSWER {
            return Err(unavailable("answer too large".into()));
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| unavailable(format!("unreadable answer: {e}")));
        }
        if status.is_client_error() {
            let code = serde_json::from_slice::<ErrorAnswer>(&bytes)
                .map(|a| a.error)
                .unwrap_or_default();
            return Err(CallError::Rejected {
                service,
                status: status.as_u16(),
                code,
            });
        }
        Err(unavailable(format!("answered {status}")))
    }
}

/// reqwest's top-level message hides the cause ("error sending request"): add it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
