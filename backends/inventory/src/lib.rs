//! `inventory`: stock per SKU and the reservations the orders saga makes
//! against it.
//!
//! Each unit of stock is `available`, `reserved` or `sold`. A reservation takes
//! all of its items or none (one SQLite write transaction), and every state
//! change is idempotent so a retried or duplicated call never moves stock twice:
//!
//! ```text
//!   (none) --reserve--> reserved --commit--> committed   (reserved -> sold)
//!                          |
//!                          +------release--> released    (reserved -> available)
//!   (none) --release--> released (tombstone: a late reserve is refused)
//! ```
//!
//! Endpoints (all but `/healthz` need `Authorization: Bearer`):
//! - `GET /stock` → 200 `[{sku, available, reserved, sold}]`;
//! - `GET /stock/{sku}` → 200 `{sku, available, reserved, sold}`, 404 `not_found`;
//! - `PUT /stock/{sku}` (admin) `{available}` → 200 stock level (created if new);
//! - `POST /reservations` `{reservation_id, items: [{sku, quantity}]}` → 201
//!   `Reservation`; the same id again → 201 with its current state (`reserved`
//!   or `committed`), nothing reserved twice; 409
//!   `insufficient_stock` (naming the SKU, nothing reserved); 409
//!   `reservation_released` if that id was released; 422 `reservation_id_reused`
//!   if the id exists with other items or for another caller;
//! - `GET /reservations/{id}` → 200 `Reservation`, 404 `not_found`;
//! - `POST /reservations/{id}/release` → 200 `Reservation` (`released`), also for
//!   an unknown id or a second release; 409 `reservation_committed`;
//! - `POST /reservations/{id}/commit` → 200 `Reservation` (`committed`), also for
//!   a second commit; 409 `reservation_released`; 404 `not_found`.
//!
//! A reservation belongs to the caller (`sub`) who made it; another caller sees
//! 404 unless they have the `admin` role.

#![forbid(unsafe_code)]

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shop_common::db::{begin_write, Schema};
use shop_common::{is_identifier, now_rfc3339, AppError, Caller, JsonBody};
use sqlx::{Sqlite, Transaction};

/// Service name: the database file is `<data-dir>/inventory.db`.
pub const SERVICE: &str = "inventory";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4102";
/// The schema; version 1 also seeds 25 units of each demo product.
pub const SCHEMA: Schema = Schema(&[(1, "stock", include_str!("../migrations/0001_stock.sql"))]);

/// Most lines in one reservation.
const MAX_ITEMS: usize = 100;
/// Most units of one SKU in one reservation.
const MAX_QUANTITY: i64 = 1000;
/// Highest stock level an admin may set.
const MAX_AVAILABLE: i64 = 1_000_000;

/// What the handlers share: the database and token checks.
pub use shop_common::ServiceState as AppState;

/// Stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// The product.
    pub sku: String,
    /// Units that can be reserved.
    pub available: i64,
    /// Units held by open reservations.
    pub reserved: i64,
    /// Units of committed reservations.
    pub sold: i64,
}

/// One line of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The product.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: i64,
}

/// A reservation as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The caller-chosen id (the orders service uses the order id).
    pub reservation_id: String,
    /// `reserved`, `released` or `committed`.
    pub status: String,
    /// The lines, in request order; empty for a release of an unknown id.
    pub items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    reservation_id: String,
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    available: i64,
}

/// The service's whole HTTP surface, `/healthz` included.
pub fn app(state: AppState) -> Router {
    let db = state.db.clone();
    let api = Router::new()
        .route("/stock", get(list_stock))
        .route("/stock/{sku}", get(get_stock).put(set_stock))
        .route("/reservations", post(reserve))
        .route("/reservations/{id}", get(get_reservation))
        .route("/reservations/{id}/release", post(release))
        .route("/reservations/{id}/commit", post(commit))
        .with_state(state);
    shop_common::service_router(api, db)
}

type StockRow = (String, i64, i64, i64);

fn stock((sku, available, reserved, sold): StockRow) -> Stock {
    Stock {
        sku,
        available,
        reserved,
        sold,
    }
}

async fn list_stock(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<Stock>>, AppError> {
    let rows: Vec<StockRow> =
        sqlx::query_as("SELECT sku, available, reserved, sold FROM stock ORDER BY sku")
            .fetch_all(&state.db)
            .await?;
    Ok(Json(rows.into_iter().map(stock).collect()))
}

async fn get_stock(
    State(state): State<AppState>,
    _caller: Caller,
    Path(sku): Path<String>,
) -> Result<Json<Stock>, AppError> {
    let row: Option<StockRow> =
        sqlx::query_as("SELECT sku, available, reserved, sold FROM stock WHERE sku = ?")
            .bind(&sku)
            .fetch_optional(&state.db)
            .await?;
    row.map(|r| Json(stock(r)))
        .ok_or_else(|| AppError::NotFound(format!("no stock record for sku {sku}")))
}

async fn set_stock(
    State(state): State<AppState>,
    caller: Caller,
    Path(sku): Path<String>,
    JsonBody(body): JsonBody<SetStock>,
) -> Result<Json<Stock>, AppError> {
    caller.require_role("admin")?;
    if !is_identifier(&sku) {
        return Err(AppError::invalid("sku is not a valid identifier"));
    }
    if !(0..=MAX_AVAILABLE).contains(&body.available) {
        return Err(AppError::invalid(format!(
            "available must be between 0 and {MAX_AVAILABLE}"
        )));
    }
    let row: StockRow = sqlx::query_as(
        "INSERT INTO stock (sku, available) VALUES (?1, ?2)
         ON CONFLICT (sku) DO UPDATE SET available = ?2
         RETURNING sku, available, reserved, sold",
    )
    .bind(&sku)
    .bind(body.available)
    .fetch_one(&state.db)
    .await?;
    tracing::info!(%sku, available = body.available, by = %caller.sub, "stock level set");
    Ok(Json(stock(row)))
}

fn validate(request: &ReserveRequest) -> Result<(), AppError> {
    if !is_identifier(&request.reservation_id) {
        return Err(AppError::invalid(
            "reservation_id must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if request.items.is_empty() || request.items.len() > MAX_ITEMS {
        return Err(AppError::invalid(format!(
            "items must have 1 to {MAX_ITEMS} lines"
        )));
    }
    let mut seen = HashSet::new();
    for item in &request.items {
        if !is_identifier(&item.sku) {
            return Err(AppError::invalid("sku is not a valid identifier"));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(AppError::invalid(format!(
                "quantity of {} must be between 1 and {MAX_QUANTITY}",
                item.sku
            )));
        }
        if !seen.insert(item.sku.as_str()) {
            return Err(AppError::invalid(format!(
                "sku {} appears more than once",
                item.sku
            )));
        }
    }
    Ok(())
}

struct Stored {
    sub: String,
    reservation: Reservation,
}

async fn load(tx: &mut Transaction<'_, Sqlite>, id: &str) -> Result<Option<Stored>, AppError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT sub, status FROM reservations WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((sub, status)) = row else {
        return Ok(None);
    };
    let items: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, quantity FROM reservation_items WHERE reservation_id = ? ORDER BY rowid",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(Some(Stored {
        sub,
        reservation: Reservation {
            reservation_id: id.to_string(),
            status,
            items: items
                .into_iter()
                .map(|(sku, quantity)| Item { sku, quantity })
                .collect(),
        },
    }))
}

/// The stored reservation `id` if `caller` may see it; 404 otherwise.
async fn load_owned(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    caller: &Caller,
) -> Result<Option<Reservation>, AppError> {
    match load(tx, id).await? {
        Some(stored) if stored.sub == caller.sub || caller.has_role("admin") => {
            Ok(Some(stored.reservation))
        }
        Some(_) => Err(not_found(id)),
        None => Ok(None),
    }
}

fn not_found(id: &str) -> AppError {
    AppError::NotFound(format!("no reservation {id}"))
}

fn same_items(a: &[Item], b: &[Item]) -> bool {
    let mut a: Vec<_> = a.iter().map(|i| (&i.sku, i.quantity)).collect();
    let mut b: Vec<_> = b.iter().map(|i| (&i.sku, i.quantity)).collect();
    a.sort();
    b.sort();
    a == b
}

async fn set_status(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    status: &str,
) -> Result<(), AppError> {
    sqlx::query("UPDATE reservations SET status = ?, updated_at = ? WHERE id = ?")
        .bind(status)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn reserve(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<ReserveRequest>,
) -> Result<(StatusCode, Json<Reservation>), AppError> {
    validate(&request)?;
    let id = &request.reservation_id;
    let mut tx = begin_write(&state.db).await?;

    if let Some(stored) = load(&mut tx, id).await? {
        let existing = stored.reservation;
        let tombstone = existing.status == "released" && existing.items.is_empty();
        if !tombstone && (stored.sub != caller.sub || !same_items(&existing.items, &request.items))
        {
            return Err(AppError::Unprocessable {
                code: "reservation_id_reused",
                message: format!("reservation {id} already exists with other items"),
            });
        }
        if existing.status == "released" {
            return Err(AppError::Conflict {
                code: "reservation_released",
                message: format!("reservation {id} was released"),
            });
        }
        // A retry: the first call's effect stands, nothing is reserved twice.
        return Ok((StatusCode::CREATED, Json(existing)));
    }

    for item in &request.items {
        let taken = sqlx::query(
            "UPDATE stock SET available = available - ?1, reserved = reserved + ?1
             WHERE sku = ?2 AND available >= ?1",
        )
        .bind(item.quantity)
        .bind(&item.sku)
        .execute(&mut *tx)
        .await?;
        if taken.rows_affected() == 0 {
            let available: Option<(i64,)> =
                sqlx::query_as("SELECT available FROM stock WHERE sku = ?")
                    .bind(&item.sku)
                    .fetch_optional(&mut *tx)
                    .await?;
            // Dropping `tx` rolls back the lines already taken.
            return Err(AppError::Conflict {
                code: "insufficient_stock",
                message: format!(
                    "not enough stock for {}: {} requested, {} available",
                    item.sku,
                    item.quantity,
                    available.map_or(0, |a| a.0)
                ),
            });
        }
    }
    let now = now_rfc3339();
    sqlx::query(
        "INSERT INTO reservations (id, sub, status, created_at, updated_at) VALUES (?, ?, 'reserved', ?, ?)",
    )
    .bind(id)
    .bind(&caller.sub)
    .bind(&now)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    for item in &request.items {
        sqlx::query(
            "INSERT INTO reservation_items (reservation_id, sku, quantity) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(&item.sku)
        .bind(item.quantity)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(reservation = %id, lines = request.items.len(), "reserved");
    Ok((
        StatusCode::CREATED,
        Json(Reservation {
            reservation_id: id.clone(),
            status: "reserved".into(),
            items: request.items,
        }),
    ))
}

async fn get_reservation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, AppError> {
    let mut tx = state.db.begin().await?;
    load_owned(&mut tx, &id, &caller)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, AppError> {
    if !is_identifier(&id) {
        return Err(AppError::invalid(
            "reservation id is not a valid identifier",
        ));
    }
    let mut tx = begin_write(&state.db).await?;
    let Some(mut reservation) = load_owned(&mut tx, &id, &caller).await? else {
        // The reserve call may still be in flight (its caller timed out):
        // remember the release so it cannot take stock when it lands.
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO reservations (id, sub, status, created_at, updated_at) VALUES (?, ?, 'released', ?, ?)",
        )
        .bind(&id)
        .bind(&caller.sub)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Json(Reservation {
            reservation_id: id,
            status: "released".into(),
            items: Vec::new(),
        }));
    };
    match reservation.status.as_str() {
        "released" => return Ok(Json(reservation)),
        "committed" => {
            return Err(AppError::Conflict {
                code: "reservation_committed",
                message: format!("reservation {id} is committed; its stock is sold"),
            })
        }
        _ => {}
    }
    for item in &reservation.items {
        sqlx::query(
            "UPDATE stock SET available = available + ?1, reserved = reserved - ?1 WHERE sku = ?2",
        )
        .bind(item.quantity)
        .bind(&item.sku)
        .execute(&mut *tx)
        .await?;
    }
    set_status(&mut tx, &id, "released").await?;
    tx.commit().await?;
    tracing::info!(reservation = %id, "released");
    reservation.status = "released".into();
    Ok(Json(reservation))
}

async fn commit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, AppError> {
    let mut tx = begin_write(&state.db).await?;
    let mut reservation = load_owned(&mut tx, &id, &caller)
        .await?
        .ok_or_else(|| not_found(&id))?;
    match reservation.status.as_str() {
        "committed" => return Ok(Json(reservation)),
        "released" => {
            return Err(AppError::Conflict {
                code: "reservation_released",
                message: format!("reservation {id} was released and cannot be committed"),
            })
        }
        _ => {}
    }
    for item in &reservation.items {
        sqlx::query("UPDATE stock SET reserved = reserved - ?1, sold = sold + ?1 WHERE sku = ?2")
            .bind(item.quantity)
            .bind(&item.sku)
            .execute(&mut *tx)
            .await?;
    }
    set_status(&mut tx, &id, "committed").await?;
    tx.commit().await?;
    tracing::info!(reservation = %id, "committed");
    reservation.status = "committed".into();
    Ok(Json(reservation))
}
