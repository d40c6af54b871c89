//! Payments over HTTP on a loopback port: one charge per idempotency key,
//! sequential or concurrent, replayed answers, reuse and missing-key errors,
//! the decline rule, refunds, ownership, and persistence across a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use payments::{app, AppState, SCHEMA, SERVICE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shop_common::testing::{TestIdp, TestServer};

struct Pay {
    idp: TestIdp,
    server: TestServer,
    db: sqlx::SqlitePool,
    client: reqwest::Client,
    alice: String,
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    body: Value,
}

impl Pay {
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

    async fn pay_as(&self, token: &str, key: Option<&str>, body: Value) -> Answer {
        let mut request = self
            .client
            .post(self.server.url("/payments"))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("send");
        Answer {
            status: response.status(),
            replayed: response.headers().get("idempotent-replayed").is_some(),
            body: response.json().await.expect("json"),
        }
    }

    async fn pay(&self, key: Option<&str>, body: Value) -> Answer {
        self.pay_as(&self.alice, key, body).await
    }

    async fn send(&self, token: &str, method: Method, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("send");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn charges(&self, order_id: &str) -> u64 {
        let (status, body) = self
            .send(
                &self.alice,
                Method::GET,
                &format!("/payments?order_id={order_id}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["order_id"], order_id);
        body["charges"].as_u64().expect("charges")
    }
}

fn order(id: &str, amount: i64) -> Value {
    json!({ "order_id": id, "amount_cents": amount, "currency": "EUR" })
}

#[tokio::test]
async fn authorises_and_replays_without_charging_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let first = pay.pay(Some("key-1"), order("o-1", 4200)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(!first.replayed);
    assert_eq!(first.body["status"], "authorized");
    assert_eq!(first.body["order_id"], "o-1");
    assert_eq!(first.body["amount_cents"], 4200);
    assert_eq!(first.body["currency"], "EUR");
    let id = first.body["payment_id"]
        .as_str()
        .expect("payment id")
        .to_string();

    let second = pay.pay(Some("key-1"), order("o-1", 4200)).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert!(second.replayed);
    assert_eq!(second.body, first.body);
    assert_eq!(pay.charges("o-1").await, 1);

    let (status, body) = pay
        .send(&pay.alice, Method::GET, &format!("/payments/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, first.body);

    // A new key is a new payment attempt.
    let third = pay.pay(Some("key-2"), order("o-1", 4200)).await;
    assert_eq!(third.status, StatusCode::CREATED);
    assert_ne!(third.body["payment_id"], first.body["payment_id"]);
    assert_eq!(pay.charges("o-1").await, 2);
}

#[tokio::test]
async fn concurrent_duplicates_charge_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Arc::new(Pay::start(dir.path()).await);
    // Four orders, each paid by 25 racing duplicates, all at once.
    let mut tasks = Vec::new();
    for _ in 0..25 {
        for n in 0..4 {
            let pay = pay.clone();
            tasks.push(tokio::spawn(async move {
                let order_id = format!("o-race-{n}");
                let answer = pay
                    .pay(Some(&format!("key-{n}")), order(&order_id, 999))
                    .await;
                (order_id, answer)
            }));
        }
    }
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut fresh = 0;
    for task in tasks {
        let (order_id, answer) = task.await.expect("task");
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        fresh += usize::from(!answer.replayed);
        let id = answer.body["payment_id"].as_str().expect("id").to_string();
        ids.entry(order_id).or_default().insert(id);
    }
    assert_eq!(fresh, 4, "exactly one request per key was processed");
    for (order_id, payment_ids) in ids {
        assert_eq!(payment_ids.len(), 1, "every duplicate got the same payment");
        assert_eq!(pay.charges(&order_id).await, 1);
    }
}

#[tokio::test]
async fn key_reused_with_another_body_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    assert_eq!(
        pay.pay(Some("k"), order("o-2", 100)).await.status,
        StatusCode::CREATED
    );
    for body in [
        order("o-2", 101),
        order("o-3", 100),
        json!({ "order_id": "o-2", "amount_cents": 100, "currency": "USD" }),
    ] {
        let answer = pay.pay(Some("k"), body).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer.body["error"], "idempotency_key_reused");
    }
    assert_eq!(pay.charges("o-2").await, 1);
    assert_eq!(pay.charges("o-3").await, 0);
}

#[tokio::test]
async fn the_key_is_required_and_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let answer = pay.pay(None, order("o-4", 100)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "idempotency_key_required");
    let long = "k".repeat(300);
    let answer = pay.pay(Some(&long), order("o-4", 100)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_request");
    for body in [
        order("o-4", 0),
        order("o-4", -5),
        order("bad id", 100),
        json!({ "order_id": "o-4", "amount_cents": 100, "currency": "eur" }),
    ] {
        let answer = pay.pay(Some("v"), body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.body["error"], "invalid_request");
    }
    assert_eq!(pay.charges("o-4").await, 0);
    // A refused request did not burn the key.
    assert_eq!(
        pay.pay(Some("v"), order("o-4", 100)).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn large_amounts_are_declined_and_the_decline_is_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let at_limit = pay.pay(Some("limit"), order("o-5", 100_000)).await;
    assert_eq!(at_limit.status, StatusCode::CREATED);

    let declined = pay.pay(Some("big"), order("o-6", 100_001)).await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(declined.body["error"], "payment_declined");
    assert!(declined.body["message"].as_str().is_some());
    let again = pay.pay(Some("big"), order("o-6", 100_001)).await;
    assert_eq!(again.status, StatusCode::PAYMENT_REQUIRED);
    assert!(again.replayed);
    assert_eq!(again.body, declined.body);
    assert_eq!(pay.charges("o-6").await, 0);
}

#[tokio::test]
async fn refunds_are_idempotent_and_owned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let paid = pay.pay(Some("r"), order("o-7", 500)).await;
    let id = paid.body["payment_id"].as_str().expect("id").to_string();
    let path = format!("/payments/{id}/refund");

    let mallory = pay.idp.token("mallory").sign();
    let (status, _) = pay.send(&mallory, Method::POST, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = pay
        .send(&mallory, Method::GET, &format!("/payments/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = pay
        .send(&mallory, Method::GET, "/payments?order_id=o-7")
        .await;
    assert_eq!(body["charges"], 0);

    for _ in 0..2 {
        let (status, body) = pay.send(&pay.alice, Method::POST, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "refunded");
        assert_eq!(body["payment_id"], id.as_str());
    }
    let (_, body) = pay
        .send(&pay.alice, Method::GET, &format!("/payments/{id}"))
        .await;
    assert_eq!(body["status"], "refunded");
    let admin = pay.idp.token("admin").roles(&["admin"]).sign();
    let (status, body) = pay
        .send(&admin, Method::GET, &format!("/payments/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "refunded");
    let (status, _) = pay
        .send(&pay.alice, Method::POST, "/payments/nope/refund")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keys_are_scoped_to_the_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let bob = pay.idp.token("bob").sign();
    let alice = pay.pay(Some("shared"), order("o-8", 300)).await;
    let bobs = pay.pay_as(&bob, Some("shared"), order("o-8", 300)).await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    assert!(!bobs.replayed, "bob never sees alice's answer");
    assert_ne!(alice.body["payment_id"], bobs.body["payment_id"]);
}

#[tokio::test]
async fn requests_need_a_valid_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let response = pay
        .client
        .post(pay.server.url("/payments"))
        .header("Idempotency-Key", "x")
        .json(&order("o-9", 100))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let wrong_iss = pay.idp.token("alice").issuer("http://127.0.0.1:9").sign();
    let answer = pay.pay_as(&wrong_iss, Some("x"), order("o-9", 100)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(pay.charges("o-9").await, 0);
}

#[tokio::test]
async fn payments_and_keys_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pay = Pay::start(dir.path()).await;
    let first = pay.pay(Some("durable"), order("o-10", 700)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let Pay {
        idp, server, db, ..
    } = pay;
    server.stop().await;
    db.close().await;

    let pay = Pay::start_with(idp, dir.path()).await;
    let again = pay.pay(Some("durable"), order("o-10", 700)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(again.body["payment_id"], first.body["payment_id"]);
    assert_eq!(pay.charges("o-10").await, 1);
}
