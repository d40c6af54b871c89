//! The one [`ProxyHttp`] implementation: routing, filter chains, upstream choice, forwarding
//! headers, the single response writer for local answers, and the access log.
//!
//! Each Pingora phase below says why the work sits there. The order matters: routing and
//! request filters run before any upstream is chosen (so a 401 never costs a connection),
//! endpoint choice happens in `upstream_peer` (so a retry can pick another endpoint), and
//! header rewriting happens in `upstream_request_filter` (once per attempt).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode};
use meshgate_filters::bff::{EndpointRequest, MAX_BACKCHANNEL_BODY};
use meshgate_filters::{Action, ErrorKind, LocalResponse, RequestCtx, RequestView, Step};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::conn::HeaderDeadline;
use crate::forwarding::{self, TraceParent};
use crate::metrics::{status_class, METRICS};
use crate::normalize::normalize_path;
use crate::runtime::cluster::{Cluster, InFlight, Outcome, Pick};
use crate::runtime::resilience::retry::{is_retryable_request, RetryReason};
use crate::runtime::router::{Route, RouteInput};
use crate::runtime::Runtime;

// Header names looked up on every request are `HeaderName`s, so a lookup hashes them
// directly instead of parsing a `&str` first; inserts pass `as_str()` (a `&'static str`),
// which Pingora turns into its case-preserving name without copying.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_MESHGATE_CALLER: HeaderName = HeaderName::from_static("x-meshgate-caller");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Pingora custom error type used to carry an [`ErrorKind`] decided by the engine to
/// `fail_to_proxy`, which is where the response writer runs for errors.
const LOCAL: &str = "meshgate_local";
/// Pingora custom error type carrying "the upstream answered a status the route retries";
/// raised in `upstream_response_filter`, before anything reaches the client.
const RETRY_STATUS: &str = "meshgate_retry_status";

/// Per-request state of the engine (the filters' [`RequestCtx`] plus what only the engine uses).
pub struct Ctx {
    /// Shared with filters.
    pub req: RequestCtx,
    rt: Option<Arc<Runtime>>,
    route: Option<Arc<Route>>,
    cluster: Option<Arc<Cluster>>,
    /// Number of filters whose request hook ran (their response hooks run in reverse).
    entered: usize,
    /// Normalized path when it differs from the raw one.
    normalized: Option<String>,
    host: String,
    endpoint: Option<usize>,
    failed: Vec<usize>,
    attempts: u32,
    in_flight: Option<InFlight>,
    /// The answer decided by a filter or the engine, sent by `fail_to_proxy`.
    local: Option<LocalResponse>,
    counted: bool,
    /// `ctx.req.request_id` as a header value, made once for the upstream request and the
    /// response (a clone shares its bytes).
    request_id_header: HeaderValue,
    /// The id was generated here, so the upstream copy of the client's header lacks it.
    request_id_generated: bool,
    traceparent: Option<TraceParent>,
    /// End of the route's time budget for the whole exchange, retries included.
    deadline: Option<Instant>,
    /// The request may be retried (policy present, idempotent or keyed).
    retryable: bool,
    /// The current attempt is a half-open breaker probe.
    probe: bool,
    /// The current attempt's outcome has not been recorded yet.
    attempt_open: bool,
    /// Why the last attempt was retried, for the access log.
    retry_reason: Option<RetryReason>,
    /// Why a retry that the policy allowed did not happen, for the access log.
    retry_skipped: Option<&'static str>,
    /// Endpoint chosen during `request_filter` for the first attempt.
    preselected: Option<(usize, bool)>,
    /// Pause before the next attempt, drawn when the retry was decided.
    backoff: Duration,
}

impl Ctx {
    fn new() -> Self {
        Self {
            req: RequestCtx::default(),
            rt: None,
            route: None,
            cluster: None,
            entered: 0,
            normalized: None,
            host: String::new(),
            endpoint: None,
            failed: Vec::new(),
            attempts: 0,
            in_flight: None,
            local: None,
            counted: false,
            request_id_header: HeaderValue::from_static(""),
            request_id_generated: false,
            traceparent: None,
            deadline: None,
            retryable: false,
            probe: false,
            attempt_open: false,
            retry_reason: None,
            retry_skipped: None,
            preselected: None,
            backoff: Duration::ZERO,
        }
    }

    /// Records the outcome of the attempt in flight (once) with the cluster's breaker and
    /// outlier detection, and marks a failed endpoint so a retry avoids it.
    fn record_attempt(&mut self, outcome: Outcome) {
        if !self.attempt_open {
            return;
        }
        self.attempt_open = false;
        self.in_flight = None;
        if let (Some(cluster), Some(i)) = (&self.cluster, self.endpoint) {
            cluster.record(i, outcome, self.probe, Instant::now());
            let failed = match outcome {
                Outcome::Failure => true,
                Outcome::Status(s) => s >= 500,
            };
            if failed && !self.failed.contains(&i) {
                self.failed.push(i);
            }
        }
    }

    /// Whether one more attempt may be made for `reason` right now. Takes a unit of the
    /// route's retry budget when it says yes.
    fn may_retry(&mut self, session: &Session, reason: RetryReason, status: Option<u16>) -> bool {
        let Some(route) = self.route.clone() else {
            return false;
        };
        let Some(policy) = route.retry.as_ref() else {
            return false;
        };
        let wanted = match status {
            Some(s) => policy.retries_status(s),
            None => policy.retries(reason),
        };
        if !wanted {
            return false;
        }
        if !self.retryable {
            self.retry_skipped = Some("not_idempotent");
            return false;
        }
        if self.attempts >= policy.attempts {
            self.retry_skipped = Some("attempts_exhausted");
            return false;
        }
        if session.response_written().is_some() {
            self.retry_skipped = Some("response_started");
            return false;
        }
        if session.as_ref().retry_buffer_truncated() {
            self.retry_skipped = Some("body_over_64KiB");
            return false;
        }
        // The pause is drawn now so a retry is only promised when it can start before the
        // deadline; otherwise the upstream's own answer (already in hand) is better than a
        // 504 of ours after an empty wait.
        let pause = policy.backoff(self.attempts + 1);
        if self.deadline.is_some_and(|d| Instant::now() + pause >= d) {
            self.retry_skipped = Some("deadline");
            return false;
        }
        if !policy.budget.try_retry(policy.budget_ratio, Instant::now()) {
            self.retry_skipped = Some("budget_exhausted");
            METRICS
                .retry_budget_exhausted
                .with_label_values(&[&route.name])
                .inc();
            return false;
        }
        METRICS
            .retries
            .with_label_values(&[&route.name, reason.label()])
            .inc();
        self.backoff = pause;
        self.retry_reason = Some(reason);
        self.retry_skipped = None;
        true
    }

    /// The matched route's name, or the BFF endpoint's (`bff:login`, …), or "".
    fn route_name(&self) -> &str {
        &self.req.route
    }

    fn cluster_name(&self) -> &str {
        self.cluster.as_deref().map_or("", |c| &c.name)
    }

    fn endpoint_name(&self) -> &str {
        match (&self.cluster, self.endpoint) {
            (Some(c), Some(i)) => c.endpoints.get(i).map_or("", |e| e.name.as_str()),
            _ => "",
        }
    }
}

/// Facts about the listener a proxy instance serves.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Listener name (logs).
    pub name: Arc<str>,
    /// Whether the listener terminates TLS.
    pub tls: bool,
}

/// The engine. One instance per listener; all share the runtime handle.
pub struct MeshProxy {
    runtime: Arc<ArcSwap<Runtime>>,
    listener: ListenerInfo,
}

impl MeshProxy {
    /// A proxy serving `listener` with whatever runtime is current at each request.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, listener: ListenerInfo) -> Self {
        Self { runtime, listener }
    }

    /// Routes and runs request filters. `Err(answer)` means answer locally.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rt: Arc<Runtime>,
    ) -> Result<(), LocalResponse> {
        let req = session.req_header();

        // Framing: Pingora drops Content-Length when Transfer-Encoding is present and keeps
        // the connection open for the body; we refuse such requests outright, because
        // front-end/back-end disagreement on framing is the root of request smuggling.
        if let Some(stream) = session.as_downstream().stream() {
            // RFC 9112: a request line is exactly three tokens (see conn.rs for why the
            // check happens below Pingora's parser).
            if !HeaderDeadline::request_line_ok(stream) {
                return Err(LocalResponse::error(ErrorKind::BadRequest));
            }
        }
        if req.headers.contains_key(TRANSFER_ENCODING) {
            if let Some(h1) = session.as_downstream().as_http1() {
                if contains_header_name(&h1.get_headers_raw_bytes(), b"content-length") {
                    return Err(LocalResponse::error(ErrorKind::BadRequest));
                }
            }
        }
        if header_block_size(session) > rt.limits.max_header_size {
            return Err(LocalResponse::error(ErrorKind::HeaderTooLarge));
        }

        let req = session.req_header();
        let raw_path = req.uri.path();
        let normalized =
            normalize_path(raw_path).map_err(|_| LocalResponse::error(ErrorKind::BadRequest))?;
        if let Cow::Owned(p) = normalized {
            ctx.normalized = Some(p);
        }
        ctx.host = request_host(req);
        let path = ctx.normalized.as_deref().unwrap_or(raw_path);
        // The BFF endpoints are answered by the engine, before and instead of routing.
        if let Some((bff, endpoint)) = rt
            .bff
            .as_ref()
            .and_then(|b| b.endpoint(path).map(|e| (b.clone(), e)))
        {
            ctx.req.route = endpoint.name().into();
            let body = if endpoint.reads_body() {
                read_small_body(session, MAX_BACKCHANNEL_BODY).await?
            } else {
                Vec::new()
            };
            let req = EndpointRequest {
                header: session.req_header(),
                body: &body,
            };
            return Err(bff.handle(endpoint, req, &mut ctx.req).await);
        }
        let input = RouteInput {
            method: &req.method,
            host: &ctx.host,
            path,
            headers: &req.headers,
            listener: Some(&self.listener.name),
        };
        let Some(route) = rt.router.find(&input).cloned() else {
            return Err(LocalResponse::error(ErrorKind::NoRoute));
        };
        ctx.route = Some(route.clone());
        ctx.req.route = route.name.clone();
        ctx.deadline = Some(ctx.req.started + route.timeout);
        ctx.retryable = route.retry.is_some() && is_retryable_request(&req.method, &req.headers);

        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        for (i, filter) in route.filters.filters().iter().enumerate() {
            ctx.entered = i + 1;
            let view = RequestView {
                header: session.req_header(),
                path: ctx
                    .normalized
                    .as_deref()
                    .unwrap_or(session.req_header().uri.path()),
                host: &ctx.host,
                peer,
            };
            let action = match filter.request_filter(view, &mut ctx.req) {
                Step::Done(a) => a,
                Step::Wait(fut) => fut.await,
            };
            if let Action::Respond(answer) = action {
                return Err(answer);
            }
        }
        let cluster = route.target.choose().clone();
        // The first endpoint is chosen here rather than in `upstream_peer`: an answer given
        // from this phase (all breakers open, nothing healthy) keeps the client's connection,
        // while Pingora closes it after any failure in the upstream phases.
        let headers = &session.req_header().headers;
        match cluster.choose(&[], Instant::now(), |name| {
            headers.get(name).map(|v| v.as_bytes())
        }) {
            Pick::Endpoint { index, probe } => ctx.preselected = Some((index, probe)),
            Pick::BreakerOpen { retry_after } => {
                ctx.cluster = Some(cluster);
                return Err(breaker_answer(retry_after));
            }
            Pick::NoneHealthy => {
                ctx.cluster = Some(cluster);
                return Err(LocalResponse::error(ErrorKind::NoHealthyUpstream));
            }
        }
        ctx.cluster = Some(cluster);
        Ok(())
    }

    /// The single response writer: every locally generated answer goes out through here.
    /// Runs the response hooks of the filters already entered, adds the request id, and
    /// closes the connection when the answer says so or an unread body remains.
    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, answer: LocalResponse) -> u16 {
        let status = answer.status.as_u16();
        if session.response_written().is_some() {
            // Headers already went out: the only honest signal left is closing the stream.
            session.set_keepalive(None);
            return status;
        }
        let (content_type, body) = match answer.body {
            Some((ct, body)) => (ct, body),
            None => (
                HeaderValue::from_static("application/json"),
                LocalResponse::json_error_body(
                    answer.error.map_or("error", ErrorKind::code),
                    &ctx.req.request_id,
                ),
            ),
        };
        let Ok(mut resp) = ResponseHeader::build(answer.status, Some(4 + answer.headers.len()))
        else {
            return 0;
        };
        // 204 and 304 carry no content (RFC 9110 §15.3.5, §15.4.5), so no content headers.
        let bodyless = matches!(status, 204 | 304);
        if !bodyless {
            let _ = resp.insert_header(CONTENT_TYPE, content_type);
            let _ = resp.insert_header(CONTENT_LENGTH, body.len());
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.req.request_id) {
            let _ = resp.insert_header(X_REQUEST_ID.as_str(), v);
        }
        for (k, v) in answer.headers {
            let _ = resp.append_header(k, v);
        }
        run_response_hooks(ctx, &mut resp);
        if let Some(kind) = answer.error {
            METRICS
                .local_responses
                .with_label_values(&[ctx.route_name(), kind.code()])
                .inc();
        }
        let unread_body = !session.is_body_done() && !session.is_body_empty();
        if answer.close || unread_body {
            session.set_keepalive(None);
            let _ = resp.insert_header(http::header::CONNECTION, "close");
        }
        let head_only = bodyless || session.req_header().method == http::Method::HEAD;
        if session
            .write_response_header(Box::new(resp), head_only)
            .await
            .is_err()
        {
            return status;
        }
        if !head_only {
            let _ = session.write_response_body(Some(body), true).await;
        }
        status
    }
}

/// Reads a whole request body of at most `limit` bytes (413 beyond it, 400 when the
/// client breaks off).
async fn read_small_body(session: &mut Session, limit: usize) -> Result<Vec<u8>, LocalResponse> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(LocalResponse::error(ErrorKind::PayloadTooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(LocalResponse::error(ErrorKind::BadRequest)),
        }
    }
}

/// 503 for a cluster whose every endpoint has an open breaker: says when to come back.
fn breaker_answer(retry_after: Duration) -> LocalResponse {
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    LocalResponse::error(ErrorKind::NoHealthyUpstream)
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs))
        .with_header(
            http::HeaderName::from_static("x-meshgate-breaker"),
            HeaderValue::from_static("open"),
        )
}

fn run_response_hooks(ctx: &mut Ctx, resp: &mut ResponseHeader) {
    if let Some(route) = ctx.route.clone() {
        let filters = route.filters.filters();
        for f in filters[..ctx.entered.min(filters.len())].iter().rev() {
            f.response_filter(resp, &mut ctx.req);
        }
    }
}

/// Case-insensitive search for a header *name* at the start of a line of a raw header block.
fn contains_header_name(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && matches!(line[name.len()], b':' | b' ' | b'\t')
    })
}

/// Size of the request header block as the client sent it (HTTP/1) or as decoded (HTTP/2).
fn header_block_size(session: &Session) -> usize {
    if let Some(h1) = session.as_downstream().as_http1() {
        return h1.get_headers_raw_bytes().len();
    }
    let req = session.req_header();
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path().len()
}

/// Host for routing: `Host` header (or the HTTP/2 authority), port removed, lower-cased.
fn request_host(req: &RequestHeader) -> String {
    let raw = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    without_port.to_ascii_lowercase()
}

/// Maps a Pingora error to the answer the client sees (the one error table for upstream and
/// framing failures; filter answers arrive already decided).
fn classify(e: &Error) -> Option<ErrorKind> {
    use ErrorType::*;
    match e.etype() {
        Custom(LOCAL) => None,
        Custom(RETRY_STATUS) => Some(ErrorKind::BadGateway),
        HTTPStatus(413) => Some(ErrorKind::PayloadTooLarge),
        HTTPStatus(400) | InvalidHTTPHeader | H2Downgrade | InvalidH2 => match e.esource() {
            ErrorSource::Upstream => Some(ErrorKind::BadGateway),
            _ => Some(ErrorKind::BadRequest),
        },
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            Some(ErrorKind::GatewayTimeout)
        }
        _ => match e.esource() {
            ErrorSource::Upstream => Some(ErrorKind::BadGateway),
            // The client went away or broke the protocol mid-request: nobody to answer.
            ErrorSource::Downstream => None,
            ErrorSource::Internal | ErrorSource::Unset => Some(ErrorKind::Internal),
        },
    }
}

fn local_error() -> Box<Error> {
    Error::new(ErrorType::Custom(LOCAL))
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// No downstream modules. Pingora's default adds its response-compression module
    /// switched off (level 0), which still cost five allocations and two module calls per
    /// request; meshgate does not compress responses.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Request id, client address and the header deadline hand-off happen first, so every
    /// later answer — including a 400 for a malformed path — carries a request id.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        METRICS.active_requests.inc();
        ctx.counted = true;
        if let Some(stream) = session.as_downstream().stream() {
            HeaderDeadline::header_complete(stream);
        }
        let req = session.req_header();
        let client_id = req.headers.get(&X_REQUEST_ID);
        match client_id.and_then(|v| Some((v, v.to_str().ok()?))) {
            Some((value, id)) if forwarding::valid_request_id(id) => {
                ctx.req.request_id = id.to_string();
                ctx.request_id_header = value.clone();
            }
            _ => {
                ctx.req.request_id = forwarding::new_request_id();
                ctx.request_id_generated = true;
                // Hex digits only, so always a valid value.
                if let Ok(v) = HeaderValue::from_str(&ctx.req.request_id) {
                    ctx.request_id_header = v;
                }
            }
        }
        ctx.traceparent = Some(
            req.headers
                .get(&TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(TraceParent::parse)
                .map_or_else(TraceParent::new_root, |t| t.child()),
        );
        ctx.req.tls = self.listener.tls;
        ctx.req.caller = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<crate::tls::PeerIdentity>())
            .map(|id| id.service.clone());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        // One config generation for the whole request: loaded once here, kept in the context.
        let rt = self.runtime.load_full();
        ctx.rt = Some(rt.clone());
        let xff = session
            .req_header()
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok());
        ctx.req.client_ip = forwarding::client_ip(peer_ip, xff, &rt.trusted);
        session.set_keepalive(Some(rt.limits.idle_timeout.as_secs().max(1)));
        if !rt.limits.abort_on_client_close {
            // A FIN after the request leaves the write side open (RFC 9112 §9.6); Pingora
            // then closes the connection after the response.
            session.set_abort_on_close(false);
        }
        match self.admit(session, ctx, rt).await {
            Ok(()) => Ok(false),
            Err(answer) => {
                self.respond(session, ctx, answer).await;
                Ok(true)
            }
        }
    }

    /// Endpoint choice lives here, not in a filter: health, load and the endpoints that
    /// already failed this request decide it.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(cluster), Some(route)) = (ctx.cluster.clone(), ctx.route.clone()) else {
            ctx.local = Some(LocalResponse::error(ErrorKind::Internal));
            return Err(local_error());
        };
        let deadline = ctx
            .deadline
            .unwrap_or_else(|| Instant::now() + route.timeout);
        if ctx.attempts > 0 {
            let pause = std::mem::take(&mut ctx.backoff)
                .min(deadline.saturating_duration_since(Instant::now()));
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        } else if let Some(policy) = &route.retry {
            policy.budget.record_request(Instant::now());
        }
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            ctx.local = Some(LocalResponse::error(ErrorKind::GatewayTimeout));
            return Err(local_error());
        }
        let headers = &session.req_header().headers;
        let pick = match ctx.preselected.take() {
            Some((index, probe)) => Pick::Endpoint { index, probe },
            None => cluster.choose(&ctx.failed, now, |name| {
                headers.get(name).map(|v| v.as_bytes())
            }),
        };
        let (i, probe) = match pick {
            Pick::Endpoint { index, probe } => (index, probe),
            Pick::BreakerOpen { retry_after } => {
                ctx.local = Some(breaker_answer(retry_after));
                return Err(local_error());
            }
            Pick::NoneHealthy => {
                ctx.local = Some(LocalResponse::error(ErrorKind::NoHealthyUpstream));
                return Err(local_error());
            }
        };
        let Some(ep) = cluster.endpoints.get(i) else {
            ctx.local = Some(LocalResponse::error(ErrorKind::Internal));
            return Err(local_error());
        };
        ctx.endpoint = Some(i);
        ctx.probe = probe;
        ctx.attempt_open = true;
        ctx.attempts += 1;
        ctx.in_flight = Some(InFlight::start(&ep.state));
        let per_try = route
            .retry
            .as_ref()
            .and_then(|p| p.per_try_timeout)
            .unwrap_or(route.timeout)
            .min(remaining);
        let mut peer = match &cluster.tls {
            // The identity is the server name: the endpoint's certificate must chain to the
            // mesh CA and carry it, and our own certificate goes along (mTLS).
            Some(t) => {
                let mut p = HttpPeer::new(ep.addr, true, t.identity.clone());
                p.client_cert_key = Some(t.cert_key.clone());
                p.options.ca = Some(t.ca.clone());
                p
            }
            None => HttpPeer::new(ep.addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(cluster.connect_timeout.min(remaining));
        peer.options.read_timeout = Some(per_try);
        peer.options.write_timeout = Some(per_try);
        if cluster.protocol == crate::config::spec::ProtocolSpec::H2 {
            peer.options.alpn = ALPN::H2;
        }
        Ok(Box::new(peer))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body.as_ref() {
            ctx.req.request_body_bytes += chunk.len() as u64;
        }
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        for f in route.filters.filters() {
            if let Action::Respond(answer) =
                f.request_body_filter(body.as_ref(), end_of_stream, &mut ctx.req)
            {
                ctx.local = Some(answer);
                return Err(local_error());
            }
        }
        Ok(())
    }

    /// Path and forwarding headers are set per attempt on the upstream copy of the request;
    /// the downstream header stays as received (filters and logs see what the client sent).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let raw_path = session.req_header().uri.path();
        let path = ctx.normalized.as_deref().unwrap_or(raw_path);
        let rewritten = match &route.rewrite {
            Some(rw) => rw.apply(path),
            None => Cow::Borrowed(path),
        };
        if rewritten != raw_path {
            let mut pq = String::with_capacity(rewritten.len() + 64);
            pq.push_str(&rewritten);
            if let Some(q) = session.req_header().uri.query() {
                pq.push('?');
                pq.push_str(q);
            }
            match http::Uri::builder().path_and_query(pq).build() {
                Ok(uri) => upstream.set_uri(uri),
                Err(_) => {
                    ctx.local = Some(LocalResponse::error(ErrorKind::BadRequest));
                    return Err(local_error());
                }
            }
        }

        // The upstream request is a copy of the client's: a valid client id is already
        // there, so only a generated id costs a header insert.
        if ctx.request_id_generated {
            let _ = upstream.insert_header(X_REQUEST_ID.as_str(), ctx.request_id_header.clone());
        }
        if let Some(tp) = ctx.traceparent {
            let _ = upstream.insert_header(TRACEPARENT.as_str(), tp.to_header());
        }
        let rt = ctx.rt.clone();
        let trusted = rt.as_deref().map(|r| &r.trusted);
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let (Some(peer_ip), Some(trusted)) = (peer_ip, trusted) {
            // Only a trusted peer's forwarding headers are read: an untrusted peer's are all
            // replaced, so looking them up (each lookup hashes a custom name) is skipped.
            let from_trusted = trusted.contains(peer_ip);
            let req = session.req_header();
            let client = |name: &HeaderName| from_trusted.then(|| req.headers.get(name)).flatten();
            let existing = client(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
            let xff = forwarding::forwarded_for(peer_ip, existing, trusted);
            let _ = upstream.insert_header(X_FORWARDED_FOR.as_str(), xff);
            let proto = client(&X_FORWARDED_PROTO).cloned().unwrap_or_else(|| {
                HeaderValue::from_static(if self.listener.tls { "https" } else { "http" })
            });
            let _ = upstream.insert_header(X_FORWARDED_PROTO.as_str(), proto);
            let host = client(&X_FORWARDED_HOST)
                .or_else(|| req.headers.get(HOST))
                .cloned()
                .or_else(|| {
                    req.uri
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                });
            match host {
                Some(h) => {
                    let _ = upstream.insert_header(X_FORWARDED_HOST.as_str(), h);
                }
                None => {
                    upstream.remove_header(&X_FORWARDED_HOST);
                }
            }
        }
        // The caller's verified mesh identity, for the app; a client-sent copy is never
        // passed on.
        upstream.remove_header(&X_MESHGATE_CALLER);
        if let Some(caller) = &ctx.req.caller {
            if let Ok(v) = HeaderValue::from_str(caller) {
                let _ = upstream.insert_header(X_MESHGATE_CALLER.as_str(), v);
            }
        }
        for f in route.filters.filters() {
            f.upstream_request_filter(upstream, &mut ctx.req);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let _ =
            upstream_response.insert_header(X_REQUEST_ID.as_str(), ctx.request_id_header.clone());
        run_response_hooks(ctx, upstream_response);
        Ok(())
    }

    /// Status-code retries happen here: the upstream's response header has arrived but
    /// nothing has been sent downstream yet, so raising a retryable error makes Pingora
    /// drop this response and run `upstream_peer` again (see docs/phases.md, "Retries").
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        ctx.record_attempt(Outcome::Status(status));
        if ctx.may_retry(session, RetryReason::Status, Some(status)) {
            let mut e = Error::explain(
                ErrorType::Custom(RETRY_STATUS),
                format!("upstream answered {status}"),
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        METRICS
            .connect_errors
            .with_label_values(&[ctx.cluster_name()])
            .inc();
        if matches!(e.etype(), ErrorType::ConnectTimedout) {
            METRICS
                .timeouts
                .with_label_values(&[ctx.route_name(), ctx.cluster_name()])
                .inc();
        }
        ctx.record_attempt(Outcome::Failure);
        // Nothing was sent, so a retry is safe for any method as far as the upstream is
        // concerned; the policy still decides.
        let retry = ctx.may_retry(session, RetryReason::ConnectFailure, None);
        e.set_retry(retry);
        e
    }

    /// Errors after a connection was made: a status the route retries (raised above), a
    /// timeout or a reset. Without a retry policy, Pingora's own rule stays: an idempotent
    /// request that failed on a *reused* keep-alive connection is retried once, because the
    /// upstream may have closed it just before we wrote.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if matches!(e.etype(), ErrorType::Custom(RETRY_STATUS)) {
            return e;
        }
        let reason = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                METRICS
                    .timeouts
                    .with_label_values(&[ctx.route_name(), ctx.cluster_name()])
                    .inc();
                Some(RetryReason::Timeout)
            }
            ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::H2Error => Some(RetryReason::Reset),
            _ => None,
        };
        // Only upstream-side failures say something about the endpoint.
        if e.esource() == &ErrorSource::Upstream {
            ctx.record_attempt(Outcome::Failure);
        }
        let has_policy = ctx.route.as_ref().is_some_and(|r| r.retry.is_some());
        let policy_retry = e.esource() == &ErrorSource::Upstream
            && reason.is_some_and(|r| ctx.may_retry(session, r, None));
        if policy_retry {
            e.set_retry(true);
        } else if has_policy {
            // The route's policy (attempts, budget, deadline) has the last word.
            e.set_retry(false);
        } else if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || session.response_written().is_some()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let answer = match ctx.local.take() {
            Some(a) => Some(a),
            None => classify(e).map(LocalResponse::error),
        };
        let code = match answer {
            Some(mut a) => {
                // Pingora does not reuse a client connection after a failure in the upstream
                // phases, so say so instead of letting the client find out on its next write.
                a.close = true;
                self.respond(session, ctx, a).await
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Errors are logged once, here, in the access log line; Pingora's own error line would
    /// repeat it without the route and request id.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(stream) = session.as_downstream().stream() {
            HeaderDeadline::request_finished(stream);
        }
        // An attempt without an outcome (client gone mid-exchange) says nothing about the
        // endpoint; a breaker probe slot it held is given back.
        if ctx.attempt_open {
            ctx.attempt_open = false;
            if let (true, Some(c), Some(i)) = (ctx.probe, &ctx.cluster, ctx.endpoint) {
                c.cancel_probe(i);
            }
        }
        if let (Some((i, true)), Some(c)) = (ctx.preselected.take(), &ctx.cluster) {
            c.cancel_probe(i);
        }
        ctx.in_flight = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.req.started.elapsed();
        let route = ctx.route_name();
        let cluster = ctx.cluster_name();
        let code = StatusCode::from_u16(status).ok();
        let status_label = code.as_ref().map_or("0", StatusCode::as_str);
        METRICS
            .requests
            .with_label_values(&[route, cluster, status_label])
            .inc();
        METRICS
            .duration
            .with_label_values(&[route, cluster, status_class(status)])
            .observe(elapsed.as_secs_f64());
        if let Some(client) = &ctx.req.api_client {
            METRICS
                .api_client_requests
                .with_label_values(&[route, client, status_class(status)])
                .inc();
        }
        if let Some(r) = ctx.route.clone() {
            for f in r.filters.filters()[..ctx.entered.min(r.filters.len())]
                .iter()
                .rev()
            {
                f.logging(&ctx.req, status);
            }
        }
        let req = session.req_header();
        // Local answers carry their own code; Pingora's wrapper text would only repeat it.
        let error = e.map(|e| match e.etype() {
            ErrorType::Custom(LOCAL) => String::from("local_response"),
            _ => e.to_string(),
        });
        crate::access_log::emit(&crate::access_log::Entry {
            request_id: &ctx.req.request_id,
            client: Some(ctx.req.client_ip),
            listener: &self.listener.name,
            method: req.method.as_str(),
            path: req.uri.path(),
            host: &ctx.host,
            route,
            cluster,
            endpoint: ctx.endpoint_name(),
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            bytes_sent: session.body_bytes_sent() as u64,
            bytes_received: ctx.req.request_body_bytes,
            attempts: ctx.attempts,
            retry_reason: ctx.retry_reason.map(RetryReason::label),
            retry_skipped: ctx.retry_skipped,
            api_client: ctx.req.api_client.as_deref(),
            user: ctx.req.user.as_deref(),
            caller: ctx.req.caller.as_deref(),
            error: error.as_deref(),
        });
        if ctx.counted {
            METRICS.active_requests.dec();
            ctx.counted = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_name_search_is_anchored_and_case_insensitive() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(contains_header_name(raw, b"content-length"));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\n\r\n";
        assert!(!contains_header_name(raw, b"content-length"));
    }

    #[test]
    fn host_strips_port_and_lowercases() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.insert_header("host", "Shop.Local:8080").expect("h");
        assert_eq!(request_host(&req), "shop.local");
        req.insert_header("host", "[::1]:8080").expect("h");
        assert_eq!(request_host(&req), "[::1]");
    }
}
