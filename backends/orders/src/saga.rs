//! Placing an order: price the lines at catalog, write the order `pending`,
//! reserve stock, authorise payment, commit the reservation. Any step that
//! fails is compensated, newest first, and the order ends `failed` with a
//! reason: a failed order is a business result, answered like a confirmed one.
//!
//! | step fails with                     | compensation                       | reason                  |
//! |-------------------------------------|------------------------------------|-------------------------|
//! | catalog: no answer                  | —                                  | `catalog_unavailable`   |
//! | inventory: `insufficient_stock`     | — (nothing was reserved)           | `insufficient_stock`    |
//! | inventory: other refusal            | —                                  | `inventory_unavailable` |
//! | inventory: no answer                | release (it may have reserved)     | `inventory_unavailable` |
//! | payments: `payment_declined`        | release                            | `payment_declined`      |
//! | payments: other refusal             | release                            | `payment_unavailable`   |
//! | payments: no answer                 | refund any charge made, release    | `payment_unavailable`   |
//! | inventory commit                    | refund, then release               | `inventory_unavailable` |
//!
//! Every call is idempotent on the order id (reservation id, payment
//! `Idempotency-Key`), so retries by the sidecar never act twice, and a release
//! of a reservation that never arrived is remembered by inventory so a late
//! reserve cannot take stock. When payments gave no answer (a timeout, a reset,
//! a 5xx), the charge may still have been made, its answer lost: orders asks
//! payments for the order's charges and refunds those still authorized.
//! Compensations are best effort: a failure is logged and the order still ends
//! `failed`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::json;
use shop_common::{is_identifier, new_id, now_rfc3339, AppError};
use sqlx::SqlitePool;

use crate::peers::{CallError, Forward, Peers};
use crate::store::{self, Order, OrderLine};

/// Most lines in one order.
pub const MAX_LINES: usize = 20;
/// Most units per line.
pub const MAX_QUANTITY: i64 = 10;

/// Body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    items: Vec<RequestLine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    sku: String,
    quantity: i64,
}

fn validate(request: &OrderRequest) -> Result<(), AppError> {
    if request.items.is_empty() || request.items.len() > MAX_LINES {
        return Err(AppError::invalid(format!(
            "an order has 1 to {MAX_LINES} lines"
        )));
    }
    let mut seen = HashSet::new();
    for line in &request.items {
        if !is_identifier(&line.sku) {
            return Err(AppError::invalid("sku is not a valid identifier"));
        }
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(AppError::invalid(format!(
                "quantity of {} must be between 1 and {MAX_QUANTITY}",
                line.sku
            )));
        }
        if !seen.insert(line.sku.as_str()) {
            return Err(AppError::invalid(format!(
                "sku {} appears on more than one line",
                line.sku
            )));
        }
    }
    Ok(())
}

/// Runs the saga for `sub` and returns the stored order, `confirmed` or
/// `failed`. Errors only for invalid input (400 `invalid_request`,
/// `unknown_sku`, `mixed_currencies`) and for our own database failing.
pub async fn place(
    db: &SqlitePool,
    peers: &Peers,
    fwd: &Forward,
    sub: &str,
    request: OrderRequest,
) -> Result<Order, AppError> {
    validate(&request)?;
    let mut order = Order {
        id: new_id(),
        sub: sub.to_string(),
        status: "pending".into(),
        reason: None,
        items: Vec::with_capacity(request.items.len()),
        total_cents: 0,
        currency: String::new(),
        payment_id: None,
        created_at: now_rfc3339(),
    };

    match price(peers, fwd, &request).await {
        Ok(lines) => {
            order.currency = lines_currency(&lines)?;
            order.total_cents = lines.iter().map(|(l, _)| l.price_cents * l.quantity).sum();
            order.items = lines.into_iter().map(|(line, _)| line).collect();
        }
        Err(PriceError::Refused(e)) => return Err(e),
        Err(PriceError::Unavailable(e)) => {
            tracing::warn!(order = %order.id, error = %e, "catalog unavailable");
            order.items = request
                .items
                .iter()
                .map(|l| OrderLine {
                    sku: l.sku.clone(),
                    name: String::new(),
                    quantity: l.quantity,
                    price_cents: 0,
                })
                .collect();
            order.status = "failed".into();
            order.reason = Some("catalog_unavailable".into());
            store::insert(db, &order).await?;
            return Ok(order);
        }
    }

    // Written before anything else happens, so every reservation and payment
    // made for it has a record here.
    store::insert(db, &order).await?;
    let outcome = run_steps(peers, fwd, &order).await;
    match outcome {
        Ok(payment_id) => {
            order.status = "confirmed".into();
            order.payment_id = Some(payment_id);
        }
        Err(reason) => {
            order.status = "failed".into();
            order.reason = Some(reason.into());
        }
    }
    store::finish(db, &order).await?;
    tracing::info!(order = %order.id, status = %order.status, reason = ?order.reason, "order placed");
    Ok(order)
}

/// A priced line with the currency the catalog gave it.
type PricedLine = (OrderLine, String);

enum PriceError {
    /// Bad input: the order is not created.
    Refused(AppError),
    /// The catalog could not answer.
    Unavailable(CallError),
}

async fn price(
    peers: &Peers,
    fwd: &Forward,
    request: &OrderRequest,
) -> Result<Vec<PricedLine>, PriceError> {
    let mut lines = Vec::with_capacity(request.items.len());
    for line in &request.items {
        let product = match peers.product(fwd, &line.sku).await {
            Ok(Some(product)) => product,
            Ok(None) => {
                return Err(PriceError::Refused(AppError::BadRequest {
                    code: "unknown_sku",
                    message: format!("no product with sku {}", line.sku),
                }))
            }
            Err(e) => return Err(PriceError::Unavailable(e)),
        };
        lines.push((
            OrderLine {
                sku: line.sku.clone(),
                name: product.name,
                quantity: line.quantity,
                price_cents: product.price_cents,
            },
            product.currency,
        ));
    }
    Ok(lines)
}

fn lines_currency(lines: &[PricedLine]) -> Result<String, AppError> {
    let currencies: HashSet<&str> = lines.iter().map(|(_, c)| c.as_str()).collect();
    match currencies.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => Ok((*one).to_string()),
        _ => Err(AppError::BadRequest {
            code: "mixed_currencies",
            message: "all products of one order must have the same currency".into(),
        }),
    }
}

/// Reserve, pay, commit; compensates on failure. `Ok(payment_id)` or `Err(reason)`.
async fn run_steps(peers: &Peers, fwd: &Forward, order: &Order) -> Result<String, &'static str> {
    let items = json!(order
        .items
        .iter()
        .map(|l| json!({ "sku": l.sku, "quantity": l.quantity }))
        .collect::<Vec<_>>());

    if let Err(e) = peers.reserve(fwd, &order.id, items).await {
        tracing::warn!(order = %order.id, error = %e, "reservation failed");
        return Err(match e {
            e if e.is_rejection("insufficient_stock") => "insufficient_stock",
            CallError::Rejected { .. } => "inventory_unavailable",
            CallError::Unavailable { .. } => {
                release(peers, fwd, order).await;
                "inventory_unavailable"
            }
        });
    }

    let payment_id = match peers
        .authorize(fwd, &order.id, order.total_cents, &order.currency)
        .await
    {
        Ok(payment_id) => payment_id,
        Err(e) => {
            tracing::warn!(order = %order.id, error = %e, "payment failed");
            if matches!(e, CallError::Unavailable { .. }) {
                refund_any_charge(peers, fwd, order).await;
            }
            release(peers, fwd, order).await;
            return Err(if e.is_rejection("payment_declined") {
                "payment_declined"
            } else {
                "payment_unavailable"
            });
        }
    };

    if let Err(e) = peers.commit(fwd, &order.id).await {
        tracing::warn!(order = %order.id, error = %e, "commit failed");
        if let Err(e) = peers.refund(fwd, &payment_id).await {
            tracing::error!(order = %order.id, payment = %payment_id, error = %e, "compensation failed: refund");
        }
        release(peers, fwd, order).await;
        return Err("inventory_unavailable");
    }
    Ok(payment_id)
}

/// How old a `pending` order must be before [`recover`] touches it. A saga's steps after
/// the order is written are a handful of calls, each bounded by the peers' timeout (4 s
/// in the demo mesh), so only an order whose saga was cut off (orders stopped or crashed
/// mid-checkout) is still `pending` this long after it was created.
pub const STALE_PENDING: Duration = Duration::from_secs(120);

/// Whether `order` is `pending` and older than [`STALE_PENDING`] at `now`.
pub fn is_stale(order: &Order, now: SystemTime) -> bool {
    order.status == "pending"
        && humantime::parse_rfc3339(&order.created_at)
            .ok()
            .and_then(|created| now.duration_since(created).ok())
            .is_some_and(|age| age >= STALE_PENDING)
}

/// Finishes an order whose saga was cut off, from what the peers hold for it, and stores
/// the outcome. Rolls forward when payments holds a charge: the reservation is committed
/// and the order `confirmed`. Otherwise rolls back: the reservation is released (which
/// also bars a late one) and the order `failed` with reason `interrupted`; a charge found
/// with no reservation to commit is refunded. Every call is idempotent; when a peer
/// cannot answer, the order stays `pending` for the next reader to try again.
pub async fn recover(
    db: &SqlitePool,
    peers: &Peers,
    fwd: &Forward,
    order: &mut Order,
) -> Result<(), AppError> {
    let charges = match peers.authorized_payments(fwd, &order.id).await {
        Ok(charges) => charges,
        Err(e) => {
            tracing::warn!(order = %order.id, error = %e, "pending order: charges unknown, left pending");
            return Ok(());
        }
    };
    let confirmed = match charges.split_first() {
        Some((first, extra)) => match peers.commit(fwd, &order.id).await {
            Ok(()) => {
                // One key per order makes a second charge impossible; refund any all the same.
                if !refund_all(peers, fwd, order, extra).await {
                    return Ok(());
                }
                Some(first.clone())
            }
            Err(CallError::Rejected { .. }) => {
                // Nothing reserved to commit (released, or never arrived): no sale.
                if !refund_all(peers, fwd, order, &charges).await {
                    return Ok(());
                }
                None
            }
            Err(e) => {
                tracing::warn!(order = %order.id, error = %e, "pending order: commit failed, left pending");
                return Ok(());
            }
        },
        None => match peers.release(fwd, &order.id).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(order = %order.id, error = %e, "pending order: release failed, left pending");
                return Ok(());
            }
        },
    };
    let mut finished = order.clone();
    match confirmed {
        Some(payment_id) => {
            finished.status = "confirmed".into();
            finished.payment_id = Some(payment_id);
        }
        None => {
            finished.status = "failed".into();
            finished.reason = Some("interrupted".into());
        }
    }
    if store::resolve_pending(db, &finished).await? {
        tracing::info!(order = %order.id, status = %finished.status, "pending order resolved");
        *order = finished;
    } else if let Some(current) = store::get(db, &order.sub, &order.id).await? {
        *order = current;
    }
    Ok(())
}

/// Refunds `ids`; false if any refund failed (logged).
async fn refund_all(peers: &Peers, fwd: &Forward, order: &Order, ids: &[String]) -> bool {
    let mut all = true;
    for id in ids {
        if let Err(e) = peers.refund(fwd, id).await {
            tracing::error!(order = %order.id, payment = %id, error = %e, "compensation failed: refund");
            all = false;
        }
    }
    all
}

/// Refunds every charge payments holds for `order` (after a call whose answer was lost).
async fn refund_any_charge(peers: &Peers, fwd: &Forward, order: &Order) {
    match peers.authorized_payments(fwd, &order.id).await {
        Ok(ids) => {
            if !ids.is_empty() && refund_all(peers, fwd, order, &ids).await {
                tracing::info!(order = %order.id, "charge made without an answer refunded");
            }
        }
        Err(e) => {
            tracing::error!(order = %order.id, error = %e, "compensation failed: could not look up charges");
        }
    }
}

async fn release(peers: &Peers, fwd: &Forward, order: &Order) {
    if let Err(e) = peers.release(fwd, &order.id).await {
        tracing::error!(order = %order.id, error = %e, "compensation failed: release");
    }
}
