//! The in-process limiter: governor's GCRA over a key table whose size is capped.
//!
//! governor does the arithmetic (the same GCRA the Redis script mirrors); what it lacks is a
//! keyed store with bounded memory — its `DashMap` store grows with every distinct key until
//! someone calls `retain_recent`. [`BoundedStore`] is that store: a `DashMap` from 64-bit key
//! hashes to governor's own atomic cell state, with a hard cap on entries. Once the cap is
//! reached, keys not already tracked are limited in one of [`OVERFLOW_BUCKETS`] shared buckets
//! chosen by their hash, so a flood of distinct keys (spoofed headers, IPv6 address
//! rotation) costs a fixed amount of memory and is still limited — it never fails open. The
//! price is that a legitimate new client arriving during such a flood may share a bucket
//! with flood keys until the sweep ([`LocalLimiter::sweep`], driven by the store's
//! housekeeping thread) frees entries whose buckets are full again.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::Decision;

/// Shared buckets for keys that arrive while the table is full. Enough that one overflow
/// bucket rarely holds more than a handful of distinct real clients, small enough to be a
/// fixed 32 KiB.
pub(crate) const OVERFLOW_BUCKETS: usize = 4096;

/// Keys are already seeded SipHash outputs; hashing them again would only cost time.
#[derive(Default, Clone, Copy)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this hasher (via `write_u64`); fold anything else anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The key table behind one limiter, shared between the governor limiter that uses it and
/// the housekeeping that sweeps and measures it.
pub(crate) struct Table {
    map: DashMap<u64, InMemoryState, BuildHasherDefault<PreHashed>>,
    overflow: Box<[InMemoryState]>,
    max_keys: usize,
    /// Entries in `map`, kept here because `DashMap::len` locks every shard.
    len: AtomicUsize,
    /// Decisions made in an overflow bucket since start.
    overflowed: AtomicU64,
}

/// A governor state store with at most `max_keys` entries (plus the fixed overflow buckets).
#[derive(Clone)]
pub(crate) struct BoundedStore(Arc<Table>);

impl BoundedStore {
    fn new(max_keys: usize) -> Self {
        let overflow: Vec<InMemoryState> = (0..OVERFLOW_BUCKETS)
            .map(|_| InMemoryState::default())
            .collect();
        Self(Arc::new(Table {
            map: DashMap::with_hasher(BuildHasherDefault::default()),
            overflow: overflow.into_boxed_slice(),
            max_keys,
            len: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
        }))
    }
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let table = &self.0;
        if let Some(state) = table.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if table.len.load(Ordering::Relaxed) >= table.max_keys {
            table.overflowed.fetch_add(1, Ordering::Relaxed);
            // The key is a seeded hash, so the low bits spread clients evenly.
            let slot = (*key % OVERFLOW_BUCKETS as u64) as usize;
            if let Some(state) = table.overflow.get(slot) {
                return state.measure_and_replace(&NotKeyed::NonKey, f);
            }
        }
        let state = table.map.entry(*key).or_insert_with(|| {
            table.len.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// The theoretical arrival time stored in a cell (0 when never used). `InMemoryState` shows
/// its value only to `measure_and_replace`; a closure that always refuses reads it without
/// writing.
fn tat_of(state: &InMemoryState) -> u64 {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
        .map_or(0, u64::from)
}

impl ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = u64::from(drop_below);
        self.0.map.retain(|_, state| tat_of(state) > below);
        self.0.len.store(self.0.map.len(), Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One limiter (route, filter, rate, burst) in this process: its key table, its hash seed
/// and its GCRA parameters. Shared across config generations through the stores.
pub(crate) struct LocalLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<u64, BoundedStore, C, StateInformationMiddleware>,
    store: BoundedStore,
    seed: RandomState,
    interval: Duration,
    burst: u32,
}

impl LocalLimiter<DefaultClock> {
    /// A limiter admitting `burst` at once and one per `interval` after that, tracking at most
    /// `max_keys` keys. `None` when `interval` is zero or `burst` is 0.
    pub(crate) fn new(interval: Duration, burst: u32, max_keys: usize) -> Option<Self> {
        Self::with_clock(interval, burst, max_keys, DefaultClock::default())
    }
}

impl<C: Clock> LocalLimiter<C> {
    /// As [`LocalLimiter::new`], on a given clock (tests use a fake one).
    pub(crate) fn with_clock(
        interval: Duration,
        burst: u32,
        max_keys: usize,
        clock: C,
    ) -> Option<Self> {
        let quota = Quota::with_period(interval)?.allow_burst(std::num::NonZeroU32::new(burst)?);
        let store = BoundedStore::new(max_keys);
        let limiter = RateLimiter::<u64, BoundedStore, C, NoOpMiddleware<C::Instant>>::new(
            quota,
            store.clone(),
            clock,
        )
        .with_middleware::<StateInformationMiddleware>();
        Some(Self {
            limiter,
            store,
            seed: RandomState::new(),
            interval,
            burst,
        })
    }

    /// A hasher to feed a request's key into; its `finish()` is the key for [`Self::check`].
    pub(crate) fn hasher(&self) -> std::hash::DefaultHasher {
        self.seed.build_hasher()
    }

    /// Counts one request for `key` and says whether it is admitted.
    pub(crate) fn check(&self, key: u64) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                Decision {
                    allowed: true,
                    limit: self.burst,
                    remaining,
                    reset: self.interval * (self.burst - remaining),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision::denied(self.burst, wait, self.interval)
            }
        }
    }

    /// Drops the keys whose buckets are full again (indistinguishable from new ones) and
    /// returns memory when most of the table went. Takes each shard's write lock in turn, so
    /// it runs on the housekeeping thread, never on a request.
    pub(crate) fn sweep(&self) {
        let before = self.store.len();
        self.limiter.retain_recent();
        if self.store.len() < before / 2 {
            self.limiter.shrink_to_fit();
        }
    }

    /// Keys currently tracked (excluding the overflow buckets).
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the table is near its cap, which makes the housekeeping sweep it sooner.
    pub(crate) fn is_crowded(&self) -> bool {
        self.store.len() >= self.store.0.max_keys / 4 * 3
    }

    /// Decisions made in shared overflow buckets since this limiter was created.
    pub(crate) fn overflowed(&self) -> u64 {
        self.store.0.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn fake(
        interval_ms: u64,
        burst: u32,
        max_keys: usize,
    ) -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(
            Duration::from_millis(interval_ms),
            burst,
            max_keys,
            clock.clone(),
        )
        .expect("valid quota");
        (limiter, clock)
    }

    #[test]
    fn burst_then_exactly_burst_admitted() {
        let (l, _clock) = fake(100, 5, 100);
        let decisions: Vec<Decision> = (0..6).map(|_| l.check(7)).collect();
        for (i, d) in decisions[..5].iter().enumerate() {
            assert!(d.allowed, "request {i} is within the burst");
            assert_eq!(d.limit, 5);
            assert_eq!(d.remaining, 4 - i as u32);
            assert_eq!(d.reset, Duration::from_millis(100) * (i as u32 + 1));
        }
        let denied = decisions[5];
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after, Duration::from_millis(100));
        assert_eq!(denied.reset, Duration::from_millis(500));
        // Another key has its own bucket.
        assert!(l.check(8).allowed);
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let (l, clock) = fake(100, 3, 100);
        for _ in 0..3 {
            assert!(l.check(1).allowed);
        }
        assert!(!l.check(1).allowed);
        clock.advance(Duration::from_millis(99));
        assert!(!l.check(1).allowed, "not before one interval");
        clock.advance(Duration::from_millis(1));
        assert!(l.check(1).allowed, "one token after one interval");
        assert!(!l.check(1).allowed);
        clock.advance(Duration::from_millis(250));
        assert_eq!((0..5).filter(|_| l.check(1).allowed).count(), 2);
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            (0..10).filter(|_| l.check(1).allowed).count(),
            3,
            "an idle bucket holds no more than the burst"
        );
    }

    #[test]
    fn sweep_forgets_full_buckets_only() {
        let (l, clock) = fake(100, 2, 100);
        l.check(1);
        for _ in 0..2 {
            l.check(2);
        }
        assert_eq!(l.len(), 2);
        // governor keeps a key until one interval after its bucket is full again.
        clock.advance(Duration::from_millis(250));
        l.sweep();
        assert_eq!(
            l.len(),
            1,
            "key 1 full since 100 ms, key 2 only since 200 ms"
        );
        clock.advance(Duration::from_millis(100));
        l.sweep();
        assert_eq!(l.len(), 0);
        // A forgotten key behaves exactly like a new one: burst 2 again.
        assert_eq!((0..3).filter(|_| l.check(2).allowed).count(), 2);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_cap_and_is_still_limited() {
        let (l, _clock) = fake(1000, 1, 1000);
        let seed = RandomState::new();
        let mut admitted = 0;
        for i in 0..20_000u64 {
            if l.check(seed.hash_one(i)).allowed {
                admitted += 1;
            }
        }
        assert_eq!(l.len(), 1000);
        assert_eq!(l.overflowed(), 19_000);
        // 1000 tracked keys + at most one admission per overflow bucket.
        assert!(admitted <= 1000 + OVERFLOW_BUCKETS, "{admitted}");
        // A tracked key keeps its own bucket while the table is full.
        let tracked = seed.hash_one(0u64);
        assert!(!l.check(tracked).allowed);
    }

    /// Resident set size of this process in bytes (Linux).
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    /// Memory for 1,000,000 distinct keys, uncapped and with the default cap. Run alone:
    /// `cargo test -p meshgate-filters --release -- --ignored --test-threads=1 million`.
    #[test]
    #[ignore = "measures process memory; run alone"]
    fn memory_for_a_million_distinct_keys() {
        let seed = RandomState::new();
        // Capped first: memory freed by the first run would hide the second one's growth.
        let default_cap = super::super::spec::DEFAULT_MAX_KEYS;
        for (cap, label) in [(default_cap, "default cap"), (2_000_000, "uncapped")] {
            let before = rss();
            let l = LocalLimiter::new(Duration::from_millis(10), 100, cap).expect("quota");
            for i in 0..1_000_000u64 {
                l.check(seed.hash_one(i));
            }
            let after = rss();
            let per_key = (after.saturating_sub(before)) as f64 / l.len() as f64;
            println!(
                "{label}: {} keys tracked, {} overflow decisions, RSS +{:.1} MiB ({per_key:.0} B per tracked key)",
                l.len(),
                l.overflowed(),
                (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
            );
            assert!(l.len() <= cap);
            drop(l);
        }
    }
}
