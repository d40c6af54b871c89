//! `catalog`: the demo shop's products. Anyone with a valid token reads them;
//! only callers with the `admin` role add or change them.
//!
//! Endpoints (all but `/healthz` need `Authorization: Bearer`):
//! - `GET /products` → 200 `[Product]`, ordered by SKU;
//! - `GET /products/{sku}` → 200 `Product`, 404 `not_found`;
//! - `POST /products` (admin) `Product` → 201 `Product`; 409 `already_exists`;
//! - `PUT /products/{sku}` (admin) `{name, description?, price_cents, currency}`
//!   → 200 `Product`; 404 `not_found`.
//!
//! Invalid input answers 400 `invalid_request`, a non-admin writer 403 `forbidden`.

#![forbid(unsafe_code)]

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shop_common::db::Schema;
use shop_common::{is_currency_code, is_identifier, AppError, Caller, JsonBody};

/// Service name: the database file is `<data-dir>/catalog.db`.
pub const SERVICE: &str = "catalog";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4101";
/// The schema; version 1 also seeds the demo products.
pub const SCHEMA: Schema = Schema(&[(
    1,
    "products",
    include_str!("../migrations/0001_products.sql"),
)]);

/// Highest accepted price: a sanity bound, not a business rule.
const MAX_PRICE_CENTS: i64 = 100_000_000;

/// What the handlers share: the database and token checks.
pub use shop_common::ServiceState as AppState;

/// A product as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Stock-keeping unit, the product's id.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Longer text; may be empty.
    pub description: String,
    /// Unit price in the currency's minor unit.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Body of `POST /products` (sku required) and `PUT /products/{sku}` (sku
/// optional, must match the path).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductInput {
    sku: Option<String>,
    name: String,
    #[serde(default)]
    description: String,
    price_cents: i64,
    currency: String,
}

impl ProductInput {
    fn into_product(self, sku: String) -> Result<Product, AppError> {
        if !is_identifier(&sku) {
            return Err(AppError::invalid(
                "sku must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
            ));
        }
        let name = self.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(AppError::invalid("name must be 1 to 200 characters"));
        }
        if self.description.chars().count() > 2000 {
            return Err(AppError::invalid(
                "description must be at most 2000 characters",
            ));
        }
        if !(0..=MAX_PRICE_CENTS).contains(&self.price_cents) {
            return Err(AppError::invalid(format!(
                "price_cents must be between 0 and {MAX_PRICE_CENTS}"
            )));
        }
        if !is_currency_code(&self.currency) {
            return Err(AppError::invalid(
                "currency must be a three-letter ISO 4217 code such as EUR",
            ));
        }
        Ok(Product {
            sku,
            name,
            description: self.description,
            price_cents: self.price_cents,
            currency: self.currency,
        })
    }
}

/// The service's whole HTTP surface, `/healthz` included.
pub fn app(state: AppState) -> Router {
    let db = state.db.clone();
    let api = Router::new()
        .route("/products", get(list).post(create))
        .route("/products/{sku}", get(fetch).put(update))
        .with_state(state);
    shop_common::service_router(api, db)
}

type ProductRow = (String, String, String, i64, String);

fn product((sku, name, description, price_cents, currency): ProductRow) -> Product {
    Product {
        sku,
        name,
        description,
        price_cents,
        currency,
    }
}

async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<Product>>, AppError> {
    let rows: Vec<ProductRow> = sqlx::query_as(
        "SELECT sku, name, description, price_cents, currency FROM products ORDER BY sku",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows.into_iter().map(product).collect()))
}

async fn fetch(
    State(state): State<AppState>,
    _caller: Caller,
    Path(sku): Path<String>,
) -> Result<Json<Product>, AppError> {
    let row: Option<ProductRow> = sqlx::query_as(
        "SELECT sku, name, description, price_cents, currency FROM products WHERE sku = ?",
    )
    .bind(&sku)
    .fetch_optional(&state.db)
    .await?;
    row.map(|r| Json(product(r)))
        .ok_or_else(|| AppError::NotFound(format!("no product with sku {sku}")))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(input): JsonBody<ProductInput>,
) -> Result<(StatusCode, Json<Product>), AppError> {
    caller.require_role("admin")?;
    let sku = input
        .sku
        .clone()
        .ok_or_else(|| AppError::invalid("sku is required"))?;
    let p = input.into_product(sku)?;
    let inserted = sqlx::query(
        "INSERT INTO products (sku, name, description, price_cents, currency) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&p.sku)
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.price_cents)
    .bind(&p.currency)
    .execute(&state.db)
    .await;
    match inserted {
        Ok(_) => {
            tracing::info!(sku = %p.sku, by = %caller.sub, "product created");
            Ok((StatusCode::CREATED, Json(p)))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(AppError::Conflict {
            code: "already_exists",
            message: format!("a product with sku {} already exists", p.sku),
        }),
        Err(e) => Err(e.into()),
    }
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(sku): Path<String>,
    JsonBody(input): JsonBody<ProductInput>,
) -> Result<Json<Product>, AppError> {
    caller.require_role("admin")?;
    if input.sku.as_ref().is_some_and(|s| *s != sku) {
        return Err(AppError::invalid("sku in the body differs from the path"));
    }
    let p = input.into_product(sku)?;
    let updated = sqlx::query(
        "UPDATE products SET name = ?, description = ?, price_cents = ?, currency = ? WHERE sku = ?",
    )
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.price_cents)
    .bind(&p.currency)
    .bind(&p.sku)
    .execute(&state.db)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("no product with sku {}", p.sku)));
    }
    tracing::info!(sku = %p.sku, by = %caller.sub, "product updated");
    Ok(Json(p))
}
