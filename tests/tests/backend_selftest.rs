//! Self-tests of the harness's backend: no meshgate involved, so a failure
//! here is a harness bug, not a proxy bug.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, raw_exchange};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_raw_path_over_http1_and_h2c_on_one_port() {
    let b = Backend::builder().name("b1").h2c(true).start().await;

    let raw = raw_exchange(
        b.addr(),
        b"GET /a%2Fb/./c//d?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Thing: 1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw.status(), Some(200), "{}", raw.text());
    let text = raw.text();
    let body = &text[text.find("\r\n\r\n").expect("header end") + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).expect("JSON echo");
    assert_eq!(echo["backend"], "b1");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/a%2Fb/./c//d");
    assert_eq!(echo["query"], "x=1&y=%20");
    assert_eq!(echo["headers"]["x-thing"], "1");
    assert!(text.to_lowercase().contains("x-backend: b1"), "{text}");
    let rec = b.last_request().expect("request recorded");
    assert_eq!(rec.path, "/a%2Fb/./c//d");

    let raw = raw_exchange(
        b.addr(),
        b"GET //admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw.status(), Some(200), "{}", raw.text());
    assert_eq!(b.last_request().expect("recorded").path, "//admin");

    let h2 = client::h2c();
    let reply = client::send(h2.post(format!("http://{}/x", b.addr())).body("hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    let echo = reply.json();
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["method"], "POST");
    assert_eq!(b.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_switch_status_and_slow() {
    let b = Backend::start("b2").await;
    let c = client::http1();
    let url = |p: &str| format!("http://{}{p}", b.addr());

    assert_eq!(client::get(&c, &url("/healthz")).await.status, 200);
    b.set_healthy(false);
    assert_eq!(client::get(&c, &url("/healthz")).await.status, 503);
    b.set_healthy(true);
    assert_eq!(client::get(&c, &url("/healthz")).await.status, 200);
    assert_eq!(b.health_probes(), 3);
    assert_eq!(b.request_count(), 0, "probes are not recorded as requests");

    let r = client::get(&c, &url("/status/418")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-backend").as_deref(), Some("b2"));

    let start = Instant::now();
    let r = client::get(&c, &url("/slow?ms=300")).await;
    assert_eq!(r.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.json()["query"], "ms=300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo() {
    let b = Backend::start("ws").await;
    let mut ws = client::ws_connect(b.addr(), "ws.test", "/ws")
        .await
        .expect("WebSocket handshake");
    ws.send(Message::text("ping 1")).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5s")
        .expect("stream open")
        .expect("frame");
    assert_eq!(got, Message::text("ping 1"));
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5s")
        .expect("stream open")
        .expect("frame");
    assert_eq!(got, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_echo_has_trailers_over_h2c() {
    let b = Backend::start("grpc").await;
    let reply = client::grpc_call(
        &client::h2c(),
        &format!("http://{}/echo.Echo/Say", b.addr()),
        b"\0\0\0\0\x05hello",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(
        reply.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    assert_eq!(&reply.body[..], b"\0\0\0\0\x05hello");
    let trailers = reply.trailers.expect("trailers present");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"ok"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backend_refuses_connections() {
    let b = Backend::start("dead").await;
    let addr = b.addr();
    b.stop();
    let refused = meshgate_tests::wait::until(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "stopped backend still accepts connections"
    );
}
