//! The `retry` route filter end to end: status-code retries (503 then 200),
//! connect failures moved to another endpoint, idempotency rules, the 64 KiB
//! replay limit, per-try timeouts and the route timeout as a cap on the
//! whole exchange. Attempts are counted where they land: on the backends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

/// One cluster `c` (round robin, 500 ms connect timeout) behind route `r`
/// (catch-all). `cluster_extra` and `route_extra` are YAML lines indented
/// to sit inside the cluster and route mappings.
fn config(p: &Ports, endpoints: &[String], cluster_extra: &str, route_extra: &str) -> String {
    format!(
        "{}clusters:\n\
         \x20 c:\n\
         \x20   endpoints: [{}]\n\
         \x20   load_balancing: round_robin\n\
         \x20   connect_timeout: 500ms\n\
         {cluster_extra}\
         routes:\n\
         \x20 - name: r\n\
         \x20   match: {{ path_prefix: / }}\n\
         \x20   to: c\n\
         {route_extra}",
        p.preamble(""),
        endpoints.join(", ")
    )
}

fn addr(a: SocketAddr) -> String {
    a.to_string()
}

/// The access-log line of the request that got `reply` (matched by
/// `x-request-id`); polls because the line is written after the answer.
async fn log_line(gw: &Meshgate, reply: &Reply) -> serde_json::Value {
    let id = reply
        .header("x-request-id")
        .unwrap_or_else(|| panic!("reply without x-request-id: {reply:?}"));
    wait::until(Duration::from_secs(5), || async {
        gw.access_log()
            .into_iter()
            .find(|l| l["request_id"].as_str() == Some(id.as_str()))
    })
    .await
    .unwrap_or_else(|| panic!("no access-log line for request {id} within 5s"))
}

/// `(attempts, retry_reason, retry_skipped, status)` of an access-log line,
/// for one readable assertion.
fn retry_fields(line: &serde_json::Value) -> (u64, String, String, u64) {
    let text = |k: &str| line[k].as_str().unwrap_or("-").to_owned();
    (
        line["attempts"].as_u64().unwrap_or(0),
        text("retry_reason"),
        text("retry_skipped"),
        line["status"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_then_200_gives_the_client_200_after_two_attempts() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = config(
        &p,
        &[addr(b.addr())],
        "",
        "    filters: [ { retry: { attempts: 3, backoff: 5ms..50ms } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();

    b.set_script(vec![503]);
    let r = client::get(&c, &p.url("/flaky")).await;
    assert_eq!(
        r.status,
        200,
        "client must see the retried answer: {}",
        r.text()
    );
    assert_eq!(r.header("x-backend").as_deref(), Some("b"));
    assert_eq!(b.request_count(), 2, "upstream attempts for 503-then-200");
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (2, "status".into(), "-".into(), 200),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );
    assert_eq!(
        gw.metric(
            "meshgate_retries_total",
            &[("route", "r"), ("reason", "status")]
        )
        .await,
        Some(1.0),
        "meshgate_retries_total{{route=r,reason=status}}"
    );

    // A healthy answer is not retried.
    let r = client::get(&c, &p.url("/fine")).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.request_count(), 3);
    assert_eq!(log_line(&gw, &r).await["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_pass_the_last_upstream_answer_through() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = config(
        &p,
        &[addr(b.addr())],
        "",
        "    filters: [ { retry: { attempts: 3, backoff: 5ms..50ms } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();

    b.set_script(vec![503, 503, 503]);
    let r = client::get(&c, &p.url("/down")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["backend"],
        "b",
        "the upstream's own 503 passes through, not a local answer: {}",
        r.text()
    );
    assert_eq!(b.request_count(), 3, "attempts: 3 means three tries in all");
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (3, "status".into(), "attempts_exhausted".into(), 503),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_on_one_endpoint_is_served_by_the_other() {
    let live = Backend::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let p = Ports::new();
    let yaml = config(
        &p,
        &[dead.clone(), addr(live.addr())],
        "",
        "    filters: [ { retry: { backoff: 5ms..50ms } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();

    let mut replies = Vec::new();
    for i in 0..10 {
        let r = client::get(&c, &p.url(&format!("/cf/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-backend").as_deref(), Some("live"));
        replies.push(r);
    }
    assert_eq!(live.request_count(), 10, "each request reached live once");
    let mut retried = 0;
    for r in &replies {
        let line = log_line(&gw, r).await;
        assert_eq!(
            line["endpoint"],
            live.addr().to_string(),
            "final endpoint: {line}"
        );
        match retry_fields(&line) {
            (1, reason, _, 200) if reason == "-" => {}
            (2, reason, _, 200) if reason == "connect_failure" => retried += 1,
            other => panic!("unexpected (attempts, reason, skipped, status) {other:?}: {line}"),
        }
    }
    assert!(
        retried >= 1,
        "round robin over [dead, live] never tried the dead endpoint first"
    );
    assert_eq!(
        gw.metric(
            "meshgate_retries_total",
            &[("route", "r"), ("reason", "connect_failure")]
        )
        .await,
        Some(f64::from(retried)),
        "retries metric = requests whose log says attempts 2"
    );
}

/// With hash balancing the balancer keeps choosing the dead endpoint for the
/// same key; only the "avoid endpoints that failed this request" rule lets a
/// single retry (`attempts: 2`) succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_endpoint_that_failed_even_when_the_balancer_prefers_it() {
    let live = Backend::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n\
         \x20 c:\n\
         \x20   endpoints: [{dead}, {}]\n\
         \x20   load_balancing: \"hash(header:x-user)\"\n\
         \x20   connect_timeout: 500ms\n\
         routes:\n\
         \x20 - name: r\n\
         \x20   match: {{ path_prefix: / }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ retry: {{ attempts: 2, backoff: 5ms..50ms }} }} ]\n",
        p.preamble(""),
        live.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let mut retried = 0;
    for user in 0..16 {
        let user = format!("user-{user}");
        let r = client::send(c.get(p.url("/h")).header("x-user", &user)).await;
        assert_eq!(r.status, 200, "{user}: {}", r.text());
        let line = log_line(&gw, &r).await;
        if line["attempts"] == 2 {
            assert_eq!(line["retry_reason"], "connect_failure", "{line}");
            retried += 1;
        }
    }
    assert!(
        retried >= 1,
        "no key hashed to the dead endpoint; the test proved nothing"
    );
    assert_eq!(live.request_count(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_with_an_idempotency_key() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = config(
        &p,
        &[addr(b.addr())],
        "",
        "    filters: [ { retry: { attempts: 3, backoff: 5ms..50ms } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();

    b.set_script(vec![503]);
    let r = client::send(c.post(p.url("/orders")).body("order-1")).await;
    assert_eq!(
        r.status,
        503,
        "POST without key is not retried: {}",
        r.text()
    );
    assert_eq!(b.request_count(), 1, "one upstream attempt");
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (1, "-".into(), "not_idempotent".into(), 503),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );

    b.clear_requests();
    b.set_script(vec![503]);
    let r = client::send(
        c.post(p.url("/orders"))
            .header("idempotency-key", "k-42")
            .body("order-2"),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "POST with Idempotency-Key is retried: {}",
        r.text()
    );
    let seen = b.requests();
    assert_eq!(seen.len(), 2, "two upstream attempts");
    for (i, req) in seen.iter().enumerate() {
        assert_eq!(req.method, "POST");
        assert_eq!(&req.body[..], b"order-2", "body of attempt {}", i + 1);
        assert_eq!(req.header("idempotency-key").as_deref(), Some("k-42"));
    }
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (2, "status".into(), "-".into(), 200),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_64kib_are_replayed_and_larger_ones_are_not_retried() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = config(
        &p,
        &[addr(b.addr())],
        "",
        "    filters: [ { retry: { attempts: 3, backoff: 5ms..50ms } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8).collect() };

    let big = pattern(100 * 1024);
    b.set_script(vec![503]);
    let r = client::send(
        c.post(p.url("/upload"))
            .header("idempotency-key", "big")
            .body(big.clone()),
    )
    .await;
    assert_eq!(r.status, 503, "100 KiB body is not retried: {}", r.text());
    let seen = b.requests();
    assert_eq!(seen.len(), 1, "one upstream attempt for the 100 KiB body");
    assert_eq!(
        seen[0].body_len,
        big.len(),
        "the one attempt got the whole body"
    );
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (1, "-".into(), "body_over_64KiB".into(), 503),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );

    b.clear_requests();
    let small = pattern(10 * 1024);
    b.set_script(vec![503]);
    let r = client::send(
        c.post(p.url("/upload"))
            .header("idempotency-key", "small")
            .body(small.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "10 KiB body is replayed: {}", r.text());
    let seen = b.requests();
    assert_eq!(seen.len(), 2, "two upstream attempts for the 10 KiB body");
    for (i, req) in seen.iter().enumerate() {
        assert_eq!(
            req.body_len,
            small.len(),
            "body length of attempt {}",
            i + 1
        );
        assert!(req.body[..] == small[..], "body bytes of attempt {}", i + 1);
    }
    assert_eq!(log_line(&gw, &r).await["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_triggers_a_retry() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = config(
        &p,
        &[addr(b.addr())],
        "",
        "    timeout: 5s\n\
         \x20   filters: [ { retry: { attempts: 3, per_try_timeout: 400ms, backoff: 5ms..50ms, on: [timeout, 503] } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();

    b.set_delays(vec![Duration::from_secs(3)]);
    let start = Instant::now();
    let r = client::get(&c, &p.url("/sometimes-slow")).await;
    let took = start.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.request_count(), 2, "slow first try, fast second");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "answer after {took:?}; expected one 400 ms per-try timeout plus a fast retry"
    );
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (2, "timeout".into(), "-".into(), 200),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );
    assert_eq!(
        gw.metric(
            "meshgate_upstream_timeouts_total",
            &[("route", "r"), ("cluster", "c")]
        )
        .await,
        Some(1.0),
        "meshgate_upstream_timeouts_total{{route=r,cluster=c}}"
    );
    assert_eq!(
        gw.metric(
            "meshgate_retries_total",
            &[("route", "r"), ("reason", "timeout")]
        )
        .await,
        Some(1.0)
    );
}

/// `timeout: 1s` with `per_try_timeout: 600ms` and three attempts against an
/// always-slow upstream: uncapped that would be ≥ 1.8 s; the route timeout
/// must end it with a 504 at ≈ 1 s, the second try cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_caps_the_whole_exchange_including_retries() {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = config(
        &p,
        &[addr(b.addr())],
        "",
        "    timeout: 1s\n\
         \x20   filters: [ { retry: { attempts: 3, per_try_timeout: 600ms, backoff: 5ms..20ms, on: [timeout] } } ]\n",
    );
    let gw = Meshgate::start(&yaml).await;
    let c = client::http1();

    b.set_delay(Some(Duration::from_secs(5)));
    let start = Instant::now();
    let r = client::get(&c, &p.url("/always-slow")).await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "gateway_timeout", "{}", r.text());
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1500),
        "504 after {took:?}; the route timeout is 1s (3 x 600ms tries would be 1.8s)"
    );
    assert_eq!(
        b.request_count(),
        2,
        "600 ms first try + second try cut at the 1 s deadline"
    );
    let line = log_line(&gw, &r).await;
    assert_eq!(
        retry_fields(&line),
        (2, "timeout".into(), "deadline".into(), 504),
        "(attempts, retry_reason, retry_skipped, status) in {line}"
    );
}
