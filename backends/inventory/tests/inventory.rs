//! Inventory over HTTP on a loopback port: all-or-nothing reservations,
//! idempotent reserve/release/commit, stock never double-counted under
//! concurrency, ownership, and persistence across a restart.

use inventory::{app, AppState, Stock, SCHEMA, SERVICE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shop_common::testing::{TestIdp, TestServer};

struct Inv {
    idp: TestIdp,
    server: TestServer,
    db: sqlx::SqlitePool,
    client: reqwest::Client,
    alice: String,
}

impl Inv {
    async fn start(dir: &std::path::Path) -> Self {
        Self::start_with(TestIdp::start().await, dir).await
    }

    async fn start_with(idp: TestIdp, dir: &std::path::Path) -> Self {
        let db = shop_common::db::open(dir, SERVICE, SCHEMA)
            .await
            .expect("open db");
        let server = TestServer::start(app(AppState {
            db: db.clone(),
            auth: idp.auth(),
        }))
        .await;
        let alice = idp.token("alice").roles(&["customer"]).sign();
        Self {
            idp,
            server,
            db,
            client: reqwest::Client::new(),
            alice,
        }
    }

    async fn send_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send_as(&self.alice, method, path, body).await
    }

    async fn stock(&self, sku: &str) -> Stock {
        let (status, body) = self.send(Method::GET, &format!("/stock/{sku}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).expect("stock")
    }

    async fn reserve(&self, id: &str, items: Value) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            "/reservations",
            Some(json!({ "reservation_id": id, "items": items })),
        )
        .await
    }
}

fn level(sku: &str, available: i64, reserved: i64, sold: i64) -> Stock {
    Stock {
        sku: sku.into(),
        available,
        reserved,
        sold,
    }
}

#[tokio::test]
async fn serves_seeded_stock_to_valid_tokens_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    let (status, body) = inv.send(Method::GET, "/stock", None).await;
    assert_eq!(status, StatusCode::OK);
    let all: Vec<Stock> = serde_json::from_value(body).expect("stock list");
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|s| s.available == 25 && s.reserved == 0));
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 25, 0, 0));
    let (status, body) = inv.send(Method::GET, "/stock/NOPE", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");

    let response = inv
        .client
        .get(inv.server.url("/stock"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let expired = inv.idp.token("alice").expires_in(-100).sign();
    let (status, _) = inv
        .send_as(&expired, Method::POST, "/reservations/r1/release", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reserve_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    let items =
        json!([{ "sku": "MUG-ENAMEL", "quantity": 2 }, { "sku": "LAMP-BRASS", "quantity": 1 }]);
    let (status, body) = inv.reserve("order-1", items.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reservation_id"], "order-1");
    assert_eq!(body["status"], "reserved");
    assert_eq!(body["items"], items);

    let (status, again) = inv.reserve("order-1", items.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, body);
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 23, 2, 0));
    assert_eq!(inv.stock("LAMP-BRASS").await, level("LAMP-BRASS", 24, 1, 0));

    // Same lines in another order are the same reservation.
    let reordered =
        json!([{ "sku": "LAMP-BRASS", "quantity": 1 }, { "sku": "MUG-ENAMEL", "quantity": 2 }]);
    assert_eq!(
        inv.reserve("order-1", reordered).await.0,
        StatusCode::CREATED
    );
    let (status, body) = inv
        .reserve("order-1", json!([{ "sku": "MUG-ENAMEL", "quantity": 3 }]))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "reservation_id_reused");
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 23, 2, 0));

    let (status, body) = inv.send(Method::GET, "/reservations/order-1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "reserved");
}

#[tokio::test]
async fn reserve_is_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    let (status, body) = inv
        .reserve(
            "big",
            json!([{ "sku": "MUG-ENAMEL", "quantity": 5 }, { "sku": "LAMP-BRASS", "quantity": 26 }]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "insufficient_stock");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("LAMP-BRASS"), "{message}");
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 25, 0, 0));
    assert_eq!(inv.stock("LAMP-BRASS").await, level("LAMP-BRASS", 25, 0, 0));
    assert_eq!(
        inv.send(Method::GET, "/reservations/big", None).await.0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = inv
        .reserve("ghost", json!([{ "sku": "NO-SUCH-SKU", "quantity": 1 }]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("NO-SUCH-SKU")));

    // After a refusal the same id can still be used once stock allows it.
    let (status, _) = inv
        .reserve("big", json!([{ "sku": "LAMP-BRASS", "quantity": 25 }]))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(inv.stock("LAMP-BRASS").await, level("LAMP-BRASS", 0, 25, 0));
}

#[tokio::test]
async fn release_returns_stock_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    inv.reserve("r1", json!([{ "sku": "PEN-FOUNTAIN", "quantity": 4 }]))
        .await;
    for _ in 0..2 {
        let (status, body) = inv
            .send(Method::POST, "/reservations/r1/release", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "released");
        assert_eq!(
            inv.stock("PEN-FOUNTAIN").await,
            level("PEN-FOUNTAIN", 25, 0, 0)
        );
    }
    // A released reservation cannot be revived or committed.
    let (status, body) = inv
        .reserve("r1", json!([{ "sku": "PEN-FOUNTAIN", "quantity": 4 }]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "reservation_released");
    let (status, body) = inv
        .send(Method::POST, "/reservations/r1/commit", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "reservation_released");
    assert_eq!(
        inv.stock("PEN-FOUNTAIN").await,
        level("PEN-FOUNTAIN", 25, 0, 0)
    );
}

#[tokio::test]
async fn release_of_an_unknown_id_blocks_a_late_reserve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    let (status, body) = inv
        .send(Method::POST, "/reservations/late/release", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "reservation_id": "late", "status": "released", "items": [] })
    );
    let (status, body) = inv
        .reserve("late", json!([{ "sku": "NB-DOTGRID", "quantity": 1 }]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "reservation_released");
    assert_eq!(inv.stock("NB-DOTGRID").await, level("NB-DOTGRID", 25, 0, 0));
}

#[tokio::test]
async fn commit_sells_once_and_is_not_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    inv.reserve("c1", json!([{ "sku": "HP-OPENBACK", "quantity": 3 }]))
        .await;
    for _ in 0..2 {
        let (status, body) = inv
            .send(Method::POST, "/reservations/c1/commit", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "committed");
        assert_eq!(
            inv.stock("HP-OPENBACK").await,
            level("HP-OPENBACK", 22, 0, 3)
        );
    }
    let (status, body) = inv
        .send(Method::POST, "/reservations/c1/release", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "reservation_committed");
    assert_eq!(
        inv.stock("HP-OPENBACK").await,
        level("HP-OPENBACK", 22, 0, 3)
    );
    // A retried reserve of a committed reservation takes nothing more.
    let (status, body) = inv
        .reserve("c1", json!([{ "sku": "HP-OPENBACK", "quantity": 3 }]))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["status"], "committed");
    assert_eq!(
        inv.stock("HP-OPENBACK").await,
        level("HP-OPENBACK", 22, 0, 3)
    );

    let (status, _) = inv
        .send(Method::POST, "/reservations/nope/commit", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_reservations_never_oversell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = std::sync::Arc::new(Inv::start(dir.path()).await);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            inv.reserve(
                &format!("c-{i}"),
                json!([{ "sku": "KB-ORTHO-01", "quantity": 1 }]),
            )
            .await
            .0
        }));
    }
    // Duplicates of one id racing each other reserve once.
    for _ in 0..5 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            inv.reserve("dup", json!([{ "sku": "MUG-ENAMEL", "quantity": 2 }]))
                .await
                .0
        }));
    }
    let mut created = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, conflicts), (25 + 5, 5));
    assert_eq!(
        inv.stock("KB-ORTHO-01").await,
        level("KB-ORTHO-01", 0, 25, 0)
    );
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 23, 2, 0));
}

#[tokio::test]
async fn reservations_belong_to_their_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    inv.reserve("mine", json!([{ "sku": "MUG-ENAMEL", "quantity": 1 }]))
        .await;
    let mallory = inv.idp.token("mallory").sign();
    for path in ["/reservations/mine/release", "/reservations/mine/commit"] {
        let (status, _) = inv.send_as(&mallory, Method::POST, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = inv
        .send_as(&mallory, Method::GET, "/reservations/mine", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = inv
        .send_as(
            &mallory,
            Method::POST,
            "/reservations",
            Some(json!({ "reservation_id": "mine", "items": [{ "sku": "MUG-ENAMEL", "quantity": 1 }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "reservation_id_reused");
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 24, 1, 0));
}

#[tokio::test]
async fn invalid_reservations_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    let cases = [
        json!({ "reservation_id": "x", "items": [] }),
        json!({ "reservation_id": "x", "items": [{ "sku": "MUG-ENAMEL", "quantity": 0 }] }),
        json!({ "reservation_id": "x", "items": [{ "sku": "MUG-ENAMEL", "quantity": -3 }] }),
        json!({ "reservation_id": "x", "items": [{ "sku": "MUG-ENAMEL", "quantity": 1 }, { "sku": "MUG-ENAMEL", "quantity": 1 }] }),
        json!({ "reservation_id": "has space", "items": [{ "sku": "MUG-ENAMEL", "quantity": 1 }] }),
        json!({ "items": [{ "sku": "MUG-ENAMEL", "quantity": 1 }] }),
    ];
    for body in cases {
        let (status, answer) = inv
            .send(Method::POST, "/reservations", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_request");
    }
    assert_eq!(inv.stock("MUG-ENAMEL").await, level("MUG-ENAMEL", 25, 0, 0));
}

#[tokio::test]
async fn admins_set_stock_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    let (status, body) = inv
        .send(
            Method::PUT,
            "/stock/MUG-XL",
            Some(json!({ "available": 7 })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    let admin = inv.idp.token("admin").roles(&["admin"]).sign();
    let (status, body) = inv
        .send_as(
            &admin,
            Method::PUT,
            "/stock/MUG-XL",
            Some(json!({ "available": 7 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(inv.stock("MUG-XL").await, level("MUG-XL", 7, 0, 0));
    let (status, _) = inv
        .send_as(
            &admin,
            Method::PUT,
            "/stock/MUG-XL",
            Some(json!({ "available": -1 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reservations_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = Inv::start(dir.path()).await;
    inv.reserve("keep", json!([{ "sku": "LAMP-BRASS", "quantity": 2 }]))
        .await;
    let Inv {
        idp, server, db, ..
    } = inv;
    server.stop().await;
    db.close().await;

    let inv = Inv::start_with(idp, dir.path()).await;
    assert_eq!(inv.stock("LAMP-BRASS").await, level("LAMP-BRASS", 23, 2, 0));
    let (status, _) = inv
        .reserve("keep", json!([{ "sku": "LAMP-BRASS", "quantity": 2 }]))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(inv.stock("LAMP-BRASS").await, level("LAMP-BRASS", 23, 2, 0));
    let (status, _) = inv
        .send(Method::POST, "/reservations/keep/release", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inv.stock("LAMP-BRASS").await, level("LAMP-BRASS", 25, 0, 0));
}
