//! Global (`scope: global`) rate limits through real proxies and a real Redis: two meshgate
//! instances sharing one `redis-server` — and separately a 3-master Redis Cluster — admit
//! together what one limit allows; Redis killed mid-run leaves every request decided within
//! the timeout, per `on_error`, with the local limiter still enforcing the rate and the
//! failures counted in `/metrics`; Redis restarted on the same port brings shared limiting
//! back without restarting meshgate. A frozen Redis (SIGSTOP: connections open, no answers)
//! costs each request at most the timeout too.
//!
//! Needs Debian's `redis-server` and `redis-cli` (`apt-get install -y redis-server`).
//!
//! These tests run load or measure latency, so they take turns with the other load tests of
//! this crate ([`exclusive`]): on a 2-core machine, a neighbour's flood would turn latency
//! bounds into a measure of the neighbour.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::redis::{Redis, RedisCluster};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Held while a test runs load or measures latency. An abstract Unix socket name is a
/// machine-wide mutex that the kernel releases when the holder exits, however it exits.
fn exclusive() -> UnixListener {
    let name = UnixAddr::from_abstract_name(b"meshgate-tests-traffic-load").expect("name");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(l) = UnixListener::bind_addr(&name) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "another load test held the lock for 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `stores:` section for a standalone Redis or a cluster.
fn stores(target: &str, on_error: &str, timeout: Duration) -> String {
    format!(
        "stores:\n  rate_limits: {{ backend: redis, {target}, on_error: {on_error}, timeout: {}ms }}\n",
        timeout.as_millis()
    )
}

fn standalone(redis: &Redis) -> String {
    format!("url: \"{}\"", redis.url())
}

fn cluster(c: &RedisCluster) -> String {
    let urls: Vec<String> = c.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!("cluster: [{}]", urls.join(", "))
}

/// A gateway with the global-limit routes every test here uses:
/// - `/shared`: one bucket for the whole route (`key: route`), 100/s, burst 100;
/// - `/lim`: per `x-client` header, 1/min, burst 5 — nothing refills during a test, so
///   counts are exact.
async fn gateway(b: &Backend, stores: &str) -> (Ports, Meshgate) {
    let p = Ports::new();
    let yaml = format!(
        "{}{stores}clusters:\n  c: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - name: shared\n\
         \x20   match: {{ path_prefix: /shared }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ rate_limit: {{ key: route, rate: 100/s, burst: 100, scope: global }} }} ]\n\
         \x20 - name: lim\n\
         \x20   match: {{ path_prefix: /lim }}\n\
         \x20   to: c\n\
         \x20   filters: [ {{ rate_limit: {{ key: \"header:x-client\", rate: 1/min, burst: 5, scope: global }} }} ]\n",
        p.preamble(""),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (p, gw)
}

async fn metric(gw: &Meshgate, name: &str, labels: &[(&str, &str)]) -> u64 {
    // Counters are integers; the cast only drops the ".0" of the text format.
    gw.metric(name, labels).await.unwrap_or(0.0) as u64
}

async fn by_redis(gw: &Meshgate) -> u64 {
    metric(
        gw,
        "meshgate_rate_limit_global_decisions_total",
        &[("by", "redis")],
    )
    .await
}

async fn by_fallback(gw: &Meshgate) -> u64 {
    metric(
        gw,
        "meshgate_rate_limit_global_decisions_total",
        &[("by", "fallback")],
    )
    .await
}

/// All kinds of `meshgate_rate_limit_redis_failures_total` summed.
async fn redis_failures(gw: &Meshgate) -> u64 {
    metric(gw, "meshgate_rate_limit_redis_failures_total", &[]).await
}

/// One request to `/lim` as client `who`, with its latency.
async fn lim(c: &reqwest::Client, p: &Ports, who: &str) -> (Reply, Duration) {
    let start = Instant::now();
    let r = client::send(c.get(p.url("/lim")).header("x-client", who)).await;
    (r, start.elapsed())
}

/// Sends fresh clients to `/lim` until Redis has decided for this instance since `since`
/// `by="redis"` decisions; returns how long it took.
async fn until_redis_decides(
    c: &reqwest::Client,
    p: &Ports,
    gw: &Meshgate,
    since: u64,
) -> Duration {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    loop {
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        lim(c, p, &format!("probe-{n}")).await;
        if by_redis(gw).await > since {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no by=\"redis\" decision within 10 s (redis_connected={:?}, failures={})",
            gw.metric("meshgate_rate_limit_redis_connected", &[]).await,
            redis_failures(gw).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Client `who` spends the whole burst of 5 on `first`, then `second` — which never saw
/// this client — must refuse it: only the shared Redis state can say so.
async fn assert_shared(
    c: &reqwest::Client,
    (pa, a): (&Ports, &Meshgate),
    (pb, b): (&Ports, &Meshgate),
    who: &str,
) {
    let (fa, fb) = (by_fallback(a).await, by_fallback(b).await);
    for i in 0..5 {
        let (r, _) = lim(c, pa, who).await;
        assert_eq!(
            r.status,
            200,
            "{who}: request {i} on the first instance: {}",
            r.text()
        );
    }
    let (r, _) = lim(c, pb, who).await;
    assert_eq!(
        r.status,
        429,
        "{who}: the second instance must refuse the 6th request (limit not shared): {}",
        r.text()
    );
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        (by_fallback(a).await - fa, by_fallback(b).await - fb),
        (0, 0),
        "{who}: every decision was Redis's"
    );
}

/// What one instance saw during a load run.
#[derive(Debug, Default, Clone)]
struct Tally {
    sent: u64,
    admitted: u64,
    limited: u64,
    other: Vec<String>,
    max_latency: Duration,
}

/// Sends `GET url` to every url at `per_url` requests/s for `run`, each request in its own
/// task (so a slow answer does not slow the pace), at most 256 in flight per url.
/// Returns the tallies and the time from the first send to the last answer.
async fn paced_load(urls: &[String], per_url: u32, run: Duration) -> (Vec<Tally>, Duration) {
    let start = Instant::now();
    let mut senders = JoinSet::new();
    for (i, url) in urls.iter().enumerate() {
        let url = url.clone();
        senders.spawn(async move {
            let c = client::http1();
            let slots = Arc::new(Semaphore::new(256));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_url);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut inflight = JoinSet::new();
            let begin = Instant::now();
            while begin.elapsed() < run {
                tick.tick().await;
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                let req = c.get(&url);
                inflight.spawn(async move {
                    let t = Instant::now();
                    let r = req.send().await;
                    let status = match r {
                        Ok(resp) => Reply::try_read(resp).await.map(|r| r.status),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    drop(permit);
                    (status, t.elapsed())
                });
            }
            let mut t = Tally::default();
            while let Some(done) = inflight.join_next().await {
                let (status, took) = done.expect("request task");
                t.sent += 1;
                t.max_latency = t.max_latency.max(took);
                match status {
                    Ok(200) => t.admitted += 1,
                    Ok(429) => t.limited += 1,
                    Ok(s) => t.other.push(format!("status {s}")),
                    Err(e) => t.other.push(e),
                }
            }
            (i, t)
        });
    }
    let mut tallies = vec![Tally::default(); urls.len()];
    while let Some(done) = senders.join_next().await {
        let (i, t) = done.expect("sender task");
        tallies[i] = t;
    }
    (tallies, start.elapsed())
}

/// The limit of the `/shared` route.
const RATE: f64 = 100.0;
const BURST: f64 = 100.0;
/// How long the load runs, and how fast: 2 × 200 = 400 requests/s offered against 100/s.
const RUN: Duration = Duration::from_secs(5);
const PER_INSTANCE: u32 = 200;
/// Extra admissions the upper bound allows beyond `RATE × elapsed + BURST`. GCRA in Redis is
/// exact in Redis server time, and `elapsed` — first send to last answer — contains every
/// decision, so the bound holds with no tolerance at all; the 1 % (5 requests over 5 s)
/// only absorbs clock granularity (the script's microsecond `TIME` against the client's
/// `Instant`). A limit counted per instance would overshoot by ~600; a 429 for every
/// request after the burst would undershoot the lower bound.
const TOLERANCE: f64 = 0.01 * RATE * 5.0;
/// The lower bound's fraction of `RATE × sending time + BURST`: under 4× overload GCRA admits
/// one request per interval, so anything much below the nominal count means requests were
/// refused that the shared limit allowed (e.g. decisions counted twice).
const LOWER: f64 = 0.9;
/// Redis round-trip deadline for the load runs: long enough that a busy 2-core machine never
/// turns a Redis decision into a fallback (the test asserts there were none), so the bound
/// measures Redis alone.
const LOAD_TIMEOUT: Duration = Duration::from_millis(250);

/// Two instances, one global limit, 400 requests/s for 5 s.
async fn two_instances_share_the_limit(stores: &str, what: &str) {
    let b = Backend::start("b").await;
    let (pa, a) = gateway(&b, stores).await;
    let (pb, gb) = gateway(&b, stores).await;
    // Connect both to Redis before the clock starts (the first request waits for the
    // connection, within the deadline).
    let c = client::http1();
    until_redis_decides(&c, &pa, &a, 0).await;
    until_redis_decides(&c, &pb, &gb, 0).await;
    let redis_before = (by_redis(&a).await, by_redis(&gb).await);
    // The warm-up's first probes may have fallen back while connecting; count from here.
    let fallback_before = (by_fallback(&a).await, by_fallback(&gb).await);
    b.clear_requests();

    let urls = [pa.url("/shared"), pb.url("/shared")];
    let (tallies, elapsed) = paced_load(&urls, PER_INSTANCE, RUN).await;
    let admitted: u64 = tallies.iter().map(|t| t.admitted).sum();
    let sent: u64 = tallies.iter().map(|t| t.sent).sum();
    let secs = elapsed.as_secs_f64();
    let upper = RATE * secs + BURST + TOLERANCE;
    let lower = LOWER * (RATE * RUN.as_secs_f64() + BURST);
    eprintln!(
        "{what}: sent {sent} in {secs:.2} s ({:.0}/s), admitted {admitted} \
         (per instance {:?}), bounds [{lower:.0}, {upper:.0}], max latency {:?}",
        sent as f64 / secs,
        tallies.iter().map(|t| t.admitted).collect::<Vec<_>>(),
        tallies.iter().map(|t| t.max_latency).max()
    );
    for (i, t) in tallies.iter().enumerate() {
        assert!(
            t.other.is_empty(),
            "{what}: instance {i}: answers other than 200/429: {:?}",
            &t.other[..t.other.len().min(5)]
        );
    }
    assert!(
        sent as f64 >= 0.8 * 2.0 * f64::from(PER_INSTANCE) * RUN.as_secs_f64(),
        "{what}: only {sent} requests sent; the offered load was not 4× the limit"
    );
    assert!(
        (admitted as f64) <= upper,
        "{what}: {admitted} admitted in {secs:.2} s > {upper:.0} = {RATE}/s × {secs:.2} s + {BURST} + {TOLERANCE}"
    );
    assert!(
        (admitted as f64) >= lower,
        "{what}: only {admitted} admitted, < {lower:.0}"
    );
    // Each instance decided every one of its requests in Redis, none by fallback.
    for (i, (gw, t)) in [(&a, &tallies[0]), (&gb, &tallies[1])].iter().enumerate() {
        let (before, fallbacks) = if i == 0 {
            (redis_before.0, fallback_before.0)
        } else {
            (redis_before.1, fallback_before.1)
        };
        assert_eq!(
            by_fallback(gw).await - fallbacks,
            0,
            "{what}: instance {i}: fallbacks"
        );
        assert_eq!(
            by_redis(gw).await - before,
            t.sent,
            "{what}: instance {i}: every request decided by Redis"
        );
        let allowed = metric(
            gw,
            "meshgate_rate_limit_requests_total",
            &[("route", "shared"), ("result", "allowed")],
        )
        .await;
        assert_eq!(
            allowed, t.admitted,
            "{what}: instance {i}: metric vs client count"
        );
    }
    assert_eq!(
        b.request_count() as u64,
        admitted,
        "{what}: the backend saw exactly the admitted requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_redis_limit() {
    let _turn = exclusive();
    let redis = Redis::start();
    let stores = stores(&standalone(&redis), "allow", LOAD_TIMEOUT);
    two_instances_share_the_limit(&stores, "standalone Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_redis_cluster_limit() {
    let _turn = exclusive();
    let rc = RedisCluster::start(3);
    let stores = stores(&cluster(&rc), "allow", LOAD_TIMEOUT);
    two_instances_share_the_limit(&stores, "Redis Cluster").await;
    // The state is in the cluster (the probes' keys live for a minute; the route's bucket
    // expires a second after its last use).
    let sizes = rc.dbsizes();
    assert!(
        sizes.iter().sum::<u64>() >= 1,
        "the limit's state lives in the cluster: {sizes:?}"
    );
}

/// Decision deadline of the outage tests; the bound on a request's latency is this plus
/// [`SLACK`] (scheduling and the proxy's own work on a loaded debug build — not waiting: a
/// request that waited for a reconnect would take the 1 s connect timeout).
const OUTAGE_TIMEOUT: Duration = Duration::from_millis(100);
const SLACK: Duration = Duration::from_millis(150);

/// One request of the background load.
struct Probe {
    /// When it was sent, from the load's `start`.
    at: Duration,
    status: Result<u16, String>,
    took: Duration,
}

/// Requests to each url — one loop per url, each request after the previous answer and a
/// `pace` pause — with client names rotating over 40, until `stop` fires. Returns
/// `(url index, probe)` per request.
fn background_load(
    urls: Vec<String>,
    pace: Duration,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(usize, Probe)>> {
    tokio::spawn(async move {
        let mut loops = JoinSet::new();
        for (i, url) in urls.into_iter().enumerate() {
            let stop = stop.clone();
            loops.spawn(async move {
                let c = client::http1();
                let mut out = Vec::new();
                let mut n = 0usize;
                while !*stop.borrow() {
                    n += 1;
                    let t = Instant::now();
                    let status = match c
                        .get(&url)
                        .header("x-client", format!("bg-{}", n % 40))
                        .send()
                        .await
                    {
                        Ok(resp) => Reply::try_read(resp).await.map(|r| r.status),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    out.push((
                        i,
                        Probe {
                            at: t - start,
                            status,
                            took: t.elapsed(),
                        },
                    ));
                    tokio::time::sleep(pace).await;
                }
                out
            });
        }
        let mut all = Vec::new();
        while let Some(done) = loops.join_next().await {
            all.extend(done.expect("load loop"));
        }
        all.sort_by_key(|(_, p)| p.at);
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_then_restarted() {
    let _turn = exclusive();
    let mut redis = Redis::start();
    let allow = stores(&standalone(&redis), "allow", OUTAGE_TIMEOUT);
    let deny = stores(&standalone(&redis), "deny", OUTAGE_TIMEOUT);
    let bk = Backend::start("b").await;
    let (pa, a) = gateway(&bk, &allow).await;
    let (pb, b) = gateway(&bk, &allow).await;
    let (pd, d) = gateway(&bk, &deny).await;
    let c = client::http1();
    for (p, gw) in [(&pa, &a), (&pb, &b), (&pd, &d)] {
        until_redis_decides(&c, p, gw, 0).await;
    }
    assert_shared(&c, (&pa, &a), (&pb, &b), "before").await;

    // Load on the allow and the deny instance; Redis dies in the middle of it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let load = background_load(
        vec![pa.url("/lim"), pd.url("/lim")],
        Duration::from_millis(10),
        start,
        stop_rx,
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fallback_before = (by_fallback(&a).await, by_fallback(&d).await);
    let failures_before = (redis_failures(&a).await, redis_failures(&d).await);
    tokio::task::block_in_place(|| redis.kill());
    let killed_at = start.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send_replace(true);
    let probes = load.await.expect("load task");
    // Sent after the kill returned (the process is gone, its sockets closed): decided
    // without Redis.
    let sent_in_outage = |idx: usize| {
        probes
            .iter()
            .filter(|(i, p)| *i == idx && p.at > killed_at)
            .count() as u64
    };
    let (outage_a, outage_d) = (sent_in_outage(0), sent_in_outage(1));
    let worst = |after: bool| {
        probes
            .iter()
            .filter(|(_, p)| (p.at > killed_at) == after)
            .map(|(_, p)| p.took)
            .max()
            .unwrap_or_default()
    };
    eprintln!(
        "background load: {} requests, {} after the kill at {killed_at:?}; \
         worst latency before {:?}, after {:?}",
        probes.len(),
        outage_a + outage_d,
        worst(false),
        worst(true)
    );
    assert!(
        outage_a >= 20 && outage_d >= 20,
        "the load kept running through the outage ({outage_a}, {outage_d} requests)"
    );
    for (i, p) in &probes {
        let who = ["allow", "deny"][*i];
        assert!(
            matches!(p.status, Ok(200 | 429)),
            "{who} instance at {:?}: {:?}",
            p.at,
            p.status
        );
        if *i == 1 && p.at > killed_at {
            assert_eq!(
                p.status,
                Ok(429),
                "deny instance at {:?}, Redis down: on_error: deny",
                p.at
            );
        }
        assert!(
            p.took <= OUTAGE_TIMEOUT + SLACK,
            "{who} instance at {:?}: a request took {:?} (> timeout {OUTAGE_TIMEOUT:?} + {SLACK:?})",
            p.at,
            p.took
        );
    }

    // Redis is down. on_error: allow — the local limiter at the same rate still applies:
    // exactly 5 for a new client, then 429.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let (r, took) = lim(&c, &pa, "down-1").await;
        assert!(
            took <= OUTAGE_TIMEOUT + SLACK,
            "allow, Redis down: {took:?}"
        );
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429],
        "allow + local limiter"
    );
    // on_error: deny — 429 for everyone, with a Retry-After.
    for i in 0..3 {
        let (r, took) = lim(&c, &pd, &format!("down-{i}")).await;
        assert!(took <= OUTAGE_TIMEOUT + SLACK, "deny, Redis down: {took:?}");
        assert_eq!(r.status, 429, "deny while Redis is down: {}", r.text());
        assert_eq!(r.json()["error"], "rate_limited");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        assert!(r.header("ratelimit-limit").is_some());
    }
    // Counted: every request since the kill was a fallback decision, and failures were seen.
    let fb_a = by_fallback(&a).await - fallback_before.0;
    let fb_d = by_fallback(&d).await - fallback_before.1;
    assert!(
        fb_a >= outage_a + 7 && fb_d >= outage_d + 3,
        "fallback decisions during the outage: allow {fb_a} (want ≥ {}), deny {fb_d} (want ≥ {})",
        outage_a + 7,
        outage_d + 3
    );
    for (gw, before, who) in [
        (&a, failures_before.0, "allow"),
        (&d, failures_before.1, "deny"),
    ] {
        let now = redis_failures(gw).await;
        assert!(
            now > before,
            "{who}: redis failures not counted ({before} → {now})"
        );
        assert_eq!(
            gw.metric("meshgate_rate_limit_redis_connected", &[]).await,
            Some(0.0),
            "{who}"
        );
    }

    // Redis returns on the same port, empty. Nobody restarts meshgate.
    let redis_at_restart = (by_redis(&a).await, by_redis(&b).await, by_redis(&d).await);
    tokio::task::block_in_place(|| redis.restart());
    let resumed = [
        until_redis_decides(&c, &pa, &a, redis_at_restart.0).await,
        until_redis_decides(&c, &pb, &b, redis_at_restart.1).await,
        until_redis_decides(&c, &pd, &d, redis_at_restart.2).await,
    ];
    eprintln!("Redis decisions resumed after {resumed:?} (allow A, allow B, deny)");
    assert_shared(&c, (&pa, &a), (&pb, &b), "after").await;
    let (r, _) = lim(&c, &pd, "after-deny").await;
    assert_eq!(r.status, 200, "deny instance admits again: {}", r.text());
    assert_eq!(
        a.metric("meshgate_rate_limit_redis_connected", &[]).await,
        Some(1.0)
    );
}

/// How long the frozen-Redis load runs, and when Redis should be known to be down: 8
/// consecutive timeouts (≈ 8 × 110 ms per instance) give up the connection, the reconnect
/// attempt then hangs for its 1 s connect timeout and fails — about 1.9 s in all. From then
/// on requests decide without waiting (reconnects go on in the background).
const FROZEN_RUN: Duration = Duration::from_millis(3500);
const KNOWN_DOWN_BY: Duration = Duration::from_millis(2800);

/// A frozen Redis (SIGSTOP) accepts connections in the kernel but answers nothing, so this is
/// where the deadline does the work: commands time out, the connection is given up after a
/// run of timeouts, and reconnect attempts hang until their own timeout — through all of it
/// each request waits at most `timeout`, then the local limiter (allow) or a 429 (deny)
/// decides; once Redis is known to be down, requests stop waiting for it at all. Thawed,
/// Redis decides again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_costs_each_request_at_most_the_timeout() {
    let _turn = exclusive();
    let mut redis = Redis::start();
    let allow = stores(&standalone(&redis), "allow", OUTAGE_TIMEOUT);
    let deny = stores(&standalone(&redis), "deny", OUTAGE_TIMEOUT);
    let bk = Backend::start("b").await;
    let (pa, a) = gateway(&bk, &allow).await;
    let (pd, d) = gateway(&bk, &deny).await;
    let c = client::http1();
    until_redis_decides(&c, &pa, &a, 0).await;
    until_redis_decides(&c, &pd, &d, 0).await;
    let timeouts_before = metric(
        &a,
        "meshgate_rate_limit_redis_failures_total",
        &[("kind", "timeout")],
    )
    .await;

    redis.freeze();
    let start = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = background_load(
        vec![pa.url("/lim"), pd.url("/lim")],
        Duration::from_millis(10),
        start,
        stop_rx,
    );
    tokio::time::sleep(FROZEN_RUN).await;
    stop_tx.send_replace(true);
    let probes = load.await.expect("load task");
    let waited = probes
        .iter()
        .filter(|(_, p)| p.took >= OUTAGE_TIMEOUT)
        .count();
    let mut late: Vec<Duration> = probes
        .iter()
        .filter(|(_, p)| p.at >= KNOWN_DOWN_BY)
        .map(|(_, p)| p.took)
        .collect();
    late.sort();
    let late_median = late.get(late.len() / 2).copied().unwrap_or_default();
    eprintln!(
        "frozen Redis: {} requests, {waited} waited the full timeout, worst {:?}; \
         {} sent after {KNOWN_DOWN_BY:?}, median {late_median:?}",
        probes.len(),
        probes.iter().map(|(_, p)| p.took).max().unwrap_or_default(),
        late.len()
    );
    assert!(
        waited >= 1,
        "no request waited for the frozen Redis: was it consulted at all?"
    );
    for (i, p) in &probes {
        let who = ["allow", "deny"][*i];
        let want: &[u16] = if *i == 0 { &[200, 429] } else { &[429] };
        assert!(
            p.status.as_ref().is_ok_and(|s| want.contains(s)),
            "{who} instance at {:?}: {:?}",
            p.at,
            p.status
        );
        assert!(
            p.took <= OUTAGE_TIMEOUT + SLACK,
            "{who} instance at {:?}: a request took {:?} (> timeout {OUTAGE_TIMEOUT:?} + {SLACK:?})",
            p.at,
            p.took
        );
    }
    assert!(
        late.len() >= 10 && late_median < OUTAGE_TIMEOUT / 2,
        "once Redis is known to be down, requests should not wait for it: \
         {} requests after {KNOWN_DOWN_BY:?}, median {late_median:?}",
        late.len()
    );
    // The local limiter still counts at the same rate while Redis hangs.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let (r, took) = lim(&c, &pa, "frozen-1").await;
        assert!(
            took <= OUTAGE_TIMEOUT + SLACK,
            "allow, Redis frozen: {took:?}"
        );
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429],
        "allow + local limiter"
    );
    let timeouts = metric(
        &a,
        "meshgate_rate_limit_redis_failures_total",
        &[("kind", "timeout")],
    )
    .await;
    assert!(
        timeouts > timeouts_before,
        "timeouts counted: {timeouts_before} → {timeouts}"
    );

    let at_thaw = (by_redis(&a).await, by_redis(&d).await);
    redis.thaw();
    let resumed = [
        until_redis_decides(&c, &pa, &a, at_thaw.0).await,
        until_redis_decides(&c, &pd, &d, at_thaw.1).await,
    ];
    eprintln!("Redis decisions resumed after {resumed:?} (allow, deny)");
    let (r, _) = lim(&c, &pd, "after-thaw").await;
    assert_eq!(r.status, 200, "deny instance admits again: {}", r.text());
}
