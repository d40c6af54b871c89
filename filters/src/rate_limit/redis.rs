//! Global limits in Redis: one atomic GCRA script per decision, over the shared
//! [`RedisConn`](crate::redis_conn::RedisConn) (standalone or Cluster) with a hard deadline.
//! While Redis is known to be down a request decides at once (local limiter + `on_error`);
//! only the first requests after a connection was lost wait, and never past the deadline.
//!
//! Keys are `mg:rl:<route>:{<hash>}`: the braces make the whole hash the Redis Cluster hash
//! tag, so the script's single key decides the slot and different clients spread over the
//! cluster.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Decision;
use crate::redis_conn::{ConnCounters, ExecError, RedisConn};

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

/// Counters the store exports through `RateLimitStats` (those of its connection).
pub(crate) type RedisCounters = ConnCounters;

/// The shared Redis behind `stores.rate_limits`. Created without I/O; connects on first
/// use from inside the proxy's runtime.
pub(crate) struct RedisStore {
    conn: Arc<RedisConn>,
    sha: String,
    timeout: Duration,
}

impl RedisStore {
    /// Parses the URL(s); does not connect.
    pub(crate) fn new(
        url: Option<&str>,
        cluster: &[String],
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            conn: RedisConn::new(url, cluster)?,
            sha: redis::Script::new(GCRA_SCRIPT).get_hash().to_string(),
            timeout,
        })
    }

    /// Whether the last use of the connection succeeded.
    pub(crate) fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    /// The connection's counters.
    pub(crate) fn counters(&self) -> &RedisCounters {
        &self.conn.counters
    }

    /// One decision for `key` within the deadline: `interval_us` and `burst` as in the
    /// local limiter. If the connection broke mid-command the script may have run before
    /// the retry; that request then counts twice, which errs on the strict side.
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
        let mut eval = redis::cmd("EVAL");
        eval.arg(GCRA_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(interval_us)
            .arg(tau_us);
        let (values, _) = self
            .conn
            .exec::<Vec<i64>>(&evalsha, Some(&eval), deadline)
            .await
            .map_err(|e| match e {
                ExecError::Unavailable => Failure::Unavailable,
                ExecError::Timeout => Failure::Timeout,
                ExecError::Redis(_) => Failure::Error,
            })?;
        parse_reply(&values, burst).ok_or_else(|| {
            self.conn.counters.errors.fetch_add(1, Ordering::Relaxed);
            Failure::Error
        })
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
        assert!(store.counters().connect_failures.load(Ordering::Relaxed) >= 1);
    }
}
