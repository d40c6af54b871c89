//! A flood of distinct rate-limit keys cannot grow the proxy's memory without bound: up to
//! 200,000 distinct client addresses (X-Forwarded-For hops behind a trusted proxy) within
//! 18 s against a route with 32 `key: ip` limits and `stores.rate_limits.max_keys: 2000`.
//!
//! What bounds the memory is the key table cap: each limiter tracks at most `max_keys`
//! keys, and keys beyond it share 4,096 fixed overflow buckets per limiter. The numbers:
//! - capped, each limiter holds ≤ 2,000 keys — at most ~4,096 table slots of 17 bytes
//!   (8-byte key, 8-byte state, 1 control byte) ≈ 68 KiB — plus 32 KiB of overflow buckets:
//!   ~100 KiB per limiter, ~3.2 MiB for 32;
//! - unbounded, each limiter would keep every key (each flood request is a new key, so
//!   every limiter admits it and passes it on): 32 × N × ≥ 17 B, which is ≥ 10.4 MiB for
//!   the 20,000 keys the test needs at the least; measured, the same flood with `max_keys`
//!   above its size grew RSS by 84 MiB for 60,000 keys (~45 B per entry with the slack
//!   of tables that grow by doubling).
//!
//! The bound, 10 MiB of RSS growth over the warmed-up process, is ~3× the capped tables
//! (room for allocator slack; measured growth is ~3 MiB) and below what an unbounded table
//! needs even at its theoretical minimum. 32 limiters on one route are not a realistic
//! config: they make the tables' memory stand well above the allocator's noise, which one
//! limiter fed by the flood a debug build can take in 18 s would not. The `tracked_keys`
//! gauge is checked against the cap exactly.
//!
//! A last `key: route` limit refuses every request locally, so the flood measures the
//! proxy and not the backend; the `ip` limits in front of it see every new key.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::response_head;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Held while a test runs load or measures latency (see `traffic_global.rs`): an abstract
/// Unix socket name is a machine-wide mutex the kernel releases when the holder exits.
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

/// Distinct keys the flood sends at most, and at least (else the machine was too slow for
/// the test to mean anything; see the module comment).
const TARGET_KEYS: u32 = 200_000;
const MIN_KEYS: u64 = 20_000;
const MAX_KEYS: u64 = 2_000;
const LIMITERS: u64 = 32;
/// Allowed RSS growth over the warmed-up process (see the module comment).
const RSS_GROWTH_BOUND_KIB: u64 = 10 * 1024;
/// How long the flood may run; it stops sending new keys then.
const FLOOD_BUDGET: Duration = Duration::from_secs(18);
/// Keep-alive connections the flood is spread over.
const CONNECTIONS: u32 = 8;

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Sends `GET /flood` with `X-Forwarded-For: 10.x.y.z` (from the id) for each id over one
/// keep-alive connection, one request at a time, until the ids run out or `stop_at` passes.
/// Counts answers into `counts`: [429, other].
async fn flood_connection(
    addr: SocketAddr,
    ids: impl Iterator<Item = u32>,
    counts: Arc<[AtomicU64; 2]>,
    stop_at: Instant,
) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    for i in ids {
        if Instant::now() >= stop_at {
            break;
        }
        let ip = Ipv4Addr::from(0x0a00_0000u32 + i);
        let req = format!("GET /flood HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {ip}\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // One response: the head, then Content-Length bytes of body.
        buf.clear();
        let (head_end, body_len) = loop {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("proxy closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some((head_end, len)) = response_head(&buf) {
                let len = len.ok_or_else(|| {
                    format!(
                        "no content-length in {:?}",
                        String::from_utf8_lossy(&buf[..head_end])
                    )
                })?;
                break (head_end, len);
            }
        };
        while buf.len() < head_end + body_len {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                return Err("proxy closed the connection mid-body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let slot = usize::from(!buf.starts_with(b"HTTP/1.1 429"));
        counts[slot].fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Sends the ids spread over [`CONNECTIONS`] connections until they run out or `stop_at`;
/// returns [429s, other answers].
async fn flood(
    addr: SocketAddr,
    ids: impl Iterator<Item = u32> + Clone + Send + 'static,
    stop_at: Instant,
) -> [u64; 2] {
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..CONNECTIONS {
        let ids = ids
            .clone()
            .enumerate()
            .filter(move |(n, _)| *n as u32 % CONNECTIONS == k)
            .map(|(_, id)| id);
        tasks.spawn(flood_connection(addr, ids, counts.clone(), stop_at));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("flood task")
            .unwrap_or_else(|e| panic!("flood connection failed: {e}"));
    }
    [
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_keeps_memory_bounded() {
    let _turn = exclusive();
    let b = Backend::start("b").await;
    let p = Ports::new();
    let ip_limits: Vec<String> = (1..=LIMITERS)
        .map(|n| format!("      - rate_limit: {{ key: ip, rate: {n}/h, burst: 1 }}\n"))
        .collect();
    let yaml = format!(
        "{}trusted_proxies: [127.0.0.0/8]\n\
         stores:\n  rate_limits: {{ backend: memory, max_keys: {MAX_KEYS} }}\n\
         clusters:\n  c: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - name: flood\n\
         \x20   match: {{ path_prefix: / }}\n\
         \x20   to: c\n\
         \x20   filters:\n{}\
         \x20     - rate_limit: {{ key: route, rate: 1/h, burst: 1 }}\n",
        p.preamble(""),
        b.addr(),
        ip_limits.concat()
    );
    // Info-level access logging off: one JSON line per request would halve the rate.
    let gw = Meshgate::start_with_env(&yaml, &[("MESHGATE_LOG", "warn")]).await;
    let addr = p.public_addr();

    // Warm up with the flood's shape but 50 keys (connections, buffers, the runtime), so the
    // baseline has everything but the key tables' growth.
    let warm = flood(
        addr,
        (0..4_000).map(|i| i % 50),
        Instant::now() + FLOOD_BUDGET,
    )
    .await;
    assert_eq!(
        warm,
        [3_999, 1],
        "only the very first request passes the route limit"
    );
    let baseline = rss_kib(gw.pid());

    let start = Instant::now();
    let counts = flood(
        addr,
        1_000_000..1_000_000 + TARGET_KEYS,
        start + FLOOD_BUDGET,
    )
    .await;
    let took = start.elapsed();
    let after = rss_kib(gw.pid());
    let sent = counts[0] + counts[1];
    let tracked = gw
        .metric("meshgate_rate_limit_tracked_keys", &[])
        .await
        .expect("tracked keys gauge") as u64;
    let overflow = gw
        .metric("meshgate_rate_limit_overflow_decisions_total", &[])
        .await
        .expect("overflow counter") as u64;
    let growth = after.saturating_sub(baseline);
    eprintln!(
        "{sent} distinct keys in {took:.2?} ({:.0}/s): RSS {baseline} KiB → {after} KiB \
         (+{growth} KiB, bound +{RSS_GROWTH_BOUND_KIB} KiB); tracked keys {tracked} \
         (cap {LIMITERS} × {MAX_KEYS} + 1); overflow decisions {overflow}",
        sent as f64 / took.as_secs_f64()
    );
    assert!(
        sent >= MIN_KEYS,
        "only {sent} keys in {FLOOD_BUDGET:?}: too few to tell a capped table from an unbounded one"
    );
    assert_eq!(counts[1], 0, "every flood request is refused locally");
    assert!(
        tracked <= LIMITERS * MAX_KEYS + 1,
        "tracked keys {tracked} > {LIMITERS} limiters × max_keys {MAX_KEYS} + the route key"
    );
    assert!(
        tracked >= LIMITERS * MAX_KEYS,
        "tracked keys {tracked}: every table should be full"
    );
    assert!(
        overflow >= sent - MAX_KEYS,
        "keys beyond the cap are decided in overflow buckets: {overflow}"
    );
    assert!(
        growth <= RSS_GROWTH_BOUND_KIB,
        "RSS grew by {growth} KiB ({baseline} → {after} KiB) under {sent} distinct keys; \
         bound {RSS_GROWTH_BOUND_KIB} KiB"
    );
    assert_eq!(
        b.request_count(),
        1,
        "only the warm-up's first request reached the backend"
    );
}
