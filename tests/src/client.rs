//! Clients for talking to the proxy: reqwest for well-formed traffic, raw TCP
//! for the malformed kind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Per-request deadline of the clients below: a hung proxy fails the test
/// instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn base() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
}

/// HTTP/1.1 only, with connection reuse.
pub fn http1() -> reqwest::Client {
    base().http1_only().build().expect("build HTTP/1.1 client")
}

/// Prior-knowledge HTTP/2 over plain TCP (h2c).
pub fn h2c() -> reqwest::Client {
    base()
        .http2_prior_knowledge()
        .build()
        .expect("build h2c client")
}

/// HTTPS client that trusts only `ca_pem`, resolves each `(name, addr)` pair
/// to the given address (so SNI carries `name`), offers h2 and http/1.1 via
/// ALPN, and records the peer certificate (see [`peer_certificate`]).
pub fn tls(ca_pem: &str, resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    tls_builder(ca_pem, resolve)
        .build()
        .expect("build TLS client")
}

/// The builder behind [`tls`], for tests that need to tweak it (e.g.
/// `.http1_only()`).
pub fn tls_builder(ca_pem: &str, resolve: &[(&str, SocketAddr)]) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("parse test CA");
    let mut builder = base()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tls_info(true);
    for (name, addr) in resolve {
        builder = builder.resolve(name, *addr);
    }
    builder
}

/// DER of the certificate the server presented, when the client was built
/// with [`tls`].
pub fn peer_certificate(resp: &reqwest::Response) -> Option<Vec<u8>> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads the body; panics if it cannot be read.
    pub async fn read(resp: reqwest::Response) -> Reply {
        Self::try_read(resp)
            .await
            .unwrap_or_else(|e| panic!("reading response body: {e}"))
    }

    pub async fn try_read(resp: reqwest::Response) -> Result<Reply, String> {
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| format!("{e:?}"))?;
        Ok(Reply {
            status,
            version,
            headers,
            body,
        })
    }

    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Sends `req` and reads the whole response; panics on transport errors.
pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    match req.send().await {
        Ok(resp) => Reply::read(resp).await,
        Err(e) => panic!("request failed: {e:?}"),
    }
}

/// `GET url` with `client`; panics on transport errors.
pub async fn get(client: &reqwest::Client, url: &str) -> Reply {
    send(client.get(url)).await
}

/// What came back on a raw TCP exchange.
#[derive(Debug, Clone)]
pub struct RawOutcome {
    pub bytes: Vec<u8>,
    /// The server closed (or reset) the connection before the deadline.
    pub closed: bool,
    pub elapsed: Duration,
}

impl RawOutcome {
    /// Status code of the first response, if one was received.
    pub fn status(&self) -> Option<u16> {
        parse_status(&self.bytes)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Value of header `name` (case-insensitive) in the first response.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Body of the first response (everything after the header block).
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

/// The status code of an HTTP/1.x response's status line.
pub fn parse_status(bytes: &[u8]) -> Option<u16> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Once a whole response head is in `bytes`: where it ends (just past its blank line) and
/// its `Content-Length`, `None` when it has none (or one that is not a number). `None`
/// while the head is still incomplete.
pub fn response_head(bytes: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    Some((end + 4, length))
}

/// Writes `request` to a fresh connection to `addr`, then reads until the
/// server closes the connection or `read_deadline` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], read_deadline: Duration) -> RawOutcome {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The server may answer and close before it has read everything (e.g.
    // 431 for a huge header block): a failed write is not an error here.
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = start + read_deadline;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    RawOutcome {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// [`raw_exchange`], keeping only the bytes.
pub async fn raw_request(addr: SocketAddr, request: &[u8], read_deadline: Duration) -> Vec<u8> {
    raw_exchange(addr, request, read_deadline).await.bytes
}

/// A gRPC-style exchange, trailers included.
#[derive(Debug, Clone)]
pub struct GrpcReply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// POSTs `body` as `application/grpc` (with `te: trailers`) and reads the
/// response including its trailers. `client` must speak HTTP/2 to `url`
/// ([`h2c`] or [`tls`]).
pub async fn grpc_call(client: &reqwest::Client, url: &str, body: &'static [u8]) -> GrpcReply {
    use http_body_util::BodyExt;
    let resp = client
        .post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("gRPC-style POST {url}: {e:?}"));
    let resp: http::Response<reqwest::Body> = resp.into();
    let (parts, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("reading gRPC-style response body: {e:?}"));
    let trailers = collected.trailers().cloned();
    GrpcReply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A WebSocket client connection over plain TCP.
pub type WsClient = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket to `ws://{host}{path}` over a TCP connection to `addr`
/// (so `Host` can name a virtual host). Returns the status of the upgrade
/// response on failure instead of panicking.
pub async fn ws_connect(addr: SocketAddr, host: &str, path: &str) -> Result<WsClient, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let url = format!("ws://{host}{path}");
    match tokio_tungstenite::client_async(url.as_str(), stream).await {
        Ok((ws, _resp)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(format!(
            "upgrade refused with status {} body {:?}",
            resp.status(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        )),
        Err(e) => Err(format!("WebSocket handshake with {url} via {addr}: {e}")),
    }
}

/// Sends every request with at most `concurrency` in flight; results in
/// completion order, transport errors as `Err(text)`.
pub async fn send_all(
    requests: Vec<reqwest::RequestBuilder>,
    concurrency: usize,
) -> Vec<Result<Reply, String>> {
    use futures_util::StreamExt;
    futures_util::stream::iter(requests)
        .map(|req| async move {
            match req.send().await {
                Ok(resp) => Reply::try_read(resp).await,
                Err(e) => Err(format!("{e:?}")),
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}
