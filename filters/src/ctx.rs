//! Per-request state shared by the engine and the filters of one request.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// Shared empty name, so creating a context allocates nothing for it.
static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// What the engine knows about a request, visible to every filter on its route.
///
/// Created once per request before routing; filters read it and record what later hooks
/// (and the access log) need. Lives exactly as long as the request.
#[derive(Debug)]
pub struct RequestCtx {
    /// The request id sent upstream, in the access log and in every local answer.
    pub request_id: String,
    /// Client address for policy: the TCP peer, or the right-most untrusted
    /// `x-forwarded-for` hop when the peer is a trusted proxy.
    pub client_ip: IpAddr,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    /// When the request header was received.
    pub started: Instant,
    /// Request body bytes seen so far (counted by the engine before body hooks run).
    pub request_body_bytes: u64,
    /// Name of the matched route (set by the engine before any filter runs).
    pub route: Arc<str>,
    /// Authenticated subject (`sub`), set by an authentication filter (jwt, bff).
    pub user: Option<Arc<str>>,
    /// Client name of a verified API key, set by the `api_key` filter.
    pub api_client: Option<Arc<str>>,
    /// Mesh identity of the calling service (last segment of the SPIFFE ID in its mTLS
    /// client certificate), set by the engine on `mtls` listeners.
    pub caller: Option<Arc<str>>,
    /// Per-request state a filter hands from its request hook to its response hook
    /// (a typed map; costs nothing until a filter inserts something).
    pub extensions: http::Extensions,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self {
            request_id: String::new(),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            tls: false,
            started: Instant::now(),
            request_body_bytes: 0,
            route: NO_ROUTE.clone(),
            user: None,
            api_client: None,
            caller: None,
            extensions: http::Extensions::new(),
        }
    }
}
