//! Turning a request into its rate-limit key, without allocating.
//!
//! A key is never built as a string: its parts are fed straight into a hasher — SipHash with
//! a per-limiter random seed for the local table (so a client cannot aim many keys at one
//! bucket), SHA-256 for Redis (stable across replicas, and no user id or address is stored
//! in Redis in the clear). Each part is written as tag, length, bytes, so `[user, ip]` for
//! user "a" can never hash like another user whose name happens to end in an address.
//!
//! Absent parts fall back to the client address: a request without a user, API client or
//! header is limited per address instead of bypassing the limit (skipping) or sharing one
//! bucket with every other anonymous caller (where a few would lock out the rest).

use std::hash::Hasher;
use std::net::IpAddr;

use http::HeaderName;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use super::spec::RateLimitKeySpec;
use crate::{RequestCtx, SpecError};

/// One element of `key:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyPart {
    /// The client address the engine computed (peer, or right-most untrusted XFF hop).
    Ip,
    /// `ctx.user`; the client address when nobody is logged in.
    User,
    /// `ctx.api_client`; the client address when no API key was verified.
    ApiKey,
    /// Every value of this request header, in order; the client address when absent.
    Header(HeaderName),
    /// The route: one bucket for the whole route. The limiter is already per route, so this
    /// contributes a constant.
    Route,
}

/// Anything a key can be fed into.
pub(crate) trait KeySink {
    /// Adds one tagged part.
    fn part(&mut self, tag: u8, bytes: &[u8]);
}

impl KeySink for std::hash::DefaultHasher {
    fn part(&mut self, tag: u8, bytes: &[u8]) {
        self.write_u8(tag);
        self.write_usize(bytes.len());
        self.write(bytes);
    }
}

impl KeySink for Sha256 {
    fn part(&mut self, tag: u8, bytes: &[u8]) {
        self.update([tag]);
        self.update((bytes.len() as u64).to_be_bytes());
        self.update(bytes);
    }
}

/// Compiles `key:` into parts, reporting every unknown or malformed one.
pub(crate) fn compile_key(spec: &RateLimitKeySpec, errors: &mut Vec<SpecError>) -> Vec<KeyPart> {
    let raw: Vec<(String, &str)> = match spec {
        RateLimitKeySpec::One(s) => vec![("key".to_string(), s.as_str())],
        RateLimitKeySpec::Many(list) => {
            if list.is_empty() {
                errors.push(SpecError::new("key", "needs at least one part"));
            }
            list.iter()
                .enumerate()
                .map(|(i, s)| (format!("key[{i}]"), s.as_str()))
                .collect()
        }
    };
    let mut parts = Vec::with_capacity(raw.len());
    for (path, s) in raw {
        let part = match s.trim() {
            "ip" => KeyPart::Ip,
            "user" => KeyPart::User,
            "api_key" => KeyPart::ApiKey,
            "route" => KeyPart::Route,
            other => {
                match other.strip_prefix("header:") {
                    Some(name) => match HeaderName::from_bytes(name.trim().as_bytes()) {
                        Ok(n) => KeyPart::Header(n),
                        Err(_) => {
                            errors.push(SpecError::new(
                                path,
                                format!("invalid header name {name:?}"),
                            ));
                            continue;
                        }
                    },
                    None => {
                        errors.push(SpecError::new(
                        path,
                        format!("unknown key {other:?}: use ip, user, api_key, header:NAME or route"),
                    ));
                        continue;
                    }
                }
            }
        };
        if parts.contains(&part) {
            errors.push(SpecError::new(path, format!("{s:?} is listed twice")));
            continue;
        }
        parts.push(part);
    }
    parts
}

fn feed_ip(ip: IpAddr, sink: &mut impl KeySink) {
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) is the same client as a.b.c.d on dual-stack listeners.
    match ip.to_canonical() {
        IpAddr::V4(a) => sink.part(b'4', &a.octets()),
        IpAddr::V6(a) => sink.part(b'6', &a.octets()),
    }
}

/// Feeds the request's key into `sink`.
pub(crate) fn feed_key(
    parts: &[KeyPart],
    header: &RequestHeader,
    ctx: &RequestCtx,
    route: &str,
    sink: &mut impl KeySink,
) {
    for part in parts {
        match part {
            KeyPart::Ip => feed_ip(ctx.client_ip, sink),
            KeyPart::User => match &ctx.user {
                Some(user) => sink.part(b'u', user.as_bytes()),
                None => feed_ip(ctx.client_ip, sink),
            },
            KeyPart::ApiKey => match &ctx.api_client {
                Some(client) => sink.part(b'k', client.as_bytes()),
                None => feed_ip(ctx.client_ip, sink),
            },
            KeyPart::Header(name) => {
                let mut any = false;
                for value in header.headers.get_all(name) {
                    sink.part(b'h', value.as_bytes());
                    any = true;
                }
                if !any {
                    feed_ip(ctx.client_ip, sink);
                }
            }
            KeyPart::Route => sink.part(b'r', route.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn parts(v: serde_json::Value) -> Result<Vec<KeyPart>, Vec<SpecError>> {
        let spec: RateLimitKeySpec = serde_json::from_value(v).expect("shape");
        let mut errors = Vec::new();
        let p = compile_key(&spec, &mut errors);
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }

    /// The key under a fixed seed, so calls are comparable.
    fn key(parts: &[KeyPart], header: &RequestHeader, ctx: &RequestCtx) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        feed_key(parts, header, ctx, "r", &mut h);
        h.finish()
    }

    #[test]
    fn key_specs_compile_and_report_every_error() {
        assert_eq!(parts(serde_json::json!("ip")).expect("ok"), [KeyPart::Ip]);
        assert_eq!(
            parts(serde_json::json!(["route", "header:X-Tenant"])).expect("ok"),
            [
                KeyPart::Route,
                KeyPart::Header(HeaderName::from_static("x-tenant"))
            ]
        );
        let errs =
            parts(serde_json::json!(["ip", "cookie", "header:bad name", "ip"])).expect_err("bad");
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["key[1]", "key[2]", "key[3]"]);
        assert!(parts(serde_json::json!([])).is_err());
    }

    #[test]
    fn absent_parts_fall_back_to_the_client_address() {
        let req = RequestHeader::build("GET", b"/", None).expect("req");
        let mut ctx = RequestCtx {
            client_ip: "10.0.0.1".parse().expect("ip"),
            ..RequestCtx::default()
        };
        let user = [KeyPart::User];
        let ip = [KeyPart::Ip];
        let anonymous = key(&user, &req, &ctx);
        // The fallback is per address, like an ip key (so it cannot be a shared bucket).
        assert_eq!(anonymous, key(&ip, &req, &ctx));
        ctx.client_ip = "10.0.0.2".parse().expect("ip");
        assert_ne!(anonymous, key(&user, &req, &ctx));
        // A user is one key wherever they come from.
        ctx.user = Some(Arc::from("alice"));
        let alice = key(&user, &req, &ctx);
        ctx.client_ip = "10.0.0.3".parse().expect("ip");
        assert_eq!(alice, key(&user, &req, &ctx));
        // A user literally named like an address is not that address's anonymous bucket.
        ctx.user = Some(Arc::from("10.0.0.3"));
        assert_ne!(key(&user, &req, &ctx), key(&ip, &req, &ctx));
    }

    #[test]
    fn api_key_and_header_keys() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        let mut ctx = RequestCtx::default();
        let api = [KeyPart::ApiKey];
        let without = key(&api, &req, &ctx);
        ctx.api_client = Some(Arc::from("client-a"));
        assert_ne!(without, key(&api, &req, &ctx));

        let tenant = [KeyPart::Header(HeaderName::from_static("x-tenant"))];
        let missing = key(&tenant, &req, &ctx);
        assert_eq!(missing, key(&[KeyPart::Ip], &req, &ctx));
        req.insert_header("x-tenant", "t1").expect("h");
        let t1 = key(&tenant, &req, &ctx);
        assert_ne!(t1, missing);
        // A second value is a different key: appending one cannot borrow t1's bucket.
        req.append_header("x-tenant", "t2").expect("h");
        assert_ne!(t1, key(&tenant, &req, &ctx));
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_client() {
        let req = RequestHeader::build("GET", b"/", None).expect("req");
        let v4 = RequestCtx {
            client_ip: "192.0.2.7".parse().expect("ip"),
            ..RequestCtx::default()
        };
        let mapped = RequestCtx {
            client_ip: "::ffff:192.0.2.7".parse().expect("ip"),
            ..RequestCtx::default()
        };
        assert_eq!(
            key(&[KeyPart::Ip], &req, &v4),
            key(&[KeyPart::Ip], &req, &mapped)
        );
    }

    #[test]
    fn parts_are_length_delimited() {
        let mut a = Sha256::new();
        a.part(b'h', b"ab");
        a.part(b'h', b"c");
        let mut b = Sha256::new();
        b.part(b'h', b"a");
        b.part(b'h', b"bc");
        assert_ne!(a.finalize(), b.finalize());
    }
}
