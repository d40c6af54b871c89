//! Orders in SQLite: written `pending` before the saga starts, finished once,
//! read back per owner, newest first.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shop_common::now_rfc3339;
use sqlx::SqlitePool;

/// Most orders `GET /orders` returns.
const LIST_LIMIT: i64 = 100;

/// An order as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Server-assigned id; also the reservation id and the payment's idempotency key.
    pub id: String,
    /// The customer, from the token that placed it.
    pub sub: String,
    /// `pending`, `confirmed` or `failed`.
    pub status: String,
    /// Why it failed: `insufficient_stock`, `payment_declined`,
    /// `payment_unavailable`, `inventory_unavailable` or `catalog_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The lines, in request order.
    pub items: Vec<OrderLine>,
    /// Sum of quantity × price.
    pub total_cents: i64,
    /// ISO 4217 code of every line (empty if the catalog was never reached).
    pub currency: String,
    /// Set once payment is authorised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// One line of an order, priced from the catalog when it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// Its name at order time (empty if the catalog was never reached).
    pub name: String,
    /// Units.
    pub quantity: i64,
    /// Unit price at order time.
    pub price_cents: i64,
}

/// Writes a new order with its lines, in one transaction.
pub async fn insert(db: &SqlitePool, order: &Order) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, sub, status, reason, total_cents, currency, payment_id, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&order.id)
    .bind(&order.sub)
    .bind(&order.status)
    .bind(&order.reason)
    .bind(order.total_cents)
    .bind(&order.currency)
    .bind(&order.payment_id)
    .bind(&order.created_at)
    .bind(&order.created_at)
    .execute(&mut *tx)
    .await?;
    for (line, item) in order.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line, sku, name, quantity, price_cents)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&order.id)
        .bind(line as i64)
        .bind(&item.sku)
        .bind(&item.name)
        .bind(item.quantity)
        .bind(item.price_cents)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Records the saga's outcome on a stored order.
pub async fn finish(db: &SqlitePool, order: &Order) -> Result<(), sqlx::Error> {
    write_outcome(db, order, false).await.map(drop)
}

/// Records the outcome of an order found `pending` after its saga was cut off; false when
/// the order is no longer `pending` (another reader resolved it first), and nothing changes.
pub async fn resolve_pending(db: &SqlitePool, order: &Order) -> Result<bool, sqlx::Error> {
    Ok(write_outcome(db, order, true).await? == 1)
}

/// Writes `order`'s status, reason and payment onto its row, with `only_pending` only while
/// the row is still `pending`; the number of rows changed.
async fn write_outcome(
    db: &SqlitePool,
    order: &Order,
    only_pending: bool,
) -> Result<u64, sqlx::Error> {
    let sql = if only_pending {
        "UPDATE orders SET status = ?, reason = ?, payment_id = ?, updated_at = ? \
         WHERE id = ? AND status = 'pending'"
    } else {
        "UPDATE orders SET status = ?, reason = ?, payment_id = ?, updated_at = ? WHERE id = ?"
    };
    let done = sqlx::query(sql)
        .bind(&order.status)
        .bind(&order.reason)
        .bind(&order.payment_id)
        .bind(now_rfc3339())
        .bind(&order.id)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

type OrderRow = (
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
    String,
);
type LineRow = (String, String, String, i64, i64);

const SELECT_ORDER: &str =
    "SELECT id, sub, status, reason, total_cents, currency, payment_id, created_at FROM orders";

/// The order `id` if it belongs to `sub`.
pub async fn get(db: &SqlitePool, sub: &str, id: &str) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(&format!("{SELECT_ORDER} WHERE id = ? AND sub = ?"))
        .bind(id)
        .bind(sub)
        .fetch_optional(db)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let lines: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, sku, name, quantity, price_cents FROM order_items WHERE order_id = ? ORDER BY line",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some(assemble(row, lines)))
}

/// The newest orders of `sub` (at most 100), newest first.
pub async fn list(db: &SqlitePool, sub: &str) -> Result<Vec<Order>, sqlx::Error> {
    let newest =
        "SELECT id FROM orders WHERE sub = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2";
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "{SELECT_ORDER} WHERE id IN ({newest}) ORDER BY created_at DESC, rowid DESC"
    ))
    .bind(sub)
    .bind(LIST_LIMIT)
    .fetch_all(db)
    .await?;
    let lines: Vec<LineRow> = sqlx::query_as(&format!(
        "SELECT order_id, sku, name, quantity, price_cents FROM order_items
         WHERE order_id IN ({newest}) ORDER BY order_id, line"
    ))
    .bind(sub)
    .bind(LIST_LIMIT)
    .fetch_all(db)
    .await?;
    let mut by_order: HashMap<String, Vec<LineRow>> = HashMap::new();
    for line in lines {
        by_order.entry(line.0.clone()).or_default().push(line);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let lines = by_order.remove(&row.0).unwrap_or_default();
            assemble(row, lines)
        })
        .collect())
}

fn assemble(
    (id, sub, status, reason, total_cents, currency, payment_id, created_at): OrderRow,
    lines: Vec<LineRow>,
) -> Order {
    Order {
        id,
        sub,
        status,
        reason,
        items: lines
            .into_iter()
            .map(|(_, sku, name, quantity, price_cents)| OrderLine {
                sku,
                name,
                quantity,
                price_cents,
            })
            .collect(),
        total_cents,
        currency,
        payment_id,
        created_at,
    }
}
