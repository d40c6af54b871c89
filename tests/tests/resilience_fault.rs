//! The `fault` route filter end to end: aborts answer the configured status
//! without touching the upstream, delays hold the request for at least the
//! configured time, and `percent: 0` changes nothing.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;

/// Routes `/abort` and `/teapot` (abort 100% with 503 and 418), `/delay`
/// (300 ms delay, 100%), `/zero` (abort and a 5 s delay, both 0%), all to
/// `b`.
fn config(p: &Ports, b: &Backend) -> String {
    format!(
        "{}clusters:\n  c: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - name: abort\n\
         \x20   match: {{ path_prefix: /abort }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ fault: {{ abort: {{ status: 503, percent: 100 }} }} }} ]\n\
         \x20 - name: abort-418\n\
         \x20   match: {{ path_prefix: /teapot }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ fault: {{ abort: {{ status: 418, percent: 100% }} }} }} ]\n\
         \x20 - name: delay\n\
         \x20   match: {{ path_prefix: /delay }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ fault: {{ delay: {{ duration: 300ms, percent: 100 }} }} }} ]\n\
         \x20 - name: zero\n\
         \x20   match: {{ path_prefix: /zero }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ fault: {{ abort: {{ status: 500, percent: 0 }}, delay: {{ duration: 5s, percent: 0 }} }} }} ]\n",
        p.preamble(""),
        b.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_100_percent_answers_the_configured_status_locally() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let _gw = Meshgate::start(&config(&p, &b)).await;
    let c = client::http1();
    for (path, status) in [("/abort/x", 503), ("/teapot/x", 418)] {
        for _ in 0..5 {
            let r = client::get(&c, &p.url(path)).await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
            assert_eq!(
                r.header("x-meshgate-fault").as_deref(),
                Some("abort"),
                "{path}"
            );
            let body = r.json();
            assert_eq!(body["error"], "fault_injected", "{path}: {body}");
            let id = body["request_id"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{path}: request_id in {body}");
            assert_eq!(r.header("x-request-id").as_deref(), Some(id), "{path}");
        }
    }
    assert_eq!(b.request_count(), 0, "an abort never reaches the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_100_percent_adds_at_least_the_duration() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let _gw = Meshgate::start(&config(&p, &b)).await;
    let c = client::http1();
    for i in 0..3 {
        let start = Instant::now();
        let r = client::get(&c, &p.url("/delay/x")).await;
        let took = start.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend").as_deref(), Some("b"));
        assert!(
            took >= Duration::from_millis(300),
            "request {i} took {took:?}; the fault delay is 300ms"
        );
        assert!(took < Duration::from_secs(2), "request {i} took {took:?}");
    }
    assert_eq!(
        b.request_count(),
        3,
        "delayed requests still reach upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_percent_changes_nothing() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let _gw = Meshgate::start(&config(&p, &b)).await;
    let c = client::http1();
    let start = Instant::now();
    for i in 0..50 {
        let r = client::get(&c, &p.url(&format!("/zero/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(r.header("x-meshgate-fault").is_none(), "request {i}");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "50 requests took {took:?}: a 0% delay of 5s was applied"
    );
    assert_eq!(b.request_count(), 50);
}
