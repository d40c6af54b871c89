//! Session stores: where sealed session records live between requests.
//!
//! Records are opaque bytes (already sealed by [`super::crypto`]); stores only keep them
//! with a time to live and provide a short lock so that exactly one request refreshes a
//! session's tokens at a time, plus small sets that index sessions by provider session id
//! (for back-channel logout). The in-memory store serves one replica; the Redis store
//! ([`super::redis_store`]) is shared by replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

/// A store could not answer (network, timeout). Callers fail closed: no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

/// Where sealed session records are kept.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// The record under `key`, if present and not expired (shared bytes: the memory store
    /// hands out its copy without cloning it).
    async fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Stores `value` under `key` for `ttl`, replacing any previous record.
    async fn save(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError>;
    /// Removes the record (and its lock); removing a missing key is not an error.
    async fn remove(&self, key: &str) -> Result<(), StoreError>;
    /// Takes the refresh lock of `key` for at most `ttl`; false when someone holds it.
    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Releases the refresh lock of `key`.
    async fn unlock(&self, key: &str) -> Result<(), StoreError>;
    /// Renews the refresh lock of `key` for `ttl` while a refresh runs; false when this
    /// instance no longer holds it.
    async fn extend_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Adds `member` to the set `index` (kept for at least `ttl`): how back-channel logout
    /// finds the sessions of a provider session id.
    async fn index_add(&self, index: &str, member: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Removes the set `index` and returns its members.
    async fn index_take(&self, index: &str) -> Result<Vec<String>, StoreError>;
    /// Number of live sessions, when the store can tell cheaply (the memory store can).
    fn live_records(&self) -> Option<usize> {
        None
    }
}

/// In-process store with a size cap: when full, expired records are purged first, then
/// the records closest to expiry make room (a flood of logins cannot grow memory forever).
#[derive(Debug)]
pub struct MemoryStore {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, (Bytes, Instant)>,
    locks: HashMap<String, Instant>,
    indexes: HashMap<String, (Vec<String>, Instant)>,
}

/// Most members one index set keeps (a user logging in over and over in one provider
/// session must not grow it without bound).
const MAX_INDEX_MEMBERS: usize = 64;

impl MemoryStore {
    /// A store holding at most `cap` sessions.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of live records (for the sessions gauge).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .records
            .values()
            .filter(|(_, exp)| *exp > now)
            .count()
    }

    /// True when no live record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        match g.records.get(key) {
            Some((v, exp)) if *exp > now => Ok(Some(v.clone())),
            Some(_) => {
                g.records.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn save(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        if !g.records.contains_key(key) && g.records.len() >= self.cap {
            g.records.retain(|_, (_, exp)| *exp > now);
            while g.records.len() >= self.cap {
                let Some(oldest) = g
                    .records
                    .iter()
                    .min_by_key(|(_, (_, exp))| *exp)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                g.records.remove(&oldest);
            }
        }
        g.records
            .insert(key.to_string(), (Bytes::from(value), now + ttl));
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.records.remove(key);
        g.locks.remove(key);
        Ok(())
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        match g.locks.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                g.locks.insert(key.to_string(), now + ttl);
                Ok(true)
            }
        }
    }

    async fn unlock(&self, key: &str) -> Result<(), StoreError> {
        self.lock().locks.remove(key);
        Ok(())
    }

    async fn extend_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        match g.locks.get_mut(key) {
            Some(until) if *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn index_add(&self, index: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        if !g.indexes.contains_key(index) && g.indexes.len() >= self.cap {
            g.indexes.retain(|_, (_, exp)| *exp > now);
            if g.indexes.len() >= self.cap {
                // Full of live indexes: forget the one closest to expiry.
                if let Some(k) = g
                    .indexes
                    .iter()
                    .min_by_key(|(_, (_, exp))| *exp)
                    .map(|(k, _)| k.clone())
                {
                    g.indexes.remove(&k);
                }
            }
        }
        let entry = g
            .indexes
            .entry(index.to_string())
            .or_insert_with(|| (Vec::new(), now));
        if !entry.0.iter().any(|m| m == member) {
            if entry.0.len() >= MAX_INDEX_MEMBERS {
                entry.0.remove(0);
            }
            entry.0.push(member.to_string());
        }
        entry.1 = entry.1.max(now + ttl);
        Ok(())
    }

    async fn index_take(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        Ok(match self.lock().indexes.remove(index) {
            Some((members, exp)) if exp > now => members,
            _ => Vec::new(),
        })
    }

    fn live_records(&self) -> Option<usize> {
        Some(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_expire() {
        let s = MemoryStore::new(10);
        s.save("a", b"x".to_vec(), Duration::from_millis(30))
            .await
            .expect("save");
        assert_eq!(s.load("a").await.expect("load").as_deref(), Some(&b"x"[..]));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(s.load("a").await.expect("load"), None);
    }

    #[tokio::test]
    async fn the_cap_evicts_the_records_closest_to_expiry() {
        let s = MemoryStore::new(3);
        for (k, secs) in [("a", 10), ("b", 30), ("c", 20)] {
            s.save(k, vec![1], Duration::from_secs(secs))
                .await
                .expect("save");
        }
        s.save("d", vec![1], Duration::from_secs(40))
            .await
            .expect("save");
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.load("a").await.expect("load"),
            None,
            "closest to expiry went first"
        );
        for k in ["b", "c", "d"] {
            assert!(s.load(k).await.expect("load").is_some(), "{k}");
        }
    }

    #[tokio::test]
    async fn indexes_collect_members_once_and_are_taken_whole() {
        let s = MemoryStore::new(10);
        for m in ["a", "b", "a"] {
            s.index_add("sid:1", m, Duration::from_secs(5))
                .await
                .expect("add");
        }
        assert_eq!(s.index_take("sid:1").await.expect("take"), ["a", "b"]);
        assert!(s.index_take("sid:1").await.expect("take").is_empty());
    }

    #[tokio::test]
    async fn the_refresh_lock_admits_one_holder_until_released_or_expired() {
        let s = MemoryStore::new(10);
        assert!(s.try_lock("a", Duration::from_secs(5)).await.expect("lock"));
        assert!(!s.try_lock("a", Duration::from_secs(5)).await.expect("lock"));
        s.unlock("a").await.expect("unlock");
        assert!(s
            .try_lock("a", Duration::from_millis(20))
            .await
            .expect("lock"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            s.try_lock("a", Duration::from_secs(5)).await.expect("lock"),
            "an abandoned lock expires"
        );
    }
}
