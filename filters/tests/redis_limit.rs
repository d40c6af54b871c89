//! Global rate limits against a real `redis-server` on a free loopback port: exactness
//! across two "replicas" (two independent `RateLimitStores`), then Redis killed mid-run
//! (decisions stay within the timeout, `on_error` applies, the local limiter still limits),
//! then Redis restarted on the same port (global limiting resumes without a restart).
//!
//! The same against a 3-master Redis Cluster: keys spread over the masters and a limit is
//! still exact, because each client's key (hash-tagged) lives in one slot.
//!
//! Needs Debian's `redis-server` and `redis-cli` (`apt-get install -y redis-server`).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshgate_filters::rate_limit::{
    RateLimitFilter, RateLimitHeaders, RateLimitSpec, RateLimitStoreSpec, RateLimitStores,
};
use meshgate_filters::{Action, Filter, RequestCtx, RequestView, Step};
use pingora::http::RequestHeader;

/// Per-decision deadline for these tests. Larger than the 20 ms default so a loaded CI
/// machine running a debug build does not turn slow answers into fallbacks.
const TIMEOUT: Duration = Duration::from_millis(100);
/// What a decision may take beyond the timeout: scheduling noise, not waiting.
const SLACK: Duration = Duration::from_millis(150);

/// A `redis-server` child process on a fixed loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ];
        args.extend_from_slice(extra);
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        let server = Self {
            port,
            child: Some(child),
        };
        server.wait_ready();
        server
    }

    fn start() -> Self {
        Self::start_on(free_port(false))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Polls PING until PONG, with a deadline.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not ready after 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the OS says is free (Redis binds it right after, with SO_REUSEADDR). With
/// `cluster_bus`, port + 10000 — the cluster bus — must be free too.
fn free_port(cluster_bus: bool) -> u16 {
    for _ in 0..100 {
        let Ok(port) = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
        else {
            continue;
        };
        if !cluster_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// `redis-cli -p PORT ARGS…` output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); apt-get install -y redis-server"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three cluster-enabled masters sharing the 16384 slots; removed on drop.
struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("meshgate-redis-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let dir_arg = dir.to_string_lossy().into_owned();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port(true);
            let conf = format!("nodes-{port}.conf");
            nodes.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    &dir_arg,
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(nodes[0].port, &args);
        let cluster = Self { nodes, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|n| redis_cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster not ok after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_survives_a_redis_outage() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    // Two replicas: separate stores, separate local limiters, one Redis.
    let (stores_a, stores_b) = (stores(&url, "allow"), stores(&url, "allow"));
    let (a, b) = (limit(&stores_a), limit(&stores_b));
    let stores_deny = stores(&url, "deny");
    let deny = limit(&stores_deny);

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
    assert_eq!(sa.fallback_decisions, 0, "{sa:?}");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = stores_a.stats().global_decisions;
    let mut probe = 0u32;
    while stores_a.stats().global_decisions == before {
        assert!(
            Instant::now() < deadline,
            "global limiting did not resume: {:?}",
            stores_a.stats()
        );
        probe += 1;
        // A fresh client per probe, so probing itself never hits a limit.
        request(&a, &format!("203.0.113.{}", probe % 250)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    assert_eq!(stats.fallback_decisions, 0, "{stats:?}");
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| redis_cli(n.port, &["dbsize"]).trim().parse().unwrap_or(0))
        .collect();
    assert_eq!(
        per_node.iter().sum::<u64>(),
        30,
        "one key per client: {per_node:?}"
    );
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys spread over the masters: {per_node:?}"
    );
}
