//! Local rate limits through the real proxy: a full bucket admits exactly `burst` requests,
//! the next is a 429 with `Retry-After` and the IETF `RateLimit-*` headers (which admitted
//! responses carry too), tokens come back one per `period / N`; and the `ip` key is the
//! peer address unless `trusted_proxies` vouches for the peer, so a spoofed
//! `X-Forwarded-For` from an untrusted client changes nothing.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;

/// A gateway with one route `/` whose filters are `filters` (a YAML flow list), plus
/// `top` (extra top-level YAML such as `trusted_proxies`).
async fn gateway(b: &Backend, top: &str, filters: &str) -> (Ports, Meshgate) {
    let p = Ports::new();
    let yaml = format!(
        "{}{top}clusters:\n  c: {{ endpoints: [{}] }}\n\
         routes:\n  - {{ name: r, match: {{ path_prefix: / }}, to: c, filters: {filters} }}\n",
        p.preamble(""),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (p, gw)
}

fn num(r: &Reply, name: &str) -> u64 {
    let v = r
        .header(name)
        .unwrap_or_else(|| panic!("status {}: no {name} header: {:?}", r.status, r.headers));
    v.parse()
        .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
}

async fn get(c: &reqwest::Client, url: &str, xff: Option<&str>) -> Reply {
    let mut req = c.get(url);
    if let Some(v) = xff {
        req = req.header("x-forwarded-for", v);
    }
    client::send(req).await
}

/// Asserts `r` is the rate limiter's 429: JSON error body, `Retry-After`, `RateLimit-*`.
fn assert_limited(r: &Reply, burst: u64, what: &str) {
    assert_eq!(r.status, 429, "{what}: {} {}", r.status, r.text());
    assert_eq!(
        r.json()["error"],
        "rate_limited",
        "{what}: body {}",
        r.text()
    );
    assert!(
        r.json()["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{what}: body {}",
        r.text()
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(num(r, "ratelimit-limit"), burst, "{what}");
    assert_eq!(num(r, "ratelimit-remaining"), 0, "{what}");
    assert!(num(r, "retry-after") >= 1, "{what}");
}

/// Burst 10 at 2/s (one token every 500 ms): 11 back-to-back requests take far less than
/// 500 ms, so exactly 10 are admitted and the 11th is refused. Then the refill is checked
/// against the clock: one token is back 500 ms after the first request (admitted, and the
/// request right after it refused), the next one 500 ms later. A refill twice as fast would
/// admit two at the first check; one twice as slow would admit none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_exact_then_429_with_headers_then_refill_at_the_rate() {
    const BURST: u64 = 10;
    const INTERVAL: Duration = Duration::from_millis(500);
    let b = Backend::start("b").await;
    let (p, _gw) = gateway(
        &b,
        "",
        "[ { rate_limit: { key: ip, rate: 2/s, burst: 10, headers: true } } ]",
    )
    .await;
    let c = client::http1();
    let url = p.url("/x");
    let t0 = Instant::now();
    let mut remaining = Vec::new();
    for i in 0..BURST {
        let r = get(&c, &url, None).await;
        assert_eq!(
            r.status,
            200,
            "request {i} is within the burst: {}",
            r.text()
        );
        assert_eq!(num(&r, "ratelimit-limit"), BURST, "request {i}");
        remaining.push(num(&r, "ratelimit-remaining"));
        // Reset: until the bucket is full again = (i + 1) intervals, rounded up to seconds.
        let reset = num(&r, "ratelimit-reset");
        assert_eq!(
            reset,
            ((i + 1) * 500).div_ceil(1000),
            "request {i}: RateLimit-Reset"
        );
    }
    let refused = get(&c, &url, None).await;
    let burst_took = t0.elapsed();
    assert!(
        burst_took < INTERVAL - Duration::from_millis(100),
        "the burst took {burst_took:?}: too slow for the test's assumption (no refill during it)"
    );
    assert_eq!(
        remaining,
        (0..BURST).rev().collect::<Vec<_>>(),
        "RateLimit-Remaining counts down"
    );
    assert_limited(&refused, BURST, "request 11");
    // The next token is due 500 ms after the first request, i.e. in under 500 ms.
    assert_eq!(num(&refused, "retry-after"), 1);
    // Full again 10 intervals after the first request: 5 s minus the time already spent.
    assert_eq!(num(&refused, "ratelimit-reset"), 5);
    assert_eq!(
        b.request_count(),
        usize::try_from(BURST).expect("small"),
        "exactly the admitted requests reached the backend"
    );

    // Refill: one token per interval, counted from the first request.
    for k in 1..=2u32 {
        let due = t0 + INTERVAL * k + Duration::from_millis(60);
        tokio::time::sleep_until(due.into()).await;
        let r = get(&c, &url, None).await;
        assert_eq!(
            r.status,
            200,
            "one token is back {:?} after the first request: {}",
            t0.elapsed(),
            r.text()
        );
        assert_eq!(num(&r, "ratelimit-remaining"), 0);
        let again = get(&c, &url, None).await;
        let at = t0.elapsed();
        assert!(
            at < INTERVAL * (k + 1),
            "the check ran late ({at:?}); cannot tell the refill rate"
        );
        assert_limited(&again, BURST, &format!("right after refill {k} at {at:?}"));
    }
}

/// Without `trusted_proxies`, the peer (127.0.0.1) is the client whatever
/// `X-Forwarded-For` says: rotating the header still drains one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_xff_from_an_untrusted_peer_does_not_change_the_ip_key() {
    let b = Backend::start("b").await;
    let (p, _gw) = gateway(
        &b,
        "",
        "[ { rate_limit: { key: ip, rate: 1/min, burst: 3 } } ]",
    )
    .await;
    let c = client::http1();
    let url = p.url("/x");
    let mut statuses = Vec::new();
    for i in 0..6 {
        let xff = format!("198.51.100.{i}");
        statuses.push(get(&c, &url, Some(&xff)).await.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "six different X-Forwarded-For values from one untrusted peer share one bucket"
    );
    let r = get(&c, &url, None).await;
    assert_limited(&r, 3, "no header: still the same peer");
}

/// With `trusted_proxies: [127.0.0.0/8]` the peer is a trusted proxy, so the right-most
/// untrusted `X-Forwarded-For` hop is the client: distinct hops get distinct buckets, and
/// hops left of it (which the client could have written) do not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xff_hop_is_the_client_behind_a_trusted_proxy() {
    let b = Backend::start("b").await;
    let (p, _gw) = gateway(
        &b,
        "trusted_proxies: [127.0.0.0/8]\n",
        "[ { rate_limit: { key: ip, rate: 1/min, burst: 3 } } ]",
    )
    .await;
    let c = client::http1();
    let url = p.url("/x");
    // Ten clients, three requests each: all admitted (each has its own bucket).
    for i in 0..10 {
        let xff = format!("203.0.113.{i}");
        for n in 0..3 {
            let r = get(&c, &url, Some(&xff)).await;
            assert_eq!(r.status, 200, "{xff} request {n}: {}", r.text());
        }
    }
    // One client behind a chain: its own (spoofable) left part rotates, the hop the trusted
    // proxy appended (right-most untrusted) stays 192.0.2.7, and 127.0.0.9 is trusted.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let xff = format!("10.9.9.{i}, 192.0.2.7, 127.0.0.9");
        statuses.push(get(&c, &url, Some(&xff)).await.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "the right-most untrusted hop is the key"
    );
    // The 4th request of an already-seen client is refused: the buckets are real.
    let r = get(&c, &url, Some("203.0.113.0")).await;
    assert_limited(&r, 3, "203.0.113.0, 4th request");
    // The peer itself (no header) is one more, fresh client.
    let r = get(&c, &url, None).await;
    assert_eq!(r.status, 200, "no header: the peer address: {}", r.text());
}
