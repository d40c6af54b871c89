//! The per-endpoint circuit breaker end to end: closed → open on consecutive
//! failures and, separately, on a failure rate; fast 503s without upstream
//! contact while open; exactly N half-open probes; closed on success,
//! reopened with doubled open time on failure. Each transition is checked
//! in the metrics as well as on the wire.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait::{self, POLL_INTERVAL};
use tokio::task::JoinHandle;

/// Cluster `c` (the one endpoint `b`, with `breaker`) behind catch-all
/// route `r`, and a healthy cluster behind route `other` (`/other`) to show
/// the rest of the proxy is unaffected. No retry filter: every client
/// request is exactly one upstream attempt unless the breaker refuses it.
fn config(p: &Ports, b: &Backend, healthy: &Backend, breaker: &str) -> String {
    format!(
        "{}clusters:\n\
         \x20 c:\n\
         \x20   endpoints: [{}]\n\
         \x20   connect_timeout: 500ms\n\
         \x20   circuit_breaker: {breaker}\n\
         \x20 ok:\n\
         \x20   endpoints: [{}]\n\
         routes:\n\
         \x20 - {{ name: other, match: {{ path_prefix: /other }}, to: ok }}\n\
         \x20 - {{ name: r, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble(""),
        b.addr(),
        healthy.addr()
    )
}

/// Current value of a breaker metric of endpoint `b` in cluster `c`; a
/// series that does not exist yet reads as 0.
async fn breaker_metric(gw: &Meshgate, b: &Backend, name: &str, to: Option<&str>) -> f64 {
    let ep = b.addr().to_string();
    let mut labels = vec![("cluster", "c"), ("endpoint", ep.as_str())];
    if let Some(to) = to {
        labels.push(("to", to));
    }
    gw.metric(name, &labels).await.unwrap_or(0.0)
}

async fn transitions(gw: &Meshgate, b: &Backend, to: &str) -> f64 {
    breaker_metric(
        gw,
        b,
        "meshgate_circuit_breaker_transitions_total",
        Some(to),
    )
    .await
}

async fn state(gw: &Meshgate, b: &Backend) -> f64 {
    breaker_metric(gw, b, "meshgate_circuit_breaker_state", None).await
}

fn is_breaker_answer(r: &Reply) -> bool {
    r.header("x-meshgate-breaker").as_deref() == Some("open")
}

/// Asserts `r` is the breaker's fast answer; returns its `Retry-After`.
fn assert_breaker_answer(r: &Reply, what: &str) -> u64 {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert!(
        is_breaker_answer(r),
        "{what}: no x-meshgate-breaker: open; headers {:?} body {}",
        r.headers,
        r.text()
    );
    assert_eq!(
        r.json()["error"],
        "no_healthy_upstream",
        "{what}: {}",
        r.text()
    );
    assert!(
        r.header("x-backend").is_none(),
        "{what}: came from upstream"
    );
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{what}: Retry-After missing or not seconds: {:?}",
                r.headers
            )
        })
}

/// Asserts `r` is the upstream's own answer with `status`.
fn assert_upstream(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert!(
        !is_breaker_answer(r) && r.header("x-backend").as_deref() == Some("b"),
        "{what}: expected the upstream's answer, got headers {:?} body {}",
        r.headers,
        r.text()
    );
}

/// The other route answers 200 and the process is alive.
async fn assert_proxy_still_serves(gw: &mut Meshgate, p: &Ports) {
    let r = client::get(&client::http1(), &p.url("/other/check")).await;
    assert_eq!(r.status, 200, "other route: {}", r.text());
    assert!(gw.try_exit().is_none(), "meshgate exited");
}

/// Sends requests (paced by [`POLL_INTERVAL`]) until one is admitted to the
/// upstream, i.e. the backend's request count passes `before`; each refused
/// one must be the breaker answer. Requests are spawned because an admitted
/// one may be held by a paused backend. Returns the admitted request.
async fn send_until_admitted(
    c: &reqwest::Client,
    url: &str,
    b: &Backend,
    before: usize,
    within: Duration,
) -> JoinHandle<Reply> {
    let deadline = Instant::now() + within;
    loop {
        let req = c.get(url);
        let h = tokio::spawn(client::send(req));
        let admitted = wait::until(Duration::from_secs(5), || async {
            if b.request_count() > before {
                Some(true)
            } else if h.is_finished() {
                Some(false)
            } else {
                None
            }
        })
        .await;
        match admitted {
            Some(true) => return h,
            Some(false) => {
                let r = h.await.expect("request task");
                assert_breaker_answer(&r, "request while open");
            }
            None => panic!("request neither answered nor seen upstream within 5s"),
        }
        assert!(
            Instant::now() < deadline,
            "breaker still refusing after {within:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_open_then_exactly_n_probes_close_it() {
    let (b, healthy) = (Backend::start("b").await, Backend::start("ok").await);
    let p = Ports::new();
    let mut gw = Meshgate::start(&config(
        &p,
        &b,
        &healthy,
        "{ consecutive_failures: 5, min_requests: 0, open_for: 1s, half_open_probes: 3 }",
    ))
    .await;
    let c = client::http1();
    let url = p.url("/x");

    // Closed: four failures in a row are not enough.
    b.set_always(Some(503));
    for i in 1..=4 {
        let r = client::get(&c, &url).await;
        assert_upstream(&r, 503, &format!("failure {i}"));
    }
    assert_eq!(transitions(&gw, &b, "open").await, 0.0, "opened before 5");
    assert_eq!(state(&gw, &b).await, 0.0, "state gauge after 4 failures");

    // The fifth opens it.
    let r = client::get(&c, &url).await;
    assert_upstream(&r, 503, "failure 5");
    let opened = Instant::now();
    assert_eq!(
        transitions(&gw, &b, "open").await,
        1.0,
        "transitions to=open"
    );
    assert_eq!(state(&gw, &b).await, 1.0, "state gauge while open");
    assert_eq!(b.request_count(), 5);

    // Open: fast 503s, the upstream is not contacted.
    for i in 0..5 {
        let start = Instant::now();
        let r = client::get(&c, &url).await;
        let retry_after = assert_breaker_answer(&r, &format!("request {i} while open"));
        assert_eq!(retry_after, 1, "Retry-After with open_for 1s");
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "breaker answer took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(b.request_count(), 5, "no upstream contact while open");

    // Half-open after open_for: exactly three probes are admitted. The
    // backend holds its answers so the probes overlap.
    b.set_always(None);
    b.pause();
    let first = send_until_admitted(&c, &url, &b, 5, Duration::from_secs(3)).await;
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "first probe admitted {waited:?} after opening; open_for is 1s"
    );
    let mut probes = vec![first];
    for n in [7, 8] {
        probes.push(tokio::spawn(client::send(c.get(&url))));
        wait::assert_eventually(
            Duration::from_secs(5),
            &format!("probe {} reaches the backend", n - 5),
            || async { b.request_count() >= n },
        )
        .await;
    }
    assert_eq!(transitions(&gw, &b, "half_open").await, 1.0, "to=half_open");
    assert_eq!(state(&gw, &b).await, 2.0, "state gauge while half-open");
    let r = client::get(&c, &url).await;
    assert_eq!(
        b.request_count(),
        8,
        "exactly three probes reached upstream"
    );
    assert_eq!(r.status, 503, "fourth request: {}", r.text());
    assert_eq!(r.json()["error"], "no_healthy_upstream", "{}", r.text());
    // Checked at the end, so a missing header does not hide whether the
    // probes then close the breaker.
    let fourth_headers = (
        r.header("x-meshgate-breaker"),
        r.header("retry-after").is_some(),
    );

    // All probes succeed: closed.
    b.resume();
    for (i, h) in probes.into_iter().enumerate() {
        let r = h.await.expect("probe task");
        assert_upstream(&r, 200, &format!("probe {}", i + 1));
    }
    wait::assert_eventually(
        Duration::from_secs(5),
        "transition to=closed after three successful probes",
        || async { transitions(&gw, &b, "closed").await == 1.0 },
    )
    .await;
    assert_eq!(state(&gw, &b).await, 0.0, "state gauge after closing");
    let r = client::get(&c, &url).await;
    assert_upstream(&r, 200, "after closing");
    assert_eq!(b.request_count(), 9);
    assert_eq!(transitions(&gw, &b, "open").await, 1.0);
    assert_proxy_still_serves(&mut gw, &p).await;
    assert_eq!(
        fourth_headers,
        (Some("open".to_owned()), true),
        "(x-meshgate-breaker, Retry-After present) on the fourth request while \
         three probes were in flight: it must be the breaker answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_rate_opens_at_50_percent_of_20_requests() {
    let (b, healthy) = (Backend::start("b").await, Backend::start("ok").await);
    let p = Ports::new();
    let mut gw = Meshgate::start(&config(
        &p,
        &b,
        &healthy,
        "{ consecutive_failures: 0, failure_rate: 50%, window: 10s, min_requests: 20, open_for: 30s }",
    ))
    .await;
    let c = client::http1();
    let url = p.url("/x");

    // Ten failures in a row (100%) but under min_requests, and the
    // consecutive trigger is off: stays closed. Then nine successes.
    let mut script = vec![503; 10];
    script.extend([200; 9]);
    b.set_script(script.clone());
    for (i, want) in script.iter().enumerate() {
        let r = client::get(&c, &url).await;
        assert_upstream(&r, *want, &format!("request {} of 19", i + 1));
    }
    assert_eq!(
        transitions(&gw, &b, "open").await,
        0.0,
        "opened below 20 requests"
    );
    assert_eq!(state(&gw, &b).await, 0.0);

    // The twentieth request fails: 11 of 20 ≥ 50% → open.
    b.set_script(vec![503]);
    let r = client::get(&c, &url).await;
    assert_upstream(&r, 503, "request 20");
    assert_eq!(
        transitions(&gw, &b, "open").await,
        1.0,
        "transitions to=open"
    );
    assert_eq!(state(&gw, &b).await, 1.0, "state gauge");

    let r = client::get(&c, &url).await;
    let retry_after = assert_breaker_answer(&r, "request 21");
    assert_eq!(retry_after, 30, "Retry-After with open_for 30s");
    assert_eq!(b.request_count(), 20, "no upstream contact once open");
    assert_proxy_still_serves(&mut gw, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_probe_reopens_with_doubled_open_time() {
    let (b, healthy) = (Backend::start("b").await, Backend::start("ok").await);
    let p = Ports::new();
    let mut gw = Meshgate::start(&config(
        &p,
        &b,
        &healthy,
        "{ consecutive_failures: 5, min_requests: 0, open_for: 1s, half_open_probes: 1 }",
    ))
    .await;
    let c = client::http1();
    let url = p.url("/x");

    b.set_always(Some(503));
    for i in 1..=5 {
        let r = client::get(&c, &url).await;
        assert_upstream(&r, 503, &format!("failure {i}"));
    }
    let opened = Instant::now();
    let r = client::get(&c, &url).await;
    assert_eq!(assert_breaker_answer(&r, "first open"), 1, "Retry-After");

    // The probe fails (backend still 503): reopened for 2 × open_for.
    let probe = send_until_admitted(&c, &url, &b, 5, Duration::from_secs(3)).await;
    let first_open = opened.elapsed();
    let r = probe.await.expect("probe task");
    assert_upstream(&r, 503, "failed probe");
    let reopened = Instant::now();
    assert_eq!(b.request_count(), 6, "one probe");
    assert_eq!(transitions(&gw, &b, "half_open").await, 1.0, "to=half_open");
    assert_eq!(
        transitions(&gw, &b, "open").await,
        2.0,
        "to=open after the failed probe"
    );
    assert_eq!(state(&gw, &b).await, 1.0, "state gauge after reopening");
    let r = client::get(&c, &url).await;
    assert_eq!(
        assert_breaker_answer(&r, "reopened"),
        2,
        "Retry-After after a failed probe (open_for 1s doubled)"
    );
    assert_eq!(b.request_count(), 6);

    // The next probe succeeds: closed, after about twice the first wait.
    b.set_always(None);
    let probe = send_until_admitted(&c, &url, &b, 6, Duration::from_secs(4)).await;
    let second_open = reopened.elapsed();
    let r = probe.await.expect("probe task");
    assert_upstream(&r, 200, "successful probe");
    assert!(
        first_open >= Duration::from_millis(950) && first_open < Duration::from_millis(1600),
        "first open period {first_open:?}; open_for is 1s"
    );
    assert!(
        second_open >= Duration::from_millis(1900) && second_open < Duration::from_millis(2800),
        "open period after a failed probe {second_open:?}; expected 2s (1s doubled)"
    );
    wait::assert_eventually(Duration::from_secs(5), "transition to=closed", || async {
        transitions(&gw, &b, "closed").await == 1.0
    })
    .await;
    assert_eq!(state(&gw, &b).await, 0.0);
    assert_proxy_still_serves(&mut gw, &p).await;
}
