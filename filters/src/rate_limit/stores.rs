//! [`RateLimitStores`]: the rate-limit state that outlives config generations — every local
//! limiter's key table and the Redis connection — plus the counters exported as metrics and
//! the housekeeping thread that keeps key tables small.
//!
//! Limiters are looked up by identity (route, filter index, rate, burst): a reload that keeps
//! a limit gets the same buckets back, a changed limit starts fresh, and a removed one is
//! freed once the last config generation using it is dropped (the registry holds only weak
//! references).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::local::LocalLimiter;
use super::redis::RedisStore;
use super::spec::{OnError, RateLimitStoreSpec, StoreBackend};

/// How often housekeeping looks at the limiters.
const TICK: Duration = Duration::from_secs(1);
/// Longest a limiter goes unswept while it is not crowded.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A limiter's identity across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LimiterId {
    pub(crate) route: Arc<str>,
    pub(crate) index: usize,
    pub(crate) interval: Duration,
    pub(crate) burst: u32,
}

/// Decision counters of one limiter.
#[derive(Debug, Default)]
pub(crate) struct LimiterCounters {
    pub(crate) allowed: AtomicU64,
    pub(crate) denied: AtomicU64,
    /// Decided by Redis.
    pub(crate) global: AtomicU64,
    /// Decided without Redis for a global limit (local limiter + `on_error`).
    pub(crate) fallback: AtomicU64,
}

/// A local limiter with its counters and sweep bookkeeping.
pub(crate) struct SharedLimiter {
    pub(crate) id: LimiterId,
    pub(crate) local: LocalLimiter,
    pub(crate) counters: LimiterCounters,
    last_sweep: Mutex<Instant>,
    /// Where this limiter's counts go when it is dropped (a reload changed or removed the
    /// limit), so process-wide counters never go down.
    retired: Arc<Retired>,
}

/// Counts of limiters that no longer exist.
#[derive(Debug, Default)]
struct Retired {
    allowed: AtomicU64,
    denied: AtomicU64,
    global: AtomicU64,
    fallback: AtomicU64,
    overflow: AtomicU64,
}

impl Drop for SharedLimiter {
    fn drop(&mut self) {
        let c = &self.counters;
        let r = &self.retired;
        r.allowed
            .fetch_add(c.allowed.load(Ordering::Relaxed), Ordering::Relaxed);
        r.denied
            .fetch_add(c.denied.load(Ordering::Relaxed), Ordering::Relaxed);
        r.global
            .fetch_add(c.global.load(Ordering::Relaxed), Ordering::Relaxed);
        r.fallback
            .fetch_add(c.fallback.load(Ordering::Relaxed), Ordering::Relaxed);
        r.overflow
            .fetch_add(self.local.overflowed(), Ordering::Relaxed);
    }
}

struct Inner {
    redis: Option<Arc<RedisStore>>,
    on_error: OnError,
    max_keys: usize,
    limiters: Mutex<HashMap<LimiterId, Weak<SharedLimiter>>>,
    retired: Arc<Retired>,
    /// Dropping it (with the last `RateLimitStores` clone) stops the housekeeping thread.
    _stop: mpsc::Sender<()>,
}

/// Rate-limit state for one proxy process. Create it once at startup with the
/// `stores.rate_limits` section and hand it to every [`super::RateLimitFilter::new`] of
/// every config generation; cloning is cheap and shares the state.
///
/// Guarantees: no network I/O in [`RateLimitStores::new`] (Redis is connected on first use,
/// in the background, so `meshgate validate` works without Redis); a limiter with the same
/// identity keeps its buckets across reloads; each local limiter tracks at most
/// `max_keys` keys.
#[derive(Clone)]
pub struct RateLimitStores {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RateLimitStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitStores")
            .field("redis", &self.inner.redis.is_some())
            .field("on_error", &self.inner.on_error)
            .field("max_keys", &self.inner.max_keys)
            .finish()
    }
}

/// A snapshot of rate-limit counters for `/metrics`. Counters only grow; gauges are
/// current values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitStats {
    /// Requests admitted by any rate limit (counter).
    pub allowed: u64,
    /// Requests answered 429 (counter).
    pub denied: u64,
    /// Decisions made by Redis (counter).
    pub global_decisions: u64,
    /// Decisions for global limits made without Redis — local limiter plus `on_error` —
    /// because Redis was slow, failing or down (counter).
    pub fallback_decisions: u64,
    /// Redis commands that failed with an error, including broken connections (counter).
    pub redis_errors: u64,
    /// Redis commands or connection waits that hit the timeout (counter).
    pub redis_timeouts: u64,
    /// Decisions that skipped Redis because it was known to be down (counter).
    pub redis_unavailable: u64,
    /// Successful (re)connections to Redis (counter).
    pub redis_connects: u64,
    /// Failed connection attempts (counter).
    pub redis_connect_failures: u64,
    /// Whether the last Redis exchange succeeded (gauge; false without Redis).
    pub redis_connected: bool,
    /// Decisions made in shared overflow buckets because a limiter's key table was full
    /// (counter; non-zero means `max_keys` is too small or someone floods distinct keys).
    pub overflow_decisions: u64,
    /// Keys currently tracked by all local limiters (gauge).
    pub tracked_keys: u64,
    /// Limiters currently alive (gauge).
    pub limiters: u64,
}

/// Per-limiter counters, labelled for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterStats {
    /// Route name.
    pub route: Arc<str>,
    /// Position of the `rate_limit` filter in the route's `filters`.
    pub filter_index: usize,
    /// Admitted requests (counter).
    pub allowed: u64,
    /// Refused requests (counter).
    pub denied: u64,
    /// Keys tracked now (gauge).
    pub tracked_keys: u64,
}

impl RateLimitStores {
    /// Builds the stores from `stores.rate_limits` (`None`: memory only). Checks the section
    /// and parses Redis URLs but does not connect; the error lists every problem, without
    /// secrets. Starts one housekeeping thread, which ends when the last clone is dropped.
    pub fn new(spec: Option<&RateLimitStoreSpec>) -> Result<Self, String> {
        let default = RateLimitStoreSpec::default();
        let spec = spec.unwrap_or(&default);
        let errors = spec.check();
        if !errors.is_empty() {
            return Err(errors
                .iter()
                .map(|e| {
                    if e.path.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.path, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; "));
        }
        let redis = match spec.backend {
            StoreBackend::Memory => None,
            StoreBackend::Redis => Some(Arc::new(RedisStore::new(
                spec.url.as_deref(),
                &spec.cluster,
                spec.timeout.get(),
            )?)),
        };
        let (stop, stopped) = mpsc::channel();
        let inner = Arc::new(Inner {
            redis,
            on_error: spec.on_error,
            max_keys: spec.max_keys,
            limiters: Mutex::new(HashMap::new()),
            retired: Arc::default(),
            _stop: stop,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("meshgate-ratelimit-sweep".into())
            .spawn(move || housekeeping(&weak, &stopped))
            .map_err(|e| format!("cannot start the rate-limit housekeeping thread: {e}"))?;
        Ok(Self { inner })
    }

    /// Whether `scope: global` limits can be used (a Redis backend is configured).
    pub fn has_global(&self) -> bool {
        self.inner.redis.is_some()
    }

    pub(crate) fn redis(&self) -> Option<&Arc<RedisStore>> {
        self.inner.redis.as_ref()
    }

    pub(crate) fn on_error(&self) -> OnError {
        self.inner.on_error
    }

    /// The limiter with this identity: the existing one if a live config generation uses it,
    /// else a new one. `None` when the parameters cannot make a quota.
    pub(crate) fn limiter(&self, id: LimiterId) -> Option<Arc<SharedLimiter>> {
        let mut map = self
            .inner
            .limiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = map.get(&id).and_then(Weak::upgrade) {
            return Some(existing);
        }
        let local = LocalLimiter::new(id.interval, id.burst, self.inner.max_keys)?;
        let shared = Arc::new(SharedLimiter {
            id: id.clone(),
            local,
            counters: LimiterCounters::default(),
            last_sweep: Mutex::new(Instant::now()),
            retired: self.inner.retired.clone(),
        });
        map.insert(id, Arc::downgrade(&shared));
        Some(shared)
    }

    fn live(&self) -> Vec<Arc<SharedLimiter>> {
        live(&self.inner)
    }

    /// Current counters, summed over all limiters (including ones a reload retired, so
    /// counters never go down), plus the Redis connection's.
    pub fn stats(&self) -> RateLimitStats {
        let r = &self.inner.retired;
        let mut s = RateLimitStats {
            allowed: r.allowed.load(Ordering::Relaxed),
            denied: r.denied.load(Ordering::Relaxed),
            global_decisions: r.global.load(Ordering::Relaxed),
            fallback_decisions: r.fallback.load(Ordering::Relaxed),
            overflow_decisions: r.overflow.load(Ordering::Relaxed),
            ..RateLimitStats::default()
        };
        for l in self.live() {
            let c = &l.counters;
            s.allowed += c.allowed.load(Ordering::Relaxed);
            s.denied += c.denied.load(Ordering::Relaxed);
            s.global_decisions += c.global.load(Ordering::Relaxed);
            s.fallback_decisions += c.fallback.load(Ordering::Relaxed);
            s.overflow_decisions += l.local.overflowed();
            s.tracked_keys += l.local.len() as u64;
            s.limiters += 1;
        }
        if let Some(redis) = &self.inner.redis {
            let c = redis.counters();
            s.redis_errors = c.errors.load(Ordering::Relaxed);
            s.redis_timeouts = c.timeouts.load(Ordering::Relaxed);
            s.redis_unavailable = c.unavailable.load(Ordering::Relaxed);
            s.redis_connects = c.connects.load(Ordering::Relaxed);
            s.redis_connect_failures = c.connect_failures.load(Ordering::Relaxed);
            s.redis_connected = redis.is_connected();
        }
        s
    }

    /// Counters per live limiter, for metrics labelled by route. Counters restart from zero
    /// when a limit's rate or burst changes (it is a new limiter).
    pub fn limiter_stats(&self) -> Vec<LimiterStats> {
        self.live()
            .into_iter()
            .map(|l| LimiterStats {
                route: l.id.route.clone(),
                filter_index: l.id.index,
                allowed: l.counters.allowed.load(Ordering::Relaxed),
                denied: l.counters.denied.load(Ordering::Relaxed),
                tracked_keys: l.local.len() as u64,
            })
            .collect()
    }

    /// Sweeps every limiter now (tests and benchmarks; the housekeeping thread does this on
    /// its own).
    pub fn sweep_now(&self) {
        for l in self.live() {
            sweep(&l);
        }
    }
}

fn live(inner: &Inner) -> Vec<Arc<SharedLimiter>> {
    let mut map = inner
        .limiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    map.retain(|_, w| w.strong_count() > 0);
    map.values().filter_map(Weak::upgrade).collect()
}

fn sweep(limiter: &SharedLimiter) {
    limiter.local.sweep();
    *limiter
        .last_sweep
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Instant::now();
}

/// Sweeps crowded limiters every tick and the rest every [`SWEEP_EVERY`]; exits when the
/// stores are dropped. A thread rather than a task because sweeping a large table is
/// seconds of CPU-bound lock-taking that must not stall a request-serving runtime, and the
/// stores may be created before any runtime exists.
fn housekeeping(inner: &Weak<Inner>, stopped: &mpsc::Receiver<()>) {
    loop {
        match stopped.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for l in live(&inner) {
            let due = l
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                >= SWEEP_EVERY;
            if due || l.local.is_crowded() {
                sweep(&l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(route: &str, burst: u32) -> LimiterId {
        LimiterId {
            route: Arc::from(route),
            index: 0,
            interval: Duration::from_millis(10),
            burst,
        }
    }

    #[test]
    fn the_same_identity_gets_the_same_buckets_back() {
        let stores = RateLimitStores::new(None).expect("memory");
        let a = stores.limiter(id("r", 5)).expect("quota");
        let again = stores.limiter(id("r", 5)).expect("quota");
        assert!(Arc::ptr_eq(&a, &again));
        let changed = stores.limiter(id("r", 6)).expect("quota");
        assert!(!Arc::ptr_eq(&a, &changed));
        assert_eq!(stores.stats().limiters, 2);
        drop((a, again));
        assert_eq!(stores.stats().limiters, 1, "unused limiters are freed");
        let fresh = stores.limiter(id("r", 5)).expect("quota");
        assert_eq!(fresh.local.len(), 0);
    }

    #[test]
    fn bad_store_specs_are_refused_without_io() {
        let spec: RateLimitStoreSpec =
            serde_json::from_value(serde_json::json!({ "backend": "redis" })).expect("shape");
        assert!(RateLimitStores::new(Some(&spec)).is_err());
        let spec: RateLimitStoreSpec = serde_json::from_value(
            serde_json::json!({ "backend": "redis", "url": "redis://127.0.0.1:1" }),
        )
        .expect("shape");
        let stores = RateLimitStores::new(Some(&spec)).expect("no connection needed");
        assert!(stores.has_global());
        assert!(!stores.stats().redis_connected);
    }
}
