//! The YAML of the BFF: the top-level `bff:` section, `stores.sessions`, and the `bff`
//! route filter's options.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jwt::Secret;
use crate::rate_limit::StoreBackend;
use crate::units::HumanDuration;
use crate::SpecError;

use super::crypto::SessionKey;

/// `bff:` — browser sessions at the edge (DESIGN §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BffSpec {
    /// Name of the entry in `providers` to log in with; it needs `client_id`.
    pub provider: String,
    /// Where the `login`, `callback`, `logout`, `user` and `backchannel-logout` endpoints
    /// live.
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// The session cookie.
    #[serde(default)]
    pub cookie: CookieSpec,
    /// Session lifetimes.
    #[serde(default)]
    pub session: SessionSpec,
    /// Header API calls must carry with the value `1` (CSRF proof: a cross-site form or
    /// link cannot set it).
    #[serde(default = "default_csrf_header")]
    pub csrf_header: String,
    /// Base64 key of at least 32 random bytes; sealed session records are keyed by it.
    pub session_key: Secret,
    /// The callback URL registered at the provider. When absent it is built from the
    /// request: `http(s)://<Host><base_path>/callback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// Where the provider sends the browser after logout (`post_logout_redirect_uri`);
    /// when absent, `http(s)://<Host>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect_uri: Option<String>,
}

/// `bff.cookie`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSpec {
    /// Cookie name; must start with `__Host-` (no Domain, Path=/, Secure).
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// `strict` (default) or `lax`.
    #[serde(default)]
    pub same_site: SameSite,
}

impl Default for CookieSpec {
    fn default() -> Self {
        Self {
            name: default_cookie_name(),
            same_site: SameSite::Strict,
        }
    }
}

/// `bff.cookie.same_site`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    /// Never sent on cross-site requests.
    #[default]
    Strict,
    /// Sent on top-level cross-site navigations.
    Lax,
}

/// `bff.session`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// A session unused this long ends.
    #[serde(default = "default_idle")]
    pub idle_timeout: HumanDuration,
    /// A session ends this long after login, used or not (and never outlives its refresh
    /// token's validity at the provider).
    #[serde(default = "default_absolute")]
    pub absolute_timeout: HumanDuration,
    /// Access tokens are refreshed when they expire within this margin.
    #[serde(default = "default_refresh_before")]
    pub refresh_before: HumanDuration,
}

impl Default for SessionSpec {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle(),
            absolute_timeout: default_absolute(),
            refresh_before: default_refresh_before(),
        }
    }
}

/// `stores.sessions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStoreSpec {
    /// `memory` (default; one replica) or `redis` (shared by replicas).
    #[serde(default)]
    pub backend: StoreBackend,
    /// Standalone Redis: `redis://[user:password@]host:port[/db]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redis Cluster seed nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// Longest one store operation may take before the request fails closed (503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Most sessions the memory store keeps (the ones closest to expiry make room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
}

/// `routes[].filters[].bff`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BffFilterSpec {
    /// Without a valid session: 401 (API calls) or a redirect to login (top-level
    /// navigations). When false, anonymous requests pass without `Authorization`.
    #[serde(default = "yes")]
    pub require_login: bool,
}

impl Default for BffFilterSpec {
    fn default() -> Self {
        Self {
            require_login: true,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_base_path() -> String {
    "/auth".to_string()
}
fn default_csrf_header() -> String {
    "X-CSRF".to_string()
}
fn default_cookie_name() -> String {
    "__Host-meshgate".to_string()
}
fn default_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}
fn default_absolute() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_refresh_before() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl BffSpec {
    /// Every problem with the section, paths relative to `bff`. The provider reference is
    /// checked by the config loader, which knows the providers.
    pub fn check(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        let bp = &self.base_path;
        if !bp.starts_with('/')
            || bp.len() < 2
            || bp.ends_with('/')
            || bp.contains("//")
            || !bp
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
        {
            errors.push(SpecError::new(
                "base_path",
                "must be an absolute path such as /auth (no trailing slash, no query)",
            ));
        }
        if !self.cookie.name.starts_with("__Host-")
            || self.cookie.name.len() <= "__Host-".len()
            || !self.cookie.name.bytes().all(is_token_byte)
        {
            errors.push(SpecError::new(
                "cookie.name",
                "must start with `__Host-` followed by token characters (the prefix pins \
                 the cookie to this host, Path=/ and Secure)",
            ));
        }
        if http::HeaderName::from_bytes(self.csrf_header.as_bytes()).is_err() {
            errors.push(SpecError::new("csrf_header", "is not a valid header name"));
        }
        if let Err(e) = SessionKey::from_base64(self.session_key.expose()) {
            errors.push(SpecError::new("session_key", e));
        }
        let s = &self.session;
        if s.idle_timeout.get() < Duration::from_secs(60) {
            errors.push(SpecError::new(
                "session.idle_timeout",
                "must be at least 1m",
            ));
        }
        if s.absolute_timeout.get() < s.idle_timeout.get() {
            errors.push(SpecError::new(
                "session.absolute_timeout",
                "must not be shorter than idle_timeout",
            ));
        }
        if s.refresh_before.get() > Duration::from_secs(3600) {
            errors.push(SpecError::new(
                "session.refresh_before",
                "must be at most 1h",
            ));
        }
        for (field, value) in [
            ("redirect_uri", &self.redirect_uri),
            ("post_logout_redirect_uri", &self.post_logout_redirect_uri),
        ] {
            if let Some(v) = value {
                let ok = url::Url::parse(v).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.fragment().is_none()
                });
                if !ok {
                    errors.push(SpecError::new(field, "must be an absolute http(s) URL"));
                }
            }
        }
        errors
    }
}

impl SessionStoreSpec {
    /// Problems with the section, paths relative to `stores.sessions`.
    pub fn check(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        match self.backend {
            StoreBackend::Memory => {
                if self.url.is_some() || !self.cluster.is_empty() {
                    errors.push(SpecError::new(
                        "backend",
                        "`url` and `cluster` need `backend: redis`",
                    ));
                }
            }
            StoreBackend::Redis => {
                // Exactly one of the two: both or neither is an error.
                if self.url.is_some() != self.cluster.is_empty() {
                    errors.push(SpecError::new(
                        "backend",
                        "redis needs exactly one of `url` or `cluster`",
                    ));
                }
            }
        }
        if let Some(t) = self.timeout {
            if t.get().is_zero() || t.get() > Duration::from_secs(5) {
                errors.push(SpecError::new("timeout", "must be between 1ms and 5s"));
            }
        }
        if self.max_sessions == Some(0) {
            errors.push(SpecError::new("max_sessions", "must be at least 1"));
        }
        errors
    }
}

/// RFC 9110 token characters (cookie names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> BffSpec {
        let mut v = serde_json::json!({
            "provider": "main",
            "session_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        });
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        serde_json::from_value(v).expect("spec parses")
    }

    #[test]
    fn defaults_match_the_design() {
        let s = spec(serde_json::json!({}));
        assert!(s.check().is_empty(), "{:?}", s.check());
        assert_eq!(s.base_path, "/auth");
        assert_eq!(s.cookie.name, "__Host-meshgate");
        assert_eq!(s.cookie.same_site, SameSite::Strict);
        assert_eq!(s.csrf_header, "X-CSRF");
        assert_eq!(s.session.idle_timeout.get(), Duration::from_secs(8 * 3600));
        assert!(BffFilterSpec::default().require_login);
    }

    #[test]
    fn a_short_or_missing_session_key_is_an_error_never_a_default() {
        let s = spec(serde_json::json!({ "session_key": "c2hvcnQ=" }));
        assert!(s.check().iter().any(|e| e.path == "session_key"));
        let missing: Result<BffSpec, _> =
            serde_json::from_value(serde_json::json!({ "provider": "main" }));
        assert!(missing.is_err_and(|e| e.to_string().contains("session_key")));
    }

    #[test]
    fn bad_values_are_reported_with_their_paths() {
        let s = spec(serde_json::json!({
            "base_path": "auth/",
            "cookie": { "name": "session" },
            "csrf_header": "bad header",
            "session": { "idle_timeout": "1s", "absolute_timeout": "1s" },
            "redirect_uri": "javascript:alert(1)",
        }));
        let paths: Vec<_> = s.check().into_iter().map(|e| e.path).collect();
        for p in [
            "base_path",
            "cookie.name",
            "csrf_header",
            "session.idle_timeout",
            "redirect_uri",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }
    }

    #[test]
    fn redis_sessions_need_exactly_one_target() {
        let s: SessionStoreSpec =
            serde_json::from_value(serde_json::json!({ "backend": "redis" })).expect("parses");
        assert_eq!(s.check().len(), 1);
        let s: SessionStoreSpec = serde_json::from_value(
            serde_json::json!({ "backend": "redis", "url": "redis://127.0.0.1:6379" }),
        )
        .expect("parses");
        assert!(s.check().is_empty());
    }
}
