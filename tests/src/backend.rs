//! A controllable upstream for end-to-end tests: one port speaking HTTP/1.1
//! and prior-knowledge HTTP/2 (h2c), built on hyper directly so the raw
//! request target, trailers and upgrades are all under the test's control.
//!
//! Behaviours (paths are matched exactly, as the backend receives them):
//! - any other path ("ordinary"): `200` with a JSON echo of the request (see
//!   [`Echo`]) and header `x-backend: NAME`; the request is recorded for
//!   assertions. The status and timing of ordinary answers can be scripted:
//!   [`Backend::set_script`] (statuses for the next requests),
//!   [`Backend::set_always`] (one status for all), [`Backend::set_delays`]
//!   and [`Backend::set_delay`] (answer late), [`Backend::pause`] (hold
//!   answers until [`Backend::resume`]). A request is recorded when it
//!   arrives, before any of these apply, so counts include requests still
//!   waiting;
//! - `/healthz`: `200` or `503` per [`Backend::set_healthy`]; probes are
//!   counted, not recorded;
//! - `/slow?ms=N`: the echo, after N milliseconds;
//! - `/status/CODE`: that status, with the echo as body (status scripts do
//!   not apply, delays and pauses do);
//! - `/ws` with `Upgrade: websocket`: a WebSocket echo;
//! - `POST` with `content-type: application/grpc*`: `200`, the body echoed,
//!   trailers `grpc-status: 0` and `grpc-message: ok`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The path exactly as received on the wire (not percent-decoded).
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The request body as received.
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

struct State {
    name: String,
    healthy: AtomicBool,
    health_probes: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
    behaviour: Mutex<Behaviour>,
    paused: watch::Sender<bool>,
}

/// How ordinary requests are answered (see the module comment).
#[derive(Default)]
struct Behaviour {
    script: VecDeque<u16>,
    always: Option<u16>,
    delays: VecDeque<Duration>,
    delay: Option<Duration>,
}

impl Behaviour {
    /// Status override and delay for the next request; `/status/CODE`
    /// requests (`fixed_status`) take no script entry.
    fn next(&mut self, fixed_status: bool) -> (Option<u16>, Option<Duration>) {
        let status = if fixed_status {
            None
        } else {
            self.script.pop_front().or(self.always)
        };
        let delay = self.delays.pop_front().or(self.delay);
        (status, delay)
    }
}

/// A running test backend; stops serving (all connections closed) on drop.
pub struct Backend {
    state: Arc<State>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

/// Builder for [`Backend`].
pub struct BackendBuilder {
    name: String,
    port: u16,
    healthy: bool,
}

impl Backend {
    pub fn builder() -> BackendBuilder {
        BackendBuilder {
            name: "backend".to_owned(),
            port: 0,
            healthy: true,
        }
    }

    /// Shorthand for `Backend::builder().name(name).start()`.
    pub async fn start(name: &str) -> Backend {
        Backend::builder().name(name).start().await
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches what `/healthz` answers: `200` when healthy, `503` when not.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// How many `/healthz` requests arrived so far.
    pub fn health_probes(&self) -> usize {
        self.state.health_probes.load(Ordering::SeqCst)
    }

    /// Every request except health probes, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.state.requests).last().cloned()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// The next ordinary requests are answered with these statuses, in order
    /// (body: the usual echo); after that the answer is as before (`200`, or
    /// [`Backend::set_always`]). Replaces any script not yet used up.
    pub fn set_script(&self, statuses: Vec<u16>) {
        lock(&self.state.behaviour).script = statuses.into();
    }

    /// Answers every ordinary request with `status` (when no script entry
    /// is pending) until reset with `None`.
    pub fn set_always(&self, status: Option<u16>) {
        lock(&self.state.behaviour).always = status;
    }

    /// The next ordinary requests are answered after these delays, in order;
    /// then [`Backend::set_delay`] applies again.
    pub fn set_delays(&self, delays: Vec<Duration>) {
        lock(&self.state.behaviour).delays = delays.into();
    }

    /// Delays every ordinary answer by this much (when no scripted delay is
    /// pending) until reset with `None`.
    pub fn set_delay(&self, delay: Option<Duration>) {
        lock(&self.state.behaviour).delay = delay;
    }

    /// Holds every ordinary answer (requests are still recorded on arrival)
    /// until [`Backend::resume`]: lets a test keep requests in flight for
    /// exactly as long as it needs, without guessing a delay.
    pub fn pause(&self) {
        self.state.paused.send_replace(true);
    }

    /// Releases the requests held by [`Backend::pause`].
    pub fn resume(&self) {
        self.state.paused.send_replace(false);
    }

    /// Stops accepting and closes every open connection: the endpoint is dead.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl BackendBuilder {
    /// The name echoed in the JSON body and the `x-backend` header.
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Listen on this port instead of a fresh one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Initial state of the `/healthz` switch (default healthy).
    pub fn healthy(mut self, healthy: bool) -> Self {
        self.healthy = healthy;
        self
    }

    /// Kept for readability of call sites: the backend always accepts both
    /// HTTP/1.1 and prior-knowledge HTTP/2 on its one port.
    pub fn h2c(self, _enabled: bool) -> Self {
        self
    }

    pub async fn start(self) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("backend {}: bind 127.0.0.1:{}: {e}", self.name, self.port));
        let addr = listener.local_addr().expect("backend local address");
        let state = Arc::new(State {
            name: self.name,
            healthy: AtomicBool::new(self.healthy),
            health_probes: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::default()),
            paused: watch::channel(false).0,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        Backend {
            state,
            addr,
            shutdown,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        state.health_probes.fetch_add(1, Ordering::SeqCst);
        let healthy = state.healthy.load(Ordering::SeqCst);
        let (status, text) = if healthy {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        };
        return Ok(respond(
            &state,
            status,
            "text/plain",
            Bytes::from_static(text.as_bytes()),
        ));
    }
    if path == "/ws" && is_websocket_upgrade(req.headers()) {
        return Ok(websocket(state, req));
    }

    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let text = format!("reading request body: {e}");
            return Ok(respond(
                &state,
                StatusCode::BAD_REQUEST,
                "text/plain",
                text.into(),
            ));
        }
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers,
        body_len: body.len(),
        body: body.clone(),
    };
    lock(&state.requests).push(recorded.clone());

    if recorded.method == "POST" && is_grpc(&recorded.headers) {
        return Ok(grpc_echo(&state, body));
    }

    let (scripted, delay) = lock(&state.behaviour).next(recorded.path.starts_with("/status/"));
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut paused = state.paused.subscribe();
    // Err only if the sender is gone, which cannot happen while `state` lives.
    let _ = paused.wait_for(|p| !*p).await;

    let mut status = scripted
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    if recorded.path == "/slow" {
        let ms = query_param(recorded.query.as_deref(), "ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else if let Some(code) = recorded.path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    let echo = echo_json(&state.name, &recorded);
    Ok(respond(
        &state,
        status,
        "application/json",
        echo.to_string().into(),
    ))
}

/// The JSON body of the default answer: what a test asserts on after a
/// request went through the proxy.
pub fn echo_json(name: &str, r: &RecordedRequest) -> serde_json::Value {
    let mut headers = BTreeMap::new();
    for key in r.headers.keys() {
        let joined = r
            .headers
            .get_all(key)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(key.as_str().to_owned(), joined);
    }
    serde_json::json!({
        "backend": name,
        "method": r.method,
        "path": r.path,
        "query": r.query,
        "version": format!("{:?}", r.version),
        "headers": headers,
        "body_len": r.body_len,
    })
}

/// Shape of [`echo_json`], for readers of the tests.
pub type Echo = serde_json::Value;

fn respond(state: &State, status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&state.name) {
        headers.insert("x-backend", v);
    }
    resp
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn grpc_echo(state: &State, body: Bytes) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let body = Full::new(body)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Ok(v) = HeaderValue::from_str(&state.name) {
        headers.insert("x-backend", v);
    }
    resp
}

fn header_has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, http::header::UPGRADE, "websocket")
        && header_has_token(headers, http::header::CONNECTION, "upgrade")
}

fn websocket(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY) else {
        return respond(
            &state,
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing sec-websocket-key".into(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    lock(&state.requests).push(RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        version: req.version(),
        headers: req.headers().clone(),
        body_len: 0,
        body: Bytes::new(),
    });
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                let _ = ws.close(None).await;
                return;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&state.name) {
        headers.insert("x-backend", v);
    }
    resp
}
