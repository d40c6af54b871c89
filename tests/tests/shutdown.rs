//! Graceful shutdown on SIGTERM: stop accepting, let in-flight requests
//! finish within `runtime.grace_period`, then exit.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

fn config(p: &Ports, b: &Backend, grace: &str) -> String {
    let pre = p
        .preamble("")
        .replace("grace_period: 5s", &format!("grace_period: {grace}"));
    format!(
        "{pre}clusters:\n  c: {{ endpoints: [{}] }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, to: c, timeout: 60s }}\n",
        b.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_50_in_flight_requests_finish() {
    let b = Backend::start("slow").await;
    let p = Ports::new();
    let mut gw = Meshgate::start(&config(&p, &b, "10s")).await;
    let c = client::http1();
    let in_flight: Vec<_> = (0..50)
        .map(|i| {
            let req = c.get(p.url(&format!("/slow?ms=3000&i={i}")));
            tokio::spawn(async move {
                match req.send().await {
                    Ok(resp) => client::Reply::try_read(resp).await.map(|r| r.status),
                    Err(e) => Err(format!("{e:?}")),
                }
            })
        })
        .collect();
    wait::assert_eventually(
        Duration::from_secs(10),
        "all 50 requests reached the backend",
        || async { b.request_count() == 50 },
    )
    .await;

    let term = Instant::now();
    gw.sigterm();
    let port = p.public;
    let refused = wait::until(Duration::from_millis(1500), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
    })
    .await;

    let mut failed = Vec::new();
    for (i, h) in in_flight.into_iter().enumerate() {
        match h.await.expect("request task") {
            Ok(200) => {}
            other => failed.push(format!("request {i}: {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "in-flight requests failed after SIGTERM: {failed:#?}\n{}",
        gw.logs()
    );
    assert!(
        refused.is_some(),
        "new connections still accepted 1.5s after SIGTERM"
    );
    let exit = gw.wait_exit(Duration::from_secs(12)).await;
    assert!(
        exit.is_some(),
        "meshgate still running {:?} after SIGTERM (grace_period 10s)",
        term.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_by_the_grace_period_even_if_a_request_is_slower() {
    let b = Backend::start("slower").await;
    let p = Ports::new();
    let mut gw = Meshgate::start(&config(&p, &b, "2s")).await;
    let c = client::http1();
    let req = c.get(p.url("/slow?ms=30000"));
    let pending = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    wait::assert_eventually(
        Duration::from_secs(10),
        "the slow request reached the backend",
        || async { b.request_count() == 1 },
    )
    .await;
    let term = Instant::now();
    gw.sigterm();
    let exit = gw.wait_exit(Duration::from_secs(6)).await;
    assert!(
        exit.is_some(),
        "meshgate still running {:?} after SIGTERM with grace_period 2s",
        term.elapsed()
    );
    pending.abort();
}
