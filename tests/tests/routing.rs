//! The routing matrix: host, prefix vs exact path, methods, headers; path
//! rewrites; weighted splits; load balancing; active health checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

/// `x-backend` of a reply, or a description of what came back instead.
fn served_by(r: &Reply) -> String {
    r.header("x-backend")
        .unwrap_or_else(|| format!("<no x-backend; status {} body {}>", r.status, r.text()))
}

async fn get_with(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client::send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_exact_wildcard_and_port_ignored() {
    let (b1, b2, b3) = (
        Backend::start("shop").await,
        Backend::start("wild").await,
        Backend::start("rest").await,
    );
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  shop: {{ endpoints: [{}] }}\n  wild: {{ endpoints: [{}] }}\n  rest: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: shop, match: {{ host: shop.local, path_prefix: / }}, to: shop }}\n\
         \x20 - {{ name: wild, match: {{ host: \"*.example.com\", path_prefix: / }}, to: wild }}\n\
         \x20 - {{ name: rest, match: {{ path_prefix: / }}, to: rest }}\n",
        p.preamble(""),
        b1.addr(),
        b2.addr(),
        b3.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let cases = [
        ("shop.local", "shop"),
        ("shop.local:8080", "shop"),
        ("api.example.com", "wild"),
        ("api.example.com:443", "wild"),
        ("example.com", "rest"),
        ("notshop.local", "rest"),
        ("other.test", "rest"),
    ];
    for (host, want) in cases {
        let r = get_with(&c, &p.url("/x"), &[("host", host)]).await;
        assert_eq!(r.status, 200, "Host: {host}: {}", r.text());
        assert_eq!(served_by(&r), want, "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_vs_segment_aware_prefix() {
    let (b1, b2, b3) = (
        Backend::start("exact").await,
        Backend::start("api").await,
        Backend::start("rest").await,
    );
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  exact: {{ endpoints: [{}] }}\n  api: {{ endpoints: [{}] }}\n  rest: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: exact, match: {{ path: /exact }}, to: exact }}\n\
         \x20 - {{ name: api, match: {{ path_prefix: /api }}, to: api }}\n\
         \x20 - {{ name: rest, match: {{ path_prefix: / }}, to: rest }}\n",
        p.preamble(""),
        b1.addr(),
        b2.addr(),
        b3.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let cases = [
        ("/exact", "exact"),
        ("/exact?q=1", "exact"),
        ("/exact/", "rest"),
        ("/exact/more", "rest"),
        ("/exactly", "rest"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/x/y", "api"),
        ("/api?q=1", "api"),
        ("/apix", "rest"),
        ("/ap", "rest"),
        ("/", "rest"),
    ];
    for (path, want) in cases {
        let r = client::get(&c, &p.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(served_by(&r), want, "path {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_header_matches() {
    let (b1, b2, b3) = (
        Backend::start("post").await,
        Backend::start("canary").await,
        Backend::start("rest").await,
    );
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  post: {{ endpoints: [{}] }}\n  canary: {{ endpoints: [{}] }}\n  rest: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: post, match: {{ path_prefix: /m, methods: [POST, PUT] }}, to: post }}\n\
         \x20 - {{ name: canary, match: {{ path_prefix: /m, headers: {{ x-canary: \"1\" }} }}, to: canary }}\n\
         \x20 - {{ name: rest, match: {{ path_prefix: / }}, to: rest }}\n",
        p.preamble(""),
        b1.addr(),
        b2.addr(),
        b3.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let url = p.url("/m/1");

    let r = client::send(c.post(&url).body("x")).await;
    assert_eq!(served_by(&r), "post", "POST matches the methods list");
    let r = client::send(c.put(&url).body("x")).await;
    assert_eq!(served_by(&r), "post", "PUT matches the methods list");
    let r = client::send(c.post(&url).header("x-canary", "1").body("x")).await;
    assert_eq!(served_by(&r), "post", "first match wins");
    let r = get_with(&c, &url, &[("x-canary", "1")]).await;
    assert_eq!(served_by(&r), "canary", "GET with x-canary: 1");
    let r = get_with(&c, &url, &[("x-canary", "2")]).await;
    assert_eq!(served_by(&r), "rest", "header value must match");
    let r = get_with(&c, &url, &[]).await;
    assert_eq!(served_by(&r), "rest", "header missing");
    let r = client::send(c.delete(&url).header("x-canary", "1")).await;
    assert_eq!(
        served_by(&r),
        "canary",
        "DELETE is not in the POST route's methods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_json_answer() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\nroutes:\n  - {{ name: only, match: {{ path_prefix: /only }}, to: c }}\n",
        p.preamble(""),
        b.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let r = client::get(&client::http1(), &p.url("/elsewhere")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "no_route", "{body}");
    let id = body["request_id"]
        .as_str()
        .expect("request_id is a string")
        .to_owned();
    assert!(!id.is_empty());
    assert_eq!(
        r.header("x-request-id").as_deref(),
        Some(id.as_str()),
        "x-request-id header = body request_id"
    );
    assert_eq!(b.request_count(), 0, "nothing reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_and_replace_prefix_keep_the_query() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: strip, match: {{ path_prefix: /api/orders }}, rewrite: {{ strip_prefix: /api }}, to: c }}\n\
         \x20 - {{ name: replace, match: {{ path_prefix: /v1/users }}, rewrite: {{ replace_prefix: /v2/people }}, to: c }}\n\
         \x20 - {{ name: strip-all, match: {{ path_prefix: /gone }}, rewrite: {{ strip_prefix: /gone }}, to: c }}\n",
        p.preamble(""),
        b.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let cases = [
        ("/api/orders/42?x=1&y=2", "/orders/42", Some("x=1&y=2")),
        ("/api/orders", "/orders", None),
        ("/v1/users/7?full=true", "/v2/people/7", Some("full=true")),
        ("/v1/users", "/v2/people", None),
        ("/gone", "/", None),
        ("/gone/x", "/x", None),
    ];
    for (sent, want_path, want_query) in cases {
        let r = client::get(&c, &p.url(sent)).await;
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        let seen = b.last_request().expect("request reached the backend");
        assert_eq!(seen.path, want_path, "backend path for {sent}");
        assert_eq!(
            seen.query.as_deref(),
            want_query,
            "backend query for {sent}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_90_10_within_5_points() {
    let (b1, b2) = (Backend::start("v1").await, Backend::start("v2").await);
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  v1: {{ endpoints: [{}] }}\n  v2: {{ endpoints: [{}] }}\n\
         routes:\n  - name: split\n    match: {{ path_prefix: / }}\n    split: [{{ cluster: v1, weight: 90 }}, {{ cluster: v2, weight: 10 }}]\n",
        p.preamble(""),
        b1.addr(),
        b2.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let total = 2000;
    let reqs = (0..total)
        .map(|i| c.get(p.url(&format!("/s/{i}"))))
        .collect();
    let results = client::send_all(reqs, 16).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &results {
        let r = r.as_ref().unwrap_or_else(|e| panic!("request failed: {e}"));
        assert_eq!(r.status, 200, "{}", r.text());
        *counts.entry(served_by(r)).or_default() += 1;
    }
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, total, "every request went to v1 or v2: {counts:?}");
    let share = v1 as f64 * 100.0 / total as f64;
    assert!(
        (85.0..=95.0).contains(&share),
        "v1 got {share:.1}% (want 90 ± 5): {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests() {
    let (b1, b2) = (Backend::start("e1").await, Backend::start("e2").await);
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}, {}], load_balancing: round_robin }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble(""),
        b1.addr(),
        b2.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    for i in 0..100 {
        let r = client::get(&c, &p.url(&format!("/rr/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (n1, n2) = (b1.request_count(), b2.request_count());
    assert_eq!(n1 + n2, 100);
    assert!(
        (40..=60).contains(&n1),
        "round robin split 100 requests as {n1}/{n2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_load_balancing_is_sticky_per_header() {
    let backends = [
        Backend::start("h1").await,
        Backend::start("h2").await,
        Backend::start("h3").await,
    ];
    let p = Ports::new();
    let endpoints = backends
        .iter()
        .map(|b| b.addr().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{endpoints}], load_balancing: \"hash(header:x-user)\" }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble("")
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..8 {
        for user in 0..24 {
            let user = format!("user-{user}");
            let r = get_with(&c, &p.url(&format!("/h/{round}")), &[("x-user", &user)]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let by = served_by(&r);
            let first = owner.entry(user.clone()).or_insert_with(|| by.clone());
            assert_eq!(
                *first, by,
                "{user} moved from {first} to {by} in round {round}"
            );
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "24 users all hashed to one endpoint: {owner:?}"
    );
}

fn health_checked_config(p: &Ports, a: &Backend, b: &Backend) -> String {
    format!(
        "{}clusters:\n  c:\n    endpoints: [{}, {}]\n    load_balancing: round_robin\n    connect_timeout: 500ms\n\
         \x20   health_check: {{ path: /healthz, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 1 }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble(""),
        a.addr(),
        b.addr()
    )
}

/// Sends `n` requests and returns who served each (or the failure).
async fn batch(c: &reqwest::Client, p: &Ports, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match c.get(p.url(&format!("/hc/{i}"))).send().await {
            Ok(resp) => {
                let r = Reply::read(resp).await;
                out.push(if r.status == 200 {
                    served_by(&r)
                } else {
                    format!("status {}", r.status)
                });
            }
            Err(e) => out.push(format!("transport error {e}")),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_endpoint_is_removed_within_two_intervals_and_restored() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let p = Ports::new();
    let _gw = Meshgate::start(&health_checked_config(&p, &a, &b)).await;
    let c = client::http1();

    wait::assert_eventually(
        Duration::from_secs(5),
        "both endpoints probed on /healthz",
        || async { a.health_probes() > 0 && b.health_probes() > 0 },
    )
    .await;
    wait::assert_eventually(
        Duration::from_secs(5),
        "both endpoints serve traffic",
        || async {
            let got = batch(&c, &p, 6).await;
            got.iter().any(|s| s == "a") && got.iter().any(|s| s == "b")
        },
    )
    .await;

    b.set_healthy(false);
    let marked = Instant::now();
    // interval 1s x unhealthy_after 2, plus one second of slack for probe
    // timing.
    let removed = wait::until(Duration::from_secs(3), || async {
        batch(&c, &p, 6)
            .await
            .iter()
            .all(|s| s == "a")
            .then_some(())
    })
    .await;
    assert!(
        removed.is_some(),
        "endpoint b still served traffic {:?} after /healthz turned 503 (probes to b: {})",
        marked.elapsed(),
        b.health_probes()
    );
    let steady = batch(&c, &p, 30).await;
    assert!(
        steady.iter().all(|s| s == "a"),
        "b came back while unhealthy: {steady:?}"
    );

    b.set_healthy(true);
    let restored = wait::until(Duration::from_secs(3), || async {
        batch(&c, &p, 6)
            .await
            .iter()
            .any(|s| s == "b")
            .then_some(())
    })
    .await;
    assert!(
        restored.is_some(),
        "b not restored within 3s of /healthz answering 200 again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_is_removed_and_restored_when_it_comes_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let b_port = b.addr().port();
    let p = Ports::new();
    let _gw = Meshgate::start(&health_checked_config(&p, &a, &b)).await;
    let c = client::http1();
    wait::assert_eventually(
        Duration::from_secs(5),
        "both endpoints serve traffic",
        || async {
            let got = batch(&c, &p, 6).await;
            got.iter().any(|s| s == "a") && got.iter().any(|s| s == "b")
        },
    )
    .await;

    drop(b);
    let removed = wait::until(Duration::from_secs(3), || async {
        batch(&c, &p, 6)
            .await
            .iter()
            .all(|s| s == "a")
            .then_some(())
    })
    .await;
    assert!(
        removed.is_some(),
        "requests still failed or went to the dead endpoint 3s after it stopped: {:?}",
        batch(&c, &p, 6).await
    );

    let b = Backend::builder().name("b").port(b_port).start().await;
    let restored = wait::until(Duration::from_secs(3), || async {
        batch(&c, &p, 6)
            .await
            .iter()
            .any(|s| s == "b")
            .then_some(())
    })
    .await;
    assert!(
        restored.is_some(),
        "restarted endpoint not used within 3s (probes seen: {})",
        b.health_probes()
    );
}
