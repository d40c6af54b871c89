//! One Redis connection (standalone or Cluster) with the failure behaviour a request path
//! needs, shared by the global rate limiter ([`crate::rate_limit`]) and the BFF session
//! store ([`crate::bff::redis_store`]).
//!
//! Written here rather than taken from redis-rs's `ConnectionManager` because a proxy
//! needs the opposite of its trade-off: while Redis is down, `ConnectionManager` makes
//! every command wait on the pending reconnect, which would add the full timeout to every
//! request for the length of the outage. Here:
//! - constructing does no I/O; the first command connects, from inside the proxy's runtime;
//! - every command is bounded by the caller's deadline;
//! - a command that finds Redis known-down fails at once, and reconnecting happens in the
//!   background with capped exponential backoff until Redis is back — no restart needed;
//! - a connection found broken (Redis restarted since its last use, or
//!   [`TIMEOUTS_BEFORE_RECONNECT`] timeouts in a row from a peer that vanished without a
//!   reset) is replaced and the command retried once within the same deadline;
//! - errors carry only Redis' error category, never keys or values.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError, RedisResult};
use tokio::sync::Notify;
use tokio::time::Instant;

/// First reconnect delay after a failed attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest gap between reconnect attempts while Redis is down, i.e. the worst-case delay
/// before Redis is used again after it returns.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connecting is off the request path, so it may take longer than a command.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive timeouts after which the connection is presumed dead and replaced (a peer
/// that vanished without a reset never produces an I/O error).
const TIMEOUTS_BEFORE_RECONNECT: u32 = 8;

/// Why a command got no answer from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecError {
    /// No connection and none expected within the deadline (Redis known to be down).
    Unavailable,
    /// No answer within the deadline.
    Timeout,
    /// Redis answered with an error or the connection failed; the error's category.
    Redis(String),
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Unavailable => f.write_str("Redis unavailable"),
            ExecError::Timeout => f.write_str("Redis timeout"),
            ExecError::Redis(category) => write!(f, "Redis error: {category}"),
        }
    }
}

/// Counters of one connection, exported by its users' stats.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

enum Target {
    Single(Client),
    // Boxed: it is several times the size of a `Client`, and there are few per process.
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
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
    /// The last attempt failed: commands do not wait for the next one.
    last_failed: bool,
    next_attempt: Option<Instant>,
    backoff: Duration,
}

/// A Redis target and its one live connection.
pub(crate) struct RedisConn {
    target: Target,
    conn: ArcSwapOption<Conn>,
    state: Mutex<ConnectState>,
    attempt_done: Notify,
    consecutive_timeouts: AtomicU32,
    connected: AtomicBool,
    pub(crate) counters: ConnCounters,
}

impl RedisConn {
    /// Parses the standalone `url`, or else the `cluster` seed nodes; does not connect.
    pub(crate) fn new(url: Option<&str>, cluster: &[String]) -> Result<Arc<Self>, String> {
        let target = match url {
            Some(url) => Target::Single(
                Client::open(url).map_err(|e| format!("invalid Redis URL: {}", e.category()))?,
            ),
            None if cluster.is_empty() => {
                return Err("a Redis Cluster needs at least one node".to_string())
            }
            None => Target::Cluster(Box::new(
                ClusterClient::builder(cluster.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CONNECT_TIMEOUT)
                    // Enough to follow a MOVED/ASK after a resharding; the caller's deadline
                    // bounds the total anyway.
                    .retries(2)
                    .min_retry_wait(1)
                    .max_retry_wait(10)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster nodes: {}", e.category()))?,
            )),
        };
        Ok(Arc::new(Self {
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
            counters: ConnCounters::default(),
        }))
    }

    /// `standalone` or `cluster`, for `Debug` output.
    pub(crate) fn kind(&self) -> &'static str {
        match self.target {
            Target::Single(_) => "standalone",
            Target::Cluster(_) => "cluster",
        }
    }

    /// Whether the last use of the connection succeeded.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Runs `cmd` (or, when Redis does not know the script yet, `eval`) before `deadline`.
    /// A connection found broken is replaced and the command retried once within the same
    /// deadline; the flag tells whether that happened (the first attempt may then have
    /// run already: callers of non-idempotent commands check).
    pub(crate) async fn exec<T: FromRedisValue>(
        self: &Arc<Self>,
        cmd: &Cmd,
        eval: Option<&Cmd>,
        deadline: Instant,
    ) -> Result<(T, bool), ExecError> {
        let mut retried = false;
        loop {
            let conn = self.connection(deadline).await?;
            let mut reply = self.run(&conn, cmd, deadline).await?;
            if let (Err(e), Some(eval)) = (&reply, eval) {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    // First use on this server (or after a restart / SCRIPT FLUSH): EVAL runs
                    // the script and caches it, so the next EVALSHA hits.
                    reply = self.run(&conn, eval, deadline).await?;
                }
            }
            let e = match reply {
                Ok(value) => {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.connected.store(true, Ordering::Relaxed);
                    return Ok((value, retried));
                }
                Err(e) => e,
            };
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            let error = ExecError::Redis(e.category().to_string());
            let broken = e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error()
                || e.is_timeout();
            if !broken {
                return Err(error);
            }
            self.drop_connection(&conn);
            if retried {
                return Err(error);
            }
            retried = true;
        }
    }

    /// Runs `cmd` until the deadline; a timeout is a failure, a Redis error is returned for
    /// the caller to classify.
    async fn run<T: FromRedisValue>(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<RedisResult<T>, ExecError> {
        match tokio::time::timeout_at(deadline, conn.query(cmd)).await {
            Ok(reply) => Ok(reply),
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let n = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_BEFORE_RECONNECT {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.drop_connection(conn);
                }
                Err(ExecError::Timeout)
            }
        }
    }

    /// The current connection, or one made before `deadline` when it is worth waiting for.
    async fn connection(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Conn>, ExecError> {
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
            return Err(ExecError::Unavailable);
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(ExecError::Timeout);
        }
        self.conn.load_full().ok_or_else(|| {
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            ExecError::Unavailable
        })
    }

    /// Starts a connection attempt unless one is running or the backoff has not elapsed.
    /// Returns whether the caller should wait for it: only while Redis is not known to be
    /// down, so an outage costs commands nothing after the first failed attempt.
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
                        // A safety net for commands abandoned by the callers' deadlines.
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

    /// Forgets `broken` (unless another command already replaced it) and starts
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
