//! `orders`: the demo shop's orders, placed by a saga across catalog,
//! inventory and payments (see [`saga`]), whose calls all go through the
//! sidecar's outbound listener (see [`peers`]).
//!
//! Endpoints (all but `/healthz` need `Authorization: Bearer`):
//! - `POST /orders` `{items: [{sku, quantity}]}` (1 to 20 lines, quantity 1 to
//!   10, each SKU once) → 201 `Order`, `status` `confirmed` or `failed` with a
//!   `reason`; 400 `invalid_request`, `unknown_sku` or `mixed_currencies`;
//! - `GET /orders` → 200 `[Order]`, the caller's own (by `sub`), newest first;
//! - `GET /orders/{id}` → 200 `Order`; 404 `not_found`, also for another
//!   caller's order.
//!
//! An order still `pending` long after it was placed had its saga cut off (orders
//! stopped mid-checkout). Reading it resolves it with the reader's credentials, from
//! what inventory and payments hold for it (see [`saga::recover`]).

#![forbid(unsafe_code)]

pub mod peers;
pub mod saga;
pub mod store;

use axum::extract::{FromRef, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use shop_common::db::Schema;
use shop_common::{AppError, Auth, Caller, JsonBody};
use sqlx::SqlitePool;

pub use peers::Peers;
pub use store::{Order, OrderLine};

/// Service name: the database file is `<data-dir>/orders.db`.
pub const SERVICE: &str = "orders";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4104";
/// Default base URL of the sidecar's outbound listener.
pub const DEFAULT_OUTBOUND: &str = "http://127.0.0.1:15001";
/// The schema.
pub const SCHEMA: Schema = Schema(&[(1, "orders", include_str!("../migrations/0001_orders.sql"))]);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The orders database.
    pub db: SqlitePool,
    /// Verifies callers' tokens.
    pub auth: Auth,
    /// Outbound calls to the other services.
    pub peers: Peers,
}

impl FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Auth {
        state.auth.clone()
    }
}

/// The service's whole HTTP surface, `/healthz` included.
pub fn app(state: AppState) -> Router {
    let db = state.db.clone();
    let api = Router::new()
        .route("/orders", get(list).post(create))
        .route("/orders/{id}", get(fetch))
        .with_state(state);
    shop_common::service_router(api, db)
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<saga::OrderRequest>,
) -> Result<Response, AppError> {
    let fwd = peers::Forward::new(&caller.authorization(), &headers).map_err(AppError::Internal)?;
    let order = saga::place(&state.db, &state.peers, &fwd, &caller.sub, request).await?;
    let mut response = (StatusCode::CREATED, Json(&order)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{}", order.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<Vec<Order>>, AppError> {
    let mut orders = store::list(&state.db, &caller.sub).await?;
    resolve_stale(&state, &caller, &headers, &mut orders).await?;
    Ok(Json(orders))
}

async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Order>, AppError> {
    let mut order = store::get(&state.db, &caller.sub, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no order {id}")))?;
    resolve_stale(&state, &caller, &headers, std::slice::from_mut(&mut order)).await?;
    Ok(Json(order))
}

/// Most cut-off orders one read resolves, so a read stays quick.
const RESOLVE_PER_READ: usize = 5;

/// Resolves the stale `pending` orders among `orders` (see [`saga::recover`]).
async fn resolve_stale(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    orders: &mut [Order],
) -> Result<(), AppError> {
    let now = std::time::SystemTime::now();
    if !orders.iter().any(|o| saga::is_stale(o, now)) {
        return Ok(());
    }
    let fwd = peers::Forward::new(&caller.authorization(), headers).map_err(AppError::Internal)?;
    for order in orders
        .iter_mut()
        .filter(|o| saga::is_stale(o, now))
        .take(RESOLVE_PER_READ)
    {
        saga::recover(&state.db, &state.peers, &fwd, order).await?;
    }
    Ok(())
}
