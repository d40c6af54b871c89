//! The shared service plumbing: error answers, JSON bodies, `/healthz`, and the
//! SQLite database (WAL, migrations, data surviving a reopen).

use axum::routing::{get, post};
use axum::Router;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use shop_common::db::{self, Schema};
use shop_common::testing::TestServer;
use shop_common::{service_router, AppError, JsonBody};

const SCHEMA: Schema = Schema(&[
    (
        1,
        "notes",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);",
    ),
    (2, "seed", "INSERT INTO notes (text) VALUES ('seeded');"),
]);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Note {
    text: String,
}

async fn echo(JsonBody(note): JsonBody<Note>) -> String {
    note.text
}

async fn broken() -> Result<(), AppError> {
    Err(AppError::Internal("SELECT secret FROM vault failed".into()))
}

async fn conflict() -> Result<(), AppError> {
    Err(AppError::Conflict {
        code: "insufficient_stock",
        message: "not enough MUG".into(),
    })
}

async fn app(dir: &std::path::Path) -> (TestServer, sqlx::SqlitePool) {
    let pool = db::open(dir, "notes", SCHEMA).await.expect("open");
    let api = Router::new()
        .route("/echo", post(echo))
        .route("/broken", get(broken))
        .route("/conflict", get(conflict));
    (
        TestServer::start(service_router(api, pool.clone())).await,
        pool,
    )
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn errors_answer_json_and_hide_internals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _pool) = app(dir.path()).await;
    let client = reqwest::Client::new();

    let (status, body) = json_of(
        client
            .get(server.url("/broken"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({ "error": "internal", "message": "internal error" })
    );

    let (status, body) = json_of(
        client
            .get(server.url("/conflict"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({ "error": "insufficient_stock", "message": "not enough MUG" })
    );

    let (status, body) = json_of(client.get(server.url("/nope")).send().await.expect("send")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn json_bodies_are_validated_with_json_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _pool) = app(dir.path()).await;
    let client = reqwest::Client::new();
    let ok = client
        .post(server.url("/echo"))
        .json(&json!({ "text": "hi" }))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.expect("text"), "hi");

    for body in [
        json!({ "text": 1 }),
        json!({ "text": "hi", "extra": true }),
        json!([]),
    ] {
        let response = client
            .post(server.url("/echo"))
            .json(&body)
            .send()
            .await
            .expect("send");
        let (status, answer) = json_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], "invalid_request");
    }
    let response = client
        .post(server.url("/echo"))
        .body("{\"text\": \"no content type\"}")
        .send()
        .await
        .expect("send");
    assert_eq!(json_of(response).await.0, StatusCode::BAD_REQUEST);

    let huge = json!({ "text": "x".repeat(200 * 1024) });
    let response = client
        .post(server.url("/echo"))
        .json(&huge)
        .send()
        .await
        .expect("send");
    let (status, answer) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"], "payload_too_large");
}

#[tokio::test]
async fn healthz_reports_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, pool) = app(dir.path()).await;
    let response = reqwest::get(server.url("/healthz")).await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("text"), "ok");
    pool.close().await;
    let response = reqwest::get(server.url("/healthz")).await.expect("get");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn database_is_wal_migrated_once_and_survives_a_reopen() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("nested").join("data");
    let pool = db::open(&dir, "notes", SCHEMA).await.expect("open");
    assert!(dir.join("notes.db").exists());
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .expect("pragma");
    assert_eq!(mode.0, "wal");
    sqlx::query("INSERT INTO notes (text) VALUES ('kept')")
        .execute(&pool)
        .await
        .expect("insert");
    pool.close().await;

    let pool = db::open(&dir, "notes", SCHEMA).await.expect("reopen");
    let texts: Vec<(String,)> = sqlx::query_as("SELECT text FROM notes ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("select");
    // The seed migration ran once, not once per open.
    assert_eq!(
        texts.into_iter().map(|t| t.0).collect::<Vec<_>>(),
        ["seeded", "kept"]
    );
}

#[tokio::test]
async fn immediate_transactions_serialise_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = db::open(dir.path(), "notes", SCHEMA).await.expect("open");
    // Each task reads the count then writes count+1: with plain BEGIN two
    // writers would collide with "database is locked"; here all must succeed
    // and no increment may be lost.
    sqlx::query("CREATE TABLE counter (n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("create");
    sqlx::query("INSERT INTO counter VALUES (0)")
        .execute(&pool)
        .await
        .expect("seed");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = db::begin_write(&pool).await.expect("begin");
            let (n,): (i64,) = sqlx::query_as("SELECT n FROM counter")
                .fetch_one(&mut *tx)
                .await
                .expect("read");
            sqlx::query("UPDATE counter SET n = ?")
                .bind(n + 1)
                .execute(&mut *tx)
                .await
                .expect("write");
            tx.commit().await.expect("commit");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT n FROM counter")
        .fetch_one(&pool)
        .await
        .expect("read");
    assert_eq!(n, 8);
}
