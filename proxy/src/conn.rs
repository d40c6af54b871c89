//! Downstream connections: the header-read deadline, idle keep-alive parking and connection
//! accounting.
//!
//! Pingora times out each *read* of a request header, not the header as a whole, so a
//! client sending one byte every few seconds could hold a connection forever (slowloris).
//! [`HeaderDeadline`] wraps the transport and fails reads once a request header has been
//! arriving for longer than `runtime.header_read_timeout`; the proxy tells it when a header
//! is complete and when the next request may begin. The wrapper sits under Pingora's HTTP
//! layer, which is the only place that sees bytes before the header is parsed — so it also
//! checks the shape of the request line there: Pingora quietly percent-escapes a request
//! target containing spaces (`GET /a b c HTTP/1.1`), which an upstream could read
//! differently, and we refuse such requests instead.
//!
//! Between requests an HTTP/1 connection is *parked*: [`MeshApp`] runs Pingora's keep-alive
//! loop itself and, before handing the connection to Pingora for the next request, waits for
//! that request's first bytes with nothing allocated but the transport. Pingora would wait
//! inside its request future, holding a boxed future and a header buffer for every idle
//! connection (about 16 KB); our own listener (`listener.rs`) gives the transport no read
//! buffer, and the bytes read while parked are handed to Pingora's parser from a small
//! stash, so no request costs an extra system call. Writes of one response are joined in a
//! 1,460-byte buffer that is freed when the connection parks. On a plain-TCP listener a
//! connection parked for [`DEMOTE_AFTER`] leaves its task altogether and waits in the
//! listener's lot as a bare socket (`idle.rs`).

use std::future::Future as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::idle::DEMOTE_AFTER;
use crate::metrics::METRICS;
use crate::proxy::MeshProxy;
use crate::runtime::Runtime;

/// Waiting for the first byte of a request: no deadline (the keep-alive timeout applies).
const IDLE: u8 = 0;
/// Inside a request header: the deadline applies.
const HEADER: u8 = 1;
/// Header complete, request in progress: no deadline.
const BODY: u8 = 2;
/// Connection is HTTP/2: its framing has its own limits; the wrapper stays out of the way.
const OFF: u8 = 3;

/// Transport wrapper enforcing a deadline on each request header.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    phase: AtomicU8,
    timeout: Duration,
    /// When the current request header must be complete.
    deadline: Instant,
    /// Fires at or before `deadline`; polled (registered with this task) once it is armed.
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    /// Request-line scan state: spaces seen so far, and whether the line ended.
    line_spaces: u8,
    line_done: bool,
    line_bad: AtomicBool,
    /// Bytes read while the connection was parked, not yet handed to Pingora's parser.
    stash: Vec<u8>,
    stash_at: usize,
    /// Response bytes written but not yet sent: small writes (a header, then a small body)
    /// go out in one system call at the next flush. Allocated while a request writes,
    /// released when the connection parks.
    out: Vec<u8>,
    out_at: usize,
}

/// Largest read while parked: Pingora's initial request-header buffer.
const PARK_READ: usize = 4096;

/// Writes smaller than this are joined until the next flush; the size and the rules are
/// those of the write buffer Pingora's own listener gives a connection (a TCP segment).
const WRITE_COALESCE: usize = pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;

impl HeaderDeadline {
    /// Wraps `inner`; each request header must arrive within `timeout` of its first byte.
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        Self {
            inner,
            phase: AtomicU8::new(IDLE),
            timeout,
            deadline: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            line_spaces: 0,
            line_done: false,
            line_bad: AtomicBool::new(false),
            stash: Vec::new(),
            stash_at: 0,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// The wrapped transport. Only for a parked connection: bytes stashed or not yet sent
    /// would be lost, and a parked connection has none.
    pub fn into_inner(self) -> Stream {
        debug_assert!(self.stash_at >= self.stash.len() && self.out_at >= self.out.len());
        self.inner
    }

    /// Sends the joined response bytes. Ready once all are written.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection accepted no more response bytes",
                    )))
                }
                Poll::Ready(Ok(n)) => self.out_at += n,
            }
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Waits, parked, for the first bytes of the next request and keeps them for the next
    /// read. Ready with the number of bytes kept: 0 means the client closed the connection.
    fn poll_first_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.stash_at < self.stash.len() {
            return Poll::Ready(Ok(self.stash.len() - self.stash_at));
        }
        // A stack buffer: a parked connection holds no read buffer while it waits.
        let mut space = [MaybeUninit::<u8>::uninit(); PARK_READ];
        let mut buf = ReadBuf::uninit(&mut space);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Pending => {
                // Waiting, so the write buffer goes too (Pingora flushed every response).
                if self.out.is_empty() {
                    self.out = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                self.arrived(cx, got);
                self.stash.clear();
                self.stash.extend_from_slice(got);
                self.stash_at = 0;
                Poll::Ready(Ok(got.len()))
            }
        }
    }

    /// Bookkeeping for bytes read from the client: the first bytes of a request start its
    /// header deadline, and the request line is checked as it arrives.
    fn arrived(&mut self, cx: &mut Context<'_>, new: &[u8]) {
        if self.phase.load(Ordering::Relaxed) == IDLE && !new.is_empty() {
            if new.starts_with(b"PRI * HTTP/2") {
                self.phase.store(OFF, Ordering::Relaxed);
            } else {
                self.phase.store(HEADER, Ordering::Relaxed);
                let now = Instant::now();
                self.deadline = now + self.timeout;
                // The timer is moved only when it would not fire before the new deadline:
                // one still pending from an earlier request fires sooner, and `timed_out`
                // then moves it on. Resetting it for every request cost more than the
                // rest of this wrapper.
                if !self.armed || self.sleep.deadline() <= now {
                    self.sleep.as_mut().reset(self.deadline);
                    // Register the timer with this task so a stalled client still wakes us.
                    let _ = self.sleep.as_mut().poll(cx);
                    self.armed = true;
                }
                self.line_spaces = 0;
                self.line_done = false;
                self.line_bad.store(false, Ordering::Relaxed);
            }
        }
        if !self.line_done && self.phase.load(Ordering::Relaxed) == HEADER {
            self.scan_request_line(new);
        }
    }

    /// False when the current request's line was not `METHOD SP TARGET SP VERSION` as the
    /// client sent it. Streams that are not wrapped (HTTP/2) always pass.
    pub fn request_line_ok(stream: &Stream) -> bool {
        Self::find(stream).is_none_or(|d| !d.line_bad.load(Ordering::Relaxed))
    }

    /// Scans bytes of the request line as they arrive; cheap because it stops at the first
    /// line feed of each request.
    fn scan_request_line(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' => {
                    self.line_done = true;
                    if self.line_spaces != 2 {
                        self.line_bad.store(true, Ordering::Relaxed);
                    }
                    return;
                }
                b' ' => self.line_spaces = self.line_spaces.saturating_add(1),
                b'\r' => {}
                b if b < 0x20 || b == 0x7f => self.line_bad.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    }

    /// True once the current header's deadline has passed. A timer that fires earlier (it
    /// was armed for an earlier request, see `arrived`) is moved to the deadline.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if Instant::now() >= self.deadline {
            return true;
        }
        self.sleep.as_mut().reset(self.deadline);
        self.sleep.as_mut().poll(cx).is_ready()
    }

    fn find(stream: &Stream) -> Option<&HeaderDeadline> {
        stream.as_any().downcast_ref::<HeaderDeadline>()
    }

    /// Called once the request header is parsed: lift the deadline.
    pub fn header_complete(stream: &Stream) {
        if let Some(d) = Self::find(stream) {
            let _ = d
                .phase
                .compare_exchange(HEADER, BODY, Ordering::Relaxed, Ordering::Relaxed);
            // A header that arrived in one read never left IDLE as seen by poll_read's
            // check order; treat it the same.
            let _ = d
                .phase
                .compare_exchange(IDLE, BODY, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Called when a request is finished: the next byte starts a new header deadline.
    pub fn request_finished(stream: &Stream) {
        if let Some(d) = Self::find(stream) {
            let _ = d
                .phase
                .compare_exchange(BODY, IDLE, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stash_at < this.stash.len() {
            // Bytes read while parked: already accounted for by `arrived`.
            let n = buf.remaining().min(this.stash.len() - this.stash_at);
            buf.put_slice(&this.stash[this.stash_at..this.stash_at + n]);
            this.stash_at += n;
            if this.stash_at == this.stash.len() {
                // Nothing is kept between requests.
                this.stash = Vec::new();
                this.stash_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.phase.load(Ordering::Relaxed) == HEADER && this.timed_out(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request header not received within header_read_timeout",
            )));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            this.arrived(cx, &buf.filled()[before..]);
        }
        res
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + buf.len() > WRITE_COALESCE {
            match this.poll_send_out(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if buf.len() >= WRITE_COALESCE {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.out.capacity() == 0 {
            this.out.reserve_exact(WRITE_COALESCE);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.out.len() + total <= WRITE_COALESCE {
            if this.out.capacity() == 0 {
                this.out.reserve_exact(WRITE_COALESCE);
            }
            for b in bufs {
                this.out.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        // Order matters: what was joined earlier goes out before these bytes.
        match this.poll_send_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> i32 {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The listener application: accounts connections, installs the header deadline, parks idle
/// HTTP/1 connections between requests and hands each request to Pingora's HTTP proxy.
pub struct MeshApp {
    proxy: Arc<HttpProxy<MeshProxy>>,
    runtime: Arc<ArcSwap<Runtime>>,
    /// Set, and `closing_now` notified, when the listener shuts down: parked connections close.
    closing: AtomicBool,
    closing_now: Notify,
}

impl MeshApp {
    /// Wraps a configured Pingora HTTP proxy.
    pub fn new(proxy: HttpProxy<MeshProxy>, runtime: Arc<ArcSwap<Runtime>>) -> Self {
        Self {
            proxy: Arc::new(proxy),
            runtime,
            closing: AtomicBool::new(false),
            closing_now: Notify::new(),
        }
    }

    /// Waits for the next request's first bytes on an idle connection. The connection
    /// should close instead when the client closed it or failed, it stayed idle for
    /// `runtime.idle_timeout`, or the server is shutting down. With `demote`, a connection
    /// still idle after [`DEMOTE_AFTER`] (and an idle timeout at least twice that) is
    /// [`Park::Demote`]d, to be handed to the listener's lot.
    ///
    /// `closing` and `idle` live as long as the connection, so a park costs no timer or
    /// waiter registration of its own: the deadline is pushed back only once it has
    /// fallen 1/16 of its wait behind (a connection closes, or is demoted, after between
    /// 15/16 of its wait and the whole of it without a request).
    async fn park(
        &self,
        conn: &mut HeaderDeadline,
        shutdown: &ShutdownWatch,
        mut closing: Pin<&mut Notified<'_>>,
        mut idle: Pin<&mut Sleep>,
        demote: bool,
    ) -> Park {
        if *shutdown.borrow() || self.closing.load(Ordering::Acquire) {
            return Park::Close;
        }
        let first = std::future::poll_fn(|cx| conn.poll_first_bytes(cx));
        let mut first = std::pin::pin!(first);
        // Under load the next request is usually there already: no timer for that case.
        let ready = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
        let got = match ready {
            Poll::Ready(got) => got,
            Poll::Pending => {
                let timeout = self.runtime.load().limits.idle_timeout;
                let wait = if demote && DEMOTE_AFTER * 2 <= timeout {
                    DEMOTE_AFTER
                } else {
                    timeout
                };
                let now = Instant::now();
                if idle.deadline() < now + wait - wait / 16 {
                    idle.as_mut().reset(now + wait);
                }
                tokio::select! {
                    biased;
                    got = first => got,
                    () = closing.as_mut() => return Park::Close,
                    () = idle.as_mut() => {
                        return if wait < timeout {
                            Park::Demote { close_at: now + timeout }
                        } else {
                            Park::Close
                        };
                    }
                }
            }
        };
        if matches!(got, Ok(n) if n > 0) {
            Park::Request
        } else {
            Park::Close
        }
    }

    /// Serves a connection until it closes, or (with `demote`, HTTP/1 only) until it has
    /// been idle for [`DEMOTE_AFTER`]: then it is given back as [`Served::Idle`]. HTTP/2
    /// connections (negotiated, or any on an h2c listener) are Pingora's to serve whole.
    /// `settings` carries Pingora's keep-alive state into a resumed connection.
    pub async fn serve(
        self: &Arc<Self>,
        stream: Stream,
        mut settings: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
        demote: bool,
    ) -> Served {
        if self.h2c() || matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 (negotiated, or possibly prior knowledge on an h2c listener): Pingora's
            // own connection handling, which multiplexes.
            let mut next = self.proxy.process_new(stream, shutdown).await;
            while let Some(stream) = next {
                next = self.proxy.process_new(stream, shutdown).await;
            }
            return Served::Closed;
        }
        let timeout = self.runtime.load().spec.runtime.header_read_timeout.get();
        let mut conn = Box::new(HeaderDeadline::new(stream, timeout));
        // Pingora's keep-alive loop for HTTP/1 (`ServerApp for HttpServerApp`), with a parked
        // wait before each request.
        let mut closing = std::pin::pin!(self.closing_now.notified());
        // Elapsed until the first park that has to wait sets it.
        let mut idle = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            match self
                .park(&mut conn, shutdown, closing.as_mut(), idle.as_mut(), demote)
                .await
            {
                Park::Request => {}
                Park::Close => return Served::Closed,
                Park::Demote { close_at } => {
                    return Served::Idle {
                        stream: conn.into_inner(),
                        settings,
                        close_at,
                    }
                }
            }
            // The request's state, session included, lives in a boxed future that exists
            // only while it runs: a parked connection's future is just this loop's handles
            // (see `listener.rs`). The block keeps the session out of this future's layout.
            let request = {
                let mut session = ServerSession::new_http1(conn);
                match settings.take() {
                    Some(s) => s.apply_to_session(&mut session),
                    None => {
                        // The proxy sets each request's keep-alive from `runtime.idle_timeout`.
                        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                        session.set_keepalive_reuses_remaining(
                            self.proxy
                                .server_options
                                .as_ref()
                                .and_then(|o| o.keepalive_request_limit),
                        );
                    }
                }
                Box::pin(self.proxy.process_new_http(session, shutdown))
            };
            let Some(reused) = request.await else {
                return Served::Closed;
            };
            let (stream, next) = reused.consume();
            settings = next;
            conn = match stream.into_any().downcast::<HeaderDeadline>() {
                Ok(c) => c,
                // Not possible: the session gives back the transport it was given.
                Err(_) => return Served::Closed,
            };
        }
    }

    /// Whether the listener speaks h2c (HTTP/2 without TLS) on every connection.
    pub fn h2c(&self) -> bool {
        self.proxy.server_options.as_ref().is_some_and(|o| o.h2c)
    }
}

/// What [`MeshApp::park`] found.
enum Park {
    /// The next request's first bytes arrived.
    Request,
    /// The connection closes.
    Close,
    /// Idle long enough to be demoted; it closes at `close_at` if still idle.
    Demote { close_at: Instant },
}

/// How [`MeshApp::serve`] left a connection.
pub enum Served {
    /// Closed, or to be closed by dropping it.
    Closed,
    /// Idle between requests: the transport (as given to `serve`), Pingora's keep-alive
    /// state, and when it should close if no request comes.
    Idle {
        /// The transport `serve` was given.
        stream: Stream,
        /// Pingora's keep-alive state after the last request (None before the first).
        settings: Option<HttpPersistentSettings>,
        /// When the connection will have been idle for `runtime.idle_timeout`.
        close_at: Instant,
    },
}

/// Counts one downstream connection in `meshgate_active_connections` for as long as it
/// lives, and once in `meshgate_downstream_connections_total`. It moves with a connection
/// into the idle lot and into the task that resumes it.
#[derive(Debug)]
pub struct ConnGuard;

impl ConnGuard {
    /// Counts a newly accepted connection.
    pub fn start() -> Self {
        METRICS.active_connections.inc();
        METRICS.connections_total.inc();
        ConnGuard
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        METRICS.active_connections.dec();
    }
}

#[async_trait]
impl ServerApp for MeshApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _guard = ConnGuard::start();
        self.serve(stream, None, shutdown, false).await;
        None
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closing_now.notify_waiters();
        self.proxy.cleanup().await;
    }
}
