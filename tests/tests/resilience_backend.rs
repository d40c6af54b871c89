//! Self-tests of the backend behaviours the resilience tests rely on:
//! status scripts, a fixed status, delays and pausing. Talks to the backend
//! directly, no proxy.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::wait;

fn url(b: &Backend, path: &str) -> String {
    format!("http://{}{path}", b.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_then_always_then_normal() {
    let b = Backend::start("b").await;
    let c = client::http1();
    b.set_script(vec![503, 502]);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(client::get(&c, &url(&b, "/x")).await.status);
    }
    assert_eq!(got, [503, 502, 200], "script, then normal");

    b.set_always(Some(500));
    b.set_script(vec![504]);
    let r = client::get(&c, &url(&b, "/x")).await;
    assert_eq!(r.status, 504, "a pending script entry wins over always");
    assert_eq!(r.json()["backend"], "b", "body is the echo");
    assert_eq!(client::get(&c, &url(&b, "/x")).await.status, 500);
    assert_eq!(
        client::get(&c, &url(&b, "/status/201")).await.status,
        201,
        "/status/CODE ignores always"
    );
    b.set_always(None);
    assert_eq!(client::get(&c, &url(&b, "/x")).await.status, 200);
    assert_eq!(b.request_count(), 7, "every answered request is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_delays_then_default_delay() {
    let b = Backend::start("b").await;
    let c = client::http1();
    b.set_delays(vec![Duration::from_millis(300)]);
    let t = Instant::now();
    client::get(&c, &url(&b, "/x")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    client::get(&c, &url(&b, "/x")).await;
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    b.set_delay(Some(Duration::from_millis(200)));
    let t = Instant::now();
    client::get(&c, &url(&b, "/x")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_requests_are_recorded_and_answered_on_resume() {
    let b = Backend::start("b").await;
    let c = client::http1();
    b.pause();
    let pending = tokio::spawn(client::send(c.post(url(&b, "/held")).body("abc")));
    wait::assert_eventually(Duration::from_secs(5), "held request recorded", || async {
        b.request_count() == 1
    })
    .await;
    assert!(!pending.is_finished(), "answered while paused");
    let seen = b.last_request().expect("recorded");
    assert_eq!(&seen.body[..], b"abc");
    b.resume();
    let r = pending.await.expect("request task");
    assert_eq!(r.status, 200);
}
