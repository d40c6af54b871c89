//! Retry budgets against a retry storm: an upstream answering 100% 503 under
//! ~200 requests/s must see at most 1.2 × requests + 100 attempts (20%
//! budget plus the 10 retries/s floor over the 10 s window), although every
//! request would like three tries. Meanwhile another route keeps answering
//! 200.
//!
//! The bound is a statement about one 10 s window, so the whole storm —
//! first request to last retry — must fit in 10 s: the client sends for
//! 9.5 s and the test checks the storm ended within 10 s. Before the storm,
//! the other route (which has a retry filter too) serves traffic for a
//! while, as a real proxy would have; the budget window must not depend on
//! when the proxy started keeping time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long the client sends storm requests.
const RUN: Duration = Duration::from_millis(9500);
/// The window the budget is defined over.
const WINDOW: Duration = Duration::from_secs(10);
/// Traffic on the other route before the storm.
const WARM_UP: Duration = Duration::from_millis(800);
/// One request every 5 ms: 200 requests/s.
const PACE: Duration = Duration::from_millis(5);
/// Enough in flight for 200 req/s at up to ~0.5 s per request (three tries
/// with backoff), without letting a stalled proxy pile up unbounded work.
const MAX_IN_FLIGHT: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_a_storm_against_a_failing_upstream() {
    let b = Backend::start("b").await;
    b.set_always(Some(503));
    let healthy = Backend::start("ok").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n\
         \x20 c: {{ endpoints: [{}] }}\n\
         \x20 ok: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - name: other\n\
         \x20   match: {{ path_prefix: /other }}\n\
         \x20   to: ok\n\
         \x20   filters: [ {{ retry: {{ attempts: 3 }} }} ]\n\
         \x20 - name: storm\n\
         \x20   match: {{ path_prefix: / }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ retry: {{ attempts: 3, backoff: 25ms..250ms, budget: 20% }} }} ]\n",
        p.preamble(""),
        b.addr(),
        healthy.addr()
    );
    let mut gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut storm: JoinSet<Result<Reply, String>> = JoinSet::new();
    let mut others: JoinSet<(Duration, Result<Reply, String>)> = JoinSet::new();
    let mut ticker = tokio::time::interval(PACE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let warm_up = Instant::now();
    while warm_up.elapsed() < WARM_UP {
        let r = client::get(&c, &p.url("/other/before-storm")).await;
        assert_eq!(r.status, 200, "other route before the storm: {}", r.text());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let start = Instant::now();
    let mut sent: usize = 0;
    while start.elapsed() < RUN {
        ticker.tick().await;
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let req = c.get(p.url(&format!("/storm/{sent}")));
        storm.spawn(async move {
            let out = match req.send().await {
                Ok(resp) => Reply::try_read(resp).await,
                Err(e) => Err(format!("{e:?}")),
            };
            drop(permit);
            out
        });
        sent += 1;
        // Twice a second, the other route.
        if sent.is_multiple_of(100) {
            let req = c.get(p.url("/other/during-storm"));
            others.spawn(async move {
                let t = Instant::now();
                let out = match req.send().await {
                    Ok(resp) => Reply::try_read(resp).await,
                    Err(e) => Err(format!("{e:?}")),
                };
                (t.elapsed(), out)
            });
        }
    }
    let sending = start.elapsed();

    let mut answered_503 = 0;
    let mut problems = Vec::new();
    while let Some(joined) = storm.join_next().await {
        match joined.expect("storm task") {
            Ok(r) if r.status == 503 && r.header("x-backend").as_deref() == Some("b") => {
                answered_503 += 1;
            }
            Ok(r) => problems.push(format!("status {} body {}", r.status, r.text())),
            Err(e) => problems.push(e),
        }
    }
    let storm_span = start.elapsed();
    while let Some(joined) = others.join_next().await {
        let (took, out) = joined.expect("other-route task");
        match out {
            Ok(r) if r.status == 200 && took < Duration::from_secs(1) => {}
            Ok(r) => problems.push(format!(
                "other route during the storm: status {} after {took:?}",
                r.status
            )),
            Err(e) => problems.push(format!("other route during the storm: {e}")),
        }
    }
    problems.truncate(10);
    assert!(
        storm_span < WINDOW,
        "the storm took {storm_span:?} (sending {sending:?}): longer than the one window the bound is about"
    );
    assert!(
        problems.is_empty(),
        "{answered_503} of {sent} storm requests got the upstream's 503; first problems: {problems:#?}"
    );
    assert!(
        sent >= 1400,
        "only {sent} requests in {sending:?}: the client could not keep ~200/s"
    );

    let attempts = b.request_count();
    let bound = 1.2 * sent as f64 + 100.0;
    let retries = gw
        .metric("meshgate_retries_total", &[("route", "storm")])
        .await
        .unwrap_or(0.0);
    let exhausted = gw
        .metric(
            "meshgate_retry_budget_exhausted_total",
            &[("route", "storm")],
        )
        .await
        .unwrap_or(0.0);
    let summary = format!(
        "{sent} requests sent over {sending:?}, storm over after {storm_span:?}, \
         {attempts} upstream attempts (bound {bound}), \
         retries metric {retries}, budget exhausted {exhausted}"
    );
    eprintln!("{summary}");
    assert!(attempts as f64 <= bound, "storm bound broken: {summary}");
    assert!(
        attempts > sent,
        "no retries at all, the floor alone allows 100: {summary}"
    );
    assert!(exhausted > 0.0, "budget never exhausted: {summary}");
    assert_eq!(
        attempts as f64,
        sent as f64 + retries,
        "every upstream attempt is a first try or a counted retry: {summary}"
    );

    let r = client::get(&c, &p.url("/other/after-storm")).await;
    assert_eq!(r.status, 200, "other route after the storm: {}", r.text());
    assert!(gw.try_exit().is_none(), "meshgate exited during the storm");
}
