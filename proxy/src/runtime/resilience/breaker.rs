//! Per-endpoint circuit breaker: closed → open → half-open → closed, as in Envoy's outlier
//! and Polly's advanced breaker, with both trigger kinds (consecutive failures and a failure
//! rate over a sliding window).
//!
//! One small mutex per endpoint: the critical sections are a few integer updates, never
//! held across an await, and uncontended on the 1–2 threads a proxy service runs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{since_epoch, StatusSet};
use crate::config::spec::CircuitBreakerSpec;

/// Open time stops doubling at this multiple of `open_for`.
const MAX_OPEN_MULTIPLIER: u32 = 10;
/// The failure-rate window is kept in this many slots.
const SLOTS: usize = 10;

/// Compiled breaker settings of a cluster.
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    consecutive: u32,
    rate: f64,
    slot: Duration,
    min_requests: u32,
    open_for: Duration,
    probes: u32,
    failure_statuses: StatusSet,
}

impl BreakerPolicy {
    /// Compiles the YAML settings.
    pub fn new(spec: &CircuitBreakerSpec) -> Self {
        Self {
            consecutive: spec.consecutive_failures,
            rate: spec.failure_rate.fraction(),
            slot: (spec.window.get() / SLOTS as u32).max(Duration::from_millis(1)),
            min_requests: spec.min_requests,
            open_for: spec.open_for.get(),
            probes: spec.half_open_probes.max(1),
            failure_statuses: StatusSet::new(spec.failure_statuses.iter().copied()),
        }
    }

    /// Whether an upstream status counts as a failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.contains(status)
    }
}

/// Observable breaker state (for the metrics gauge: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Requests are refused without touching the endpoint.
    Open,
    /// A limited number of probe requests decide.
    HalfOpen,
}

impl BreakerState {
    /// Metric value.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Admission decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it; `probe` when it is a half-open probe whose outcome must be recorded.
    Yes {
        /// This attempt is a half-open probe.
        probe: bool,
    },
    /// Refused; the breaker may admit again after this long.
    No {
        /// Time until the breaker half-opens.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { started: u32, succeeded: u32 },
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    id: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive: u32,
    slots: [Slot; SLOTS],
    multiplier: u32,
}

/// A state change, reported for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// Breaker state of one endpoint; survives config reloads.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive: 0,
                slots: [Slot::default(); SLOTS],
                multiplier: 1,
            }),
        }
    }
}

fn observed(phase: Phase, now: Instant) -> BreakerState {
    match phase {
        Phase::Closed => BreakerState::Closed,
        Phase::Open { until } if now >= until => BreakerState::HalfOpen,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current state as seen at `now` (an expired open breaker reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        observed(self.lock().phase, now)
    }

    /// `Some(time to wait)` while the breaker refuses attempts at `now` — open, or
    /// half-open with every probe slot taken (then a short hint: probes decide soon) —
    /// else `None`.
    pub fn refusing(&self, policy: &BreakerPolicy, now: Instant) -> Option<Duration> {
        match self.lock().phase {
            Phase::Open { until } if now < until => Some(until - now),
            Phase::HalfOpen { started, .. } if started >= policy.probes => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// Whether an attempt could be admitted now, without taking a probe slot.
    pub fn would_admit(&self, policy: &BreakerPolicy, now: Instant) -> bool {
        match self.lock().phase {
            Phase::Closed => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { started, .. } => started < policy.probes,
        }
    }

    /// Admits or refuses one attempt; a half-open admission takes one of the probe slots.
    /// Returns the transition when the call moved an expired open breaker to half-open.
    pub fn try_acquire(&self, policy: &BreakerPolicy, now: Instant) -> (Admit, Option<Transition>) {
        let mut g = self.lock();
        match g.phase {
            Phase::Closed => (Admit::Yes { probe: false }, None),
            Phase::Open { until } if now < until => (
                Admit::No {
                    retry_after: until - now,
                },
                None,
            ),
            Phase::Open { .. } => {
                g.phase = Phase::HalfOpen {
                    started: 1,
                    succeeded: 0,
                };
                (
                    Admit::Yes { probe: true },
                    Some(Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                    }),
                )
            }
            Phase::HalfOpen { started, succeeded } if started < policy.probes => {
                g.phase = Phase::HalfOpen {
                    started: started + 1,
                    succeeded,
                };
                (Admit::Yes { probe: true }, None)
            }
            Phase::HalfOpen { .. } => (
                Admit::No {
                    // Probes are in flight; their outcome decides soon.
                    retry_after: Duration::from_secs(1),
                },
                None,
            ),
        }
    }

    /// A probe that never produced an outcome (client gone) gives its slot back.
    pub fn cancel_probe(&self) {
        let mut g = self.lock();
        if let Phase::HalfOpen { started, succeeded } = g.phase {
            g.phase = Phase::HalfOpen {
                started: started.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// Records the outcome of an admitted attempt; returns the transition it caused.
    pub fn record(
        &self,
        policy: &BreakerPolicy,
        now: Instant,
        ok: bool,
        probe: bool,
    ) -> Option<Transition> {
        let mut g = self.lock();
        match g.phase {
            Phase::HalfOpen { started, succeeded } if probe => {
                if ok {
                    let succeeded = succeeded + 1;
                    if succeeded >= policy.probes {
                        g.phase = Phase::Closed;
                        g.consecutive = 0;
                        g.slots = [Slot::default(); SLOTS];
                        g.multiplier = 1;
                        return Some(Transition {
                            from: BreakerState::HalfOpen,
                            to: BreakerState::Closed,
                        });
                    }
                    g.phase = Phase::HalfOpen { started, succeeded };
                    None
                } else {
                    g.multiplier = (g.multiplier * 2).min(MAX_OPEN_MULTIPLIER);
                    g.phase = Phase::Open {
                        until: now + policy.open_for * g.multiplier,
                    };
                    Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Open,
                    })
                }
            }
            Phase::Closed => {
                let slot_id = (since_epoch(now).as_nanos() / policy.slot.as_nanos().max(1)) as u64;
                let idx = (slot_id % SLOTS as u64) as usize;
                let slot = &mut g.slots[idx];
                if slot.id != slot_id {
                    *slot = Slot {
                        id: slot_id,
                        ok: 0,
                        failed: 0,
                    };
                }
                if ok {
                    slot.ok += 1;
                    g.consecutive = 0;
                    return None;
                }
                slot.failed += 1;
                g.consecutive += 1;
                let oldest = slot_id.saturating_sub(SLOTS as u64 - 1);
                let (total, failed) = g
                    .slots
                    .iter()
                    .filter(|s| s.id >= oldest && s.id <= slot_id)
                    .fold((0u32, 0u32), |(t, f), s| {
                        (t + s.ok + s.failed, f + s.failed)
                    });
                let by_count = policy.consecutive > 0 && g.consecutive >= policy.consecutive;
                let by_rate = policy.min_requests > 0
                    && total >= policy.min_requests
                    && f64::from(failed) >= policy.rate * f64::from(total);
                if by_count || by_rate {
                    g.multiplier = 1;
                    g.phase = Phase::Open {
                        until: now + policy.open_for,
                    };
                    g.consecutive = 0;
                    g.slots = [Slot::default(); SLOTS];
                    return Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                    });
                }
                None
            }
            // Outcomes of attempts admitted before the breaker opened, or non-probe outcomes
            // while half-open, do not move the state.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(consecutive: u32, rate: f64, min_requests: u32, probes: u32) -> BreakerPolicy {
        let spec: CircuitBreakerSpec = serde_json::from_value(serde_json::json!({
            "consecutive_failures": consecutive,
            "failure_rate": format!("{rate}%"),
            "window": "10s",
            "min_requests": min_requests,
            "open_for": "30s",
            "half_open_probes": probes,
        }))
        .expect("spec");
        BreakerPolicy::new(&spec)
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses() {
        let p = policy(5, 50.0, 0, 1);
        let b = Breaker::default();
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(b.record(&p, t0, false, false), None, "failure {i}");
        }
        let t = b.record(&p, t0, false, false);
        assert_eq!(t.map(|t| t.to), Some(BreakerState::Open));
        match b.try_acquire(&p, t0 + Duration::from_secs(1)).0 {
            Admit::No { retry_after } => assert_eq!(retry_after, Duration::from_secs(29)),
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let p = policy(3, 100.0, 0, 1);
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            b.record(&p, t0, false, false);
            b.record(&p, t0, false, false);
            assert_eq!(b.record(&p, t0, true, false), None);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn opens_at_failure_rate_with_min_requests() {
        let p = policy(0, 50.0, 20, 1);
        let b = Breaker::default();
        let t0 = Instant::now();
        // 19 requests, 10 failures: under min_requests, stays closed.
        for i in 0..19 {
            assert_eq!(b.record(&p, t0, i % 2 == 1, false), None, "request {i}");
        }
        // The 20th (a failure) reaches 10 of 20 = 50%.
        assert_eq!(
            b.record(&p, t0, false, false).map(|t| t.to),
            Some(BreakerState::Open)
        );
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let p = policy(0, 50.0, 4, 1);
        let b = Breaker::default();
        let t0 = Instant::now();
        b.record(&p, t0, false, false);
        b.record(&p, t0, false, false);
        // 11 s later those failures are outside the 10 s window.
        let t1 = t0 + Duration::from_secs(11);
        b.record(&p, t1, true, false);
        b.record(&p, t1, true, false);
        b.record(&p, t1, true, false);
        assert_eq!(b.record(&p, t1, false, false), None);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_exactly_n_probes_then_closes_on_success() {
        let p = policy(1, 100.0, 0, 3);
        let b = Breaker::default();
        let t0 = Instant::now();
        b.record(&p, t0, false, false);
        let later = t0 + Duration::from_secs(30);
        let (first, t) = b.try_acquire(&p, later);
        assert_eq!(first, Admit::Yes { probe: true });
        assert_eq!(t.map(|t| t.to), Some(BreakerState::HalfOpen));
        assert_eq!(b.try_acquire(&p, later).0, Admit::Yes { probe: true });
        assert_eq!(b.try_acquire(&p, later).0, Admit::Yes { probe: true });
        assert!(
            matches!(b.try_acquire(&p, later).0, Admit::No { .. }),
            "a fourth probe must wait"
        );
        assert_eq!(b.record(&p, later, true, true), None);
        assert_eq!(b.record(&p, later, true, true), None);
        assert_eq!(
            b.record(&p, later, true, true).map(|t| t.to),
            Some(BreakerState::Closed)
        );
        assert_eq!(b.try_acquire(&p, later).0, Admit::Yes { probe: false });
    }

    #[test]
    fn failed_probe_reopens_with_doubled_time_capped_at_ten_times() {
        let p = policy(1, 100.0, 0, 1);
        let b = Breaker::default();
        let mut now = Instant::now();
        b.record(&p, now, false, false);
        let mut expected = [60u64, 120, 240, 300, 300].into_iter();
        let mut open_for = 30;
        for _ in 0..5 {
            now += Duration::from_secs(open_for);
            assert_eq!(b.try_acquire(&p, now).0, Admit::Yes { probe: true });
            assert_eq!(
                b.record(&p, now, false, true).map(|t| t.to),
                Some(BreakerState::Open)
            );
            open_for = expected.next().expect("value");
            match b.try_acquire(&p, now).0 {
                Admit::No { retry_after } => assert_eq!(retry_after.as_secs(), open_for),
                other => panic!("expected open, got {other:?}"),
            }
        }
    }

    #[test]
    fn cancelled_probe_frees_its_slot() {
        let p = policy(1, 100.0, 0, 1);
        let b = Breaker::default();
        let t0 = Instant::now();
        b.record(&p, t0, false, false);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(b.try_acquire(&p, later).0, Admit::Yes { probe: true });
        assert!(matches!(b.try_acquire(&p, later).0, Admit::No { .. }));
        b.cancel_probe();
        assert_eq!(b.try_acquire(&p, later).0, Admit::Yes { probe: true });
    }
}
