//! Retry policy of a route: which failures are retried, how often, with what backoff, and
//! under which budget. The engine applies it in `upstream_peer` (backoff, endpoint choice),
//! `fail_to_connect` / `error_while_proxy` (connection failures) and
//! `upstream_response_filter` (status codes) — see docs/phases.md.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use meshgate_filters::Filter;

use super::budget::RetryBudget;
use super::StatusSet;
use crate::config::spec::{RetryOnSpec, RetrySpec};

/// Request bodies up to this size are kept for replay (Pingora's retry buffer).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Compiled `retry` filter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    /// Limit per try.
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    connect_failure: bool,
    reset: bool,
    timeout: bool,
    statuses: StatusSet,
    /// Share of requests retries may add.
    pub budget_ratio: f64,
    /// The route's budget (shared across reloads).
    pub budget: Arc<RetryBudget>,
}

/// Why an attempt is retried (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Connection could not be made.
    ConnectFailure,
    /// Connection broke before a response.
    Reset,
    /// No response within the per-try timeout.
    Timeout,
    /// A listed status code.
    Status,
}

impl RetryReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status => "status",
        }
    }
}

impl RetryPolicy {
    /// Compiles the spec with the route's budget.
    pub fn new(spec: &RetrySpec, budget: Arc<RetryBudget>) -> Self {
        let has = |c: RetryOnSpec| spec.on.contains(&c);
        Self {
            attempts: spec.attempts.max(1),
            per_try_timeout: spec.per_try_timeout.map(|d| d.get()),
            base: spec.backoff.base,
            max: spec.backoff.max,
            connect_failure: has(RetryOnSpec::ConnectFailure),
            reset: has(RetryOnSpec::Reset),
            timeout: has(RetryOnSpec::Timeout),
            statuses: StatusSet::new(spec.on.iter().filter_map(|o| match o {
                RetryOnSpec::Status(s) => Some(*s),
                _ => None,
            })),
            budget_ratio: spec.budget.fraction(),
            budget,
        }
    }

    /// Whether this kind of failure is retried by the policy.
    pub fn retries(&self, reason: RetryReason) -> bool {
        match reason {
            RetryReason::ConnectFailure => self.connect_failure,
            RetryReason::Reset => self.reset,
            RetryReason::Timeout => self.timeout,
            RetryReason::Status => false,
        }
    }

    /// Whether an upstream status is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(status)
    }

    /// Backoff before try number `attempt` (2 = first retry): full jitter over an
    /// exponentially growing ceiling, so retries of many clients spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2).min(20);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// Methods that may be retried without an `Idempotency-Key` (RFC 9110 §9.2.2).
pub fn is_retryable_request(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

/// The `retry` entry in a route's filter chain: it has no hooks of its own (the engine
/// applies the policy) but keeps the chain, `explain` and `/routes` truthful.
#[derive(Debug)]
pub struct RetryMarker;

impl Filter for RetryMarker {
    fn name(&self) -> &'static str {
        "retry"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        let spec: RetrySpec = serde_json::from_value(serde_json::json!({
            "attempts": 3, "backoff": "10ms..40ms", "on": ["connect_failure", 503, "504"]
        }))
        .expect("spec");
        RetryPolicy::new(&spec, Arc::default())
    }

    #[test]
    fn conditions_and_statuses() {
        let p = policy();
        assert!(p.retries(RetryReason::ConnectFailure));
        assert!(!p.retries(RetryReason::Reset) && !p.retries(RetryReason::Timeout));
        assert!(p.retries_status(503) && p.retries_status(504) && !p.retries_status(500));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        for _ in 0..200 {
            assert!(p.backoff(2) <= Duration::from_millis(10));
            assert!(p.backoff(3) <= Duration::from_millis(20));
            assert!(p.backoff(10) <= Duration::from_millis(40));
        }
    }

    #[test]
    fn only_idempotent_or_keyed_requests_are_retryable() {
        let none = HeaderMap::new();
        assert!(is_retryable_request(&Method::GET, &none));
        assert!(is_retryable_request(&Method::PUT, &none));
        assert!(!is_retryable_request(&Method::POST, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        assert!(is_retryable_request(&Method::POST, &keyed));
    }

    #[test]
    fn bad_conditions_are_rejected() {
        for bad in [
            serde_json::json!(["retry_everything"]),
            serde_json::json!([404]),
            serde_json::json!([true]),
        ] {
            let r: Result<RetrySpec, _> = serde_json::from_value(serde_json::json!({ "on": bad }));
            assert!(r.is_err());
        }
    }
}
