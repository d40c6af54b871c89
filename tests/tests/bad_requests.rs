//! Downstream protection: malformed request lines, oversized headers,
//! Content-Length + Transfer-Encoding, bodies over `body_limit`, and a client
//! trickling its header. After each, the proxy is alive and serves others.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, raw_exchange, RawOutcome};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> (Backend, Ports, Meshgate) {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\nroutes:\n\
         \x20 - name: small\n    match: {{ path_prefix: /small }}\n    to: c\n    filters:\n      - body_limit: 1KB\n\
         \x20 - {{ name: all, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble("header_read_timeout: 1s, max_header_size: 16KiB"),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (b, p, gw)
}

/// The proxy process is still running and a normal request still works.
async fn still_serving(p: &Ports, gw: &mut Meshgate, after: &str) {
    assert!(
        gw.try_exit().is_none(),
        "meshgate exited after {after}:\n{}",
        gw.logs()
    );
    let r = client::get(&client::http1(), &p.url("/ok")).await;
    assert_eq!(r.status, 200, "normal request after {after}: {}", r.text());
}

fn assert_error_body(out: &RawOutcome, code: &str) {
    let body: serde_json::Value = serde_json::from_str(&out.body())
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", out.text()));
    assert_eq!(body["error"], code, "{}", out.text());
    assert!(
        out.header("x-request-id").is_some(),
        "x-request-id on the error: {}",
        out.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_lines_get_400_or_a_closed_connection() {
    let (b, p, mut gw) = start().await;
    let cases: [&[u8]; 5] = [
        b"GET\r\n\r\n",
        b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\x03 junk\r\n\r\n",
        b"GET /x HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header Name: v\r\n\r\n",
    ];
    for raw in cases {
        let shown = String::from_utf8_lossy(raw).into_owned();
        let out = raw_exchange(p.public_addr(), raw, Duration::from_secs(5)).await;
        match out.status() {
            Some(400) => {}
            None => assert!(
                out.closed && out.bytes.is_empty(),
                "{shown:?}: expected 400 or a closed connection, got {:?} (closed: {})",
                out.text(),
                out.closed
            ),
            Some(other) => panic!("{shown:?}: expected 400, got {other}: {}", out.text()),
        }
        still_serving(&p, &mut gw, &format!("request {shown:?}")).await;
    }
    assert!(
        b.requests().iter().all(|r| r.path == "/ok"),
        "no malformed request reached the backend: {:?}",
        b.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (b, p, mut gw) = start().await;
    let under = format!(
        "GET /under HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let out = raw_exchange(p.public_addr(), under.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(
        out.status(),
        Some(200),
        "8 KiB header under a 16 KiB limit: {}",
        out.text()
    );

    let one_big = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let many: String = (0..120)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(170)))
        .collect();
    let many = format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (what, req) in [
        ("one 32 KiB header", one_big),
        ("120 headers of ~180 bytes (21 KiB)", many),
    ] {
        let out = raw_exchange(p.public_addr(), req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(out.status(), Some(431), "{what}: {}", out.text());
        assert_error_body(&out, "request_header_fields_too_large");
        still_serving(&p, &mut gw, what).await;
    }

    // More header fields than the parser takes (each one small, 6 KiB in
    // all): refused either way, never forwarded.
    let count: String = (0..300).map(|i| format!("X-C{i}: c\r\n")).collect();
    let count = format!("GET /count HTTP/1.1\r\nHost: x\r\n{count}\r\n");
    let out = raw_exchange(p.public_addr(), count.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        matches!(out.status(), Some(400 | 431)),
        "300 header fields: expected 400 or 431, got {}",
        out.text()
    );
    still_serving(&p, &mut gw, "300 header fields").await;

    assert!(
        b.requests()
            .iter()
            .all(|r| r.path != "/big" && r.path != "/many" && r.path != "/count"),
        "oversized requests must not reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400_and_closed() {
    let (b, p, mut gw) = start().await;
    let smuggle = b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = raw_exchange(p.public_addr(), smuggle, Duration::from_secs(5)).await;
    assert_eq!(out.status(), Some(400), "{}", out.text());
    assert!(
        out.closed,
        "connection must be closed after CL+TE (still open after 5s): {}",
        out.text()
    );
    assert_eq!(
        out.text().matches("HTTP/1.1").count(),
        1,
        "exactly one response: {}",
        out.text()
    );
    assert_error_body(&out, "bad_request");
    still_serving(&p, &mut gw, "CL+TE").await;
    let paths: Vec<String> = b.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        !paths.iter().any(|p| p == "/cl-te" || p == "/smuggled"),
        "nothing of the CL+TE request reached the backend: {paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_by_content_length_is_413() {
    let (b, p, mut gw) = start().await;
    let c = client::http1();
    let r = client::send(c.post(p.url("/small")).body(vec![b'x'; 1000])).await;
    assert_eq!(
        r.status,
        200,
        "exactly the limit (1KB = 1000 bytes) passes: {}",
        r.text()
    );

    let r = client::send(c.post(p.url("/small/x")).body(vec![b'x'; 5000])).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "payload_too_large");
    assert!(r.header("x-request-id").is_some());
    assert!(
        b.requests().iter().all(|r| r.path != "/small/x"),
        "an over-limit Content-Length is refused before reaching the backend"
    );

    let r = client::send(c.post(p.url("/other")).body(vec![b'x'; 5000])).await;
    assert_eq!(r.status, 200, "routes without body_limit accept it");
    still_serving(&p, &mut gw, "413 by Content-Length").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_limit_is_413() {
    let (_b, p, mut gw) = start().await;
    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    let mut req = b"POST /small/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(chunk.as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw_exchange(p.public_addr(), &req, Duration::from_secs(10)).await;
    assert_eq!(
        out.status(),
        Some(413),
        "1800 chunked bytes over a 1000-byte limit: {}",
        out.text()
    );

    let mut ok = b"POST /small/chunked-ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    ok.extend_from_slice(chunk.as_bytes());
    ok.extend_from_slice(b"0\r\n\r\n");
    let out = raw_exchange(p.public_addr(), &ok, Duration::from_secs(10)).await;
    assert_eq!(
        out.status(),
        Some(200),
        "600 chunked bytes pass: {}",
        out.text()
    );
    still_serving(&p, &mut gw, "413 on a chunked body").await;
}

/// Trickles a request header on `stream`, one byte every 200 ms, and returns how long after
/// the first byte the proxy closed the connection (`None`: still open after 12 s). While it
/// trickles, another client is served.
async fn trickle_until_cut(stream: TcpStream, p: &Ports) -> Option<Duration> {
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    });
    let header = b"GET /trickle HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut checked_others = false;
    loop {
        if reader.is_finished() {
            return reader.await.ok();
        }
        if start.elapsed() > Duration::from_secs(12) {
            return None;
        }
        let i = usize::try_from(start.elapsed().as_millis() / 200).unwrap_or(0);
        let byte = header.get(i).copied().unwrap_or(b'a');
        if wr.write_all(&[byte]).await.is_err() {
            return Some(start.elapsed());
        }
        if !checked_others && start.elapsed() > Duration::from_millis(400) {
            // Others are served while the trickle is in progress.
            let r = client::get(&client::http1(), &p.url("/ok")).await;
            assert_eq!(r.status, 200);
            checked_others = true;
        }
        // Pacing of the trickle, not synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_trickle_is_cut_off() {
    let (_b, p, mut gw) = start().await;
    let stream = TcpStream::connect(p.public_addr()).await.expect("connect");
    let cut_after = trickle_until_cut(stream, &p).await.unwrap_or_else(|| {
        panic!("trickling client still connected after 12s (header_read_timeout: 1s)")
    });
    assert!(
        cut_after < Duration::from_secs(4),
        "trickling client cut after {cut_after:?}; header_read_timeout is 1s"
    );
    still_serving(&p, &mut gw, "header trickle").await;
}

/// Reads one response with a `Content-Length` body from `stream`.
async fn read_one_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some((head_end, len)) = client::response_head(&got) {
            let len = len.expect("content-length on the response");
            if got.len() >= head_end + len {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response within 10s")
            .expect("read");
        assert!(n > 0, "connection closed before the whole response");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The deadline timer is armed lazily: the first request's timer is still pending when the
/// second request begins, fires at the first deadline and must be moved on to the second's.
/// The client stalls rather than trickles, so only that timer can wake the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_header_on_a_kept_alive_connection_is_cut_off() {
    let (_b, p, mut gw) = start().await;
    let mut stream = TcpStream::connect(p.public_addr()).await.expect("connect");
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("first request");
    let first = read_one_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The next request starts 150 ms later: inside the first one's timer period, far enough
    // from its deadline to tell the two apart, and before an idle connection leaves its
    // task (250 ms). It stops halfway through its header.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = Instant::now();
    stream
        .write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("second request's first bytes");
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(12), stream.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0) | Err(_)) => break Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    };
    let cut_after = closed.unwrap_or_else(|| {
        panic!("stalled second request still connected after 12s (header_read_timeout: 1s)")
    });
    assert!(
        cut_after < Duration::from_secs(4),
        "stalled second request cut after {cut_after:?}; header_read_timeout is 1s"
    );
    still_serving(&p, &mut gw, "a stalled header on a kept-alive connection").await;
}
