//! Retry budgets: retries may add at most a share of a route's requests over a sliding
//! 10-second window, plus a floor of 10 retries per second, so a failing upstream sees at
//! most `(1 + ratio)` times its normal load instead of `attempts` times (a retry storm).
//!
//! Counters are 100 ms slots of atomics (so the window slides smoothly rather than jumping a
//! second at a time); a slot is recycled when a new tick reaches it. Two threads recycling
//! the same slot at once may lose a count — an acceptable imprecision for a budget, in
//! exchange for a lock-free request path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::since_epoch;

/// Window length in seconds.
const WINDOW_SECS: u64 = 10;
/// Slots per second.
const SLOTS_PER_SEC: u64 = 10;
const SLOTS: usize = (WINDOW_SECS * SLOTS_PER_SEC) as usize;
/// Retries always allowed per second of window, whatever the ratio says.
pub const FLOOR_PER_SEC: u32 = 10;

#[derive(Debug, Default)]
struct Slot {
    tick: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// The budget of one route; survives reloads via [`BudgetRegistry`].
#[derive(Debug)]
pub struct RetryBudget {
    slots: Box<[Slot]>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

impl RetryBudget {
    fn slot(&self, now: Instant) -> (&Slot, u64) {
        // +1 so that 0 means "never used".
        let tick = (since_epoch(now).as_millis() / (1000 / u128::from(SLOTS_PER_SEC))) as u64 + 1;
        let slot = &self.slots[(tick % SLOTS as u64) as usize];
        let seen = slot.tick.load(Ordering::Relaxed);
        if seen != tick
            && slot
                .tick
                .compare_exchange(seen, tick, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        (slot, tick)
    }

    fn totals(&self, tick: u64) -> (u64, u64) {
        let oldest = tick.saturating_sub(SLOTS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| {
                let t = s.tick.load(Ordering::Relaxed);
                t >= oldest && t <= tick
            })
            .fold((0, 0), |(req, ret), s| {
                (
                    req + u64::from(s.requests.load(Ordering::Relaxed)),
                    ret + u64::from(s.retries.load(Ordering::Relaxed)),
                )
            })
    }

    /// Counts a new request (its first attempt).
    pub fn record_request(&self, now: Instant) {
        self.slot(now).0.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if `ratio` allows it; false when exhausted.
    pub fn try_retry(&self, ratio: f64, now: Instant) -> bool {
        let (slot, tick) = self.slot(now);
        let (requests, retries) = self.totals(tick);
        let allowed = ratio * requests as f64 + f64::from(FLOOR_PER_SEC) * WINDOW_SECS as f64;
        // Taking this retry must keep the total within the allowance.
        if (retries + 1) as f64 <= allowed {
            slot.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Budgets by route name, kept across config generations.
#[derive(Debug, Default)]
pub struct BudgetRegistry {
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
}

impl BudgetRegistry {
    /// The budget of `route`, created empty on first use.
    pub fn budget(&self, route: &str) -> Arc<RetryBudget> {
        self.budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(route.to_string())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_capped_by_ratio_plus_floor() {
        let b = RetryBudget::default();
        let start = Instant::now();
        let mut retries = 0;
        let mut requests = 0;
        // 200 requests/s for 10 s, every one wanting a retry.
        for ms in (0..10_000).step_by(5) {
            let now = start + Duration::from_millis(ms);
            b.record_request(now);
            requests += 1;
            if b.try_retry(0.2, now) {
                retries += 1;
            }
        }
        let cap = (0.2 * f64::from(requests)) as u32 + FLOOR_PER_SEC * 10;
        assert!(retries <= cap, "retries {retries} > cap {cap}");
        assert!(
            retries >= cap * 9 / 10,
            "budget too strict: {retries} of {cap}"
        );
    }

    #[test]
    fn floor_allows_retries_without_traffic_history() {
        let b = RetryBudget::default();
        let now = Instant::now();
        assert!((0..100).all(|_| b.try_retry(0.0, now)));
        assert!(!b.try_retry(0.0, now));
    }

    #[test]
    fn window_slides() {
        let b = RetryBudget::default();
        let t0 = Instant::now();
        while b.try_retry(0.0, t0) {}
        assert!(!b.try_retry(0.0, t0 + Duration::from_secs(5)));
        assert!(b.try_retry(0.0, t0 + Duration::from_secs(11)));
    }
}
