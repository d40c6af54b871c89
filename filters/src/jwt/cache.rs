//! The verified-token cache: a token seen before is recognised by its SHA-256 and not
//! verified again until it expires.
//!
//! Hand-written on `dashmap` (already used by the rate limiter) because what it needs —
//! per-entry expiry at each token's own `exp`, a hard size bound, no background task —
//! is a few lines here, while the crates that do it (moka) bring a scheduler and a dozen
//! dependencies. Eviction only runs when the map is full: expired entries go first, then
//! the tenth of the entries closest to expiry, so the cost of a full scan is paid at most
//! once per `capacity / 10` insertions.

use std::sync::Arc;

use dashmap::DashMap;

use super::token::Identity;

/// Default bound on cached tokens per provider (about 2 MB with typical claims).
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Verified tokens by digest.
pub(crate) struct TokenCache {
    map: DashMap<[u8; 32], Arc<Identity>>,
    capacity: usize,
}

impl TokenCache {
    /// An empty cache holding at most about `capacity` tokens (concurrent insertions may
    /// overshoot by the number of threads).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The identity of a token verified before and still within its `exp` (+ leeway).
    pub(crate) fn get(&self, digest: &[u8; 32], now: u64) -> Option<Arc<Identity>> {
        // Clone out and drop the shard guard before a possible removal on the same shard.
        let hit = self.map.get(digest).map(|e| Arc::clone(e.value()))?;
        if hit.valid_until() >= now {
            return Some(hit);
        }
        self.map.remove_if(digest, |_, id| id.valid_until() < now);
        None
    }

    /// Remembers a verified token until its `valid_until`.
    pub(crate) fn insert(&self, digest: [u8; 32], identity: Arc<Identity>, now: u64) {
        if self.map.len() >= self.capacity {
            self.make_room(now);
        }
        self.map.insert(digest, identity);
    }

    /// Forgets every token (the key set changed: a removed key must stop vouching for
    /// the tokens it signed).
    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn make_room(&self, now: u64) {
        self.map.retain(|_, id| id.valid_until() >= now);
        let target = self.capacity - self.capacity / 10;
        let len = self.map.len();
        if len < target {
            return;
        }
        let mut by_expiry: Vec<(u64, [u8; 32])> = self
            .map
            .iter()
            .map(|e| (e.value().valid_until(), *e.key()))
            .collect();
        // Collected first: removing while iterating would deadlock on the shard locks.
        let excess = (len + 1 - target).min(by_expiry.len());
        if excess < by_expiry.len() {
            by_expiry.select_nth_unstable(excess);
        }
        for (_, key) in &by_expiry[..excess] {
            self.map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::token::Claims;

    fn identity(sub: &str, exp: u64) -> Arc<Identity> {
        let claims: Claims =
            serde_json::from_value(serde_json::json!({ "sub": sub, "exp": exp })).expect("claims");
        Arc::new(Identity::from_claims(claims, 0).expect("identity"))
    }

    fn digest(i: u32) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    }

    #[test]
    fn entries_live_until_their_own_expiry() {
        let cache = TokenCache::new(10);
        cache.insert(digest(1), identity("a", 100), 50);
        cache.insert(digest(2), identity("b", 200), 50);
        assert_eq!(
            cache.get(&digest(1), 100).map(|i| i.sub().clone()),
            Some("a".into())
        );
        assert!(cache.get(&digest(1), 101).is_none());
        assert_eq!(cache.len(), 1, "the expired entry was dropped on lookup");
        assert!(cache.get(&digest(2), 101).is_some());
        assert!(cache.get(&digest(3), 0).is_none());
    }

    #[test]
    fn the_size_is_bounded_and_the_soonest_to_expire_go_first() {
        let cache = TokenCache::new(100);
        for i in 0..100 {
            cache.insert(digest(i), identity("u", 1_000 + u64::from(i)), 0);
        }
        assert_eq!(cache.len(), 100);
        cache.insert(digest(1000), identity("new", 5_000), 0);
        assert!(cache.len() <= 100, "{}", cache.len());
        assert!(cache.len() >= 80, "{}", cache.len());
        assert!(
            cache.get(&digest(0), 0).is_none(),
            "earliest expiry evicted"
        );
        assert!(cache.get(&digest(99), 0).is_some(), "latest expiry kept");
        assert!(cache.get(&digest(1000), 0).is_some());
        for i in 2000..5000 {
            cache.insert(digest(i), identity("flood", 9_000), 0);
        }
        assert!(cache.len() <= 100, "{}", cache.len());
    }

    #[test]
    fn a_full_cache_of_expired_tokens_is_purged() {
        let cache = TokenCache::new(10);
        for i in 0..10 {
            cache.insert(digest(i), identity("old", 10), 0);
        }
        cache.insert(digest(99), identity("fresh", 100), 50);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
