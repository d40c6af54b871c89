//! Proxy listeners: meshgate's own accept loop, in place of Pingora's listening service.
//!
//! Pingora spawns one task per accepted connection whose future holds its whole handshake
//! and request machinery inline, about 9 KB that stays allocated for as long as the
//! connection lives, idle or not. Here the per-connection task holds only handles: the TLS
//! handshake and the HTTP loop ([`MeshApp`]) are boxed futures that exist while they run,
//! and the transport has no buffers of its own (the header deadline wrapper in `conn.rs`
//! joins a response's writes for the time of one request). What stays behind for an idle
//! keep-alive connection is the socket, its reactor registration, the keep-alive loop's
//! timer and a few small structs — and on a plain-TCP HTTP/1 listener only until it has
//! been idle for `idle::DEMOTE_AFTER`: then the task ends and the socket waits in the
//! listener's [`IdleLot`], which spawns a task again when the next request arrives. Those
//! listeners give connections meshgate's [`PlainTcp`] transport, which can give its socket
//! back; TLS and h2c listeners use Pingora's.
//!
//! Sockets are bound before the server starts, so a taken address fails `meshgate run`
//! with the listener's YAML path instead of Pingora's retry-then-panic, and accepted
//! connections get what Pingora's listener gives them: `TCP_NODELAY`, a socket digest with
//! the peer address (`session.client_addr()`), and TLS through Pingora's rustls acceptor.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::net::{TcpListener, TcpStream};

use crate::conn::{ConnGuard, MeshApp, Served};
use crate::idle::{IdleLot, Parked, PlainTcp};

/// Pending connections the kernel queues per listener (Pingora's value).
const BACKLOG: i32 = 65535;

/// A bound, not yet serving, listening socket.
pub struct BoundSocket {
    std: std::net::TcpListener,
    /// The address it is bound to.
    pub addr: SocketAddr,
}

/// Binds `addr` (`host:port`) with `SO_REUSEADDR` and a deep backlog, non-blocking, ready
/// to hand to tokio. Fails with a message naming the address.
pub fn bind(addr: &str) -> Result<BoundSocket, String> {
    use std::net::ToSocketAddrs;
    let sock_addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot listen on {addr}: the name has no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sock_addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .and_then(|s| {
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&sock_addr.into())?;
        s.listen(BACKLOG)?;
        Ok(s)
    })
    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let std: std::net::TcpListener = socket.into();
    let addr = std.local_addr().unwrap_or(sock_addr);
    Ok(BoundSocket { std, addr })
}

/// One proxy listener as a Pingora service: accepts connections on its socket until the
/// server shuts down, then stops accepting and lets `MeshApp`'s `ServerApp::cleanup` close
/// parked connections. Requests in flight finish under the server's grace period.
pub struct ProxyListener {
    name: String,
    socket: Option<BoundSocket>,
    tls: Option<Arc<Acceptor>>,
    app: Arc<MeshApp>,
    /// Bound on a TLS handshake: a client that stalls it is dropped.
    handshake_timeout: Duration,
}

impl ProxyListener {
    /// A listener serving `app` on `socket`, terminating TLS with `tls` when given.
    pub fn new(
        name: String,
        socket: BoundSocket,
        tls: Option<TlsSettings>,
        app: MeshApp,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            name,
            socket: Some(socket),
            tls: tls.map(|t| Arc::new(t.build())),
            app: Arc::new(app),
            handshake_timeout,
        }
    }
}

#[async_trait]
impl Service for ProxyListener {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let listener = match TcpListener::from_std(socket.std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %self.name, error = %e, "cannot serve the listening socket");
                return;
            }
        };
        // Plain HTTP/1 listeners demote idle connections to a lot (`idle.rs`).
        let lot = if self.tls.is_none() && !self.app.h2c() {
            match IdleLot::new() {
                Ok((lot, poll)) => {
                    let template = Connection {
                        app: self.app.clone(),
                        tls: None,
                        lot: Some(lot.clone()),
                        shutdown: shutdown.clone(),
                        handshake_timeout: self.handshake_timeout,
                    };
                    let resume = move |parked: Parked| {
                        pingora_runtime::current_handle().spawn(template.clone().resume(parked));
                    };
                    tokio::spawn(lot.clone().run(poll, shutdown.clone(), resume));
                    Some(lot)
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "idle connections stay in their tasks: no lot");
                    None
                }
            }
        } else {
            None
        };
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let conn = Connection {
                        app: self.app.clone(),
                        tls: self.tls.clone(),
                        lot: lot.clone(),
                        shutdown: shutdown.clone(),
                        handshake_timeout: self.handshake_timeout,
                    };
                    // With several threads and no work stealing, this spreads connections
                    // over the threads as Pingora's own listener does.
                    pingora_runtime::current_handle().spawn(conn.serve(tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    // Out of descriptors (EMFILE/ENFILE): accept fails again at once until
                    // some close, so pause instead of spinning.
                    if matches!(e.raw_os_error(), Some(23 | 24)) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        tracing::info!(listener = %self.name, "listener closed");
        pingora::apps::ServerApp::cleanup(self.app.as_ref()).await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// What a connection's task keeps: handles only (the big futures are boxed while they run).
#[derive(Clone)]
struct Connection {
    app: Arc<MeshApp>,
    tls: Option<Arc<Acceptor>>,
    /// Where the connection goes when it idles (plain HTTP/1 listeners only).
    lot: Option<Arc<IdleLot>>,
    shutdown: ShutdownWatch,
    handshake_timeout: Duration,
}

impl Connection {
    /// A new connection's whole life in this task. Its future is what the task holds while
    /// the connection is idle, so everything bigger than a handle lives in boxed futures:
    /// the transport setup and handshake (done by then) and the keep-alive loop.
    async fn serve(self, tcp: TcpStream, peer: SocketAddr) {
        let guard = ConnGuard::start();
        let Some(stream) = Box::pin(self.open(tcp, peer)).await else {
            return;
        };
        self.run(stream, None, guard).await;
    }

    /// A connection the lot gives back because its socket turned readable: registered with
    /// this thread's reactor and served like a new one, with its keep-alive state.
    async fn resume(self, parked: Parked) {
        let Parked {
            tcp,
            peer,
            established,
            settings,
            guard,
            ..
        } = parked;
        let tcp = match TcpStream::from_std(tcp) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "cannot resume an idle connection");
                return;
            }
        };
        let stream: pingora::protocols::Stream = Box::new(PlainTcp::new(tcp, peer, established));
        self.run(stream, settings, guard).await;
    }

    /// Serves `stream` until it closes, or hands it to the lot when it idles.
    async fn run(
        self,
        stream: pingora::protocols::Stream,
        settings: Option<pingora::apps::HttpPersistentSettings>,
        guard: ConnGuard,
    ) {
        let lot = self.lot.as_ref().filter(|l| l.is_open());
        // Boxed: the keep-alive loop's future exists only while the connection has a task.
        let served = Box::pin(
            self.app
                .serve(stream, settings, &self.shutdown, lot.is_some()),
        )
        .await;
        let (
            Some(lot),
            Served::Idle {
                stream,
                settings,
                close_at,
            },
        ) = (lot, served)
        else {
            return;
        };
        // Only plain connections are demoted, so the transport is always a `PlainTcp`.
        let Ok(plain) = stream.into_any().downcast::<PlainTcp>() else {
            return;
        };
        let (tcp, peer, established) = plain.into_parts();
        match tcp.into_std() {
            Ok(tcp) => lot.park(Parked {
                tcp,
                peer,
                established,
                settings,
                close_at,
                guard,
            }),
            Err(e) => tracing::debug!(peer = %peer, error = %e, "cannot demote an idle connection"),
        }
    }

    /// The accepted socket as Pingora's transport: `TCP_NODELAY`, the peer address in the
    /// socket digest, and the TLS handshake when the listener has TLS. None when the
    /// handshake fails or stalls past `handshake_timeout`.
    async fn open(&self, tcp: TcpStream, peer: SocketAddr) -> Option<pingora::protocols::Stream> {
        if self.lot.is_some() {
            // A plain HTTP/1 listener: the transport that can give its socket back.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            return Some(Box::new(PlainTcp::new(
                tcp,
                peer,
                std::time::SystemTime::now(),
            )));
        }
        let mut l4 = L4Stream::from(tcp);
        if let Err(e) = l4.set_nodelay() {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&l4));
        let _ = digest.peer_addr.set(Some(peer.into()));
        l4.set_socket_digest(digest);
        let Some(acceptor) = &self.tls else {
            return Some(Box::new(l4));
        };
        match tokio::time::timeout(self.handshake_timeout, acceptor.tls_handshake(l4)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "TLS handshake timed out");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{ListenerInfo, MeshProxy};
    use arc_swap::ArcSwap;
    use pingora::server::configuration::ServerConf;

    /// What a parked connection keeps alive is mostly two futures: the connection's task and
    /// the keep-alive loop it awaits; a demoted one keeps only its lot entry. Bounds are for
    /// this (debug) build; the release build's per-connection memory is measured in
    /// `bench/` and in `tests/tests/keepalive.rs`.
    #[tokio::test]
    async fn a_connection_keeps_only_small_futures() {
        let dir = std::env::temp_dir().join(format!("meshgate-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            "mode: edge\nservice: t\nlisteners: [{ name: l, address: 127.0.0.1:0 }]\n\
             clusters: { c: { endpoints: [127.0.0.1:1] } }\n\
             routes: [{ name: r, match: { path_prefix: / }, to: c }]\n",
        )
        .expect("write");
        let (rt, _shared) = crate::server::compile_file(&file).expect("config");
        let runtime = Arc::new(ArcSwap::from_pointee(rt));
        let info = ListenerInfo {
            name: "l".into(),
            tls: false,
        };
        let conf = Arc::new(ServerConf::default());
        let proxy = pingora::proxy::http_proxy(&conf, MeshProxy::new(runtime.clone(), info));
        let app = Arc::new(MeshApp::new(proxy, runtime));

        let socket = bind("127.0.0.1:0").expect("bind");
        let listener = TcpListener::from_std(socket.std).expect("listener");
        let _client = TcpStream::connect(socket.addr).await.expect("connect");
        let (tcp, peer) = listener.accept().await.expect("accept");
        let _client2 = TcpStream::connect(socket.addr).await.expect("connect");
        let (tcp2, _) = listener.accept().await.expect("accept");
        let (_tx, shutdown) = tokio::sync::watch::channel(false);

        let conn = Connection {
            app: app.clone(),
            tls: None,
            lot: None,
            shutdown: shutdown.clone(),
            handshake_timeout: Duration::from_secs(10),
        };
        let serve = conn.serve(tcp, peer);
        let task = std::mem::size_of_val(&serve);
        let stream: pingora::protocols::Stream = Box::new(L4Stream::from(tcp2));
        let keepalive = app.serve(stream, None, &shutdown, true);
        let keepalive = std::mem::size_of_val(&keepalive);
        let parked = std::mem::size_of::<Parked>();
        println!(
            "connection task future: {task} bytes; keep-alive loop future: {keepalive} bytes; \
             lot entry: {parked} bytes"
        );
        assert!(task <= 448, "connection task future is {task} bytes");
        assert!(
            keepalive <= 640,
            "keep-alive loop future is {keepalive} bytes"
        );
        assert!(parked <= 192, "lot entry is {parked} bytes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
