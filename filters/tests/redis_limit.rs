//! Global rate limits against a real `redis-server` on a free loopback port: exactness
//! across two "replicas" (two independent `RateLimitStores`), then Redis killed mid-run
//! (decisions stay within the timeout, `on_error` applies, the local limiter still limits),
//! then Redis restarted on the same port (global limiting resumes without a restart).
//!
//! The same against a 3-master Redis Cluster: keys spread over the masters and a limit is
//! still exact, because each client's key (hash-tagged) lives in one slot.
//!
//! Needs Debian's `redis-server` and `redis-cli` (`apt-get install -y redis-server`).

mod common;

use common::redis::{redis_cli, RedisCluster, RedisServer};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use meshgate_filters::rate_limit::{
    RateLimitFilter, RateLimitHeaders, RateLimitSpec, RateLimitStoreSpec, RateLimitStores,
};
use meshgate_filters::{Action, Filter, RequestCtx, RequestView, Step};
use pingora::http::RequestHeader;

/// Per-decision deadline for these tests. Far larger than the 20 ms default so a loaded CI
/// machine running a debug build does not turn slow answers into fallbacks (a fallback
/// where the test expects a Redis decision would fail it). A dead Redis refuses at once,
/// so the outage phase does not wait for it.
const TIMEOUT: Duration = Duration::from_millis(300);
/// What a decision may take beyond the timeout: scheduling noise, not waiting.
const SLACK: Duration = Duration::from_millis(150);

fn stores(url: &str, on_error: &str) -> RateLimitStores {
    stores_from(serde_json::json!({ "backend": "redis", "url": url, "on_error": on_error }))
}

fn stores_from(mut spec: serde_json::Value) -> RateLimitStores {
    spec["timeout"] = format!("{}ms", TIMEOUT.as_millis()).into();
    let spec: RateLimitStoreSpec = serde_json::from_value(spec).expect("store spec");
    RateLimitStores::new(Some(&spec)).expect("stores")
}

fn limit(stores: &RateLimitStores) -> RateLimitFilter {
    // 1/min with burst 5: nothing refills during the test, so counts are exact.
    let spec: RateLimitSpec = serde_json::from_value(serde_json::json!({
        "key": "ip", "rate": "1/min", "burst": 5, "scope": "global"
    }))
    .expect("filter spec");
    RateLimitFilter::new(&spec, "api", 0, stores).expect("filter")
}

struct Outcome {
    admitted: bool,
    headers: Option<RateLimitHeaders>,
    took: Duration,
}

async fn request(f: &RateLimitFilter, ip: &str) -> Outcome {
    let header = RequestHeader::build("GET", b"/", None).expect("req");
    let mut ctx = RequestCtx {
        client_ip: ip.parse::<IpAddr>().expect("ip"),
        ..RequestCtx::default()
    };
    let view = RequestView {
        header: &header,
        path: "/",
        host: "",
        peer: None,
    };
    let start = Instant::now();
    let action = match f.request_filter(view, &mut ctx) {
        Step::Done(a) => a,
        Step::Wait(fut) => fut.await,
    };
    let took = start.elapsed();
    Outcome {
        admitted: matches!(action, Action::Continue),
        headers: ctx.extensions.get::<RateLimitHeaders>().copied(),
        took,
    }
}

/// The client every warm-up probe uses: one key, apart from the clients the tests count.
const WARM_UP_IP: &str = "192.0.2.250";

/// Probes through `f` until `stores` has made a Redis decision, so the connection and the
/// script are in place before a test counts anything. The first use connects and loads the
/// script within one deadline; on a loaded machine that may not fit, and the probe then
/// falls back like any request would. Returns the store's fallbacks so far.
async fn warm_up(f: &RateLimitFilter, stores: &RateLimitStores) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = stores.stats().global_decisions;
    while stores.stats().global_decisions == before {
        assert!(
            Instant::now() < deadline,
            "no Redis decision within 10 s: {:?}",
            stores.stats()
        );
        request(f, WARM_UP_IP).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stores.stats().fallback_decisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_survives_a_redis_outage() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    // Two replicas: separate stores, separate local limiters, one Redis.
    let (stores_a, stores_b) = (stores(&url, "allow"), stores(&url, "allow"));
    let (a, b) = (limit(&stores_a), limit(&stores_b));
    let stores_deny = stores(&url, "deny");
    let deny = limit(&stores_deny);
    let fallbacks_a = warm_up(&a, &stores_a).await;
    warm_up(&b, &stores_b).await;
    warm_up(&deny, &stores_deny).await;

    // Exactness across replicas: 5 admitted in total, the 6th refused with headers.
    let mut remaining = Vec::new();
    for i in 0..5 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let o = request(replica, "192.0.2.1").await;
        assert!(o.admitted, "request {i} is within the global burst");
        remaining.push(o.headers.expect("headers: true").remaining);
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let refused = request(&b, "192.0.2.1").await;
    assert!(!refused.admitted);
    let h = refused.headers.expect("429 headers");
    assert_eq!((h.limit, h.remaining), (5, 0));
    let retry = h.retry_after_secs.expect("Retry-After");
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        (299..=300).contains(&h.reset_secs),
        "Reset {}",
        h.reset_secs
    );
    assert!(request(&a, "192.0.2.1")
        .await
        .headers
        .is_some_and(|h| h.retry_after_secs.is_some()));
    let sa = stores_a.stats();
    assert_eq!(sa.fallback_decisions, fallbacks_a, "{sa:?}");
    assert!(sa.global_decisions >= 3 && sa.redis_connected, "{sa:?}");
    // The deny-on-error replica works normally while Redis is up.
    assert!(request(&deny, "192.0.2.50").await.admitted);

    // Redis dies mid-run.
    redis.kill();
    let mut admitted = Vec::new();
    for _ in 0..8 {
        let o = request(&a, "198.51.100.7").await;
        assert!(o.took < TIMEOUT + SLACK, "decision took {:?}", o.took);
        admitted.push(o.admitted);
    }
    assert_eq!(
        admitted,
        [true, true, true, true, true, false, false, false],
        "on_error: allow admits only what the local limiter admits"
    );
    for _ in 0..3 {
        let o = request(&deny, "198.51.100.8").await;
        assert!(o.took < TIMEOUT + SLACK, "decision took {:?}", o.took);
        assert!(!o.admitted, "on_error: deny refuses while Redis is down");
    }
    let sa = stores_a.stats();
    assert!(sa.fallback_decisions >= 8, "{sa:?}");
    assert!(
        sa.redis_errors + sa.redis_timeouts + sa.redis_unavailable >= 8,
        "failures are counted: {sa:?}"
    );
    assert!(!sa.redis_connected, "{sa:?}");

    // Redis returns on the same port (empty, without the script): no restart of ours.
    let _redis = RedisServer::start_on(redis.port);
    // Both replicas reconnect on their own; wait for each to decide through Redis again.
    warm_up(&a, &stores_a).await;
    warm_up(&b, &stores_b).await;
    for i in 0..5 {
        assert!(request(&a, "192.0.2.99").await.admitted, "request {i}");
    }
    // B never saw this client: only Redis can refuse it.
    let o = request(&b, "192.0.2.99").await;
    assert!(!o.admitted, "global limiting resumed");
    assert!(o.headers.is_some_and(|h| h.retry_after_secs.is_some()));
    let sa = stores_a.stats();
    assert!(sa.redis_connected && sa.redis_connects >= 2, "{sa:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let spec = serde_json::json!({ "backend": "redis", "cluster": cluster.urls() });
    let (stores_a, stores_b) = (stores_from(spec.clone()), stores_from(spec));
    let (a, b) = (limit(&stores_a), limit(&stores_b));
    let fallbacks_a = warm_up(&a, &stores_a).await;
    warm_up(&b, &stores_b).await;

    // Many clients, so their hash-tagged keys land in slots of every master.
    for client in 0..30 {
        let ip = format!("192.0.2.{client}");
        for i in 0..5 {
            let replica = if i % 2 == 0 { &a } else { &b };
            assert!(request(replica, &ip).await.admitted, "{ip}: request {i}");
        }
        // The other replica has not seen this client's 5th request: Redis refuses it.
        let refused = request(&a, &ip).await;
        assert!(!refused.admitted, "{ip}: the 6th is refused");
        assert!(refused
            .headers
            .is_some_and(|h| h.retry_after_secs.is_some()));
    }
    let stats = stores_a.stats();
    assert_eq!(stats.fallback_decisions, fallbacks_a, "{stats:?}");
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| redis_cli(n.port, &["dbsize"]).trim().parse().unwrap_or(0))
        .collect();
    assert_eq!(
        per_node.iter().sum::<u64>(),
        31,
        "one key per client and one for the warm-up probes: {per_node:?}"
    );
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys spread over the masters: {per_node:?}"
    );
}
