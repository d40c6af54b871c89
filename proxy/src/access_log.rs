//! The access log: one JSON line per request on stdout.
//!
//! Written by hand rather than through `tracing`'s JSON formatter: that path built a
//! record, visited every field through dynamic dispatch and wrote each line with its own
//! `write` call, which profiling put at about a sixth of a proxied request's instructions.
//! Lines are formatted into a shared buffer and a background thread writes it out every
//! 50 ms (or sooner when it grows), so the request path makes no system call for logging.
//! If stdout blocks and the buffer reaches its cap, lines are dropped and counted rather
//! than stalling requests.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use crate::metrics::METRICS;

/// Buffered bytes above which the writer thread is woken early.
const WAKE_AT: usize = 64 * 1024;
/// Buffered bytes above which new lines are dropped (stdout is not keeping up).
const CAP: usize = 8 * 1024 * 1024;
/// Longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
}

static SHARED: LazyLock<Shared> = LazyLock::new(|| Shared {
    buf: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
    wake: Condvar::new(),
});
static STARTED: AtomicBool = AtomicBool::new(false);
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the access log on or off (from `runtime.access_log`; applied on reload too).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether lines are being written.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn start_writer() {
    // A plain load first: every line passes here, and a swap is a locked instruction.
    if STARTED.load(Ordering::Acquire) || STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| loop {
            let chunk = {
                let guard = SHARED
                    .buf
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (mut guard, _) = SHARED
                    .wake
                    .wait_timeout(guard, FLUSH_EVERY)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                std::mem::take(&mut *guard)
            };
            if !chunk.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&chunk);
                let _ = out.flush();
            }
        });
    if spawned.is_err() {
        // Without the thread, fall back to writing inline (see `emit`).
        STARTED.store(false, Ordering::Release);
    }
}

/// Writes out whatever is buffered (called before the process exits).
pub fn flush() {
    let chunk = {
        let mut guard = SHARED
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *guard)
    };
    if !chunk.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&chunk);
        let _ = out.flush();
    }
}

/// One request's log record. Strings are borrowed from the request; nothing is copied
/// until the line is formatted.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// Request id.
    pub request_id: &'a str,
    /// Client address used for policy.
    pub client: Option<std::net::IpAddr>,
    /// Listener name.
    pub listener: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// Host used for routing.
    pub host: &'a str,
    /// Matched route, empty if none.
    pub route: &'a str,
    /// Chosen cluster.
    pub cluster: &'a str,
    /// Last endpoint tried.
    pub endpoint: &'a str,
    /// Status sent (0: none).
    pub status: u16,
    /// Milliseconds from request header to log.
    pub duration_ms: f64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Upstream attempts.
    pub attempts: u32,
    /// Why the last attempt was a retry.
    pub retry_reason: Option<&'a str>,
    /// Why a wanted retry did not happen.
    pub retry_skipped: Option<&'a str>,
    /// Name of the verified API key's client.
    pub api_client: Option<&'a str>,
    /// Verified subject (`sub`) of a bearer token or session.
    pub user: Option<&'a str>,
    /// Mesh identity of the calling service (mTLS).
    pub caller: Option<&'a str>,
    /// Error summary, if the request failed.
    pub error: Option<&'a str>,
}

fn push_str(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":\"");
    // Most values need no escaping: copy them in one go.
    if !needs_escape(value.as_bytes()) {
        out.push_str(value);
        out.push('"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// True when `bytes` holds a control character, `"` or `\\` (what JSON strings must escape).
/// Eight bytes at a time: a line checks about a hundred bytes, and the byte-wise scan was
/// a visible part of its cost.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte of `w` is below `n` (n <= 0x80); exact for the word as a whole.
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH != 0;
    let has = |w: u64, b: u8| below(w ^ (ONES * u64::from(b)), 1);
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        if below(w, 0x20) || has(w, b'"') || has(w, b'\\') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Appends a decimal integer without going through `core::fmt` (measurably cheaper on a
/// per-request path that prints five of them).
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

fn push_field_u64(out: &mut String, key: &str, n: u64) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    push_u64(out, n);
}

thread_local! {
    /// The RFC 3339 text of the current second; formatting a date costs more than the rest
    /// of a log line, and a busy proxy logs thousands of lines per second.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Appends `2026-11-25T10:21:36.123456Z`.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let full = humantime::format_rfc3339_seconds(now).to_string();
            cached.1 = full.trim_end_matches('Z').to_string();
            cached.0 = secs;
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    let micros = u64::from(since.subsec_micros());
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    for &b in &digits {
        out.push(char::from(b));
    }
    out.push('Z');
}

/// Formats one line (without the trailing newline). Public for tests.
pub fn format(e: &Entry<'_>, now: SystemTime) -> String {
    let mut out = String::with_capacity(384);
    format_into(&mut out, e, now);
    out
}

/// Appends one line (without the trailing newline) to `out`.
fn format_into(out: &mut String, e: &Entry<'_>, now: SystemTime) {
    out.push_str("{\"timestamp\":\"");
    push_timestamp(out, now);
    out.push_str("\",\"level\":\"INFO\"");
    push_str(out, "request_id", e.request_id);
    if let Some(c) = e.client {
        out.push_str(",\"client\":\"");
        crate::forwarding::push_ip(out, c);
        out.push('"');
    }
    push_str(out, "listener", e.listener);
    push_str(out, "method", e.method);
    push_str(out, "path", e.path);
    push_str(out, "host", e.host);
    push_str(out, "route", e.route);
    push_str(out, "cluster", e.cluster);
    push_str(out, "endpoint", e.endpoint);
    push_field_u64(out, "status", u64::from(e.status));
    // Milliseconds with three decimals, from whole microseconds.
    let micros = (e.duration_ms * 1000.0).round().max(0.0) as u64;
    out.push_str(",\"duration_ms\":");
    push_u64(out, micros / 1000);
    out.push('.');
    let frac = micros % 1000;
    if frac < 100 {
        out.push('0');
    }
    if frac < 10 {
        out.push('0');
    }
    push_u64(out, frac);
    push_field_u64(out, "bytes_sent", e.bytes_sent);
    push_field_u64(out, "bytes_received", e.bytes_received);
    push_field_u64(out, "attempts", u64::from(e.attempts));
    if let Some(r) = e.retry_reason {
        push_str(out, "retry_reason", r);
    }
    if let Some(r) = e.retry_skipped {
        push_str(out, "retry_skipped", r);
    }
    if let Some(c) = e.api_client {
        push_str(out, "api_client", c);
    }
    if let Some(u) = e.user {
        push_str(out, "user", u);
    }
    if let Some(c) = e.caller {
        push_str(out, "caller", c);
    }
    if let Some(err) = e.error {
        push_str(out, "error", err);
    }
    out.push('}');
}

/// Logs one request.
pub fn emit(e: &Entry<'_>) {
    if !enabled() {
        return;
    }
    LINE.with(|cell| {
        // Formatting logs nothing, so the buffer is never borrowed twice; if it were, the
        // line would be skipped rather than the request panicking.
        let Ok(mut line) = cell.try_borrow_mut() else {
            return;
        };
        line.clear();
        format_into(&mut line, e, SystemTime::now());
        line.push('\n');
        write_line(line.as_bytes());
        // A rare long line (a long path or error) does not stay allocated.
        if line.capacity() > KEEP_LINE_CAPACITY {
            *line = String::with_capacity(LINE_CAPACITY);
        }
    });
}

thread_local! {
    /// The line being formatted, reused: one allocation per thread instead of per request.
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(LINE_CAPACITY));
}

/// Room for a typical line.
const LINE_CAPACITY: usize = 512;
/// Capacity above which the reused line buffer is given back after use.
const KEEP_LINE_CAPACITY: usize = 4096;

fn write_line(line: &[u8]) {
    start_writer();
    if !STARTED.load(Ordering::Acquire) {
        let _ = std::io::stdout().lock().write_all(line);
        return;
    }
    let mut guard = SHARED
        .buf
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.len() + line.len() > CAP {
        drop(guard);
        METRICS.access_log_dropped.inc();
        return;
    }
    guard.extend_from_slice(line);
    let wake = guard.len() >= WAKE_AT;
    drop(guard);
    if wake {
        SHARED.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_valid_json_with_escaping() {
        let e = Entry {
            request_id: "abc",
            client: "127.0.0.1".parse().ok(),
            method: "GET",
            path: "/a\"b\\c\u{1}",
            host: "h",
            status: 200,
            duration_ms: 1.5,
            attempts: 1,
            retry_skipped: Some("deadline"),
            ..Entry::default()
        };
        let line = format(&e, SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["path"], "/a\"b\\c\u{1}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["retry_skipped"], "deadline");
        assert_eq!(v["client"], "127.0.0.1");
        assert!(v.get("error").is_none());
        assert_eq!(v["duration_ms"].as_f64(), Some(1.5));
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn the_word_wise_escape_check_matches_the_byte_wise_one() {
        let naive = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        // Every byte value at every position of strings of 1 to 17 bytes, on a background
        // of bytes that are close to the ones that count (0x1f..0x21, 0x5b..0x5d, 0x7f, 0x80).
        for fill in [b'a', 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff] {
            for len in 1..=17 {
                for pos in 0..len {
                    for b in 0..=255u8 {
                        let mut v = vec![fill; len];
                        v[pos] = b;
                        assert_eq!(needs_escape(&v), naive(&v), "{v:?}");
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("ünïcödé/pâth?q=1".as_bytes()));
    }

    #[test]
    fn numbers_and_timestamps_match_the_standard_formatting() {
        for n in [0u64, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_066_096_000_042);
        let mut s = String::new();
        push_timestamp(&mut s, t);
        assert_eq!(s, humantime::format_rfc3339_micros(t).to_string());
        for (ms, text) in [
            (0.0, "0.000"),
            (0.0405, "0.041"),
            (12.3456, "12.346"),
            (1000.0, "1000.000"),
        ] {
            let e = Entry {
                duration_ms: ms,
                ..Entry::default()
            };
            let line = format(&e, SystemTime::UNIX_EPOCH);
            assert!(line.contains(&format!("\"duration_ms\":{text},")), "{line}");
        }
    }
}
