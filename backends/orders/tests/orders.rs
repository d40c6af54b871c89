//! Orders end to end on loopback: real catalog, inventory and payments apps
//! behind a stand-in for the sidecar's outbound listener that dispatches by
//! `Host` (and can make a service fail, hang or refuse one path), checking the
//! saga's happy path, every compensation, and what the other services hold
//! afterwards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use orders::{app, AppState, Order, Peers, SCHEMA, SERVICE};
use serde_json::{json, Value};
use shop_common::testing::{TestIdp, TestServer};
use tower::ServiceExt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Up,
    /// Answers 503 like a sidecar with no healthy endpoint.
    Down,
    /// Never answers.
    Hang,
}

/// One request the outbound stand-in saw.
#[derive(Clone, Debug)]
struct Seen {
    host: String,
    method: String,
    path: String,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    request_id: Option<String>,
}

struct Outbound {
    apps: HashMap<&'static str, Router>,
    modes: Mutex<HashMap<&'static str, Mode>>,
    /// Requests whose path ends with one of these get 503 (even when Up).
    failing_suffixes: Mutex<Vec<String>>,
    /// Requests with one of these (method, path) are carried out by the app, but the
    /// answer is lost: the caller gets 504 (a timeout after the work was done).
    lost_answers: Mutex<Vec<(String, String)>>,
    seen: Mutex<Vec<Seen>>,
}

async fn dispatch(State(out): State<Arc<Outbound>>, request: Request) -> Response {
    let headers = request.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = Seen {
        host: header("host").unwrap_or_default(),
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        request_id: header("x-request-id"),
    };
    let Some(app) = out.apps.get(seen.host.as_str()).cloned() else {
        return (StatusCode::NOT_FOUND, "no route for host").into_response();
    };
    let mode = out
        .modes
        .lock()
        .expect("lock")
        .get(seen.host.as_str())
        .copied()
        .unwrap_or(Mode::Up);
    let failing = out
        .failing_suffixes
        .lock()
        .expect("lock")
        .iter()
        .any(|s| seen.path.ends_with(s.as_str()));
    let lost = out
        .lost_answers
        .lock()
        .expect("lock")
        .iter()
        .any(|(method, path)| *method == seen.method && *path == seen.path);
    out.seen.lock().expect("lock").push(seen);
    match mode {
        Mode::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Mode::Up if failing => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Up if lost => {
            let _done = app.oneshot(request).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Mode::Up => app.oneshot(request).await.into_response(),
    }
}

struct Mesh {
    idp: TestIdp,
    out: Arc<Outbound>,
    outbound: TestServer,
    orders: TestServer,
    orders_db: sqlx::SqlitePool,
    inventory_db: sqlx::SqlitePool,
    payments_db: sqlx::SqlitePool,
    client: reqwest::Client,
    alice: String,
    dirs: tempfile::TempDir,
}

impl Mesh {
    async fn start() -> Self {
        Self::start_with(Duration::from_secs(5)).await
    }

    async fn start_with(call_timeout: Duration) -> Self {
        let dirs = tempfile::tempdir().expect("tempdir");
        let idp = TestIdp::start().await;
        let open = |service, schema| {
            let dir = dirs.path().join(service);
            async move {
                shop_common::db::open(&dir, service, schema)
                    .await
                    .expect("open db")
            }
        };
        let catalog_db = open(catalog::SERVICE, catalog::SCHEMA).await;
        let inventory_db = open(inventory::SERVICE, inventory::SCHEMA).await;
        let payments_db = open(payments::SERVICE, payments::SCHEMA).await;
        let orders_db = open(SERVICE, SCHEMA).await;

        let apps = HashMap::from([
            (
                "catalog",
                catalog::app(catalog::AppState {
                    db: catalog_db,
                    auth: idp.auth(),
                }),
            ),
            (
                "inventory",
                inventory::app(inventory::AppState {
                    db: inventory_db.clone(),
                    auth: idp.auth(),
                }),
            ),
            (
                "payments",
                payments::app(payments::AppState {
                    db: payments_db.clone(),
                    auth: idp.auth(),
                }),
            ),
        ]);
        let out = Arc::new(Outbound {
            apps,
            modes: Mutex::new(HashMap::new()),
            failing_suffixes: Mutex::new(Vec::new()),
            lost_answers: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let outbound =
            TestServer::start(Router::new().fallback(dispatch).with_state(out.clone())).await;
        let orders = start_orders(&idp, orders_db.clone(), &outbound.url(""), call_timeout).await;
        let alice = idp.token("alice").roles(&["customer"]).sign();
        Self {
            idp,
            out,
            outbound,
            orders,
            orders_db,
            inventory_db,
            payments_db,
            client: reqwest::Client::new(),
            alice,
            dirs,
        }
    }

    fn set_mode(&self, service: &'static str, mode: Mode) {
        self.out.modes.lock().expect("lock").insert(service, mode);
    }

    fn seen(&self) -> Vec<Seen> {
        self.out.seen.lock().expect("lock").clone()
    }

    async fn order_as(&self, token: &str, items: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.orders.url("/orders"))
            .bearer_auth(token)
            .header("x-request-id", "req-42")
            .json(&json!({ "items": items }))
            .send()
            .await
            .expect("send");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn order(&self, items: Value) -> (StatusCode, Order) {
        let (status, body) = self.order_as(&self.alice, items).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (status, serde_json::from_value(body).expect("order"))
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.orders.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("send");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    /// (available, reserved, sold) of `sku`, read straight from inventory's database.
    async fn stock(&self, sku: &str) -> (i64, i64, i64) {
        sqlx::query_as("SELECT available, reserved, sold FROM stock WHERE sku = ?")
            .bind(sku)
            .fetch_one(&self.inventory_db)
            .await
            .expect("stock row")
    }

    async fn reservation_status(&self, id: &str) -> Option<String> {
        sqlx::query_as::<_, (String,)>("SELECT status FROM reservations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.inventory_db)
            .await
            .expect("reservation")
            .map(|r| r.0)
    }

    /// (charges, refunded) for `order_id`, from payments' database.
    async fn charges(&self, order_id: &str) -> (i64, i64) {
        sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(status = 'refunded'), 0) FROM payments WHERE order_id = ?",
        )
        .bind(order_id)
        .fetch_one(&self.payments_db)
        .await
        .expect("charges")
    }
}

async fn start_orders(
    idp: &TestIdp,
    db: sqlx::SqlitePool,
    outbound: &str,
    call_timeout: Duration,
) -> TestServer {
    let peers = Peers::new(outbound, call_timeout).expect("peers");
    TestServer::start(app(AppState {
        db,
        auth: idp.auth(),
        peers,
    }))
    .await
}

#[tokio::test]
async fn happy_path_confirms_through_the_outbound_listener() {
    let mesh = Mesh::start().await;
    let (_, order) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 2 }, { "sku": "PEN-FOUNTAIN", "quantity": 1 }]))
        .await;
    assert_eq!(order.status, "confirmed");
    assert_eq!(order.reason, None);
    assert_eq!(order.sub, "alice");
    assert_eq!(order.total_cents, 2 * 1800 + 4200);
    assert_eq!(order.currency, "EUR");
    assert_eq!(order.items.len(), 2);
    assert_eq!(order.items[0].name, "Enamel Camp Mug");
    assert_eq!(order.items[0].price_cents, 1800);
    assert_eq!(order.items[1].sku, "PEN-FOUNTAIN");
    let payment_id = order.payment_id.clone().expect("payment id");

    assert_eq!(mesh.stock("MUG-ENAMEL").await, (23, 0, 2));
    assert_eq!(mesh.stock("PEN-FOUNTAIN").await, (24, 0, 1));
    assert_eq!(
        mesh.reservation_status(&order.id).await.as_deref(),
        Some("committed")
    );
    assert_eq!(mesh.charges(&order.id).await, (1, 0));

    let seen = mesh.seen();
    let calls: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|s| (s.host.as_str(), s.method.as_str(), s.path.as_str()))
        .collect();
    let commit = format!("/reservations/{}/commit", order.id);
    assert_eq!(
        calls,
        [
            ("catalog", "GET", "/products/MUG-ENAMEL"),
            ("catalog", "GET", "/products/PEN-FOUNTAIN"),
            ("inventory", "POST", "/reservations"),
            ("payments", "POST", "/payments"),
            ("inventory", "POST", commit.as_str()),
        ]
    );
    let bearer = format!("Bearer {}", mesh.alice);
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(bearer.as_str())));
    assert!(seen
        .iter()
        .all(|s| s.request_id.as_deref() == Some("req-42")));
    let payment_call = seen
        .iter()
        .find(|s| s.host == "payments")
        .expect("payment call");
    assert_eq!(
        payment_call.idempotency_key.as_deref(),
        Some(order.id.as_str())
    );

    let (status, body) = mesh
        .get(&mesh.alice, &format!("/orders/{}", order.id))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["payment_id"], payment_id.as_str());
    assert!(body.get("reason").is_none());
}

#[tokio::test]
async fn payments_down_fails_the_order_and_releases_stock() {
    let mesh = Mesh::start().await;
    mesh.set_mode("payments", Mode::Down);
    let (_, order) = mesh
        .order(json!([{ "sku": "LAMP-BRASS", "quantity": 3 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("payment_unavailable"));
    assert_eq!(order.payment_id, None);
    assert_eq!(order.total_cents, 3 * 8900);
    assert_eq!(mesh.stock("LAMP-BRASS").await, (25, 0, 0));
    assert_eq!(
        mesh.reservation_status(&order.id).await.as_deref(),
        Some("released")
    );
    assert_eq!(mesh.charges(&order.id).await, (0, 0));

    // Payments back: the next order goes through.
    mesh.set_mode("payments", Mode::Up);
    let (_, order) = mesh
        .order(json!([{ "sku": "LAMP-BRASS", "quantity": 3 }]))
        .await;
    assert_eq!(order.status, "confirmed");
    assert_eq!(mesh.stock("LAMP-BRASS").await, (22, 0, 3));
}

#[tokio::test]
async fn a_hanging_payments_call_times_out_and_compensates() {
    let mesh = Mesh::start_with(Duration::from_millis(300)).await;
    mesh.set_mode("payments", Mode::Hang);
    let started = Instant::now();
    let (_, order) = mesh
        .order(json!([{ "sku": "NB-DOTGRID", "quantity": 1 }]))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("payment_unavailable"));
    assert_eq!(mesh.stock("NB-DOTGRID").await, (25, 0, 0));
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_and_releases_stock() {
    let mesh = Mesh::start().await;
    // 10 × 199.00 is above the demo's 1000.00 limit.
    let (_, order) = mesh
        .order(json!([{ "sku": "HP-OPENBACK", "quantity": 10 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("payment_declined"));
    assert_eq!(order.total_cents, 199_000);
    assert_eq!(mesh.stock("HP-OPENBACK").await, (25, 0, 0));
    assert_eq!(mesh.charges(&order.id).await, (0, 0));
}

#[tokio::test]
async fn insufficient_stock_fails_without_reserving_or_charging() {
    let mesh = Mesh::start().await;
    sqlx::query("UPDATE stock SET available = 3 WHERE sku = 'KB-ORTHO-01'")
        .execute(&mesh.inventory_db)
        .await
        .expect("update");
    let (_, order) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 1 }, { "sku": "KB-ORTHO-01", "quantity": 4 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("insufficient_stock"));
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (25, 0, 0));
    assert_eq!(mesh.stock("KB-ORTHO-01").await, (3, 0, 0));
    assert_eq!(mesh.reservation_status(&order.id).await, None);
    assert!(mesh.seen().iter().all(|s| s.host != "payments"));
}

#[tokio::test]
async fn a_failed_commit_refunds_and_releases() {
    let mesh = Mesh::start().await;
    mesh.out
        .failing_suffixes
        .lock()
        .expect("lock")
        .push("/commit".into());
    let (_, order) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 5 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("inventory_unavailable"));
    assert_eq!(
        mesh.charges(&order.id).await,
        (1, 1),
        "charged once, refunded"
    );
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (25, 0, 0));
}

#[tokio::test]
async fn a_charge_whose_answer_was_lost_is_refunded() {
    let mesh = Mesh::start().await;
    mesh.out
        .lost_answers
        .lock()
        .expect("lock")
        .push(("POST".into(), "/payments".into()));
    let (_, order) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 2 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("payment_unavailable"));
    assert_eq!(
        mesh.charges(&order.id).await,
        (1, 1),
        "the charge made without an answer is refunded"
    );
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (25, 0, 0));
}

#[tokio::test]
async fn inventory_or_catalog_down_fail_with_their_reason() {
    let mesh = Mesh::start().await;
    mesh.set_mode("inventory", Mode::Down);
    let (_, order) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 1 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("inventory_unavailable"));
    assert!(mesh.seen().iter().all(|s| s.host != "payments"));

    mesh.set_mode("inventory", Mode::Up);
    mesh.set_mode("catalog", Mode::Down);
    let (_, order) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 1 }]))
        .await;
    assert_eq!(order.status, "failed");
    assert_eq!(order.reason.as_deref(), Some("catalog_unavailable"));
    assert_eq!(order.items[0].sku, "MUG-ENAMEL");
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (25, 0, 0));

    let (status, body) = mesh.get(&mesh.alice, "/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn an_unreachable_sidecar_fails_quickly() {
    let mesh = Mesh::start().await;
    // A port nothing listens on: bind one, then free it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let orders = start_orders(
        &mesh.idp,
        mesh.orders_db.clone(),
        &format!("http://{addr}"),
        Duration::from_secs(2),
    )
    .await;
    let response = mesh
        .client
        .post(orders.url("/orders"))
        .bearer_auth(&mesh.alice)
        .json(&json!({ "items": [{ "sku": "MUG-ENAMEL", "quantity": 1 }] }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Order = response.json().await.expect("order");
    assert_eq!(order.reason.as_deref(), Some("catalog_unavailable"));
}

#[tokio::test]
async fn bad_orders_are_refused_before_any_call() {
    let mesh = Mesh::start().await;
    let line = |sku: &str, quantity: i64| json!({ "sku": sku, "quantity": quantity });
    let many: Vec<Value> = (0..21).map(|i| line(&format!("SKU-{i}"), 1)).collect();
    let cases = [
        json!([]),
        json!(many),
        json!([line("MUG-ENAMEL", 0)]),
        json!([line("MUG-ENAMEL", 11)]),
        json!([line("MUG-ENAMEL", 1), line("MUG-ENAMEL", 2)]),
        json!([line("bad sku", 1)]),
        json!([{ "sku": "MUG-ENAMEL" }]),
    ];
    for items in cases {
        let (status, body) = mesh.order_as(&mesh.alice, items.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{items}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    assert!(mesh.seen().is_empty());

    let (status, body) = mesh
        .order_as(
            &mesh.alice,
            json!([line("MUG-ENAMEL", 1), line("NO-SUCH", 1)]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unknown_sku");
    let (_, body) = mesh.get(&mesh.alice, "/orders").await;
    assert_eq!(body, json!([]), "no order was created");
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (25, 0, 0));
}

#[tokio::test]
async fn orders_are_private_and_listed_newest_first() {
    let mesh = Mesh::start().await;
    let (_, first) = mesh
        .order(json!([{ "sku": "MUG-ENAMEL", "quantity": 1 }]))
        .await;
    let (_, second) = mesh
        .order(json!([{ "sku": "NB-DOTGRID", "quantity": 2 }]))
        .await;
    let (status, body) = mesh.get(&mesh.alice, "/orders").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<Order> = serde_json::from_value(body).expect("orders");
    assert_eq!(listed, vec![second.clone(), first.clone()]);

    let bob = mesh.idp.token("bob").roles(&["customer"]).sign();
    let (status, body) = mesh.get(&bob, "/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([]));
    let (status, body) = mesh.get(&bob, &format!("/orders/{}", first.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");

    let response = mesh
        .client
        .get(mesh.orders.url("/orders"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = mesh
        .client
        .post(mesh.orders.url("/orders"))
        .header(header::AUTHORIZATION, "Bearer nope")
        .json(&json!({ "items": [{ "sku": "MUG-ENAMEL", "quantity": 1 }] }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn orders_survive_a_restart() {
    let mesh = Mesh::start().await;
    let (_, order) = mesh
        .order(json!([{ "sku": "LAMP-BRASS", "quantity": 1 }]))
        .await;
    mesh.orders_db.close().await;

    let dir = mesh.dirs.path().join(SERVICE);
    let db = shop_common::db::open(&dir, SERVICE, SCHEMA)
        .await
        .expect("reopen");
    let restarted = start_orders(
        &mesh.idp,
        db,
        &mesh.outbound.url(""),
        Duration::from_secs(5),
    )
    .await;
    let response = mesh
        .client
        .get(restarted.url(&format!("/orders/{}", order.id)))
        .bearer_auth(&mesh.alice)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let reloaded: Order = response.json().await.expect("order");
    assert_eq!(reloaded, order);
}

#[tokio::test]
async fn binary_takes_its_flags_and_checks_the_outbound_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--outbound",
            "ftp://127.0.0.1:1",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run orders");
    assert!(!bad.success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--outbound",
            "http://127.0.0.1:1",
            "--call-timeout",
            "250ms",
            "--issuer",
            "http://127.0.0.1:1",
            "--audience",
            "shop-api",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orders");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("start-up line in time")
        .expect("join")
        .expect("read");
    let base = line
        .trim_end()
        .strip_prefix("listening on ")
        .map(str::to_string);
    let health = match &base {
        Some(base) => reqwest::get(format!("{base}/healthz")).await.ok(),
        None => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(base.is_some(), "unexpected first line {line:?}");
    assert_eq!(health.map(|h| h.status()), Some(StatusCode::OK));
    assert!(dir.path().join("orders.db").exists());
}

/// What a checkout cut off mid-saga (orders stopped or crashed) leaves behind.
struct CutOff {
    reserved: bool,
    charged: bool,
    age: Duration,
}

impl Mesh {
    /// Calls an app through the outbound stand-in, as orders' sidecar would.
    async fn call_peer(&self, host: &str, path: &str, key: Option<&str>, body: Value) {
        let mut request = self
            .client
            .post(self.outbound.url(path))
            .header(header::HOST, host)
            .bearer_auth(&self.alice)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.expect("send");
        assert!(
            response.status().is_success(),
            "{host}{path}: {}",
            response.status()
        );
    }

    /// Stores a `pending` order for alice, `age` old, with what its saga had done.
    async fn cut_off_order(&self, id: &str, cut: CutOff) {
        let created = std::time::SystemTime::now() - cut.age;
        let order = Order {
            id: id.into(),
            sub: "alice".into(),
            status: "pending".into(),
            reason: None,
            items: vec![orders::OrderLine {
                sku: "MUG-ENAMEL".into(),
                name: "Enamel Camp Mug".into(),
                quantity: 2,
                price_cents: 1800,
            }],
            total_cents: 3600,
            currency: "EUR".into(),
            payment_id: None,
            created_at: humantime::format_rfc3339_millis(created).to_string(),
        };
        orders::store::insert(&self.orders_db, &order)
            .await
            .expect("insert");
        if cut.reserved {
            let body =
                json!({ "reservation_id": id, "items": [{ "sku": "MUG-ENAMEL", "quantity": 2 }] });
            self.call_peer("inventory", "/reservations", None, body)
                .await;
        }
        if cut.charged {
            let body = json!({ "order_id": id, "amount_cents": 3600, "currency": "EUR" });
            self.call_peer("payments", "/payments", Some(id), body)
                .await;
        }
    }
}

const STALE: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_cut_off_checkout_with_a_charge_is_confirmed_when_read() {
    let mesh = Mesh::start().await;
    let cut = CutOff {
        reserved: true,
        charged: true,
        age: STALE,
    };
    mesh.cut_off_order("ord-cut-paid", cut).await;
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (23, 2, 0));
    let (status, body) = mesh.get(&mesh.alice.clone(), "/orders/ord-cut-paid").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "confirmed", "{body}");
    assert!(body["payment_id"].is_string(), "{body}");
    assert_eq!(
        mesh.stock("MUG-ENAMEL").await,
        (23, 0, 2),
        "the reservation is sold"
    );
    assert_eq!(
        mesh.charges("ord-cut-paid").await,
        (1, 0),
        "charged once, kept"
    );
    // Stored: the next read needs no peer.
    let (_, again) = mesh.get(&mesh.alice.clone(), "/orders").await;
    assert_eq!(again[0]["status"], "confirmed", "{again}");
}

#[tokio::test]
async fn a_cut_off_checkout_without_a_charge_is_rolled_back_when_listed() {
    let mesh = Mesh::start().await;
    let cut = CutOff {
        reserved: true,
        charged: false,
        age: STALE,
    };
    mesh.cut_off_order("ord-cut-unpaid", cut).await;
    let cut = CutOff {
        reserved: false,
        charged: true,
        age: STALE,
    };
    mesh.cut_off_order("ord-cut-nostock", cut).await;
    let (status, body) = mesh.get(&mesh.alice.clone(), "/orders").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for order in body.as_array().expect("list") {
        assert_eq!(order["status"], "failed", "{order}");
        assert_eq!(order["reason"], "interrupted", "{order}");
    }
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (25, 0, 0), "stock released");
    assert_eq!(
        mesh.reservation_status("ord-cut-unpaid").await.as_deref(),
        Some("released")
    );
    assert_eq!(mesh.charges("ord-cut-nostock").await, (1, 1), "refunded");
}

#[tokio::test]
async fn a_recent_pending_order_is_left_alone_and_a_dead_peer_leaves_it_pending() {
    let mesh = Mesh::start().await;
    // Placed seconds ago: its saga may still be running.
    let recent = CutOff {
        reserved: true,
        charged: false,
        age: Duration::from_secs(5),
    };
    mesh.cut_off_order("ord-recent", recent).await;
    let (_, body) = mesh.get(&mesh.alice.clone(), "/orders/ord-recent").await;
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(mesh.stock("MUG-ENAMEL").await, (23, 2, 0));

    // Stale, but payments cannot say whether it charged: nothing is decided yet.
    let stale = CutOff {
        reserved: true,
        charged: false,
        age: STALE,
    };
    mesh.cut_off_order("ord-stale", stale).await;
    mesh.set_mode("payments", Mode::Down);
    let (status, body) = mesh.get(&mesh.alice.clone(), "/orders/ord-stale").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(
        mesh.reservation_status("ord-stale").await.as_deref(),
        Some("reserved")
    );
    // Once payments answers, the next read rolls it back.
    mesh.set_mode("payments", Mode::Up);
    let (_, body) = mesh.get(&mesh.alice.clone(), "/orders/ord-stale").await;
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(
        mesh.reservation_status("ord-stale").await.as_deref(),
        Some("released")
    );
}
