//! `api_key` and `cors` through the real proxy: keys checked against a file of SHA-256 hashes
//! (401 with `WWW-Authenticate` when missing or wrong, the key header never forwarded, the
//! client's name as the `api_key` rate-limit key), and CORS handled by the proxy (preflights
//! answered with 204 or refused with 403, exact and `*.example.com` origins, credentialed
//! answers naming the origin, nothing for other origins, and CORS headers on the proxy's own
//! 401 and 429 answers so browser code can read them).
//!
//! The route's filter order is the recommended one: `cors` first (a browser's preflight
//! carries no key and must not be refused for lacking one), then `api_key`, then the limit.

use std::path::Path;
use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

/// Two clients and their keys. The keys file gets only the hashes,
/// `printf %s KEY | sha256sum`.
const KEY_A: &str = "mg-test-key-client-a-7d41c2";
const HASH_A: &str = "c17b9e4c4f09e6a1ca482e14ba043bdd3809ec36c5ab1771e41a12359ca9d16e";
const KEY_B: &str = "mg-test-key-client-b-93e0aa";
const HASH_B: &str = "863d3fd454ef16c09f5e92b843fb269b1946ee713c1c0aee48ee2b7f55734ee9";

const SHOP: &str = "https://shop.example";
const EVIL: &str = "https://evil.example";

/// Writes the keys file into `dir` and returns its absolute path.
fn keys_file(dir: &Path) -> String {
    let path = dir.join("api-keys.yaml");
    let text = format!(
        "# SHA-256 of each key; the keys themselves are never stored\n\
         - {{ name: client-a, sha256: {HASH_A} }}\n\
         - {{ name: client-b, sha256: {HASH_B} }}\n"
    );
    std::fs::write(&path, &text).expect("write keys file");
    assert!(!text.contains(KEY_A) && !text.contains(KEY_B));
    path.to_string_lossy().into_owned()
}

/// Route `api` (`/api`, GET and POST): cors, api_key, then 2 requests/min per API client.
/// Route `open` (`/open`): api_key only.
async fn gateway(b: &Backend, keys: &str) -> (Ports, Meshgate) {
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - name: api\n\
         \x20   match: {{ path_prefix: /api, methods: [GET, POST] }}\n\
         \x20   to: c\n\
         \x20   filters:\n\
         \x20     - cors: {{ origins: [\"{SHOP}\", \"https://*.example.com\"], methods: [GET, POST], headers: [content-type, x-csrf], credentials: true, max_age: 10m }}\n\
         \x20     - api_key: {{ header: x-api-key, keys_file: \"{keys}\" }}\n\
         \x20     - rate_limit: {{ key: api_key, rate: 1/min, burst: 2, headers: true }}\n\
         \x20 - name: open\n\
         \x20   match: {{ path_prefix: /open }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ api_key: {{ header: x-api-key, keys_file: \"{keys}\" }} }} ]\n",
        p.preamble(""),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (p, gw)
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = c.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client::send(req).await
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.json()["error"], "unauthorized", "{what}");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("ApiKey header=\"x-api-key\""),
        "{what}"
    );
}

fn assert_no_cors(r: &Reply, what: &str) {
    for h in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
    ] {
        assert!(
            r.header(h).is_none(),
            "{what}: {h} must be absent: {:?}",
            r.headers
        );
    }
}

fn assert_cors_for(r: &Reply, origin: &str, what: &str) {
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some(origin),
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_missing_wrong_right_and_never_forwarded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = keys_file(dir.path());
    let b = Backend::start("b").await;
    let (p, gw) = gateway(&b, &keys).await;
    let c = client::http1();
    let url = p.url("/open/x");

    let refused: [(&str, &[(&str, &str)]); 6] = [
        ("missing", &[]),
        ("empty", &[("x-api-key", "")]),
        ("wrong", &[("x-api-key", "mg-test-key-client-a-7d41c3")]),
        ("the hash instead of the key", &[("x-api-key", HASH_A)]),
        ("in another header", &[("authorization", KEY_A)]),
        ("two values", &[("x-api-key", KEY_B), ("x-api-key", KEY_A)]),
    ];
    for (what, headers) in refused {
        let r = send(&c, reqwest::Method::GET, &url, headers).await;
        assert_unauthorized(&r, what);
    }
    assert_eq!(
        b.request_count(),
        0,
        "refused requests never reach the backend"
    );

    for key in [KEY_A, KEY_B] {
        let r = send(
            &c,
            reqwest::Method::GET,
            &url,
            &[("x-api-key", key), ("x-other", "kept")],
        )
        .await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        let seen = b.last_request().expect("forwarded");
        assert_eq!(
            seen.header("x-api-key"),
            None,
            "the key is removed before forwarding"
        );
        assert_eq!(seen.header("x-other").as_deref(), Some("kept"));
        assert!(
            !r.text().contains(key),
            "the backend's echo of the request must not contain the key"
        );
    }
    assert_eq!(b.request_count(), 2);
    let logs = gw.logs();
    assert!(
        !logs.contains(KEY_A) && !logs.contains(KEY_B),
        "keys must not be logged"
    );
    let (_, config) = gw.admin_get("/config").await;
    assert!(!config.contains(KEY_A) && !config.contains(HASH_A));
}

/// `key: api_key` counts per client name: client-a's 3rd request is refused while client-b,
/// from the same address, still has its own 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_limits_are_per_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = keys_file(dir.path());
    let b = Backend::start("b").await;
    let (p, gw) = gateway(&b, &keys).await;
    let c = client::http1();
    let url = p.url("/api/orders");
    let mut seen = Vec::new();
    for key in [KEY_A, KEY_A, KEY_A, KEY_B, KEY_B, KEY_B, KEY_A] {
        let r = send(&c, reqwest::Method::GET, &url, &[("x-api-key", key)]).await;
        seen.push((r.status, r.header("ratelimit-remaining")));
    }
    let want = |s: u16, rem: &str| (s, Some(rem.to_owned()));
    assert_eq!(
        seen,
        [
            want(200, "1"),
            want(200, "0"),
            want(429, "0"),
            want(200, "1"),
            want(200, "0"),
            want(429, "0"),
            want(429, "0"),
        ],
        "(status, RateLimit-Remaining) per request: client-a ×3, client-b ×3, client-a"
    );
    assert_eq!(b.request_count(), 4);
    // The client name is a metrics label and an access-log field.
    let metric = |class: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(
                "meshgate_api_client_requests_total",
                &[("client", "client-a"), ("status_class", class)],
            )
            .await
            .unwrap_or(0.0)
        }
    };
    assert_eq!(metric("2xx").await, 2.0);
    assert_eq!(metric("4xx").await, 2.0);
    let logged = wait::until(Duration::from_secs(5), || async {
        let n = gw
            .access_log()
            .iter()
            .filter(|l| l["api_client"] == "client-b")
            .count();
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(logged, Some(3), "access-log lines naming client-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_credentialed_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = keys_file(dir.path());
    let b = Backend::start("b").await;
    let (p, _gw) = gateway(&b, &keys).await;
    let c = client::http1();
    let url = p.url("/api/orders");
    let options = reqwest::Method::OPTIONS;

    // Preflight from an allowed origin: answered by the proxy, without an API key, even
    // though the route's `match` lists only GET and POST.
    for origin in [SHOP, "https://api.example.com", "https://Shop.Example"] {
        let r = send(
            &c,
            options.clone(),
            &url,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type,x-csrf"),
            ],
        )
        .await;
        assert_eq!(r.status, 204, "preflight from {origin}: {}", r.text());
        assert_cors_for(&r, origin, origin);
        assert_eq!(
            r.header("access-control-allow-methods").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            r.header("access-control-allow-headers").as_deref(),
            Some("content-type, x-csrf")
        );
        assert_eq!(r.header("access-control-max-age").as_deref(), Some("600"));
        assert!(
            r.header("vary").is_some_and(|v| v.contains("Origin")),
            "{:?}",
            r.headers
        );
        assert!(r.body.is_empty());
    }
    // Preflight from origins the policy does not allow: 403, no CORS headers.
    for origin in [
        EVIL,
        "https://shop.example.evil.com",
        "http://shop.example",
        "https://a.b.example.com",
        "https://example.com",
        "null",
    ] {
        let r = send(
            &c,
            options.clone(),
            &url,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
        )
        .await;
        assert_eq!(r.status, 403, "preflight from {origin}: {}", r.text());
        assert_eq!(r.json()["error"], "forbidden");
        assert_no_cors(&r, origin);
    }
    assert_eq!(b.request_count(), 0, "preflights never reach the backend");

    // A credentialed request from an allowed origin: the origin itself (never `*`) and
    // Allow-Credentials; from another origin: served, but nothing a browser would accept.
    let r = send(
        &c,
        reqwest::Method::GET,
        &url,
        &[("origin", SHOP), ("x-api-key", KEY_A), ("cookie", "s=1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_cors_for(&r, SHOP, "credentialed GET from the shop");
    assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));
    let r = send(
        &c,
        reqwest::Method::POST,
        &url,
        &[("origin", "https://app.example.com"), ("x-api-key", KEY_B)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_cors_for(&r, "https://app.example.com", "wildcard origin");
    let r = send(
        &c,
        reqwest::Method::GET,
        &url,
        &[("origin", EVIL), ("x-api-key", KEY_B)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_cors(&r, "GET from a disallowed origin");
    assert!(
        !r.headers.iter().any(|(_, v)| v
            .as_bytes()
            .windows(EVIL.len())
            .any(|w| w == EVIL.as_bytes())),
        "the disallowed origin is reflected somewhere: {:?}",
        r.headers
    );

    // The proxy's own refusals carry CORS headers for allowed origins: a 401...
    let r = send(&c, reqwest::Method::GET, &url, &[("origin", SHOP)]).await;
    assert_unauthorized(&r, "no key, from the shop");
    assert_cors_for(&r, SHOP, "401");
    let r = send(&c, reqwest::Method::GET, &url, &[("origin", EVIL)]).await;
    assert_unauthorized(&r, "no key, from evil");
    assert_no_cors(&r, "401 for a disallowed origin");
    // ...and a 429 (client-a used 1 of 2 above; client-b used 2).
    let r = send(
        &c,
        reqwest::Method::GET,
        &url,
        &[("origin", SHOP), ("x-api-key", KEY_B)],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_cors_for(&r, SHOP, "429");
    let r = send(
        &c,
        reqwest::Method::GET,
        &url,
        &[("origin", EVIL), ("x-api-key", KEY_B)],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_no_cors(&r, "429 for a disallowed origin");
}
