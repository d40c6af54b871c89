//! Forwarding headers set on upstream requests: X-Forwarded-For, request ids and `traceparent`.
//!
//! Random ids come from `fastrand`, which is fast but not cryptographically secure: they are
//! unique enough for correlation, but must never be used as secrets or capabilities.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};

/// CIDR allow-list of proxies whose X-Forwarded-* headers we trust. Empty by default.
///
/// Addresses are compared in canonical form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// as dual-stack sockets report IPv4 peers) is treated as the IPv4 address it carries. A net
/// written in mapped form (`::ffff:10.0.0.0/104`) is likewise treated as the IPv4 net it
/// describes. Wider IPv6 nets such as `::/0` match native IPv6 addresses only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Builds the allow-list. Host bits in a net are ignored (`10.0.0.1/8` means `10.0.0.0/8`).
    pub fn new(nets: Vec<IpNet>) -> Self {
        let nets = nets.into_iter().map(canonical_net).collect();
        TrustedProxies { nets }
    }

    /// True when no proxy is trusted, so every forwarding header from clients is ignored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` (in canonical form, see the type docs) lies in one of the nets.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// A mapped-IPv4 net becomes the IPv4 net, so that it matches the canonical addresses
/// `contains` compares against.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(v4net) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4net);
            }
        }
    }
    net.trunc()
}

/// The client address to use for policy (rate limiting, logs).
///
/// If `peer` is trusted, `x_forwarded_for` (comma-separated; several header lines joined with
/// `,` by the caller) is walked from the right and the first hop that is not trusted is
/// returned; if every hop is trusted, the left-most one. If `peer` is untrusted the header is
/// ignored and `peer` is returned, so a client cannot choose its own address by sending the
/// header. An unparseable or empty hop stops the walk: the last address accepted so far (or
/// `peer`) is returned, because nothing left of garbage can be attributed to a trusted proxy.
///
/// Hops may be bare addresses, `[v6]`, `v4:port` or `[v6]:port`. The result is always in
/// canonical form (IPv4-mapped IPv6 becomes IPv4) so that one client gets one policy key.
#[must_use]
pub fn client_ip(peer: IpAddr, x_forwarded_for: Option<&str>, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let Some(header) = x_forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip.to_canonical();
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches(|c| c == ' ' || c == '\t');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(inner) = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    hop.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// The X-Forwarded-For value to send upstream.
///
/// A trusted peer with a non-empty existing value gets `existing + ", " + peer`; an untrusted
/// peer (whose header could be forged) or a missing/blank header gives just `peer`. The peer is
/// written in canonical form and IPv6 without brackets. `existing` has surrounding whitespace
/// trimmed but is otherwise passed on verbatim.
#[must_use]
pub fn forwarded_for(peer: IpAddr, existing: Option<&str>, trusted: &TrustedProxies) -> String {
    let peer = peer.to_canonical();
    let existing = existing
        .map(|value| value.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|value| !value.is_empty() && trusted.contains(peer));
    // Longest IPv6 text is 39 bytes (45 with an embedded IPv4), so one allocation suffices.
    let mut out = String::with_capacity(existing.map_or(0, |v| v.len() + 2) + 45);
    if let Some(existing) = existing {
        out.push_str(existing);
        out.push_str(", ");
    }
    push_ip(&mut out, peer);
    out
}

/// Appends `ip` as text: IPv4 dotted-quad digit by digit (every request writes the client
/// address twice, into `X-Forwarded-For` and the access log, and `core::fmt` made that a
/// visible cost), IPv6 through its `Display`.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        // Writing to a String cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Maximum length accepted by [`valid_request_id`].
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// True when a client-supplied `x-request-id` is safe to pass on and log: 1..=128 bytes, each
/// an ASCII letter, digit, `-`, `_`, `.` or `:`.
///
/// This covers UUIDs, ULIDs, hex ids and `host:counter` styles while keeping out whitespace,
/// quotes, `/` (ids end up in URLs and file names), `=`/`;`/`,` (they look like structured
/// header syntax) and everything non-ASCII. Base64 ids with `+/=` are rejected and replaced.
#[must_use]
pub fn valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new request id: 32 lowercase hex characters from a random `u128`.
///
/// Allocates exactly once (the returned String).
#[must_use]
pub fn new_request_id() -> String {
    let mut hex = [0u8; 32];
    write_hex(&mut hex, &fastrand::u128(..).to_be_bytes());
    ascii_string(&hex)
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`, which holds exactly two digits per byte.
/// Byte by byte through a table: a `u128` shifted a nibble at a time cost about twice as
/// many instructions, on a path every request takes twice (request id and traceparent).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_LOWER[usize::from(b >> 4)];
        pair[1] = HEX_LOWER[usize::from(b & 0x0f)];
    }
}

/// A `String` holding `ascii`, in one allocation (the input is always ASCII here, so the
/// UTF-8 check passes; it is the fast ASCII path).
fn ascii_string(ascii: &[u8]) -> String {
    String::from_utf8(ascii.to_vec()).unwrap_or_default()
}

/// W3C Trace Context `traceparent` (<https://www.w3.org/TR/trace-context/>).
///
/// A parsed or generated value always has non-zero `trace_id` and `parent_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id shared by every span of the trace; never zero.
    pub trace_id: u128,
    /// 8-byte id of the span that sent the request; never zero.
    pub parent_id: u64,
    /// Trace flags; bit 0 is "sampled". Other bits are carried through unchanged.
    pub flags: u8,
}

/// Length of a version-00 `traceparent`: `vv-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Parses a `traceparent` header value; `None` means "invalid, start a new trace".
    ///
    /// Accepts version `00` only in its exact 55-character form, and any later version
    /// (`01`..`fe`) whose first 55 characters have the version-00 layout and are either the
    /// whole value or followed by `-` (the spec's forward-compatibility rule; the extra fields
    /// are dropped). Rejects version `ff`, uppercase hex, and all-zero trace or parent ids.
    /// Surrounding spaces and tabs (HTTP optional whitespace) are ignored.
    #[must_use]
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
        let head = value.get(..TRACEPARENT_LEN)?;
        let version = parse_hex_lower(&head[0..2])?;
        match version {
            0xff => return None,
            0x00 if value.len() != TRACEPARENT_LEN => return None,
            _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let trace_id = parse_hex_lower(&head[3..35])?;
        let parent_id = u64::try_from(parse_hex_lower(&head[36..52])?).ok()?;
        let flags = u8::try_from(parse_hex_lower(&head[53..55])?).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Fresh trace: random non-zero trace id and parent id, flags 01 (sampled).
    #[must_use]
    pub fn new_root() -> TraceParent {
        TraceParent {
            trace_id: fastrand::u128(1..),
            parent_id: fastrand::u64(1..),
            flags: 0x01,
        }
    }

    /// This hop's span: same trace id and flags, new random non-zero parent id.
    #[must_use]
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// `00-{trace:032x}-{parent:016x}-{flags:02x}`: always version 00, 55 characters, one
    /// allocation.
    #[must_use]
    pub fn to_header(&self) -> String {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id.to_be_bytes());
        write_hex(&mut out[36..52], &self.parent_id.to_be_bytes());
        write_hex(&mut out[53..55], &[self.flags]);
        ascii_string(&out)
    }
}

/// Parses up to 32 lowercase hex digits; uppercase, signs and anything else are rejected
/// (unlike `from_str_radix`, which accepts both case and a leading `+`).
fn parse_hex_lower(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(nibble))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A panic is how a test reports failure.
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut cases: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "100.9.10.99",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        // Every octet value in every position.
        for o in 0..=255u8 {
            cases.push(IpAddr::from([o, 255 - o, o / 2, o.wrapping_mul(7)]));
        }
        for case in cases {
            let mut out = String::from("x");
            push_ip(&mut out, case);
            assert_eq!(out, format!("x{case}"));
        }
    }

    #[test]
    fn trusted_proxies_membership() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8", "192.168.1.7/32"]);
        assert!(!t.is_empty());
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("fe80::1")));
        // Mapped addresses match IPv4 nets.
        assert!(t.contains(ip("::ffff:10.9.8.7")));
        assert!(!t.contains(ip("::ffff:11.0.0.1")));
        assert!(TrustedProxies::default().is_empty());
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn mapped_nets_match_ipv4() {
        let t = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(t.contains(ip("10.2.3.4")));
        assert!(t.contains(ip("::ffff:10.2.3.4")));
        assert!(!t.contains(ip("11.2.3.4")));
        // A wide IPv6 net does not silently trust all of IPv4.
        let t = trusted(&["::/0"]);
        assert!(t.contains(ip("2001:db8::1")));
        assert!(!t.contains(ip("::ffff:1.2.3.4")));
        assert!(!t.contains(ip("1.2.3.4")));
        // Host bits are ignored.
        assert!(trusted(&["10.0.0.1/8"]).contains(ip("10.200.0.0")));
    }

    #[test]
    fn untrusted_peer_ignores_spoofed_header() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.9");
        assert_eq!(client_ip(peer, Some("1.1.1.1"), &t), peer);
        assert_eq!(client_ip(peer, Some("10.0.0.1, 1.1.1.1"), &t), peer);
        assert_eq!(client_ip(peer, None, &t), peer);
        assert_eq!(
            forwarded_for(peer, Some("1.1.1.1, 10.0.0.1"), &t),
            "203.0.113.9"
        );
        // Nothing is trusted by default.
        let none = TrustedProxies::default();
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("1.1.1.1"), &none),
            ip("10.0.0.1")
        );
        assert_eq!(
            forwarded_for(ip("10.0.0.1"), Some("1.1.1.1"), &none),
            "10.0.0.1"
        );
    }

    #[test]
    fn trusted_peer_walks_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        assert_eq!(client_ip(peer, Some("1.1.1.1"), &t), ip("1.1.1.1"));
        // The client forged the left-most entry; the right-most untrusted hop wins.
        assert_eq!(
            client_ip(peer, Some("6.6.6.6, 2.2.2.2, 10.0.0.5"), &t),
            ip("2.2.2.2")
        );
        assert_eq!(
            client_ip(peer, Some("6.6.6.6,2.2.2.2,10.0.0.5"), &t),
            ip("2.2.2.2")
        );
        // All trusted: the left-most one.
        assert_eq!(
            client_ip(peer, Some("10.0.0.9, 10.0.0.5"), &t),
            ip("10.0.0.9")
        );
        assert_eq!(client_ip(peer, None, &t), peer);
    }

    #[test]
    fn mixed_families_and_mapped_addresses() {
        let t = trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let peer = ip("2001:db8:ffff::1");
        assert_eq!(
            client_ip(peer, Some("2001:db8:1::7, 10.1.1.1, 2001:db8:ffff::2"), &t),
            ip("2001:db8:1::7")
        );
        assert_eq!(
            client_ip(peer, Some("1.2.3.4, ::ffff:10.0.0.3"), &t),
            ip("1.2.3.4")
        );
        // Results are canonical: the mapped client comes back as IPv4.
        assert_eq!(client_ip(peer, Some("::ffff:1.2.3.4"), &t), ip("1.2.3.4"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), Some("5.6.7.8"), &t),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(ip("::ffff:8.8.8.8"), Some("5.6.7.8"), &t),
            ip("8.8.8.8")
        );
        // Bracketed and port forms.
        assert_eq!(
            client_ip(peer, Some("[2001:db8:1::7]"), &t),
            ip("2001:db8:1::7")
        );
        assert_eq!(
            client_ip(peer, Some("[2001:db8:1::7]:443"), &t),
            ip("2001:db8:1::7")
        );
        assert_eq!(client_ip(peer, Some("1.2.3.4:5678"), &t), ip("1.2.3.4"));
    }

    #[test]
    fn garbage_hops_stop_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        assert_eq!(
            client_ip(peer, Some("1.1.1.1, unknown, 10.0.0.2"), &t),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(peer, Some("1.1.1.1, garbage"), &t), peer);
        assert_eq!(
            client_ip(peer, Some("1.1.1.1, 10.0.0.3, 10.0.0.2,"), &t),
            peer
        );
        assert_eq!(
            client_ip(peer, Some("1.1.1.1, , 10.0.0.2"), &t),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(peer, Some("300.1.1.1"), &t), peer);
        assert_eq!(client_ip(peer, Some("[1.1.1.1]"), &t), peer);
        assert_eq!(
            client_ip(peer, Some("_hidden, 10.0.0.2"), &t),
            ip("10.0.0.2")
        );
        // Garbage left of the first untrusted hop is never reached.
        assert_eq!(client_ip(peer, Some("garbage, 1.1.1.1"), &t), ip("1.1.1.1"));
        // Empty list.
        assert_eq!(client_ip(peer, Some(""), &t), peer);
        assert_eq!(client_ip(peer, Some("  "), &t), peer);
        assert_eq!(client_ip(peer, Some(","), &t), peer);
    }

    #[test]
    fn forwarded_for_appends_for_trusted_peers() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(
            forwarded_for(ip("10.0.0.1"), Some("1.1.1.1"), &t),
            "1.1.1.1, 10.0.0.1"
        );
        assert_eq!(
            forwarded_for(ip("fd00::1"), Some(" 1.1.1.1, 10.0.0.2 "), &t),
            "1.1.1.1, 10.0.0.2, fd00::1"
        );
        assert_eq!(forwarded_for(ip("10.0.0.1"), None, &t), "10.0.0.1");
        assert_eq!(forwarded_for(ip("10.0.0.1"), Some(""), &t), "10.0.0.1");
        assert_eq!(
            forwarded_for(ip("2001:db8::1"), Some("1.1.1.1"), &t),
            "2001:db8::1"
        );
        assert_eq!(
            forwarded_for(ip("::ffff:10.0.0.1"), Some("1.1.1.1"), &t),
            "1.1.1.1, 10.0.0.1"
        );
        let longest = ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(
            forwarded_for(longest, None, &t),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }

    #[test]
    fn request_id_validation() {
        for good in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "host-1:42",
            "a.b_c-d:e",
            &"x".repeat(128),
        ] {
            assert!(valid_request_id(good), "{good}");
        }
        for bad in [
            "",
            &"x".repeat(129),
            "has space",
            "a/b",
            "a+b=",
            "a;b",
            "a,b",
            "quote\"",
            "new\nline",
            "caf\u{e9}",
            "tab\t",
        ] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn new_request_ids_are_valid_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        assert!(valid_request_id(&a));
        assert_ne!(a, b);
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parses_valid() {
        assert_eq!(
            TraceParent::parse(VALID),
            Some(TraceParent {
                trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                parent_id: 0x00f0_67aa_0ba9_02b7,
                flags: 0x01,
            })
        );
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(unsampled.map(|t| t.flags), Some(0));
        assert!(TraceParent::parse(&format!(" {VALID}\t")).is_some());
    }

    #[test]
    fn traceparent_rejects_invalid() {
        let cases = [
            "",
            "00",
            // Uppercase hex anywhere.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Wrong lengths.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Version ff, with or without extras.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Bad separators and signs.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Future version with extra data not introduced by '-'.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what",
        ];
        for case in cases {
            assert_eq!(TraceParent::parse(case), None, "{case}");
        }
        // Non-ASCII straddling a fixed position must not panic.
        assert_eq!(TraceParent::parse(&"\u{e9}".repeat(40)), None);
    }

    #[test]
    fn traceparent_future_versions() {
        let expected = TraceParent::parse(VALID);
        assert!(expected.is_some());
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(future), expected);
        let extended =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like";
        assert_eq!(TraceParent::parse(extended), expected);
        // Propagated as version 00 without the unknown fields.
        assert_eq!(
            TraceParent::parse(extended)
                .map(|t| t.to_header())
                .as_deref(),
            Some(VALID)
        );
    }

    #[test]
    fn traceparent_round_trip_and_child() {
        assert_eq!(
            TraceParent::parse(VALID).map(|t| t.to_header()).as_deref(),
            Some(VALID)
        );
        let small = TraceParent {
            trace_id: 1,
            parent_id: 2,
            flags: 3,
        };
        assert_eq!(
            small.to_header(),
            "00-00000000000000000000000000000001-0000000000000002-03"
        );
        for _ in 0..1000 {
            let root = TraceParent::new_root();
            assert_ne!(root.trace_id, 0);
            assert_ne!(root.parent_id, 0);
            assert_eq!(root.flags, 0x01);
            let header = root.to_header();
            assert_eq!(header.len(), 55);
            assert_eq!(TraceParent::parse(&header), Some(root));
            let child = root.child();
            assert_eq!(child.trace_id, root.trace_id);
            assert_eq!(child.flags, root.flags);
            assert_ne!(child.parent_id, 0);
            assert_eq!(TraceParent::parse(&child.to_header()), Some(child));
        }
        let a = TraceParent::new_root();
        assert_ne!(a.child().parent_id, a.child().parent_id);
    }
}
