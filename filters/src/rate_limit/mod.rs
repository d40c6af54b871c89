//! The `rate_limit` route filter: GCRA limits per client key, counted in this process
//! (`scope: local`) or across replicas in Redis (`scope: global`), answered with 429 and the
//! IETF `RateLimit-*` headers.
//!
//! GCRA (a token bucket expressed as one timestamp per key) is used in both scopes so a
//! limit means the same thing wherever it is counted: a full bucket admits `burst` requests
//! at once, then one per `interval` (`per / N` of `rate: N/per`).
//!
//! Global limits make one Redis round trip per request and never wait past
//! `stores.rate_limits.timeout`. The local limiter at the same rate is consulted on every
//! request too, so that when Redis is slow or down the request is still limited locally,
//! and `on_error` decides only between "what the local limiter admits" (`allow`) and 429
//! (`deny`).
//!
//! Headers (on 429 always, on admitted responses when `headers: true`):
//! `RateLimit-Limit` = burst, `RateLimit-Remaining` = requests admissible right now,
//! `RateLimit-Reset` = seconds until the bucket is full again, and on 429 `Retry-After` =
//! seconds until the next request would be admitted (at least 1). When several limits apply
//! to a route, the headers describe the one with the fewest remaining requests.

mod key;
mod local;
mod redis;
mod spec;
mod stores;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use sha2::{Digest, Sha256};

pub use spec::{
    OnError, Rate, RateLimitKeySpec, RateLimitSpec, RateLimitStoreSpec, Scope, StoreBackend,
    DEFAULT_MAX_KEYS, DEFAULT_REDIS_TIMEOUT,
};
pub use stores::{LimiterStats, RateLimitStats, RateLimitStores};

use self::redis::RedisStore;
use key::{compile_key, feed_key, KeyPart};
use stores::{LimiterId, SharedLimiter};

use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, SpecError, Step};

/// `RateLimit-Limit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One limiter's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) allowed: bool,
    /// The burst.
    pub(crate) limit: u32,
    /// Requests that would be admitted right now after this one.
    pub(crate) remaining: u32,
    /// Until the bucket is full again.
    pub(crate) reset: Duration,
    /// Until the next request would be admitted (zero when this one was).
    pub(crate) retry_after: Duration,
}

impl Decision {
    /// A refusal whose next admission is `wait` away.
    pub(crate) fn denied(limit: u32, wait: Duration, interval: Duration) -> Self {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset: wait + interval * limit.saturating_sub(1),
            retry_after: wait,
        }
    }
}

/// The rate-limit state a response advertises, left in [`RequestCtx::extensions`] by the
/// request hook for the response hook (and readable by the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `RateLimit-Limit`: the burst.
    pub limit: u32,
    /// `RateLimit-Remaining`.
    pub remaining: u32,
    /// `RateLimit-Reset`, whole seconds rounded up.
    pub reset_secs: u64,
    /// `Retry-After` in whole seconds (at least 1) when the request was refused.
    pub retry_after_secs: Option<u64>,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimitHeaders {
    fn from_decision(d: &Decision) -> Self {
        Self {
            limit: d.limit,
            remaining: d.remaining,
            reset_secs: ceil_secs(d.reset),
            retry_after_secs: (!d.allowed).then(|| ceil_secs(d.retry_after).max(1)),
        }
    }

    /// Whether `self` should replace `other` as the advertised state: a refusal wins, then
    /// the fewest remaining requests.
    fn tighter_than(&self, other: &Self) -> bool {
        match (
            self.retry_after_secs.is_some(),
            other.retry_after_secs.is_some(),
        ) {
            (true, false) => true,
            (false, true) => false,
            _ => self.remaining < other.remaining,
        }
    }

    fn write(&self, response: &mut ResponseHeader) {
        // insert (not append): when several limits apply, only the tightest is described.
        // Names go in as `&'static str`: given a `HeaderName` Pingora copies its text for
        // the case map, given a static string it keeps the reference.
        let _ = response.insert_header(RATELIMIT_LIMIT.as_str(), HeaderValue::from(self.limit));
        let _ = response.insert_header(
            RATELIMIT_REMAINING.as_str(),
            HeaderValue::from(self.remaining),
        );
        let _ =
            response.insert_header(RATELIMIT_RESET.as_str(), HeaderValue::from(self.reset_secs));
        if let Some(secs) = self.retry_after_secs {
            let _ = response.insert_header(RETRY_AFTER.as_str(), HeaderValue::from(secs));
        }
    }

    fn refusal(&self) -> LocalResponse {
        let mut answer = LocalResponse::error(ErrorKind::RateLimited)
            .with_header(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit))
            .with_header(
                RATELIMIT_REMAINING.clone(),
                HeaderValue::from(self.remaining),
            )
            .with_header(RATELIMIT_RESET.clone(), HeaderValue::from(self.reset_secs));
        if let Some(secs) = self.retry_after_secs {
            answer = answer.with_header(RETRY_AFTER, HeaderValue::from(secs));
        }
        answer
    }
}

/// The Redis side of a global limit.
struct Global {
    redis: Arc<RedisStore>,
    on_error: OnError,
    /// Route name safe for the key prefix.
    route_label: String,
    /// Limiter identity fed into every key digest, so two limits never share a Redis key.
    identity: Vec<u8>,
    interval_us: u64,
}

/// Compiled `rate_limit` filter. Cheap to rebuild on every reload: the buckets live in the
/// [`RateLimitStores`] it was built with.
pub struct RateLimitFilter {
    key: Vec<KeyPart>,
    route: Arc<str>,
    limiter: Arc<SharedLimiter>,
    global: Option<Global>,
    headers: bool,
}

impl std::fmt::Debug for RateLimitFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitFilter")
            .field("key", &self.key)
            .field("route", &self.route)
            .field("interval", &self.limiter.id.interval)
            .field("burst", &self.limiter.id.burst)
            .field("global", &self.global.is_some())
            .finish()
    }
}

impl RateLimitFilter {
    /// Compiles the `rate_limit` filter at position `index_in_route` of route `route`,
    /// reporting every error with its path below the filter key (`rate`, `key[1]`, …).
    /// The limiter is taken from `stores` by (route, index, rate, burst): the same limit
    /// after a reload keeps its buckets, a changed one starts fresh. `scope: global` needs a
    /// Redis store.
    pub fn new(
        spec: &RateLimitSpec,
        route: &str,
        index_in_route: usize,
        stores: &RateLimitStores,
    ) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        let key = compile_key(&spec.key, &mut errors);
        let rate = Rate::parse(&spec.rate)
            .map_err(|e| errors.push(SpecError::new("rate", e)))
            .ok();
        let burst = spec.burst.or(rate.map(|r| r.count)).unwrap_or(1);
        if burst == 0 {
            errors.push(SpecError::new("burst", "must be at least 1"));
        } else if rate.is_some_and(|r| {
            r.interval()
                .checked_mul(burst)
                .is_none_or(|window| window > spec::MAX_WINDOW)
        }) {
            errors.push(SpecError::new(
                "burst",
                "burst × (period / N) is longer than a year; lower the burst",
            ));
        }
        if spec.scope == Scope::Global && !stores.has_global() {
            errors.push(SpecError::new(
                "scope",
                "`scope: global` needs `stores.rate_limits` with `backend: redis`",
            ));
        }
        let Some(rate) = rate else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let route: Arc<str> = Arc::from(route);
        let id = LimiterId {
            route: route.clone(),
            index: index_in_route,
            interval: rate.interval(),
            burst,
        };
        let Some(limiter) = stores.limiter(id) else {
            return Err(vec![SpecError::new(
                "rate",
                "rate and burst make no valid limit",
            )]);
        };
        let global = match (spec.scope, stores.redis()) {
            (Scope::Global, Some(redis)) => {
                let interval_us = u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX);
                let mut identity = Vec::with_capacity(route.len() + 24);
                identity.extend_from_slice(&(route.len() as u64).to_be_bytes());
                identity.extend_from_slice(route.as_bytes());
                identity.extend_from_slice(&(index_in_route as u64).to_be_bytes());
                identity.extend_from_slice(&interval_us.to_be_bytes());
                identity.extend_from_slice(&burst.to_be_bytes());
                Some(Global {
                    redis: redis.clone(),
                    on_error: stores.on_error(),
                    route_label: self::redis::route_label(&route),
                    identity,
                    interval_us,
                })
            }
            _ => None,
        };
        Ok(Self {
            key,
            route,
            limiter,
            global,
            headers: spec.headers,
        })
    }

    fn local_decision(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> Decision {
        let mut h = self.limiter.local.hasher();
        feed_key(&self.key, req.header, ctx, &self.route, &mut h);
        self.limiter.local.check(std::hash::Hasher::finish(&h))
    }

    /// Records the decision for the response hook and turns it into the hook's action.
    fn conclude(&self, decision: Decision, ctx: &mut RequestCtx) -> Action {
        let counters = &self.limiter.counters;
        if decision.allowed {
            counters.allowed.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.denied.fetch_add(1, Ordering::Relaxed);
        }
        let headers = RateLimitHeaders::from_decision(&decision);
        if self.headers || !decision.allowed {
            let replace = ctx
                .extensions
                .get::<RateLimitHeaders>()
                .is_none_or(|current| headers.tighter_than(current));
            if replace {
                ctx.extensions.insert(headers);
            }
        }
        if decision.allowed {
            Action::Continue
        } else {
            Action::Respond(headers.refusal())
        }
    }

    async fn decide_global(&self, global: &Global, local: Decision, redis_key: String) -> Decision {
        let counters = &self.limiter.counters;
        match global
            .redis
            .decide(&redis_key, global.interval_us, self.limiter.id.burst)
            .await
        {
            Ok(decision) => {
                counters.global.fetch_add(1, Ordering::Relaxed);
                decision
            }
            Err(_) => {
                counters.fallback.fetch_add(1, Ordering::Relaxed);
                if !local.allowed || global.on_error == OnError::Allow {
                    local
                } else {
                    // Nothing says when Redis returns; one second is a polite retry hint.
                    Decision::denied(
                        self.limiter.id.burst,
                        Duration::from_secs(1),
                        self.limiter.id.interval,
                    )
                }
            }
        }
    }
}

impl Filter for RateLimitFilter {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn request_filter<'a>(&'a self, req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        let local = self.local_decision(&req, ctx);
        let Some(global) = &self.global else {
            return Step::Done(self.conclude(local, ctx));
        };
        let mut digest = Sha256::new();
        digest.update(&global.identity);
        feed_key(&self.key, req.header, ctx, &self.route, &mut digest);
        let redis_key = self::redis::redis_key(&global.route_label, &digest.finalize());
        Step::Wait(Box::pin(async move {
            let decision = self.decide_global(global, local, redis_key).await;
            self.conclude(decision, ctx)
        }))
    }

    fn response_filter(&self, response: &mut ResponseHeader, ctx: &mut RequestCtx) {
        if let Some(headers) = ctx.extensions.get::<RateLimitHeaders>() {
            headers.write(response);
        }
    }
}

#[cfg(test)]
mod tests;
