//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/config`, `/routes`.
//!
//! It runs as its own Pingora service so a flood of proxy traffic cannot starve it of a
//! thread, and it answers only GET. Keep it on loopback or a private network: `/config`
//! is redacted, but the route table still describes the internals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::lifecycle;
use crate::metrics::METRICS;
use crate::runtime::{Runtime, SharedState};

/// The admin application.
pub struct AdminApp {
    runtime: Arc<ArcSwap<Runtime>>,
    shared: Arc<SharedState>,
    listeners: Vec<SocketAddr>,
    bound: AtomicBool,
}

impl AdminApp {
    /// Serves admin endpoints for `runtime`; ready once every address in `listeners` accepts.
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        shared: Arc<SharedState>,
        listeners: Vec<SocketAddr>,
    ) -> Self {
        Self {
            runtime,
            shared,
            listeners,
            bound: AtomicBool::new(false),
        }
    }

    /// Listeners are bound by Pingora's service threads, so the only reliable evidence that
    /// they accept is a successful connect; once seen, it is remembered.
    async fn listeners_bound(&self) -> bool {
        if self.bound.load(Ordering::Relaxed) {
            return true;
        }
        for addr in &self.listeners {
            let ok = tokio::time::timeout(
                Duration::from_millis(250),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if !ok {
                return false;
            }
        }
        self.bound.store(true, Ordering::Relaxed);
        true
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_reply(status: u16, value: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    reply(status, "application/json", body)
}

/// The `/routes` document: routes in match order with targets and filters.
pub fn routes_json(rt: &Runtime) -> serde_json::Value {
    let routes: Vec<_> = rt
        .router
        .routes()
        .iter()
        .zip(&rt.spec.routes)
        .map(|(route, spec)| {
            json!({
                "name": &*route.name,
                "match": &spec.matcher,
                "rewrite": &spec.rewrite,
                "targets": route.target.describe().into_iter()
                    .map(|(c, p)| json!({"cluster": c, "percent": p})).collect::<Vec<_>>(),
                "timeout": humantime::format_duration(route.timeout).to_string(),
                "filters": route.filters.names(),
            })
        })
        .collect();
    json!({ "generation": rt.generation, "routes": routes })
}

/// Rate-limit counters live in the filter crate (which has no Prometheus dependency);
/// they are rendered here in the text exposition format.
fn rate_limit_metrics(shared: &SharedState) -> String {
    use std::fmt::Write as _;
    let s = shared.rate_limits.stats();
    let mut out = String::with_capacity(2048);
    let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    counter(
        "meshgate_rate_limit_decisions_total",
        "Rate-limit decisions by result.",
        &[
            ("{result=\"allowed\"}", s.allowed),
            ("{result=\"denied\"}", s.denied),
        ],
    );
    counter(
        "meshgate_rate_limit_global_decisions_total",
        "Global-limit decisions by who decided: redis, or the local fallback while Redis was unavailable.",
        &[("{by=\"redis\"}", s.global_decisions), ("{by=\"fallback\"}", s.fallback_decisions)],
    );
    counter(
        "meshgate_rate_limit_redis_failures_total",
        "Redis problems seen by global rate limits.",
        &[
            ("{kind=\"error\"}", s.redis_errors),
            ("{kind=\"timeout\"}", s.redis_timeouts),
            ("{kind=\"unavailable\"}", s.redis_unavailable),
            ("{kind=\"connect_failure\"}", s.redis_connect_failures),
        ],
    );
    counter(
        "meshgate_rate_limit_overflow_decisions_total",
        "Decisions made in shared overflow buckets because a limiter's key table was full.",
        &[("", s.overflow_decisions)],
    );
    let _ = writeln!(
        out,
        "# HELP meshgate_rate_limit_redis_connected 1 when the last Redis exchange succeeded.\n# TYPE meshgate_rate_limit_redis_connected gauge\nmeshgate_rate_limit_redis_connected {}",
        u8::from(s.redis_connected)
    );
    let _ = writeln!(
        out,
        "# HELP meshgate_rate_limit_tracked_keys Keys tracked by local limiters.\n# TYPE meshgate_rate_limit_tracked_keys gauge\nmeshgate_rate_limit_tracked_keys {}",
        s.tracked_keys
    );
    jwt_metrics(shared, &mut out);
    bff_metrics(shared, &mut out);
    let per = shared.rate_limits.limiter_stats();
    if !per.is_empty() {
        let _ = writeln!(
            out,
            "# HELP meshgate_rate_limit_requests_total Requests seen by each rate limit, by result.\n# TYPE meshgate_rate_limit_requests_total counter"
        );
        for l in per {
            for (result, v) in [("allowed", l.allowed), ("denied", l.denied)] {
                let _ = writeln!(
                    out,
                    "meshgate_rate_limit_requests_total{{route=\"{}\",filter=\"{}\",result=\"{result}\"}} {v}",
                    l.route, l.filter_index
                );
            }
        }
    }
    out
}

/// BFF counters (logins, callbacks, refreshes, sessions) in the text exposition format.
fn bff_metrics(shared: &SharedState, out: &mut String) {
    use std::fmt::Write as _;
    let s = shared.bff_stats.snapshot(shared.sessions.live_records());
    let mut family = |name: &str, kind: &str, help: &str, label: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (value, n) in samples {
            if label.is_empty() {
                let _ = writeln!(out, "{name} {n}");
            } else {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
    };
    family(
        "meshgate_bff_logins_total",
        "counter",
        "Logins started (redirects to the provider).",
        "",
        &[("", s.logins)],
    );
    family(
        "meshgate_bff_callbacks_total",
        "counter",
        "Login callbacks by outcome.",
        "outcome",
        &s.callbacks,
    );
    family(
        "meshgate_bff_refreshes_total",
        "counter",
        "Access-token refresh attempts by outcome (shared: another request's refresh was used).",
        "outcome",
        &s.refreshes,
    );
    family(
        "meshgate_bff_sessions_created_total",
        "counter",
        "Sessions created by logins.",
        "",
        &[("", s.sessions_created)],
    );
    family(
        "meshgate_bff_sessions_ended_total",
        "counter",
        "Sessions ended by reason.",
        "reason",
        &s.sessions_ended,
    );
    family(
        "meshgate_bff_backchannel_logouts_total",
        "counter",
        "Back-channel logout tokens by result.",
        "result",
        &[("accepted", s.backchannel.0), ("rejected", s.backchannel.1)],
    );
    family(
        "meshgate_bff_csrf_rejected_total",
        "counter",
        "Requests refused for lack of the CSRF header.",
        "",
        &[("", s.csrf_rejected)],
    );
    family(
        "meshgate_bff_discovery_fetches_total",
        "counter",
        "Discovery document fetches by result.",
        "result",
        &[
            ("ok", s.discovery_fetches.0),
            ("error", s.discovery_fetches.1),
        ],
    );
    if let Some(active) = s.sessions_active {
        family(
            "meshgate_bff_sessions_active",
            "gauge",
            "Live sessions in the memory store.",
            "",
            &[("", active as u64)],
        );
    }
}

/// Per-provider JWT counters (kept in the filter crate) in the text exposition format.
fn jwt_metrics(shared: &SharedState, out: &mut String) {
    use std::fmt::Write as _;
    let providers = shared.providers();
    if providers.is_empty() {
        return;
    }
    let stats: Vec<_> = providers.iter().map(|(n, p)| (n, p.stats())).collect();
    let _ = writeln!(out, "# HELP meshgate_jwks_fetches_total JWKS refreshes by provider and outcome.\n# TYPE meshgate_jwks_fetches_total counter");
    for (name, s) in &stats {
        for (outcome, n) in s.jwks_fetches {
            let _ = writeln!(
                out,
                "meshgate_jwks_fetches_total{{provider=\"{name}\",outcome=\"{}\"}} {n}",
                outcome.as_str()
            );
        }
    }
    let _ = writeln!(out, "# HELP meshgate_jwt_validation_failures_total Refused bearer tokens by provider and reason.\n# TYPE meshgate_jwt_validation_failures_total counter");
    for (name, s) in &stats {
        for (reason, n) in s.failures {
            let _ = writeln!(
                out,
                "meshgate_jwt_validation_failures_total{{provider=\"{name}\",reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
    }
    let _ = writeln!(out, "# HELP meshgate_jwt_accepted_total Bearer tokens accepted by provider.\n# TYPE meshgate_jwt_accepted_total counter");
    for (name, s) in &stats {
        let _ = writeln!(
            out,
            "meshgate_jwt_accepted_total{{provider=\"{name}\"}} {}",
            s.accepted
        );
    }
    let _ = writeln!(out, "# HELP meshgate_jwt_keys_loaded Usable signing keys by provider (0: none loaded; jwt routes answer 401).\n# TYPE meshgate_jwt_keys_loaded gauge");
    for (name, s) in &stats {
        let _ = writeln!(
            out,
            "meshgate_jwt_keys_loaded{{provider=\"{name}\"}} {}",
            s.keys_loaded
        );
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(405, "text/plain", b"only GET\n".to_vec());
        }
        let path = req.uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                let mut body = METRICS.render();
                body.extend_from_slice(rate_limit_metrics(&self.shared).as_bytes());
                reply(200, "text/plain; version=0.0.4", body)
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if lifecycle::is_draining() {
                    reply(503, "text/plain", b"draining\n".to_vec())
                } else if self.listeners_bound().await {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(503, "text/plain", b"listeners not bound yet\n".to_vec())
                }
            }
            "/config" => {
                let rt = self.runtime.load();
                json_reply(
                    200,
                    &json!({ "generation": rt.generation, "config": crate::config::redacted(&rt.spec, &rt.templates) }),
                )
            }
            "/routes" => json_reply(200, &routes_json(&self.runtime.load())),
            _ => reply(
                404,
                "text/plain",
                b"not found: try /metrics /healthz /readyz /config /routes\n".to_vec(),
            ),
        }
    }
}
