//! Outlier ejection: an endpoint that answers 5xx (or refuses connections) `consecutive_5xx`
//! times in a row is taken out of load balancing for `base_ejection × n` (capped at 300 s),
//! while never ejecting more than `max_ejection_percent` of the cluster — at least one
//! endpoint may always be ejected, as in Envoy.
//!
//! `n` counts recent ejections: each ejection adds one, and each whole `base_ejection` the
//! endpoint has since spent back in rotation takes one away (Envoy lowers its ejection
//! multiplier the same way for hosts that stay healthy). An endpoint that failed once a
//! week ago is not punished as if it had just failed repeatedly.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::since_epoch;
use crate::config::spec::OutlierSpec;

/// Longest single ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Compiled `outlier_detection` of a cluster.
#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    consecutive: u32,
    base: Duration,
    max_fraction: f64,
}

impl OutlierPolicy {
    /// Compiles the YAML settings.
    pub fn new(spec: &OutlierSpec) -> Self {
        Self {
            consecutive: spec.consecutive_5xx.max(1),
            base: spec.base_ejection.get(),
            max_fraction: spec.max_ejection_percent.fraction(),
        }
    }

    /// How many of `n` endpoints may be ejected at once (at least one).
    pub fn max_ejected(&self, n: usize) -> usize {
        ((self.max_fraction * n as f64).floor() as usize).max(1)
    }
}

/// Ejection state of one endpoint; survives reloads.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    /// Nanoseconds since the process epoch until which the endpoint is out; 0 = in.
    ejected_until: AtomicU64,
}

impl OutlierState {
    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && (since_epoch(now).as_nanos() as u64) < until
    }

    /// Ejections that still count at `now`: the ones recorded, less one for each whole
    /// `base_ejection` since the last ejection ended.
    fn recent_ejections(&self, policy: &OutlierPolicy, now: Instant) -> u32 {
        let times = self.times_ejected.load(Ordering::Relaxed);
        let last_until = self.ejected_until.load(Ordering::Relaxed);
        if times == 0 || last_until == 0 {
            return times;
        }
        let back_for = (since_epoch(now).as_nanos() as u64).saturating_sub(last_until);
        let periods = back_for / (policy.base.as_nanos() as u64).max(1);
        times.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
    }

    /// Records a non-5xx answer.
    pub fn record_success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Records a 5xx or connect failure. When the streak reaches the threshold and
    /// `currently_ejected` leaves room, ejects and returns the ejection time.
    pub fn record_failure(
        &self,
        policy: &OutlierPolicy,
        now: Instant,
        currently_ejected: usize,
        n: usize,
    ) -> Option<Duration> {
        let streak = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < policy.consecutive || self.is_ejected(now) {
            return None;
        }
        if currently_ejected >= policy.max_ejected(n) {
            return None;
        }
        let times = self.recent_ejections(policy, now) + 1;
        self.times_ejected.store(times, Ordering::Relaxed);
        let duration = (policy.base * times).min(MAX_EJECTION);
        let until = since_epoch(now + duration).as_nanos() as u64;
        self.ejected_until.store(until.max(1), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        Some(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pct: u32) -> OutlierPolicy {
        OutlierPolicy::new(
            &serde_json::from_value(serde_json::json!({
                "consecutive_5xx": 3, "base_ejection": "10s", "max_ejection_percent": pct
            }))
            .expect("spec"),
        )
    }

    #[test]
    fn ejects_after_streak_for_growing_times() {
        let p = policy(50);
        let s = OutlierState::default();
        let t0 = Instant::now();
        assert_eq!(s.record_failure(&p, t0, 0, 4), None);
        assert_eq!(s.record_failure(&p, t0, 0, 4), None);
        assert_eq!(
            s.record_failure(&p, t0, 0, 4),
            Some(Duration::from_secs(10))
        );
        assert!(s.is_ejected(t0 + Duration::from_secs(9)));
        assert!(!s.is_ejected(t0 + Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..2 {
            s.record_failure(&p, t1, 0, 4);
        }
        assert_eq!(
            s.record_failure(&p, t1, 0, 4),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn time_back_in_rotation_shortens_the_next_ejection() {
        let p = policy(50);
        let s = OutlierState::default();
        let eject = |t: Instant| {
            s.record_failure(&p, t, 0, 4);
            s.record_failure(&p, t, 0, 4);
            s.record_failure(&p, t, 0, 4)
        };
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        assert_eq!(eject(t0), Some(secs(10)));
        // Back at 10 s, failing again at once: the second ejection in a row.
        assert_eq!(eject(t0 + secs(10)), Some(secs(20)));
        // Back at 30 s, then 19 s in rotation: one whole period, one ejection forgiven.
        assert_eq!(eject(t0 + secs(49)), Some(secs(20)));
        // Back at 69 s, then an hour in rotation: as if it had never failed.
        assert_eq!(eject(t0 + secs(69 + 3600)), Some(secs(10)));
    }

    #[test]
    fn cap_is_honoured_but_one_may_always_be_ejected() {
        assert_eq!(policy(10).max_ejected(3), 1);
        assert_eq!(policy(50).max_ejected(4), 2);
        let p = policy(10);
        let s = OutlierState::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(
                s.record_failure(&p, t0, 1, 3),
                None,
                "cap reached: no ejection"
            );
        }
    }

    #[test]
    fn success_resets_the_streak() {
        let p = policy(50);
        let s = OutlierState::default();
        let t0 = Instant::now();
        s.record_failure(&p, t0, 0, 2);
        s.record_failure(&p, t0, 0, 2);
        s.record_success();
        assert_eq!(s.record_failure(&p, t0, 0, 2), None);
    }
}
