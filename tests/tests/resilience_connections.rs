//! Local answers of the resilience features and the client's keep-alive
//! connection: after a breaker 503, a 504 from the route timeout, a 502
//! after exhausted connect retries or a fault abort, the client connection
//! must either stay usable or the answer must say `Connection: close`.
//! Silently closing a connection that was advertised as keep-alive makes the
//! client's next request on it fail with a reset (a leaked failure).
//!
//! Raw TCP, so the outcome does not depend on a client library's pool
//! timing.

use std::net::SocketAddr;
use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::Meshgate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 response read off a connection.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one `Content-Length`-framed response; `Err` with what happened if
/// the connection closed or broke first, or nothing came within 5 s.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, String> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = client::parse_status(&buf[..end + 2])
                .ok_or_else(|| format!("not an HTTP/1.x response: {text:?}"))?;
            let headers: Vec<(String, String)> = text
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .ok_or_else(|| format!("response without Content-Length: {text:?}"))?;
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok(Head { status, headers });
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Err(_) => return Err("no complete response within 5s".into()),
            Ok(Ok(0)) => return Err("connection closed by the proxy".into()),
            Ok(Err(e)) => return Err(format!("read error: {e}")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `GET first` and then `GET /ok` on the same connection. Passes when
/// the first answer has `first_status` and either says `Connection: close`
/// or the second request is answered 200.
async fn assert_connection_survives(addr: SocketAddr, first: &str, first_status: u16) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut buf = Vec::new();
    let req = format!("GET {first} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write first");
    let head = read_response(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("first request {first}: {e}"));
    assert_eq!(head.status, first_status, "first answer: {head:?}");
    if head.says_close() {
        return;
    }
    let second = stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .map_err(|e| format!("write error: {e}"));
    let outcome = match second {
        Ok(()) => read_response(&mut stream, &mut buf).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(h) => assert_eq!(h.status, 200, "second answer on the connection: {h:?}"),
        Err(e) => panic!(
            "after the {first_status} for {first} (headers {:?}, no `Connection: close`), \
             the next request on the same connection failed: {e}",
            head.headers
        ),
    }
}

/// Routes: `/breaker` (one endpoint answering 503, breaker opens after one
/// failure), `/timeout` (backend 5 s slow, route timeout 300 ms), `/dead`
/// (nothing listening, connect failures retried), `/fault` (abort 100%),
/// `/ok` (healthy).
async fn start(p: &Ports, failing: &Backend, slow: &Backend, healthy: &Backend) -> Meshgate {
    let dead = free_port();
    let yaml = format!(
        "{}clusters:\n\
         \x20 cb:\n\
         \x20   endpoints: [{}]\n\
         \x20   circuit_breaker: {{ consecutive_failures: 1, min_requests: 0, open_for: 60s }}\n\
         \x20 slow: {{ endpoints: [{}] }}\n\
         \x20 dead: {{ endpoints: [127.0.0.1:{dead}], connect_timeout: 500ms }}\n\
         \x20 ok: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: breaker, match: {{ path_prefix: /breaker }}, to: cb }}\n\
         \x20 - {{ name: timeout, match: {{ path_prefix: /timeout }}, to: slow, timeout: 300ms }}\n\
         \x20 - name: dead\n\
         \x20   match: {{ path_prefix: /dead }}\n\
         \x20   to: dead\n\
         \x20   filters: [ {{ retry: {{ attempts: 2, backoff: 5ms..20ms }} }} ]\n\
         \x20 - name: fault\n\
         \x20   match: {{ path_prefix: /fault }}\n\
         \x20   to: ok\n\
         \x20   filters: [ {{ fault: {{ abort: {{ status: 503, percent: 100 }} }} }} ]\n\
         \x20 - {{ name: ok, match: {{ path_prefix: /ok }}, to: ok }}\n",
        p.preamble(""),
        failing.addr(),
        slow.addr(),
        healthy.addr()
    );
    Meshgate::start(&yaml).await
}

struct Setup {
    p: Ports,
    _backends: [Backend; 3],
    _gw: Meshgate,
}

async fn setup() -> Setup {
    let failing = Backend::start("failing").await;
    failing.set_always(Some(503));
    let slow = Backend::start("slow").await;
    slow.set_delay(Some(Duration::from_secs(5)));
    let healthy = Backend::start("ok").await;
    let p = Ports::new();
    let gw = start(&p, &failing, &slow, &healthy).await;
    Setup {
        p,
        _backends: [failing, slow, healthy],
        _gw: gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_survives_a_breaker_answer() {
    let s = setup().await;
    // One upstream 503 opens the breaker.
    let r = client::get(&client::http1(), &s.p.url("/breaker/open-it")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.header("x-backend").is_some(),
        "first 503 came from upstream"
    );
    assert_connection_survives(s.p.public_addr(), "/breaker/x", 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_survives_a_route_timeout_504() {
    let s = setup().await;
    assert_connection_survives(s.p.public_addr(), "/timeout/x", 504).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_survives_a_502_after_exhausted_connect_retries() {
    let s = setup().await;
    assert_connection_survives(s.p.public_addr(), "/dead/x", 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_survives_a_fault_abort() {
    let s = setup().await;
    assert_connection_survives(s.p.public_addr(), "/fault/x", 503).await;
}
