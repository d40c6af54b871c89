//! The static file server of `meshgate up`: serves `web/` (the demo single-page app) on a
//! loopback port for the edge to route `/` to.
//!
//! Written by hand on tokio because the proxy engine has no file server and the `meshgate`
//! crate has no HTTP server library of its own (Pingora serves proxies, not files): this
//! is a few dozen lines of HTTP/1.1 for one trusted client, the local edge. It answers
//! `GET` and `HEAD` for regular files under the root and nothing else:
//!
//! - paths are percent-decoded, then every segment must be a plain name (letters, digits,
//!   `-`, `_`, `.`, not starting with `.`), so `..`, hidden files and encoded separators
//!   never reach the file system; the resolved file must still lie under the root after
//!   symlinks are followed;
//! - `/` and a directory path give that directory's `index.html`; there is no listing;
//! - keep-alive is supported, request bodies are not (a request with a body is refused and
//!   the connection closed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest file served (the app's files are a few KiB).
const MAX_FILE: u64 = 16 * 1024 * 1024;
/// How long an idle keep-alive connection, or a slow request head, is waited for.
const IDLE: Duration = Duration::from_secs(60);

/// The same policy the mock edge in `tests/browser` sends: the app works without inline
/// scripts or styles.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Serves files under `root` (a canonical directory) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, root: PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: the next accept may work.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let _ = connection(stream, &root).await;
        });
    }
}

/// A parsed request head: what the answer depends on.
struct Head {
    method: String,
    target: String,
    keep_alive: bool,
    has_body: bool,
}

async fn connection(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let head = parse_head(&buf[..head_len]);
        buf.drain(..head_len);
        let Some(head) = head else {
            stream
                .write_all(&response(
                    400,
                    "text/plain",
                    b"bad request\n",
                    false,
                    true,
                    &[],
                ))
                .await?;
            return Ok(());
        };
        let close = !head.keep_alive || head.has_body;
        let answer = if head.has_body {
            response(
                413,
                "text/plain",
                b"request bodies are not accepted\n",
                false,
                true,
                &[],
            )
        } else {
            answer(&head, root, close).await
        };
        stream.write_all(&answer).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads until `buf` holds a whole request head; returns its length, or `None` when the
/// peer closed (or idled out) between requests.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut has_body = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            has_body = true;
        }
    }
    Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
        has_body,
    })
}

async fn answer(head: &Head, root: &Path, close: bool) -> Vec<u8> {
    let is_head = head.method == "HEAD";
    if head.method != "GET" && !is_head {
        return response(
            405,
            "text/plain",
            b"method not allowed\n",
            false,
            close,
            &[("Allow", "GET, HEAD")],
        );
    }
    let not_found = || response(404, "text/plain", b"not found\n", is_head, close, &[]);
    let Some(file) = resolve(root, &head.target) else {
        return not_found();
    };
    let Ok(meta) = tokio::fs::metadata(&file).await else {
        return not_found();
    };
    if !meta.is_file() || meta.len() > MAX_FILE {
        return not_found();
    }
    let Ok(body) = tokio::fs::read(&file).await else {
        return not_found();
    };
    response(200, content_type(&file), &body, is_head, close, &[])
}

/// Maps a request target to a file under `root`, or `None` when it must not be served.
pub fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    if !path.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(path)?;
    let mut file = root.to_path_buf();
    let mut segments = decoded.split('/').skip(1).peekable();
    let mut is_dir = true;
    while let Some(seg) = segments.next() {
        if seg.is_empty() {
            // Only a trailing slash (`/`, `/docs/`) may leave a segment empty.
            if segments.peek().is_some() {
                return None;
            }
            break;
        }
        let plain = !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !plain {
            return None;
        }
        file.push(seg);
        is_dir = false;
    }
    if is_dir || file.is_dir() {
        file.push("index.html");
    }
    // Symlinks inside the root are followed, but only to files that are still inside it.
    let real = file.canonicalize().ok()?;
    real.starts_with(root).then_some(real)
}

fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` for a file, by extension.
pub fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    close: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-cache\r\n\
         Content-Security-Policy: {CSP}\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: same-origin\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../web")
            .canonicalize()
            .expect("web/ exists")
    }

    #[test]
    fn paths_map_to_files_under_the_root() {
        let r = root();
        assert_eq!(resolve(&r, "/"), Some(r.join("index.html")));
        assert_eq!(resolve(&r, "/?x=1"), Some(r.join("index.html")));
        assert_eq!(resolve(&r, "/app.js"), Some(r.join("app.js")));
        assert_eq!(resolve(&r, "/%61pp.js"), Some(r.join("app.js")));
        for bad in [
            "/../Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/..%2fCargo.toml",
            "/.git/config",
            "//etc/passwd",
            "/a//b",
            "/app.js%00",
            "/%zz",
            "app.js",
            "/missing.js",
            "/a\\b",
        ] {
            assert_eq!(resolve(&r, bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types() {
        for (f, t) in [
            ("a.html", "text/html; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.svg", "image/svg+xml"),
            ("a.png", "image/png"),
            ("a.bin", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(f)), t);
        }
    }

    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_get_and_head_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, root()));

        // Two requests on one connection: keep-alive works, then `close` ends it.
        let both = exchange(
            addr,
            "GET /favicon.svg HTTP/1.1\r\nHost: x\r\n\r\n\
             HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
        assert!(both.contains("Content-Type: image/svg+xml"), "{both}");
        assert!(
            both.contains("Content-Type: text/html; charset=utf-8"),
            "{both}"
        );
        assert!(
            !both.contains("<!doctype html>"),
            "HEAD has no body: {both}"
        );

        let r = exchange(
            addr,
            "GET /../Cargo.toml HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = exchange(addr, "POST / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 405") && r.contains("Allow: GET, HEAD"),
            "{r}"
        );
        let r = exchange(addr, "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        let r = exchange(addr, "nonsense\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        server.abort();
    }
}
