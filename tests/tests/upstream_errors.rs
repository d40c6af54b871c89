//! Locally generated answers when the upstream side fails: 502, 503, 504,
//! each with the JSON error body and `x-request-id`.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

fn assert_local_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    let id = body["request_id"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "request_id in body: {body}");
    assert_eq!(
        r.header("x-request-id").as_deref(),
        Some(id),
        "x-request-id header matches the body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_counted() {
    let p = Ports::new();
    let dead = free_port();
    let yaml = format!(
        "{}clusters:\n  dead: {{ endpoints: [127.0.0.1:{dead}], connect_timeout: 500ms }}\nroutes:\n  - {{ name: dead, match: {{ path_prefix: / }}, to: dead }}\n",
        p.preamble("")
    );
    let gw = Meshgate::start(&yaml).await;
    let r = client::get(&client::http1(), &p.url("/x")).await;
    assert_local_error(&r, 502, "bad_gateway");
    let errors = gw
        .metric(
            "meshgate_upstream_connect_errors_total",
            &[("cluster", "dead")],
        )
        .await;
    assert!(
        errors.unwrap_or(0.0) >= 1.0,
        "meshgate_upstream_connect_errors_total{{cluster=\"dead\"}} = {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504() {
    let b = Backend::start("slow").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, to: c, timeout: 300ms }}\n",
        p.preamble(""),
        b.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let start = Instant::now();
    let r = client::get(&client::http1(), &p.url("/slow?ms=3000")).await;
    let took = start.elapsed();
    assert_local_error(&r, 504, "gateway_timeout");
    assert!(
        took < Duration::from_millis(2500),
        "504 came after {took:?}, route timeout is 300ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_unhealthy_is_503() {
    let b = Backend::builder().name("sick").healthy(false).start().await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  c:\n    endpoints: [{}]\n\
         \x20   health_check: {{ path: /healthz, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 1 }}\n\
         routes:\n  - {{ name: r, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble(""),
        b.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let got = wait::until(Duration::from_secs(5), || async {
        let r = client::get(&c, &p.url("/x")).await;
        (r.status == 503).then_some(r)
    })
    .await;
    let r =
        got.unwrap_or_else(|| panic!("no 503 within 5s while the only endpoint fails /healthz"));
    assert_local_error(&r, 503, "no_healthy_upstream");
}
