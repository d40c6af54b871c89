//! Global limits in Redis: one atomic GCRA script per decision, over one multiplexed
//! connection (standalone) or a cluster connection, with a hard deadline.
//!
//! The connection handling is written here rather than taken from redis-rs's
//! `ConnectionManager` because a limiter needs the opposite of its trade-off: while Redis is
//! down, `ConnectionManager` makes every command wait on the pending reconnect, which would
//! add the full timeout to every request for the length of the outage. Here a request that
//! finds Redis known-down decides at once (local limiter + `on_error`), and reconnecting
//! happens in the background with capped exponential backoff until Redis is back — no
//! restart needed. Only the first requests after a connection was lost (or before the first
//! one was made) wait, and never past the deadline.
//!
//! Keys are `mg:rl:<route>:{<hash>}`: the braces make the whole hash the Redis Cluster hash
//! tag, so the script's single key decides the slot and different clients spread over the
//! cluster.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, RedisResult};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Decision;

/// GCRA with governor's arithmetic, in microseconds of Redis server time (so replicas'
/// clocks do not matter). KEYS[1] holds the theoretical arrival time (TAT); ARGV[1] is the
/// emission interval, ARGV[2] the tolerance `interval * (burst - 1)`. Returns
/// `{allowed, remaining, retry_after_us, reset_us}`. Numbers are formatted with `%d`
/// because Lua's default number-to-string conversion would round 16-digit timestamps.
const GCRA_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local earliest = tat - tau
if now < earliest then
  return {0, 0, earliest - now, tat - now}
end
local new_tat = math.max(tat, now) + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', math.ceil((new_tat - now) / 1000)))
local remaining = math.floor((now + tau + interval - new_tat) / interval)
return {1, remaining, 0, new_tat - now}
"#;

/// First reconnect delay after a failed attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest gap between reconnect attempts while Redis is down, i.e. the worst-case delay
/// before global limiting resumes after Redis returns.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connecting is off the request path, so it may take longer than a decision.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive timeouts after which the connection is presumed dead and replaced (a peer
/// that vanished without a reset never produces an I/O error).
const TIMEOUTS_BEFORE_RECONNECT: u32 = 8;

/// Why Redis could not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection and none expected within the deadline.
    Unavailable,
    /// No answer within the deadline.
    Timeout,
    /// Redis answered with an error or the connection failed.
    Error,
}

/// Counters the store exports through `RateLimitStats`.
#[derive(Debug, Default)]
pub(crate) struct RedisCounters {
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

enum Target {
    Single(Client),
    // Boxed: it is several times the size of a `Client`, and there is one per process.
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query(&self, cmd: &Cmd) -> RedisResult<Vec<i64>> {
        // Clones are handles onto the same multiplexed pipeline, not new connections.
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

#[derive(Debug)]
struct ConnectState {
    connecting: bool,
    /// The last attempt failed: requests do not wait for the next one.
    last_failed: bool,
    next_attempt: Option<Instant>,
    backoff: Duration,
}

/// The shared Redis behind `stores.rate_limits`. Created without I/O; connects on first
/// use from inside the proxy's runtime.
pub(crate) struct RedisStore {
    target: Target,
    conn: ArcSwapOption<Conn>,
    state: Mutex<ConnectState>,
    attempt_done: Notify,
    consecutive_timeouts: AtomicU32,
    connected: AtomicBool,
    sha: String,
    timeout: Duration,
    pub(crate) counters: RedisCounters,
}

impl RedisStore {
    /// Parses the URL(s); does not connect.
    pub(crate) fn new(
        url: Option<&str>,
        cluster: &[String],
        timeout: Duration,
    ) -> Result<Self, String> {
        let target = match url {
            Some(url) => Target::Single(
                Client::open(url).map_err(|e| format!("invalid Redis URL: {}", e.category()))?,
            ),
            None => Target::Cluster(Box::new(
                ClusterClient::builder(cluster.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CONNECT_TIMEOUT)
                    // Enough to follow a MOVED/ASK after a resharding; our own deadline bounds
                    // the total anyway.
                    .retries(2)
                    .min_retry_wait(1)
                    .max_retry_wait(10)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster nodes: {}", e.category()))?,
            )),
        };
        Ok(Self {
            target,
            conn: ArcSwapOption::empty(),
            state: Mutex::new(ConnectState {
                connecting: false,
                last_failed: false,
                next_attempt: None,
                backoff: MIN_BACKOFF,
            }),
            attempt_done: Notify::new(),
            consecutive_timeouts: AtomicU32::new(0),
            connected: AtomicBool::new(false),
            sha: redis::Script::new(GCRA_SCRIPT).get_hash().to_string(),
            timeout,
            counters: RedisCounters::default(),
        })
    }

    /// Whether the last use of the connection succeeded.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// One decision for `key` within the deadline: `interval_us` and `burst` as in the
    /// local limiter.
    ///
    /// A connection that turns out to be broken (Redis restarted since its last use) is
    /// replaced and the command retried once, within the same deadline, so the first request
    /// after an outage is decided by Redis rather than by the fallback. If the old
    /// connection broke mid-command the script may have run already; the retry then counts
    /// that request twice, which errs on the strict side.
    pub(crate) async fn decide(
        self: &Arc<Self>,
        key: &str,
        interval_us: u64,
        burst: u32,
    ) -> Result<Decision, Failure> {
        let deadline = Instant::now() + self.timeout;
        let tau_us = interval_us.saturating_mul(u64::from(burst.saturating_sub(1)));
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(&self.sha)
            .arg(1)
            .arg(key)
            .arg(interval_us)
            .arg(tau_us);
        let mut retried = false;
        loop {
            let conn = self.connection(deadline).await?;
            let mut reply = self.run(&conn, &evalsha, deadline).await?;
            if let Err(e) = &reply {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    // First use on this server (or after a restart / SCRIPT FLUSH): EVAL runs
                    // the script and caches it, so the next EVALSHA hits.
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(GCRA_SCRIPT)
                        .arg(1)
                        .arg(key)
                        .arg(interval_us)
                        .arg(tau_us);
                    reply = self.run(&conn, &eval, deadline).await?;
                }
            }
            let e = match reply {
                Ok(values) => {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.connected.store(true, Ordering::Relaxed);
                    return parse_reply(&values, burst).ok_or_else(|| {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        Failure::Error
                    });
                }
                Err(e) => e,
            };
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            let broken = e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error()
                || e.is_timeout();
            if !broken {
                return Err(Failure::Error);
            }
            self.drop_connection(&conn);
            if retried {
                return Err(Failure::Error);
            }
            retried = true;
        }
    }

    /// Runs `cmd` until the deadline; a timeout is a failure, a Redis error is returned for
    /// the caller to classify.
    async fn run(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<RedisResult<Vec<i64>>, Failure> {
        match tokio::time::timeout_at(deadline, conn.query(cmd)).await {
            Ok(reply) => Ok(reply),
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let n = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_BEFORE_RECONNECT {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.drop_connection(conn);
                }
                Err(Failure::Timeout)
            }
        }
    }

    /// The current connection, or one made before `deadline` when it is worth waiting for.
    async fn connection(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Conn>, Failure> {
        if let Some(conn) = self.conn.load_full() {
            return Ok(conn);
        }
        // Register interest before starting the attempt, so its completion cannot slip
        // between the check and the wait.
        let done = self.attempt_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if let Some(conn) = self.conn.load_full() {
            return Ok(conn);
        }
        if !self.start_connecting() {
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Unavailable);
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Timeout);
        }
        self.conn.load_full().ok_or_else(|| {
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            Failure::Unavailable
        })
    }

    /// Starts a connection attempt unless one is running or the backoff has not elapsed.
    /// Returns whether the caller should wait for it: only while Redis is not known to be
    /// down, so an outage costs requests nothing after the first failed attempt.
    fn start_connecting(self: &Arc<Self>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.connecting {
            return !st.last_failed;
        }
        if st.next_attempt.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        st.connecting = true;
        let wait = !st.last_failed;
        drop(st);
        let this = Arc::clone(self);
        runtime.spawn(async move { this.connect().await });
        wait
    }

    async fn connect(self: Arc<Self>) {
        let attempt = async {
            match &self.target {
                Target::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        // A safety net for requests abandoned by our own deadline.
                        .set_response_timeout(Some(CONNECT_TIMEOUT));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let result: Result<Conn, Option<RedisError>> =
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(Some(e)),
                Err(_) => Err(None),
            };
        {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.connecting = false;
            match result {
                Ok(conn) => {
                    self.conn.store(Some(Arc::new(conn)));
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.connected.store(true, Ordering::Relaxed);
                    self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    st.last_failed = false;
                    st.next_attempt = None;
                    st.backoff = MIN_BACKOFF;
                }
                Err(_) => {
                    self.connected.store(false, Ordering::Relaxed);
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    st.last_failed = true;
                    st.next_attempt = Some(Instant::now() + st.backoff);
                    st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.attempt_done.notify_waiters();
    }

    /// Forgets `broken` (unless another request already replaced it) and starts
    /// reconnecting in the background.
    fn drop_connection(self: &Arc<Self>, broken: &Arc<Conn>) {
        let current = self.conn.load();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            return;
        }
        let previous = self.conn.compare_and_swap(&*current, None);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, broken)) {
            self.connected.store(false, Ordering::Relaxed);
            self.start_connecting();
        }
    }
}

/// Reads `{allowed, remaining, retry_after_us, reset_us}`; `None` for any other shape.
fn parse_reply(values: &[i64], burst: u32) -> Option<Decision> {
    let [allowed, remaining, retry_after, reset] = *values else {
        return None;
    };
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    Some(Decision {
        allowed: allowed == 1,
        limit: burst,
        remaining: u32::try_from(remaining).unwrap_or(0).min(burst),
        reset: micros(reset),
        retry_after: micros(retry_after),
    })
}

/// The Redis key for a client: `mg:rl:<route>:{<32 hex digits>}`. The route (with braces
/// replaced, so it cannot open a hash tag of its own) is there for operators reading
/// `SCAN` output; the digest covers the limiter identity and the client key.
pub(crate) fn redis_key(route_label: &str, digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(route_label.len() + 42);
    key.push_str("mg:rl:");
    key.push_str(route_label);
    key.push_str(":{");
    for b in digest.iter().take(16) {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    key.push('}');
    key
}

/// A route name made safe to sit before the hash tag.
pub(crate) fn route_label(route: &str) -> String {
    route
        .chars()
        .map(|c| {
            if c == '{' || c == '}' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hash_tagged_on_the_digest() {
        let key = redis_key(&route_label("orders {api}"), &[0xab; 32]);
        assert_eq!(key, "mg:rl:orders__api_:{abababababababababababababababab}");
        // Redis Cluster hashes the text between the first `{` and the next `}`.
        let tag_start = key.find('{').expect("tag") + 1;
        let tag_end = key[tag_start..].find('}').expect("end") + tag_start;
        assert_eq!(&key[tag_start..tag_end], "ab".repeat(16));
    }

    #[test]
    fn replies_parse_and_odd_shapes_are_errors() {
        let d = parse_reply(&[1, 4, 0, 20_000], 5).expect("shape");
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (5, 4));
        assert_eq!(d.reset, Duration::from_millis(20));
        let d = parse_reply(&[0, 0, 1_500_000, 9_000_000], 5).expect("shape");
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(1500));
        assert!(parse_reply(&[1, 2], 5).is_none());
    }

    #[test]
    fn constructing_does_no_io() {
        // Nothing listens on port 1; a connect attempt here would fail the test by error.
        let store = RedisStore::new(Some("redis://127.0.0.1:1"), &[], Duration::from_millis(20))
            .expect("parses");
        assert!(!store.is_connected());
        assert!(RedisStore::new(
            None,
            &[
                "redis://127.0.0.1:7000".to_string(),
                "redis://127.0.0.1:7001".to_string()
            ],
            Duration::from_millis(20)
        )
        .is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_after_the_first_attempt() {
        // Port 1 refuses connections immediately.
        let store = Arc::new(
            RedisStore::new(Some("redis://127.0.0.1:1"), &[], Duration::from_millis(200))
                .expect("parses"),
        );
        let first = store.decide("k", 1000, 5).await;
        assert!(first.is_err());
        let start = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(store.decide("k", 1000, 5).await, Err(Failure::Unavailable));
        }
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "known-down decisions must not wait: {:?}",
            start.elapsed()
        );
        assert!(store.counters.connect_failures.load(Ordering::Relaxed) >= 1);
    }
}
