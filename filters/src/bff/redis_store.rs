//! The Redis session store: sealed records shared by every replica, and a refresh lock that
//! admits one refresher across replicas.
//!
//! Layout: the record of session `<key>` is `mg:s:{<key>}` (the sealed bytes, `SET … PX`)
//! and its refresh lock is `mg:s:{<key>}:lock` (a random token, `SET … NX PX`). The braces
//! make `<key>` the Redis Cluster hash tag, so record and lock share a slot and one `DEL`
//! removes both. A lock is released (or renewed) only by the instance that took it, with a
//! compare-and-delete (compare-and-expire) script on its token: a holder that was too slow
//! and lost the lock to expiry cannot delete the lock another replica took since.
//!
//! Connection handling follows the rate limiter's (`rate_limit::redis`): no I/O in the
//! constructor; one multiplexed connection (standalone) or a cluster connection, made on
//! first use; every operation bounded by a deadline (default [`DEFAULT_TIMEOUT`]) and
//! answered with a [`StoreError`] rather than waiting; a broken connection is replaced in
//! the background with capped exponential backoff, and while Redis is known to be down
//! operations fail at once instead of each waiting for the deadline.
//!
//! Values are never logged or put in errors: errors carry only Redis' error category.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, RedisResult, Value};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::store::{SessionStore, StoreError};

/// Per-operation deadline unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Deletes KEYS[1] only while it still holds this instance's token ARGV[1].
const UNLOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Sets the expiry of KEYS[1] to ARGV[2] ms only while it still holds the token ARGV[1].
const EXTEND_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// First reconnect delay after a failed attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest gap between reconnect attempts while Redis is down.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connecting is off the request path, so it may take longer than an operation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive timeouts after which the connection is presumed dead and replaced (a peer
/// that vanished without a reset never produces an I/O error).
const TIMEOUTS_BEFORE_RECONNECT: u32 = 8;

/// The Redis key of the record of session `key`.
pub fn record_key(key: &str) -> String {
    format!("mg:s:{{{key}}}")
}

/// The Redis key of the index set `index` (sessions of one provider session).
pub fn index_key(index: &str) -> String {
    format!("mg:sx:{{{index}}}")
}

/// The Redis key of the refresh lock of session `key` (same hash slot as the record).
pub fn lock_key(key: &str) -> String {
    format!("mg:s:{{{key}}}:lock")
}

enum Target {
    Single(Client),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
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
    /// The last attempt failed: operations do not wait for the next one.
    last_failed: bool,
    next_attempt: Option<Instant>,
    backoff: Duration,
}

struct Shared {
    target: Target,
    conn: ArcSwapOption<Conn>,
    state: Mutex<ConnectState>,
    attempt_done: Notify,
    consecutive_timeouts: AtomicU32,
    connected: AtomicBool,
    /// Tokens of the locks this instance took, with their expiry: only these are released.
    held: Mutex<HashMap<String, (String, Instant)>>,
    rng: SystemRandom,
    unlock_sha: String,
    extend_sha: String,
}

/// A [`SessionStore`] in Redis (standalone or Cluster), shared by replicas.
#[derive(Clone)]
pub struct RedisSessionStore {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match self.shared.target {
            Target::Single(_) => "standalone",
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisSessionStore")
            .field("target", &target)
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisSessionStore {
    /// A store on the standalone Redis at `url` (`redis://host:port[/db]`). Parses only;
    /// connects on first use, from inside a Tokio runtime.
    pub fn standalone(url: &str) -> Result<Self, String> {
        let client =
            Client::open(url).map_err(|e| format!("invalid Redis URL: {}", e.category()))?;
        Ok(Self::with_target(Target::Single(client)))
    }

    /// A store on the Redis Cluster reachable through `nodes` (any subset of its masters).
    /// Parses only; connects on first use.
    pub fn cluster(nodes: &[String]) -> Result<Self, String> {
        if nodes.is_empty() {
            return Err("a Redis Cluster needs at least one node".to_string());
        }
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CONNECT_TIMEOUT)
            // Enough to follow a MOVED/ASK after a resharding; our deadline bounds the total.
            .retries(2)
            .min_retry_wait(1)
            .max_retry_wait(10)
            .build()
            .map_err(|e| format!("invalid Redis Cluster nodes: {}", e.category()))?;
        Ok(Self::with_target(Target::Cluster(Box::new(client))))
    }

    fn with_target(target: Target) -> Self {
        Self {
            shared: Arc::new(Shared {
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
                held: Mutex::new(HashMap::new()),
                rng: SystemRandom::new(),
                unlock_sha: redis::Script::new(UNLOCK_SCRIPT).get_hash().to_string(),
                extend_sha: redis::Script::new(EXTEND_SCRIPT).get_hash().to_string(),
            }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the per-operation deadline (at least 1 ms).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The per-operation deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last use of the connection succeeded.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    async fn exec(&self, cmd: &Cmd, eval: Option<&Cmd>) -> Result<(Value, bool), StoreError> {
        self.shared
            .exec(cmd, eval, Instant::now() + self.timeout)
            .await
    }

    fn new_token(&self) -> Result<String, StoreError> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; 16];
        self.shared
            .rng
            .fill(&mut bytes)
            .map_err(|_| StoreError("random source unavailable".to_string()))?;
        Ok(bytes
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
            .map(char::from)
            .collect())
    }
}

/// Milliseconds for `PX`/`PEXPIRE`, at least 1 (Redis refuses 0).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unexpected() -> StoreError {
    StoreError("unexpected reply from Redis".to_string())
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(record_key(key));
        match self.exec(&get, None).await?.0 {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => Ok(Some(bytes)),
            _ => Err(unexpected()),
        }
    }

    async fn save(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(record_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl));
        match self.exec(&set, None).await?.0 {
            Value::Okay => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.shared.held().remove(key);
        let mut del = redis::cmd("DEL");
        del.arg(record_key(key)).arg(lock_key(key));
        match self.exec(&del, None).await?.0 {
            Value::Int(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let token = self.new_token()?;
        let lock = lock_key(key);
        let mut set = redis::cmd("SET");
        set.arg(&lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl));
        let (reply, retried) = self.exec(&set, None).await?;
        let taken = match reply {
            Value::Okay => true,
            // After a retry the first attempt may have set the lock before the connection
            // broke: the lock is ours if it holds our token.
            Value::Nil if retried => {
                let mut get = redis::cmd("GET");
                get.arg(&lock);
                matches!(self.exec(&get, None).await?.0,
                    Value::BulkString(ref t) if t.as_slice() == token.as_bytes())
            }
            Value::Nil => false,
            _ => return Err(unexpected()),
        };
        if taken {
            let now = Instant::now();
            let mut held = self.shared.held();
            held.retain(|_, (_, until)| *until > now);
            held.insert(key.to_string(), (token, now + ttl));
        }
        Ok(taken)
    }

    async fn unlock(&self, key: &str) -> Result<(), StoreError> {
        // Not ours (never taken here, or already released): nothing to do.
        let Some((token, _)) = self.shared.held().remove(key) else {
            return Ok(());
        };
        let lock = lock_key(key);
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(&self.shared.unlock_sha)
            .arg(1)
            .arg(&lock)
            .arg(&token);
        let mut eval = redis::cmd("EVAL");
        eval.arg(UNLOCK_SCRIPT).arg(1).arg(&lock).arg(&token);
        match self.exec(&evalsha, Some(&eval)).await?.0 {
            Value::Int(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }
    async fn extend_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let token = {
            let held = self.shared.held();
            match held.get(key) {
                Some((token, _)) => token.clone(),
                None => return Ok(false),
            }
        };
        let lock = lock_key(key);
        let ms = ttl_ms(ttl);
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(&self.shared.extend_sha)
            .arg(1)
            .arg(&lock)
            .arg(&token)
            .arg(ms);
        let mut eval = redis::cmd("EVAL");
        eval.arg(EXTEND_SCRIPT)
            .arg(1)
            .arg(&lock)
            .arg(&token)
            .arg(ms);
        let (reply, _) = self.exec(&evalsha, Some(&eval)).await?;
        let extended = matches!(reply, Value::Int(1));
        let mut held = self.shared.held();
        if extended {
            if let Some(entry) = held.get_mut(key) {
                if entry.0 == token {
                    entry.1 = Instant::now() + ttl;
                }
            }
        } else if held.get(key).is_some_and(|(t, _)| *t == token) {
            held.remove(key);
        }
        Ok(extended)
    }

    async fn index_add(&self, index: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = index_key(index);
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&key).arg(member);
        if !matches!(self.exec(&sadd, None).await?.0, Value::Int(_)) {
            return Err(unexpected());
        }
        // Only ever lengthened: the set lives as long as its longest-lived session.
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(ttl_ms(ttl)).arg("GT");
        let mut set_first = redis::cmd("PEXPIRE");
        set_first.arg(&key).arg(ttl_ms(ttl)).arg("NX");
        self.exec(&set_first, None).await?;
        self.exec(&expire, None).await?;
        Ok(())
    }

    async fn index_take(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let key = index_key(index);
        let mut members = redis::cmd("SMEMBERS");
        members.arg(&key);
        let reply = self.exec(&members, None).await?.0;
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        self.exec(&del, None).await?;
        let items = match reply {
            Value::Array(items) | Value::Set(items) => items,
            _ => return Err(unexpected()),
        };
        Ok(items
            .into_iter()
            .filter_map(|v| match v {
                Value::BulkString(b) => String::from_utf8(b).ok(),
                _ => None,
            })
            .collect())
    }
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `cmd` (or, when Redis does not know the script yet, `eval`) within the
    /// deadline. A connection found broken is replaced and the command retried once within
    /// the same deadline; the flag tells whether that happened. Every command sent here is
    /// idempotent except `SET NX`, whose caller checks the retried case.
    async fn exec(
        self: &Arc<Self>,
        cmd: &Cmd,
        eval: Option<&Cmd>,
        deadline: Instant,
    ) -> Result<(Value, bool), StoreError> {
        let mut retried = false;
        loop {
            let conn = self.connection(deadline).await?;
            let mut reply = self.run(&conn, cmd, deadline).await?;
            if let (Err(e), Some(eval)) = (&reply, eval) {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    // First use on this server (or after a restart): EVAL runs and caches it.
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
            let error = StoreError(format!("Redis error: {}", e.category()));
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

    async fn run(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<RedisResult<Value>, StoreError> {
        match tokio::time::timeout_at(deadline, conn.query(cmd)).await {
            Ok(reply) => Ok(reply),
            Err(_) => {
                let n = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_BEFORE_RECONNECT {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    self.drop_connection(conn);
                }
                Err(StoreError("Redis timeout".to_string()))
            }
        }
    }

    /// The current connection, or one made before `deadline` when it is worth waiting for.
    async fn connection(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Conn>, StoreError> {
        let unavailable = || StoreError("Redis unavailable".to_string());
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
            return Err(unavailable());
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            return Err(StoreError("Redis timeout (connecting)".to_string()));
        }
        self.conn.load_full().ok_or_else(unavailable)
    }

    /// Starts a connection attempt unless one is running or the backoff has not elapsed.
    /// Returns whether the caller should wait for it: only while Redis is not known to be
    /// down, so an outage costs operations nothing after the first failed attempt.
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
                        // A safety net for commands abandoned by our own deadline.
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
                    st.last_failed = false;
                    st.next_attempt = None;
                    st.backoff = MIN_BACKOFF;
                }
                Err(_) => {
                    self.connected.store(false, Ordering::Relaxed);
                    st.last_failed = true;
                    st.next_attempt = Some(Instant::now() + st.backoff);
                    st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.attempt_done.notify_waiters();
    }

    /// Forgets `broken` (unless another operation already replaced it) and starts
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_lock_share_the_hash_tag() {
        assert_eq!(record_key("abc"), "mg:s:{abc}");
        assert_eq!(lock_key("abc"), "mg:s:{abc}:lock");
    }

    #[test]
    fn constructing_does_no_io_and_bad_targets_are_refused() {
        // Nothing listens on port 1, and there is no runtime to connect from.
        let store = RedisSessionStore::standalone("redis://127.0.0.1:1").expect("parses");
        assert!(!store.is_connected());
        assert_eq!(store.timeout(), DEFAULT_TIMEOUT);
        assert_eq!(
            store.with_timeout(Duration::from_millis(7)).timeout(),
            Duration::from_millis(7)
        );
        assert!(RedisSessionStore::standalone("not a url").is_err());
        assert!(RedisSessionStore::cluster(&[]).is_err());
        assert!(RedisSessionStore::cluster(&["redis://127.0.0.1:7000".to_string()]).is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast() {
        let store = RedisSessionStore::standalone("redis://127.0.0.1:1")
            .expect("parses")
            .with_timeout(Duration::from_millis(200));
        assert!(store.load("k").await.is_err());
        let start = std::time::Instant::now();
        for _ in 0..100 {
            assert!(store.load("k").await.is_err());
            assert!(store.try_lock("k", Duration::from_secs(1)).await.is_err());
        }
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "known-down operations must not wait: {:?}",
            start.elapsed()
        );
        // Unlocking what was never taken does no I/O at all.
        assert_eq!(store.unlock("k").await, Ok(()));
    }
}
