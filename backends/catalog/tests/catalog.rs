//! The catalog over HTTP on a loopback port: seeded products, reads for any
//! valid token, writes for admins only, validation, persistence across a
//! restart, and the binary's start-up line and graceful stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use catalog::{app, AppState, Product, SCHEMA, SERVICE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shop_common::testing::{TestIdp, TestServer};

struct Shop {
    idp: TestIdp,
    server: TestServer,
    db: sqlx::SqlitePool,
    client: reqwest::Client,
}

impl Shop {
    async fn start(dir: &std::path::Path) -> Self {
        let idp = TestIdp::start().await;
        Self::start_with(idp, dir).await
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
        Self {
            idp,
            server,
            db,
            client: reqwest::Client::new(),
        }
    }

    fn customer(&self) -> String {
        self.idp.token("alice").roles(&["customer"]).sign()
    }

    fn admin(&self) -> String {
        self.idp.token("admin").roles(&["customer", "admin"]).sign()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }
}

fn mug() -> Value {
    json!({
        "sku": "MUG-XL",
        "name": "Extra Large Mug",
        "description": "For long meetings.",
        "price_cents": 2400,
        "currency": "EUR"
    })
}

#[tokio::test]
async fn lists_the_seeded_products() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::start(dir.path()).await;
    let token = shop.customer();
    let (status, body) = shop
        .send(reqwest::Method::GET, "/products", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let products: Vec<Product> = serde_json::from_value(body).expect("products");
    assert_eq!(products.len(), 6);
    let mut skus: Vec<&str> = products.iter().map(|p| p.sku.as_str()).collect();
    let listed = skus.clone();
    skus.sort();
    assert_eq!(listed, skus, "ordered by sku");
    assert!(products
        .iter()
        .all(|p| p.price_cents > 0 && p.currency == "EUR" && !p.name.is_empty()));

    let (status, body) = shop
        .send(
            reqwest::Method::GET,
            "/products/MUG-ENAMEL",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Enamel Camp Mug");
    assert_eq!(body["price_cents"], 1800);

    let (status, body) = shop
        .send(reqwest::Method::GET, "/products/NOPE", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn reads_and_writes_need_a_valid_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::start(dir.path()).await;
    let expired = shop.idp.token("alice").expires_in(-300).sign();
    let foreign = shop.idp.token("alice").audience("billing-api").sign();
    for token in [None, Some(expired.as_str()), Some(foreign.as_str())] {
        for (method, path, body) in [
            (reqwest::Method::GET, "/products", None),
            (reqwest::Method::GET, "/products/MUG-ENAMEL", None),
            (reqwest::Method::POST, "/products", Some(mug())),
            (reqwest::Method::PUT, "/products/MUG-ENAMEL", Some(mug())),
        ] {
            let (status, answer) = shop.send(method.clone(), path, token, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(answer["error"], "unauthorized");
        }
    }
    let health = reqwest::get(shop.server.url("/healthz"))
        .await
        .expect("get");
    assert_eq!(health.status(), StatusCode::OK, "healthz needs no token");
}

#[tokio::test]
async fn only_admins_create_and_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::start(dir.path()).await;
    let customer = shop.customer();
    let admin = shop.admin();

    let (status, body) = shop
        .send(
            reqwest::Method::POST,
            "/products",
            Some(&customer),
            Some(mug()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    let (status, _) = shop
        .send(
            reqwest::Method::PUT,
            "/products/MUG-ENAMEL",
            Some(&customer),
            Some(mug()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = shop
        .send(
            reqwest::Method::POST,
            "/products",
            Some(&admin),
            Some(mug()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, mug());
    let (status, body) = shop
        .send(
            reqwest::Method::POST,
            "/products",
            Some(&admin),
            Some(mug()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "already_exists");

    let update = json!({ "name": "XL Mug", "price_cents": 2600, "currency": "EUR" });
    let (status, body) = shop
        .send(
            reqwest::Method::PUT,
            "/products/MUG-XL",
            Some(&admin),
            Some(update.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["price_cents"], 2600);
    assert_eq!(body["description"], "");
    let (_, body) = shop
        .send(
            reqwest::Method::GET,
            "/products/MUG-XL",
            Some(&customer),
            None,
        )
        .await;
    assert_eq!(body["name"], "XL Mug");

    let (status, body) = shop
        .send(
            reqwest::Method::PUT,
            "/products/GHOST",
            Some(&admin),
            Some(update),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn invalid_products_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::start(dir.path()).await;
    let admin = shop.admin();
    let with = |key: &str, value: Value| {
        let mut p = mug();
        p[key] = value;
        p
    };
    let mut no_sku = mug();
    no_sku.as_object_mut().expect("object").remove("sku");
    let cases = [
        ("negative price", with("price_cents", json!(-1))),
        ("fractional price", with("price_cents", json!(1.5))),
        ("empty name", with("name", json!("   "))),
        ("bad currency", with("currency", json!("euro"))),
        ("bad sku", with("sku", json!("has spaces"))),
        ("unknown field", with("colour", json!("blue"))),
        ("missing sku", no_sku),
    ];
    for (name, body) in cases {
        let (status, answer) = shop
            .send(reqwest::Method::POST, "/products", Some(&admin), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{name}");
    }
    let (status, _) = shop
        .send(
            reqwest::Method::PUT,
            "/products/MUG-ENAMEL",
            Some(&admin),
            Some(mug()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "sku differs from the path");
}

#[tokio::test]
async fn products_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::start(dir.path()).await;
    let admin = shop.admin();
    let (status, _) = shop
        .send(
            reqwest::Method::POST,
            "/products",
            Some(&admin),
            Some(mug()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let Shop {
        idp, server, db, ..
    } = shop;
    server.stop().await;
    db.close().await;

    let shop = Shop::start_with(idp, dir.path()).await;
    let token = shop.customer();
    let (status, body) = shop
        .send(reqwest::Method::GET, "/products", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let products: Vec<Product> = serde_json::from_value(body).expect("products");
    assert_eq!(products.len(), 7, "seed ran once, the new product is kept");
    assert!(products.iter().any(|p| p.sku == "MUG-XL"));
}

#[tokio::test]
async fn binary_prints_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_catalog"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn catalog");
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
        .expect("listening line")
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let health = reqwest::get(format!("{base}/healthz")).await.expect("get");
    assert_eq!(health.status(), StatusCode::OK);
    // No provider runs at the default issuer: a token request fails closed.
    let response = reqwest::Client::new()
        .get(format!("{base}/products"))
        .bearer_auth("a.b.c")
        .send()
        .await
        .expect("get");
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "malformed token"
    );
    assert!(dir.path().join("catalog.db").exists());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "graceful exit: {exit}");
}
