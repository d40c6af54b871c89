//! `payments`: a demo payment authoriser that honours `Idempotency-Key`, so a
//! retried or duplicated request never charges twice.
//!
//! The first request with a key is processed and its answer (status and body)
//! stored with the key in the same SQLite write transaction as the charge. A
//! later request with that key and the same body gets the stored answer again
//! (with `Idempotent-Replayed: true`); with a different body it is refused.
//! Write transactions take SQLite's write lock up front, so concurrent
//! duplicates queue behind the first and see its stored answer; the primary
//! key on `(sub, key)` backs this up. Keys are scoped to the caller's `sub`.
//!
//! Demo rule: an amount above 1000.00 (`amount_cents > 100000`) is declined.
//!
//! Endpoints (all but `/healthz` need `Authorization: Bearer`):
//! - `POST /payments` + `Idempotency-Key` `{order_id, amount_cents, currency}` →
//!   201 `Payment` (`authorized`); 402 `payment_declined`; 400
//!   `idempotency_key_required` without the header; 422 `idempotency_key_reused`
//!   for a known key with another body;
//! - `GET /payments/{id}` → 200 `Payment`, 404 `not_found`;
//! - `POST /payments/{id}/refund` → 200 `Payment` (`refunded`), idempotent;
//! - `GET /payments?order_id=ID` → 200 `{order_id, charges, payments: [Payment]}`.
//!
//! Callers see their own payments; the `admin` role sees all.

#![forbid(unsafe_code)]

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_common::db::{begin_write, Schema};
use shop_common::{
    is_currency_code, is_identifier, new_id, now_rfc3339, AppError, Caller, JsonBody,
};

/// Service name: the database file is `<data-dir>/payments.db`.
pub const SERVICE: &str = "payments";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4103";
/// The schema.
pub const SCHEMA: Schema = Schema(&[(
    1,
    "payments",
    include_str!("../migrations/0001_payments.sql"),
)]);

/// The demo's decline rule: amounts above this are declined.
pub const DECLINE_ABOVE_CENTS: i64 = 100_000;
/// Header naming the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header set on an answer replayed from the idempotency record.
pub const REPLAYED: &str = "idempotent-replayed";

/// Highest accepted amount: a sanity bound, not the decline rule.
const MAX_AMOUNT_CENTS: i64 = 100_000_000;
/// Longest accepted idempotency key.
const MAX_KEY_LEN: usize = 255;

/// What the handlers share: the database and token checks.
pub use shop_common::ServiceState as AppState;

/// A payment as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Server-assigned id.
    pub payment_id: String,
    /// The order it pays for.
    pub order_id: String,
    /// `authorized` or `refunded`.
    pub status: String,
    /// Amount in the currency's minor unit.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// RFC 3339 time of authorisation.
    pub created_at: String,
}

/// Body of `POST /payments`. Field order is the canonical form that
/// idempotency compares.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentRequest {
    order_id: String,
    amount_cents: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

/// The service's whole HTTP surface, `/healthz` included.
pub fn app(state: AppState) -> Router {
    let db = state.db.clone();
    let api = Router::new()
        .route("/payments", post(create).get(list))
        .route("/payments/{id}", get(fetch))
        .route("/payments/{id}/refund", post(refund))
        .with_state(state);
    shop_common::service_router(api, db)
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, AppError> {
    let value = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or_else(|| AppError::BadRequest {
            code: "idempotency_key_required",
            message: "POST /payments needs an Idempotency-Key header".into(),
        })?;
    let key = value.to_str().unwrap_or_default().trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(key.to_string())
}

fn validate(request: &PaymentRequest) -> Result<(), AppError> {
    if !is_identifier(&request.order_id) {
        return Err(AppError::invalid(
            "order_id must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if !(1..=MAX_AMOUNT_CENTS).contains(&request.amount_cents) {
        return Err(AppError::invalid(format!(
            "amount_cents must be between 1 and {MAX_AMOUNT_CENTS}"
        )));
    }
    if !is_currency_code(&request.currency) {
        return Err(AppError::invalid(
            "currency must be a three-letter ISO 4217 code such as EUR",
        ));
    }
    Ok(())
}

/// A stored answer as an HTTP response.
fn stored_response(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PaymentRequest>,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    validate(&request)?;
    let canonical =
        serde_json::to_string(&request).map_err(|e| AppError::Internal(e.to_string()))?;

    let mut tx = begin_write(&state.db).await?;
    let stored: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request, status_code, response FROM idempotency_keys WHERE sub = ? AND key = ?",
    )
    .bind(&caller.sub)
    .bind(&key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((first_request, status, body)) = stored {
        if first_request != canonical {
            return Err(AppError::Unprocessable {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was used with a different request".into(),
            });
        }
        let status = u16::try_from(status).map_err(|e| AppError::Internal(e.to_string()))?;
        return Ok(stored_response(status, body, true));
    }

    let now = now_rfc3339();
    let (status, body) = if request.amount_cents > DECLINE_ABOVE_CENTS {
        tracing::info!(order = %request.order_id, amount = request.amount_cents, "payment declined");
        let body = json!({
            "error": "payment_declined",
            "message": format!(
                "amount {} exceeds the demo limit of {DECLINE_ABOVE_CENTS}",
                request.amount_cents
            ),
        });
        (StatusCode::PAYMENT_REQUIRED, body)
    } else {
        let payment = Payment {
            payment_id: new_id(),
            order_id: request.order_id,
            status: "authorized".into(),
            amount_cents: request.amount_cents,
            currency: request.currency,
            created_at: now.clone(),
        };
        sqlx::query(
            "INSERT INTO payments (id, sub, order_id, amount_cents, currency, status, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, 'authorized', ?, ?)",
        )
        .bind(&payment.payment_id)
        .bind(&caller.sub)
        .bind(&payment.order_id)
        .bind(payment.amount_cents)
        .bind(&payment.currency)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tracing::info!(payment = %payment.payment_id, order = %payment.order_id, "payment authorized");
        let body = serde_json::to_value(&payment).map_err(|e| AppError::Internal(e.to_string()))?;
        (StatusCode::CREATED, body)
    };
    let body = body.to_string();
    sqlx::query(
        "INSERT INTO idempotency_keys (sub, key, request, status_code, response, created_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&caller.sub)
    .bind(&key)
    .bind(&canonical)
    .bind(i64::from(status.as_u16()))
    .bind(&body)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(stored_response(status.as_u16(), body, false))
}

type PaymentRow = (String, String, String, i64, String, String);

fn payment(
    (payment_id, order_id, status, amount_cents, currency, created_at): PaymentRow,
) -> Payment {
    Payment {
        payment_id,
        order_id,
        status,
        amount_cents,
        currency,
        created_at,
    }
}

const SELECT_PAYMENT: &str =
    "SELECT id, order_id, status, amount_cents, currency, created_at FROM payments";

async fn load(
    db: impl sqlx::SqliteExecutor<'_>,
    id: &str,
    caller: &Caller,
) -> Result<Payment, AppError> {
    let row: Option<PaymentRow> =
        sqlx::query_as(&format!("{SELECT_PAYMENT} WHERE id = ? AND (sub = ? OR ?)"))
            .bind(id)
            .bind(&caller.sub)
            .bind(caller.has_role("admin"))
            .fetch_optional(db)
            .await?;
    row.map(payment)
        .ok_or_else(|| AppError::NotFound(format!("no payment {id}")))
}

async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Payment>, AppError> {
    Ok(Json(load(&state.db, &id, &caller).await?))
}

async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Payment>, AppError> {
    let mut tx = begin_write(&state.db).await?;
    let mut payment = load(&mut *tx, &id, &caller).await?;
    if payment.status == "authorized" {
        sqlx::query("UPDATE payments SET status = 'refunded', updated_at = ? WHERE id = ?")
            .bind(now_rfc3339())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(payment = %id, "payment refunded");
        payment.status = "refunded".into();
    }
    Ok(Json(payment))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, AppError> {
    let rows: Vec<PaymentRow> = sqlx::query_as(&format!(
        "{SELECT_PAYMENT} WHERE (sub = ? OR ?) AND (?3 IS NULL OR order_id = ?3) ORDER BY created_at, id"
    ))
    .bind(&caller.sub)
    .bind(caller.has_role("admin"))
    .bind(&query.order_id)
    .fetch_all(&state.db)
    .await?;
    let payments: Vec<Payment> = rows.into_iter().map(payment).collect();
    Ok(Json(json!({
        "order_id": query.order_id,
        "charges": payments.len(),
        "payments": payments,
    })))
}
