//! Benchmark baseline: the smallest Pingora HTTP proxy that forwards every request to one
//! fixed upstream, with no routing, filters, metrics or logs.
//!
//! It exists so `bench/run.sh` can tell how much of meshgate's cost per request is Pingora
//! itself and how much is meshgate's own code. It therefore uses the same Pingora version
//! (the workspace dependency) and the same server settings meshgate runs with in the
//! benchmark: one worker thread, work stealing off, `ServerConf` defaults otherwise
//! (upstream keep-alive pool of 128, default `max_retries`, which bounds *attempts*).
//!
//! ```text
//! bare-pingora LISTEN_ADDR UPSTREAM_ADDR
//! BARE_PINGORA_LISTEN=127.0.0.1:8080 BARE_PINGORA_UPSTREAM=127.0.0.1:9000 bare-pingora
//! ```
//!
//! Arguments win over the environment. Both addresses are `ip:port` literals: resolving
//! names is not something the baseline should spend time on.
//!
//! `BARE_PINGORA_L4_READ_BUFFER=BYTES` (optional, for experiments only) replaces Pingora's
//! per-connection downstream read buffer (64 KiB by default, `0` = unbuffered) so the
//! harness can measure what that buffer costs in memory per idle connection and in
//! throughput. The benchmark's `bare-pingora` target leaves it unset.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

/// The same global allocator as the `meshgate` binary, so the baseline differs from meshgate
/// only in meshgate's own code.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards everything to one upstream over Pingora's pooled keep-alive connections.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Reads argument `index` or, failing that, environment variable `var`, as a socket address.
fn address(args: &[String], index: usize, var: &str) -> Result<SocketAddr, String> {
    let raw = match args.get(index) {
        Some(a) => a.clone(),
        None => std::env::var(var).map_err(|_| format!("missing argument {index} or ${var}"))?,
    };
    raw.parse()
        .map_err(|e| format!("{var}: `{raw}` is not an ip:port address: {e}"))
}

/// The optional downstream read-buffer size from `BARE_PINGORA_L4_READ_BUFFER`.
fn read_buffer() -> Result<Option<usize>, String> {
    match std::env::var("BARE_PINGORA_L4_READ_BUFFER") {
        Err(_) => Ok(None),
        Ok(raw) => raw
            .parse()
            .map(Some)
            .map_err(|e| format!("BARE_PINGORA_L4_READ_BUFFER: `{raw}` is not a byte count: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: bare-pingora LISTEN_ADDR UPSTREAM_ADDR  (or BARE_PINGORA_LISTEN / BARE_PINGORA_UPSTREAM)");
        return ExitCode::SUCCESS;
    }
    let (listen, upstream, read_buffer) = match (
        address(&args, 1, "BARE_PINGORA_LISTEN"),
        address(&args, 2, "BARE_PINGORA_UPSTREAM"),
        read_buffer(),
    ) {
        (Ok(l), Ok(u), Ok(r)) => (l, u, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("bare-pingora: {e}");
            return ExitCode::from(2);
        }
    };

    // Same settings meshgate's benchmark config selects (`runtime: { threads: 1,
    // work_stealing: false }`); everything else stays at Pingora's defaults, as in meshgate.
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Bare { upstream });
    let mut endpoint = ListenerConfig::tcp(listen.to_string());
    if let Some(bytes) = read_buffer {
        endpoint = endpoint.l4_buffer(L4BufferSettings::default().read(bytes));
    }
    service.add_listener(endpoint);
    server.add_service(service);
    eprintln!(
        "bare-pingora: listening on {listen}, upstream {upstream}, read buffer {read_buffer:?}"
    );
    server.run_forever()
}
