//! The YAML-facing model: what users write, parsed with `deny_unknown_fields`.
//!
//! These types are never used by the engine directly; [`crate::runtime`] compiles them into
//! immutable runtime structures once per config generation. They also serialize back for
//! the admin `/config` endpoint, which is why every field round-trips and secrets would be
//! wrapped in a redacting type.

use std::collections::BTreeMap;
use std::fmt;

use meshgate_filters::api_key::ApiKeySpec;
use meshgate_filters::bff::{BffFilterSpec, BffSpec, SessionStoreSpec};
use meshgate_filters::cors::CorsSpec;
use meshgate_filters::fault::FaultSpec;
use meshgate_filters::headers::HeadersSpec;
use meshgate_filters::jwt::{JwtSpec, ProviderSpec};
use meshgate_filters::rate_limit::{RateLimitSpec, RateLimitStoreSpec};
use meshgate_filters::units::{ByteSize, HumanDuration, Percent};
use serde::{Deserialize, Serialize};

/// Top-level keys accepted in a config file, in documentation order.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "mode",
    "service",
    "trusted_proxies",
    "listeners",
    "admin",
    "runtime",
    "stores",
    "providers",
    "bff",
    "clusters",
    "routes",
];

/// A whole config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigSpec {
    /// `edge` or `sidecar`.
    pub mode: Mode,
    /// This proxy's identity: metrics label, later the mTLS identity.
    pub service: String,
    /// CIDRs of proxies in front of us whose `X-Forwarded-*` headers are trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Where the proxy accepts traffic.
    pub listeners: Vec<ListenerSpec>,
    /// The admin endpoint (metrics, health, config); off when absent.
    #[serde(default)]
    pub admin: Option<AdminSpec>,
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Where state shared between replicas lives.
    #[serde(default)]
    pub stores: StoresSpec,
    /// OpenID Providers, referenced by name from `jwt` filters (and later the BFF).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Browser sessions with OIDC login (edge only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bff: Option<BffSpec>,
    /// Named groups of upstream endpoints.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterSpec>,
    /// Routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// `stores`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoresSpec {
    /// Backend of `scope: global` rate limits (memory when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitStoreSpec>,
    /// Where BFF sessions live (memory when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionStoreSpec>,
}

/// Which role this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Public entry point.
    Edge,
    /// Per-service proxy.
    Sidecar,
}

/// `listeners[]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` to bind.
    pub address: String,
    /// Accept prior-knowledge cleartext HTTP/2 (h2c) on a plain listener.
    #[serde(default)]
    pub h2c: bool,
    /// Terminate TLS on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Require client certificates chained to this CA (mesh mTLS); needs `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSpec>,
}

/// `listeners[].mtls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// PEM file with the CA certificate(s) client certificates must chain to.
    pub ca: String,
}

/// `listeners[].tls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificate chain served when no SNI entry matches.
    pub cert: String,
    /// PEM private key of `cert`.
    pub key: String,
    /// Extra certificates chosen by the client's SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertSpec>,
    /// Offer HTTP/2 by ALPN (default true).
    #[serde(default = "yes")]
    pub http2: bool,
}

/// `listeners[].tls.sni[]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertSpec {
    /// Exact names (`api.example.com`) or one-label wildcards (`*.example.com`).
    pub server_names: Vec<String>,
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// `admin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `ip:port` of the admin listener. Keep it on loopback or a private network.
    pub address: String,
}

/// `runtime`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Worker threads per listener.
    #[serde(default = "one")]
    pub threads: usize,
    /// Let idle threads steal work (off: measured faster for proxying on few cores).
    #[serde(default)]
    pub work_stealing: bool,
    /// After SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "five_seconds")]
    pub grace_period: HumanDuration,
    /// Deadline for receiving a whole request header, from its first byte.
    #[serde(default = "ten_seconds")]
    pub header_read_timeout: HumanDuration,
    /// Largest accepted request header block (431 above).
    #[serde(default = "default_max_header")]
    pub max_header_size: ByteSize,
    /// How long an idle downstream keep-alive connection is kept open.
    #[serde(default = "sixty_seconds")]
    pub idle_timeout: HumanDuration,
    /// Abandon an HTTP/1 request whose client closed its sending side (FIN) before the
    /// response was complete; false serves such half-closed clients to the end.
    #[serde(default = "yes")]
    pub abort_on_client_close: bool,
    /// Write one JSON access-log line per request on stdout.
    #[serde(default = "yes")]
    pub access_log: bool,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            threads: one(),
            work_stealing: false,
            grace_period: five_seconds(),
            header_read_timeout: ten_seconds(),
            max_header_size: default_max_header(),
            idle_timeout: sixty_seconds(),
            abort_on_client_close: true,
            access_log: true,
        }
    }
}

/// `clusters.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// `host:port` endpoints.
    pub endpoints: Vec<String>,
    /// How a request picks an endpoint.
    #[serde(default)]
    pub load_balancing: LoadBalancingSpec,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "one_second")]
    pub connect_timeout: HumanDuration,
    /// Upstream protocol.
    #[serde(default)]
    pub protocol: ProtocolSpec,
    /// Active health checking; endpoints are assumed healthy without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Originate (m)TLS to the endpoints and expect this peer identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsSpec>,
    /// Per-endpoint circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Passive ejection of endpoints that keep answering 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
}

/// `clusters.<name>.tls`: mesh mTLS to a service's sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsSpec {
    /// The service the endpoints must prove to be: their certificate must chain to `ca` and
    /// name it (the DNS SAN that `meshgate certs init` writes next to the SPIFFE ID).
    pub identity: String,
    /// PEM CA certificate(s) the endpoints' certificates must chain to.
    pub ca: String,
    /// This proxy's client certificate (PEM chain), presented to the endpoints.
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

/// `clusters.<name>.circuit_breaker`, tracked per endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Open after this many failures in a row (0 = off).
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    /// Open when failures reach this share of requests in `window` …
    #[serde(default = "fifty_percent")]
    pub failure_rate: Percent,
    /// … measured over this sliding window …
    #[serde(default = "ten_seconds")]
    pub window: HumanDuration,
    /// … once at least this many requests were seen in it.
    #[serde(default = "twenty")]
    pub min_requests: u32,
    /// How long an open breaker rejects requests before probing.
    #[serde(default = "thirty_seconds")]
    pub open_for: HumanDuration,
    /// Requests admitted while half-open; all must succeed to close.
    #[serde(default = "three")]
    pub half_open_probes: u32,
    /// Upstream statuses counted as failures (connect errors, resets and timeouts always are).
    #[serde(default = "five_xx", skip_serializing_if = "is_five_xx")]
    pub failure_statuses: Vec<u16>,
}

/// `clusters.<name>.outlier_detection`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// Eject after this many 5xx answers (or connect failures) in a row.
    #[serde(default = "five")]
    pub consecutive_5xx: u32,
    /// First ejection lasts this long; the n-th lasts n times as long (capped at 300s).
    #[serde(default = "thirty_seconds")]
    pub base_ejection: HumanDuration,
    /// At most this share of the cluster's endpoints is ejected at once (at least one may be).
    #[serde(default = "ten_percent")]
    pub max_ejection_percent: Percent,
}

/// `clusters.<name>.load_balancing`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadBalancingSpec {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight (ties broken at random).
    LeastRequest,
    /// Uniformly at random.
    Random,
    /// The same endpoint for the same value of a request header (rendezvous hashing).
    HashHeader(String),
}

impl fmt::Display for LoadBalancingSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RoundRobin => f.write_str("round_robin"),
            Self::LeastRequest => f.write_str("least_request"),
            Self::Random => f.write_str("random"),
            Self::HashHeader(h) => write!(f, "hash(header:{h})"),
        }
    }
}

impl std::str::FromStr for LoadBalancingSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" => Ok(Self::RoundRobin),
            "least_request" => Ok(Self::LeastRequest),
            "random" => Ok(Self::Random),
            _ => s
                .strip_prefix("hash(header:")
                .and_then(|rest| rest.strip_suffix(')'))
                .filter(|h| !h.is_empty())
                .map(|h| Self::HashHeader(h.to_ascii_lowercase()))
                .ok_or_else(|| {
                    format!(
                        "unknown load balancing {s:?}, expected round_robin, least_request, random or hash(header:NAME)"
                    )
                }),
        }
    }
}

impl Serialize for LoadBalancingSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LoadBalancingSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `clusters.<name>.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolSpec {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge on cleartext), needed for gRPC.
    H2,
}

/// `clusters.<name>.health_check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path probed with `GET` over HTTP/1.1; any 2xx is healthy.
    #[serde(default = "healthz")]
    pub path: String,
    /// Time between probes of one endpoint.
    #[serde(default = "five_seconds")]
    pub interval: HumanDuration,
    /// Probe timeout (connect + answer).
    #[serde(default = "one_second")]
    pub timeout: HumanDuration,
    /// Consecutive failed probes before an endpoint is taken out.
    #[serde(default = "two")]
    pub unhealthy_after: u32,
    /// Consecutive good probes before it is put back.
    #[serde(default = "one_u32")]
    pub healthy_after: u32,
}

/// `routes[]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name: metrics label, access log field.
    pub name: String,
    /// Conditions that must all hold; an empty match matches every request.
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// Path rewrite before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteSpec>,
    /// Single target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Weighted targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitSpec>>,
    /// Limit on the upstream exchange; 504 when it expires.
    #[serde(default = "thirty_seconds")]
    pub timeout: HumanDuration,
    /// Filters in request order (loaded one by one so each gets its own errors).
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
}

/// `routes[].match`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact host (port ignored) or `*.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Segment-aware prefix of the normalized path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact normalized path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Allowed methods; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Only requests arriving on these listeners (by name); empty = every listener. A
    /// sidecar uses it to keep inbound (mesh) and outbound (app) routes apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
}

/// `routes[].rewrite`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Remove this prefix (segment-aware) from the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Replace the matched `match.path_prefix` with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<String>,
}

/// `routes[].split[]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Target cluster.
    pub cluster: String,
    /// Relative weight (> 0).
    pub weight: u32,
}

/// One entry of `routes[].filters`: a map with exactly one key, the filter's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterSpec {
    /// Header edits.
    Headers(HeadersSpec),
    /// Maximum request body size.
    BodyLimit(ByteSize),
    /// Retry policy of the route (applied by the engine, which owns endpoint choice).
    Retry(RetrySpec),
    /// Fault injection for testing.
    Fault(FaultSpec),
    /// Token-bucket rate limit, local or shared through Redis.
    RateLimit(RateLimitSpec),
    /// Mesh identities (from mTLS client certificates) allowed on the route.
    AllowCallers(Vec<String>),
    /// API key check against hashed keys.
    ApiKey(ApiKeySpec),
    /// CORS policy and preflight answers.
    Cors(CorsSpec),
    /// Bearer JWT validation against a provider's keys.
    Jwt(JwtSpec),
    /// Browser session cookie to bearer token (needs the `bff` section).
    Bff(BffFilterSpec),
}

impl FilterSpec {
    /// The YAML key of this filter.
    pub fn name(&self) -> &'static str {
        match self {
            FilterSpec::Headers(_) => "headers",
            FilterSpec::BodyLimit(_) => "body_limit",
            FilterSpec::Retry(_) => "retry",
            FilterSpec::Fault(_) => "fault",
            FilterSpec::RateLimit(_) => "rate_limit",
            FilterSpec::AllowCallers(_) => "allow_callers",
            FilterSpec::ApiKey(_) => "api_key",
            FilterSpec::Cors(_) => "cors",
            FilterSpec::Jwt(_) => "jwt",
            FilterSpec::Bff(_) => "bff",
        }
    }
}

/// `routes[].filters[].retry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total tries including the first (1 = no retry).
    #[serde(default = "three")]
    pub attempts: u32,
    /// Limit on each try (the route `timeout` still bounds the whole exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
    /// Exponential backoff with full jitter between tries: `BASE..MAX`.
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// What is retried: `connect_failure`, `reset`, `timeout` and status codes.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOnSpec>,
    /// Retries may add at most this share of the route's requests over 10 s (plus 10/s).
    #[serde(default = "twenty_percent")]
    pub budget: Percent,
}

/// `BASE..MAX`, e.g. `25ms..250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffSpec {
    /// First backoff ceiling.
    pub base: std::time::Duration,
    /// Largest backoff ceiling.
    pub max: std::time::Duration,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            base: std::time::Duration::from_millis(25),
            max: std::time::Duration::from_millis(250),
        }
    }
}

impl fmt::Display for BackoffSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..{}",
            humantime::format_duration(self.base),
            humantime::format_duration(self.max)
        )
    }
}

impl Serialize for BackoffSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackoffSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parse = |p: &str| humantime::parse_duration(p.trim());
        let (base, max) = s.split_once("..").ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid backoff {s:?}: expected BASE..MAX such as 25ms..250ms"
            ))
        })?;
        match (parse(base), parse(max)) {
            (Ok(base), Ok(max)) if base <= max => Ok(Self { base, max }),
            (Ok(_), Ok(_)) => Err(serde::de::Error::custom(format!(
                "invalid backoff {s:?}: BASE must not exceed MAX"
            ))),
            _ => Err(serde::de::Error::custom(format!(
                "invalid backoff {s:?}: expected BASE..MAX such as 25ms..250ms"
            ))),
        }
    }
}

/// One retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOnSpec {
    /// The connection to the endpoint could not be made (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection broke before a response header arrived.
    Reset,
    /// No response within `per_try_timeout`.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

impl fmt::Display for RetryOnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailure => f.write_str("connect_failure"),
            Self::Reset => f.write_str("reset"),
            Self::Timeout => f.write_str("timeout"),
            Self::Status(s) => write!(f, "{s}"),
        }
    }
}

impl Serialize for RetryOnSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(code) => s.serialize_u16(*code),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOnSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "invalid retry condition {v}: expected connect_failure, reset, timeout or a status code 500-599"
            ))
        };
        match &v {
            serde_json::Value::String(s) => match s.as_str() {
                "connect_failure" => Ok(Self::ConnectFailure),
                "reset" => Ok(Self::Reset),
                "timeout" => Ok(Self::Timeout),
                other => other
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (500..600).contains(c))
                    .map(Self::Status)
                    .ok_or_else(bad),
            },
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (500..600).contains(c))
                .map(Self::Status)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

fn default_retry_on() -> Vec<RetryOnSpec> {
    vec![
        RetryOnSpec::ConnectFailure,
        RetryOnSpec::Reset,
        RetryOnSpec::Status(502),
        RetryOnSpec::Status(503),
        RetryOnSpec::Status(504),
    ]
}

fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn twenty() -> u32 {
    20
}
fn percent(p: f64) -> Percent {
    Percent::new(p).unwrap_or_default()
}
fn ten_percent() -> Percent {
    percent(10.0)
}
fn twenty_percent() -> Percent {
    percent(20.0)
}
fn fifty_percent() -> Percent {
    percent(50.0)
}
fn five_xx() -> Vec<u16> {
    (500..600).collect()
}
fn is_five_xx(v: &[u16]) -> bool {
    v.len() == 100 && v.iter().copied().eq(500..600)
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn healthz() -> String {
    "/healthz".to_string()
}
fn secs(n: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(n))
}
fn one_second() -> HumanDuration {
    secs(1)
}
fn five_seconds() -> HumanDuration {
    secs(5)
}
fn ten_seconds() -> HumanDuration {
    secs(10)
}
fn thirty_seconds() -> HumanDuration {
    secs(30)
}
fn sixty_seconds() -> HumanDuration {
    secs(60)
}
fn default_max_header() -> ByteSize {
    ByteSize(64 * 1024)
}
