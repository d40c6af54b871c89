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
//! The connection is the shared [`RedisConn`](crate::redis_conn::RedisConn): no I/O in
//! the constructor, every operation bounded by a deadline (default [`DEFAULT_TIMEOUT`]) and
//! answered with a [`StoreError`] rather than waiting, reconnection in the background, and
//! immediate failure while Redis is known to be down.
//!
//! Values are never logged or put in errors: errors carry only Redis' error category.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, Value};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;

use crate::redis_conn::RedisConn;

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

struct Shared {
    conn: Arc<RedisConn>,
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
        f.debug_struct("RedisSessionStore")
            .field("target", &self.shared.conn.kind())
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisSessionStore {
    /// A store on the standalone Redis at `url` (`redis://host:port[/db]`). Parses only;
    /// connects on first use, from inside a Tokio runtime.
    pub fn standalone(url: &str) -> Result<Self, String> {
        RedisConn::new(Some(url), &[]).map(Self::with_conn)
    }

    /// A store on the Redis Cluster reachable through `nodes` (any subset of its masters).
    /// Parses only; connects on first use.
    pub fn cluster(nodes: &[String]) -> Result<Self, String> {
        RedisConn::new(None, nodes).map(Self::with_conn)
    }

    fn with_conn(conn: Arc<RedisConn>) -> Self {
        Self {
            shared: Arc::new(Shared {
                conn,
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
        self.shared.conn.is_connected()
    }

    async fn exec(&self, cmd: &Cmd, eval: Option<&Cmd>) -> Result<(Value, bool), StoreError> {
        self.shared
            .conn
            .exec(cmd, eval, Instant::now() + self.timeout)
            .await
            .map_err(|e| StoreError(e.to_string()))
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
    async fn load(&self, key: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(record_key(key));
        match self.exec(&get, None).await?.0 {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => Ok(Some(bytes.into())),
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
