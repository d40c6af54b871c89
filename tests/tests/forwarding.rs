//! What the upstream receives besides the path: request id, trace context,
//! X-Forwarded-* (trusting only configured hops), and the `headers` filter.

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; returns the trace id.
fn trace_id(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    match parts.as_slice() {
        [v, t, p, f] if is_hex(v, 2) && is_hex(t, 32) && is_hex(p, 16) && is_hex(f, 2) => {
            Some((*t).to_owned())
        }
        _ => None,
    }
}

async fn start(trusted: &str) -> (Backend, Ports, Meshgate) {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}trusted_proxies: [{trusted}]\nclusters:\n  c: {{ endpoints: [{}] }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble(""),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (b, p, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_generated_or_passed_on() {
    let (b, p, _gw) = start("").await;
    let c = client::http1();

    let r = client::get(&c, &p.url("/a")).await;
    assert_eq!(r.status, 200);
    let generated = b
        .last_request()
        .and_then(|r| r.header("x-request-id"))
        .expect("x-request-id upstream");
    assert!(
        is_hex(&generated, 32),
        "generated id is 32 hex chars: {generated:?}"
    );

    client::get(&c, &p.url("/b")).await;
    let second = b
        .last_request()
        .and_then(|r| r.header("x-request-id"))
        .expect("x-request-id upstream");
    assert_ne!(generated, second, "each request gets its own id");

    let mine = "0af7651916cd43dd8448eb211c80319c";
    client::send(c.get(p.url("/c")).header("x-request-id", mine)).await;
    let seen = b.last_request().and_then(|r| r.header("x-request-id"));
    assert_eq!(
        seen.as_deref(),
        Some(mine),
        "a valid client id is passed on"
    );

    let bad = "x".repeat(300);
    client::send(c.get(p.url("/d")).header("x-request-id", &bad)).await;
    let seen = b
        .last_request()
        .and_then(|r| r.header("x-request-id"))
        .expect("x-request-id upstream");
    assert_ne!(seen, bad, "an invalid (300-char) client id is replaced");
    assert!(is_hex(&seen, 32), "replacement is 32 hex chars: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_kept_or_created() {
    let (b, p, _gw) = start("").await;
    let c = client::http1();

    client::get(&c, &p.url("/a")).await;
    let created = b
        .last_request()
        .and_then(|r| r.header("traceparent"))
        .expect("traceparent upstream");
    assert!(
        trace_id(&created).is_some(),
        "created traceparent is W3C-shaped: {created:?}"
    );

    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    client::send(c.get(p.url("/b")).header("traceparent", theirs)).await;
    let seen = b
        .last_request()
        .and_then(|r| r.header("traceparent"))
        .expect("traceparent upstream");
    assert_eq!(
        trace_id(&seen).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "client's trace id is kept: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let (b, p, _gw) = start("").await;
    let c = client::http1();
    client::send(
        c.get(p.url("/a"))
            .header("host", "shop.local:8080")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.test"),
    )
    .await;
    let seen = b.last_request().expect("request reached the backend");
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "spoofed XFF replaced by the peer"
    );
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    let host = seen.header("x-forwarded-host").unwrap_or_default();
    assert!(
        host == "shop.local:8080" || host == "shop.local",
        "x-forwarded-host from Host, got {host:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_peer_is_appended() {
    let (b, p, _gw) = start("127.0.0.0/8").await;
    let c = client::http1();
    client::send(c.get(p.url("/a")).header("x-forwarded-for", "1.2.3.4")).await;
    let seen = b.last_request().expect("request reached the backend");
    let xff = seen.header("x-forwarded-for").unwrap_or_default();
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(
        hops,
        ["1.2.3.4", "127.0.0.1"],
        "trusted peer's XFF is kept and the peer appended: {xff:?}"
    );

    client::get(&c, &p.url("/b")).await;
    let seen = b.last_request().expect("request reached the backend");
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_filter_rewrites_request_and_response() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    to: c\n    filters:\n\
         \x20     - headers: {{ request: {{ set: {{ x-env: dev }}, add: {{ x-a: b }}, remove: [x-debug] }}, response: {{ set: {{ x-served-by: meshgate }}, remove: [x-backend] }} }}\n",
        p.preamble(""),
        b.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let r = client::send(
        client::http1()
            .get(p.url("/h"))
            .header("x-env", "prod")
            .header("x-debug", "1")
            .header("x-a", "a"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = b.last_request().expect("request reached the backend");
    assert_eq!(seen.header("x-env").as_deref(), Some("dev"), "set replaces");
    assert!(seen.header("x-debug").is_none(), "x-debug removed");
    let added: Vec<String> = seen
        .headers
        .get_all("x-a")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    assert!(
        added.contains(&"a".to_owned()) && added.contains(&"b".to_owned()),
        "add keeps the client's value and adds one: {added:?}"
    );
    assert_eq!(r.header("x-served-by").as_deref(), Some("meshgate"));
    assert!(r.header("x-backend").is_none(), "response header removed");
}
