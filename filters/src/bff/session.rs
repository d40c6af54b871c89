//! What a session and a pending login hold, how they travel (sealed records, cookies), and
//! the `return_to` rule.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// A logged-in session, sealed before it reaches the store. Holds tokens: never logged
/// (`Debug` prints the subject only).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) sub: String,
    #[serde(default)]
    pub(crate) sid: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    pub(crate) access_token: String,
    /// Unix seconds.
    pub(crate) access_expires_at: u64,
    #[serde(default)]
    pub(crate) refresh_token: Option<String>,
    #[serde(default)]
    pub(crate) id_token: Option<String>,
    pub(crate) created_at: u64,
    /// Absolute end of the session (Unix seconds).
    pub(crate) expires_at: u64,
    /// Last time the idle timer was pushed back (Unix seconds).
    pub(crate) touched_at: u64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("sub", &self.sub)
            .finish_non_exhaustive()
    }
}

/// A login in progress, between `/login` and `/callback`: filed under the pre-login
/// cookie's handle, so `state`, `nonce` and the PKCE verifier never reach the browser
/// and a callback can be used once.
#[derive(Serialize, Deserialize)]
pub(crate) struct PreLogin {
    pub(crate) state: String,
    pub(crate) nonce: String,
    pub(crate) verifier: String,
    pub(crate) return_to: String,
    pub(crate) redirect_uri: String,
}

/// The value of cookie `name` in the request's `Cookie` headers (the first occurrence).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

/// The `Cookie` header without the cookies in `names`, or `None` when nothing remains.
pub(crate) fn cookies_without(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty()
                && !names
                    .iter()
                    .any(|n| pair.split_once('=').map_or(*pair, |(k, _)| k) == *n)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Longest `return_to` kept.
const MAX_RETURN_TO: usize = 2048;

/// `raw` when it is a same-origin relative path, `/` otherwise.
///
/// Accepted: starts with a single `/` followed by something that is not `/` or `\`, no
/// control characters, no backslashes anywhere, no scheme, and no encoded slash or
/// backslash that a later decoding step could turn into `//` (`/%2F%2Fevil.com`). That
/// refuses `//evil.com`, `/\evil.com`, `https:evil.com`, `javascript:…` and the like.
pub(crate) fn safe_return_to(raw: &str) -> String {
    let ok = raw.len() <= MAX_RETURN_TO
        && raw.starts_with('/')
        && !raw[1..].starts_with(['/', '\\'])
        && !raw
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'\\' || b == b' ' || b >= 0x80)
        && !{
            let lower = raw.to_ascii_lowercase();
            lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00")
        };
    if ok {
        raw.to_string()
    } else {
        "/".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_redirects_fall_back_to_the_root() {
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "https:evil.com",
            "https://evil.com",
            "javascript:alert(1)",
            "/%2F%2Fevil.com",
            "/%2f%2fevil.com",
            "/%5Cevil.com",
            "/ok\r\nSet-Cookie: x=1",
            "/tab\there",
            "evil.com",
            "",
            "/\u{0}x",
            "/caf\u{e9}",
            "///evil.com",
        ] {
            assert_eq!(safe_return_to(bad), "/", "{bad:?}");
        }
        for good in ["/", "/orders", "/orders?id=3&x=%20y", "/a/b#frag"] {
            assert_eq!(safe_return_to(good), good);
        }
        assert_eq!(safe_return_to(&format!("/{}", "a".repeat(3000))), "/");
    }

    #[test]
    fn cookies_are_found_and_removed_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "theme=dark; __Host-meshgate=abc.def"
                .parse()
                .expect("value"),
        );
        h.append(
            http::header::COOKIE,
            "__Host-meshgate-login=x; __Host-meshgatex=y"
                .parse()
                .expect("value"),
        );
        assert_eq!(cookie(&h, "__Host-meshgate"), Some("abc.def"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(
            cookies_without(&h, &["__Host-meshgate", "__Host-meshgate-login"]).as_deref(),
            Some("theme=dark; __Host-meshgatex=y")
        );
        let mut only = HeaderMap::new();
        only.insert(
            http::header::COOKIE,
            "__Host-meshgate=a".parse().expect("value"),
        );
        assert_eq!(cookies_without(&only, &["__Host-meshgate"]), None);
    }
}
