//! Idle keep-alive connections kept as bare sockets: the plain-TCP transport and the lot.
//!
//! A parked connection (see `conn.rs`) still has a task, a reactor registration, timers and
//! its transport, about 2.5 KiB in all. A plain-TCP HTTP/1 connection that stays idle for
//! [`DEMOTE_AFTER`] gives all of that up: its task hands the socket to its listener's
//! [`IdleLot`] and ends. The lot keeps each socket in a slab entry of about 150 bytes and
//! watches all of them with one `epoll` instance of its own, which one task awaits. When a
//! client sends its next request (or closes), the lot takes the socket out and spawns a new
//! connection task for it; the kernel has kept the bytes, so nothing is lost. The lot closes
//! connections that stay idle for `runtime.idle_timeout` (within [`SWEEP_EVERY`]) and all of
//! them when the server shuts down. On the two sweeps after it took connections in, it
//! nudges the allocator to return the memory their ended tasks freed (`nudge_allocator`).
//!
//! TLS and h2c connections are never demoted: their state (the TLS session, Pingora's
//! HTTP/2 connection) cannot be put back together from a socket.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use pingora::apps::HttpPersistentSettings;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::ConnGuard;
use crate::metrics::METRICS;

/// How long a plain HTTP/1 connection waits parked, with its task, before it is demoted to
/// the lot. A request on a demoted connection costs four more system calls (two `epoll_ctl`
/// each way) and a task spawn, about 10 µs, once per idle period this long.
pub const DEMOTE_AFTER: Duration = Duration::from_millis(250);

/// How often the lot closes connections past their idle deadline.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Readiness events taken from the lot's `epoll` instance per system call.
const EVENTS: usize = 256;

/// Size of the allocation [`nudge_allocator`] makes: above mimalloc's largest size class
/// (512 KiB), so it gets a page of its own, which is freed whole.
const NUDGE_BYTES: usize = 1 << 20;

/// Makes the allocator hand back memory that ended connection tasks freed.
///
/// mimalloc returns emptied pages to the kernel only after its purge delay (1 s), and then
/// only when a page is freed again; after a burst of connections goes idle, nothing is, and
/// the tasks' pages stayed in RSS (+13.8 MiB for 10,000 connections that each cost a
/// 152-byte lot entry). Allocating and freeing one block bigger than any size class frees
/// a page, which runs the purge of everything whose delay has passed. The block is never
/// written, so it is not faulted in. With another allocator this is one `mmap` and
/// `munmap` pair.
fn nudge_allocator() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(NUDGE_BYTES)));
}

/// An accepted plain-TCP connection as Pingora's transport: the tokio socket and the
/// digests Pingora asks for, with no buffers (the header deadline wrapper joins writes).
/// Unlike Pingora's own `l4::Stream`, it gives its socket back ([`PlainTcp::into_parts`]),
/// which is what lets an idle connection be demoted to the lot.
#[derive(Debug)]
pub struct PlainTcp {
    tcp: TcpStream,
    peer: SocketAddr,
    established: SystemTime,
    digest: Arc<SocketDigest>,
}

impl PlainTcp {
    /// Wraps an accepted socket from `peer`, established at `established`.
    pub fn new(tcp: TcpStream, peer: SocketAddr, established: SystemTime) -> Self {
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        Self {
            tcp,
            peer,
            established,
            digest: Arc::new(digest),
        }
    }

    /// The socket, the peer address and when the connection was established.
    pub fn into_parts(self) -> (TcpStream, SocketAddr, SystemTime) {
        (self.tcp, self.peer, self.established)
    }
}

impl AsyncRead for PlainTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for PlainTcp {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.tcp).await {
            tracing::debug!(error = %e, "cannot shut the connection down");
        }
    }
}

impl UniqueID for PlainTcp {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for PlainTcp {}

impl GetTimingDigest for PlainTcp {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            ..TimingDigest::default()
        })]
    }
}

impl GetProxyDigest for PlainTcp {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for PlainTcp {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.digest = Arc::new(digest);
    }
}

/// Not supported (Pingora peeks only on h2c listeners, which keep its own transport).
impl Peek for PlainTcp {}

/// An idle connection in the lot: what it takes to serve its next request.
#[derive(Debug)]
pub struct Parked {
    /// The socket, deregistered from tokio.
    pub tcp: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub established: SystemTime,
    /// Pingora's keep-alive state from the last request (None before the first).
    pub settings: Option<HttpPersistentSettings>,
    /// When the connection has been idle for `runtime.idle_timeout`.
    pub close_at: Instant,
    /// Keeps the connection counted in `meshgate_active_connections`.
    pub guard: ConnGuard,
}

/// The idle sockets of one listener, watched by one task ([`IdleLot::run`]).
pub struct IdleLot {
    registry: mio::Registry,
    parked: Mutex<Slab<Parked>>,
    /// False once the lot's task has stopped: nothing may be parked any more.
    open: AtomicBool,
    /// Set by [`IdleLot::park`]; the lot's task clears it once a sweep interval.
    parked_lately: AtomicBool,
}

impl std::fmt::Debug for IdleLot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleLot")
            .field("parked", &self.len())
            .field("open", &self.is_open())
            .finish()
    }
}

/// The lot's `epoll` instance, owned by its task.
pub struct LotPoll(mio::Poll);

impl IdleLot {
    /// A lot and the poll instance its task runs on. Fails only if the kernel refuses a new
    /// `epoll` instance (out of descriptors).
    pub fn new() -> io::Result<(Arc<Self>, LotPoll)> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let lot = Arc::new(Self {
            registry,
            parked: Mutex::new(Slab::new()),
            open: AtomicBool::new(true),
            parked_lately: AtomicBool::new(false),
        });
        Ok((lot, LotPoll(poll)))
    }

    /// Whether the lot's task runs and takes connections.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Connections in the lot.
    pub fn len(&self) -> usize {
        self.slab().len()
    }

    /// Whether the lot holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slab(&self) -> std::sync::MutexGuard<'_, Slab<Parked>> {
        // The slab stays consistent even if a holder panicked: entries are whole values.
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `conn` in and watches its socket. If the lot is closed or the kernel refuses
    /// the registration, the connection is dropped, which closes it.
    pub fn park(&self, conn: Parked) {
        if !self.is_open() {
            return;
        }
        let fd = conn.tcp.as_raw_fd();
        let mut slab = self.slab();
        let entry = slab.vacant_entry();
        let token = Token(entry.key());
        // Registered under the lock, so the task cannot see the event before the entry.
        // Edge-triggered: bytes that arrived before this call are reported too.
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            tracing::debug!(error = %e, "cannot watch an idle connection; closing it");
            return;
        }
        entry.insert(conn);
        METRICS.parked_connections.inc();
        self.parked_lately.store(true, Ordering::Relaxed);
    }

    /// Takes the connection registered under `key` out of the lot, if it is still there.
    fn take(&self, key: usize) -> Option<Parked> {
        let conn = self.slab().try_remove(key)?;
        METRICS.parked_connections.dec();
        let fd = conn.tcp.as_raw_fd();
        if let Err(e) = self.registry.deregister(&mut SourceFd(&fd)) {
            tracing::debug!(error = %e, "cannot stop watching an idle connection");
        }
        Some(conn)
    }

    /// Closes the connections whose idle deadline is before `now`; returns how many.
    fn sweep(&self, now: Instant) -> usize {
        let mut slab = self.slab();
        let before = slab.len();
        // Closing a socket also removes it from the epoll instance.
        slab.retain(|_, c| c.close_at > now);
        let closed = before - slab.len();
        METRICS.parked_connections.sub(closed as i64);
        closed
    }

    /// Closes every connection and takes no more.
    fn close_all(&self) {
        self.open.store(false, Ordering::Release);
        let mut slab = self.slab();
        METRICS.parked_connections.sub(slab.len() as i64);
        slab.clear();
    }

    /// The lot's task: hands each connection whose socket turns readable (a request, or the
    /// client closing) to `resume`, closes connections past their idle deadline, and closes
    /// all of them when `shutdown` fires. If the poll instance fails, the lot closes and
    /// connections stay parked in their tasks from then on.
    pub async fn run(
        self: Arc<Self>,
        poll: LotPoll,
        mut shutdown: ShutdownWatch,
        resume: impl Fn(Parked) + Send + 'static,
    ) {
        // tokio 1.54 deprecates its safe constructors because an arbitrary `AsRawFd` may
        // close or swap its descriptor while registered; its replacement is `unsafe`, which
        // this workspace forbids. `mio::Poll` owns its epoll descriptor for its whole life
        // and `AsyncFd` deregisters before dropping it, so the safe one is sound here.
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(poll.0, tokio::io::Interest::READABLE);
        let mut poll = match registered {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "idle connections stay in their tasks: cannot watch the lot");
                self.close_all();
                return;
            }
        };
        let mut events = Events::with_capacity(EVENTS);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the previous sweep interval saw a connection parked.
        let mut parked_before = false;
        loop {
            tokio::select! {
                ready = poll.readable_mut() => {
                    let mut guard = match ready {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::warn!(error = %e, "the idle-connection lot failed; closing it");
                            break;
                        }
                    };
                    if let Err(e) = self.drain(guard.get_inner_mut(), &mut events, &resume) {
                        tracing::warn!(error = %e, "the idle-connection lot failed; closing it");
                        break;
                    }
                    // Everything reported has been taken: wait for the next edge. (tokio
                    // keeps readiness that arrived since this guard was made.)
                    guard.clear_ready();
                }
                _ = sweep.tick() => {
                    self.sweep(Instant::now());
                    // The tasks of connections parked in the last two intervals have ended;
                    // on the second tick after the last of them their pages are past the
                    // allocator's purge delay.
                    let parked_now = self.parked_lately.swap(false, Ordering::Relaxed);
                    if parked_now || parked_before {
                        nudge_allocator();
                    }
                    parked_before = parked_now;
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self.close_all();
    }

    /// Takes every ready connection out of the lot, until the poll instance reports none.
    fn drain(
        &self,
        poll: &mut mio::Poll,
        events: &mut Events,
        resume: &impl Fn(Parked),
    ) -> io::Result<()> {
        loop {
            match poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut n = 0;
            for event in events.iter() {
                n += 1;
                if let Some(conn) = self.take(event.token().0) {
                    if event.is_error() {
                        continue; // dropped: closed
                    }
                    // Readable, or closed by the client: the connection's task reads which.
                    resume(conn);
                }
            }
            if n < EVENTS {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn parked(tcp: std::net::TcpStream, close_in: Duration) -> Parked {
        let peer = tcp.peer_addr().expect("peer");
        Parked {
            tcp,
            peer,
            established: SystemTime::now(),
            settings: None,
            close_at: Instant::now() + close_in,
            guard: ConnGuard::start(),
        }
    }

    /// A connected pair: (the server's end, the client's end).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, _) = l.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        (server, client)
    }

    /// A lot whose task runs and sends every resumed connection to the receiver; the
    /// watch sender shuts it down.
    fn running_lot() -> (
        Arc<IdleLot>,
        tokio::sync::mpsc::UnboundedReceiver<Parked>,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (lot, poll) = IdleLot::new().expect("lot");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(lot.clone().run(poll, shutdown, move |p| {
            let _ = tx.send(p);
        }));
        (lot, rx, stop, task)
    }

    #[tokio::test]
    async fn a_readable_socket_is_resumed_with_its_bytes_and_others_stay() {
        let (lot, mut rx, _stop, task) = running_lot();
        let (a, mut client_a) = pair();
        let (b, _client_b) = pair();
        lot.park(parked(a, Duration::from_secs(60)));
        lot.park(parked(b, Duration::from_secs(60)));
        assert_eq!(lot.len(), 2);

        client_a
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .expect("write");
        let resumed = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("resumed within 10 s")
            .expect("resumed");
        assert_eq!(lot.len(), 1, "only the readable socket left the lot");
        let mut tcp = resumed.tcp;
        tcp.set_nonblocking(false).expect("blocking");
        let mut buf = [0u8; 18];
        tcp.read_exact(&mut buf).expect("read");
        assert_eq!(
            &buf, b"GET / HTTP/1.1\r\n\r\n",
            "the request's bytes waited in the socket"
        );
        task.abort();
    }

    #[tokio::test]
    async fn bytes_sent_before_parking_are_seen() {
        let (lot, mut rx, _stop, task) = running_lot();
        let (a, mut client) = pair();
        client.write_all(b"G").expect("write");
        // Give the byte time to arrive; the assertion does not depend on it having arrived.
        std::thread::sleep(Duration::from_millis(20));
        lot.park(parked(a, Duration::from_secs(60)));
        let resumed = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(resumed, Ok(Some(_))), "resumed");
        assert!(lot.is_empty());
        task.abort();
    }

    // Two workers: the test's blocking reads hold one while the lot's task runs on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_deadlines_and_shutdown_close_connections() {
        let (lot, poll) = IdleLot::new().expect("lot");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(lot.clone().run(poll, shutdown, |_| {}));
        let (a, mut client_a) = pair();
        let (b, mut client_b) = pair();
        lot.park(parked(a, Duration::ZERO));
        lot.park(parked(b, Duration::from_secs(600)));
        // The expired one is closed by a sweep: its client reads EOF.
        client_a
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        assert_eq!(client_a.read(&mut buf).expect("EOF, not a timeout"), 0);
        assert_eq!(lot.len(), 1);

        stop.send(true).expect("shutdown");
        client_b
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(client_b.read(&mut buf).expect("EOF, not a timeout"), 0);
        task.await.expect("the lot's task ends");
        assert!(!lot.is_open() && lot.is_empty());
        // A closed lot takes nothing: the connection is closed at once.
        let (c, mut client_c) = pair();
        lot.park(parked(c, Duration::from_secs(600)));
        assert!(lot.is_empty());
        client_c
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(client_c.read(&mut buf).expect("EOF"), 0);
    }
}
