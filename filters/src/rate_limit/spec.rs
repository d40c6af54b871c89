//! The YAML side of rate limiting: the `rate_limit` route filter and the
//! `stores.rate_limits` section, and the parsing of `rate:` strings (`100/s`, `5/15min`).
//!
//! Specs keep what the user wrote (strings, lists) so `/config` shows it back unchanged;
//! [`Rate`] and the key parts are the checked forms the runtime uses.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;
use crate::SpecError;

/// YAML: `rate_limit: { key: user, rate: 100/s, burst: 200, scope: global, headers: true }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// What one bucket is counted per: `ip`, `user`, `api_key`, `header:NAME`, `route`, or a
    /// list of them (`[route, ip]`). Defaults to `ip`.
    #[serde(default)]
    pub key: RateLimitKeySpec,
    /// Sustained rate: `N/s`, `N/min`, `N/h`, `N/d`, or `N/<duration>` such as `5/15min`.
    pub rate: String,
    /// Requests admitted at once from a full bucket. Defaults to the rate's `N`, so
    /// `rate: 5/15min` admits 5 at once and then one every 3 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `local` (this process) or `global` (shared by every replica through Redis).
    #[serde(default)]
    pub scope: Scope,
    /// Send `RateLimit-Limit/Remaining/Reset` on admitted responses too (a 429 always has
    /// them).
    #[serde(default = "yes")]
    pub headers: bool,
}

fn yes() -> bool {
    true
}

/// `key:` as written: one part or a list of parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RateLimitKeySpec {
    /// `key: ip`
    One(String),
    /// `key: [route, ip]`
    Many(Vec<String>),
}

impl Default for RateLimitKeySpec {
    fn default() -> Self {
        RateLimitKeySpec::One("ip".to_string())
    }
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this process only: N replicas admit up to N times the rate.
    #[default]
    Local,
    /// In the shared `stores.rate_limits` Redis, so all replicas together admit the rate.
    Global,
}

/// YAML: `stores.rate_limits: { backend: redis, url: redis://127.0.0.1:6379, on_error: allow,
/// timeout: 20ms }`, or `cluster: [redis://a:7000, …]` instead of `url`, or
/// `backend: memory`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStoreSpec {
    /// `memory` (default: only `scope: local` limits work) or `redis`.
    #[serde(default)]
    pub backend: StoreBackend,
    /// Standalone Redis: `redis://[user:password@]host:port[/db]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redis Cluster seed nodes: `[redis://a:7000, redis://b:7001]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// What a global limit decides while Redis is slow or down; the local limiter at the
    /// same rate applies either way.
    #[serde(default)]
    pub on_error: OnError,
    /// Longest a request waits for Redis before `on_error` applies.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Most client keys one local limiter tracks; beyond it new keys share hashed overflow
    /// buckets. Bounds memory under a flood of distinct keys.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

impl Default for RateLimitStoreSpec {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            url: None,
            cluster: Vec::new(),
            on_error: OnError::Allow,
            timeout: default_timeout(),
            max_keys: default_max_keys(),
        }
    }
}

/// Default `stores.rate_limits.timeout`: a Redis round trip on a LAN is well under a
/// millisecond, so 20 ms only fires when Redis is really in trouble.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);

/// Default `stores.rate_limits.max_keys` per limiter: about 3.5 MB of key table at most
/// (see the memory test in `local.rs`).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

fn default_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_REDIS_TIMEOUT)
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

/// `stores.rate_limits.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// No shared store; `scope: global` limits are configuration errors.
    #[default]
    Memory,
    /// Redis or Redis Cluster.
    Redis,
}

/// `stores.rate_limits.on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Admit what the local limiter admits (fail open, but never unlimited).
    #[default]
    Allow,
    /// Refuse with 429 (fail closed).
    Deny,
}

impl RateLimitStoreSpec {
    /// Every problem in the section, paths relative to `stores.rate_limits`. Parses URLs but
    /// does no network I/O.
    pub fn check(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        match self.backend {
            StoreBackend::Memory => {
                if self.url.is_some() {
                    errors.push(SpecError::new("url", "only used with `backend: redis`"));
                }
                if !self.cluster.is_empty() {
                    errors.push(SpecError::new("cluster", "only used with `backend: redis`"));
                }
            }
            StoreBackend::Redis => match (&self.url, self.cluster.is_empty()) {
                (None, true) => errors.push(SpecError::new(
                    "",
                    "`backend: redis` needs `url` (standalone) or `cluster` (Redis Cluster)",
                )),
                (Some(_), false) => errors.push(SpecError::new(
                    "cluster",
                    "give either `url` or `cluster`, not both",
                )),
                (Some(url), true) => {
                    if let Err(e) = check_redis_url(url) {
                        errors.push(SpecError::new("url", e));
                    }
                }
                (None, false) => {
                    for (i, url) in self.cluster.iter().enumerate() {
                        if let Err(e) = check_redis_url(url) {
                            errors.push(SpecError::new(format!("cluster[{i}]"), e));
                        }
                    }
                }
            },
        }
        if self.timeout.get().is_zero() {
            errors.push(SpecError::new("timeout", "must be greater than zero"));
        }
        if self.max_keys == 0 {
            errors.push(SpecError::new("max_keys", "must be at least 1"));
        }
        errors
    }
}

/// Accepts `redis://` URLs only: this build has no TLS for Redis, and a `rediss://` URL
/// silently downgraded would leak credentials. Messages never echo the URL, which may
/// hold a password.
pub(crate) fn check_redis_url(url: &str) -> Result<(), String> {
    if !url.starts_with("redis://") {
        return Err("must be a redis:// URL (TLS and unix sockets are not supported)".into());
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("invalid Redis URL: {}", e.category()))
}

/// A checked `rate:`: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

/// Intervals below this are refused: the Redis script counts in microseconds.
const MIN_INTERVAL: Duration = Duration::from_micros(1);

/// Longest period, and longest `interval × burst` window. governor's nanosecond arithmetic
/// is unchecked and the script's microsecond timestamps must stay exact in Lua doubles;
/// a year keeps both far from their limits and is longer than any sensible window.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

impl Rate {
    /// Parses `100/s`, `1000/min`, `5/15min`, `10/h`, `2/d`, `30/10s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid rate {s:?}: expected N/s, N/min, N/h or N/<duration> such as \"5/15min\""
            )
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        let unit = unit.trim();
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            // Only with a leading number, so "fortnight" or "ms" alone are not guessed at.
            _ if unit.starts_with(|c: char| c.is_ascii_digit()) => {
                humantime::parse_duration(unit).map_err(|_| bad())?
            }
            _ => return Err(bad()),
        };
        if per > MAX_WINDOW {
            return Err(format!(
                "invalid rate {s:?}: the period is longer than a year"
            ));
        }
        let rate = Rate { count, per };
        if per.is_zero() || rate.interval() < MIN_INTERVAL {
            return Err(format!(
                "invalid rate {s:?}: more than one request per microsecond"
            ));
        }
        Ok(rate)
    }

    /// Time between two requests at the sustained rate (the GCRA emission interval).
    pub fn interval(self) -> Duration {
        self.per / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_units_and_durations() {
        let r = Rate::parse("100/s").expect("valid");
        assert_eq!(r.interval(), Duration::from_millis(10));
        assert_eq!(
            Rate::parse("1000/min").expect("valid").per,
            Duration::from_secs(60)
        );
        assert_eq!(
            Rate::parse("5/15min").expect("valid").interval(),
            Duration::from_secs(180)
        );
        assert_eq!(
            Rate::parse(" 2 / h ").expect("valid").per,
            Duration::from_secs(3600)
        );
        for bad in [
            "10/fortnight",
            "10",
            "/s",
            "0/s",
            "-1/s",
            "1.5/s",
            "10/ms",
            "2000000/s",
            "1/0s",
            "1/400d",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            Rate::parse("10/fortnight").expect_err("bad"),
            "invalid rate \"10/fortnight\": expected N/s, N/min, N/h or N/<duration> such as \"5/15min\""
        );
    }

    #[test]
    fn store_spec_checks_every_field() {
        let spec: RateLimitStoreSpec = serde_json::from_value(serde_json::json!({
            "backend": "redis", "cluster": ["redis://127.0.0.1:7000", "http://x", "rediss://y:1"],
            "timeout": "0s", "max_keys": 0
        }))
        .expect("shape");
        let paths: Vec<_> = spec.check().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["cluster[1]", "cluster[2]", "timeout", "max_keys"]);

        let both: RateLimitStoreSpec = serde_json::from_value(serde_json::json!({
            "backend": "redis", "url": "redis://127.0.0.1:6379", "cluster": ["redis://a:1"]
        }))
        .expect("shape");
        assert_eq!(both.check()[0].path, "cluster");

        let ok: RateLimitStoreSpec = serde_json::from_value(serde_json::json!({
            "backend": "redis", "url": "redis://user:pw@127.0.0.1:6379/2", "on_error": "deny"
        }))
        .expect("shape");
        assert!(ok.check().is_empty());
        assert_eq!(ok.timeout.get(), DEFAULT_REDIS_TIMEOUT);

        assert!(serde_json::from_value::<RateLimitStoreSpec>(
            serde_json::json!({ "backend": "memory", "surprise": 1 })
        )
        .is_err());
    }

    #[test]
    fn url_errors_do_not_echo_the_password() {
        let err = check_redis_url("redis://user:hunter2@[::1").expect_err("bad url");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
