//! Outlier ejection: an endpoint that answers 5xx (or refuses connections) `consecutive_5xx`
//! times in a row is taken out of load balancing for `base_ejection × times ejected`
//! (capped at 300 s), while never ejecting more than `max_ejection_percent` of the cluster
//! — at least one endpoint may always be ejected, as in Envoy.

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
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
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
