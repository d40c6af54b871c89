//! Resilience policies applied by the engine around upstream attempts: retries with a
//! budget, per-endpoint circuit breakers and outlier ejection.
//!
//! They live in the engine rather than in filters because they decide *which endpoint*
//! gets an attempt and *whether there is another attempt* — both owned by the route's
//! upstream choice (DESIGN §4). Their state survives config reloads: breakers and ejections
//! sit in each endpoint's shared state, budgets in a registry keyed by route name.

pub mod breaker;
pub mod budget;
pub mod outlier;
pub mod retry;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// A process-wide time origin, so windows can be kept in plain integers.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Time since the process epoch.
pub fn since_epoch(now: Instant) -> Duration {
    now.saturating_duration_since(*EPOCH)
}

/// A small set of status codes (0–1023) as a bitset: one lookup, no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    /// The set of `codes` (codes ≥ 1024 are ignored; HTTP has none).
    pub fn new(codes: impl IntoIterator<Item = u16>) -> Self {
        let mut s = Self::default();
        for c in codes {
            if let Some(word) = s.0.get_mut(usize::from(c / 64)) {
                *word |= 1 << (c % 64);
            }
        }
        s
    }

    /// Membership.
    pub fn contains(&self, code: u16) -> bool {
        self.0
            .get(usize::from(code / 64))
            .is_some_and(|w| w & (1 << (code % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_set_membership() {
        let s = StatusSet::new([500, 503, 599, 200]);
        assert!(s.contains(503) && s.contains(200) && s.contains(599));
        assert!(!s.contains(502) && !s.contains(0) && !s.contains(1023) && !s.contains(65535));
    }
}
