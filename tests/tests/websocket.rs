//! WebSocket upgrades pass through the proxy and carry frames both ways.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_and_echo_through_the_proxy() {
    let b = Backend::start("ws").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  ws: {{ endpoints: [{}] }}\nroutes:\n  - {{ name: ws, match: {{ path_prefix: /ws }}, to: ws }}\n",
        p.preamble(""),
        b.addr()
    );
    let _gw = Meshgate::start(&yaml).await;

    let mut ws = client::ws_connect(p.public_addr(), "gw.test", "/ws")
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade through meshgate: {e}"));
    for i in 0..20 {
        let msg = Message::text(format!("message {i}"));
        ws.send(msg.clone()).await.expect("send frame");
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no echo for frame {i} within 5s"))
            .expect("connection open")
            .expect("valid frame");
        assert_eq!(got, msg);
    }
    let big = Message::binary(vec![7u8; 200_000]);
    ws.send(big.clone()).await.expect("send big frame");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo of a 200 kB frame within 5s")
        .expect("connection open")
        .expect("valid frame");
    assert_eq!(got, big);
    ws.close(None).await.expect("close");

    let seen = b
        .last_request()
        .expect("upgrade request reached the backend");
    assert_eq!(seen.path, "/ws");
    assert!(
        seen.header("x-request-id").is_some(),
        "upgrade request carries x-request-id"
    );
}
