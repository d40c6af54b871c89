//! The YAML side of bearer-token validation: an OpenID Provider under `providers.<name>`
//! (shared with the BFF) and the `jwt` route filter.
//!
//! Specs keep what the user wrote (strings, lists) so `/config` shows it back unchanged —
//! except the client secret, which serializes as `[redacted]`. [`super::Provider`] and
//! [`super::JwtFilter`] are the checked runtime forms.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::HumanDuration;
use crate::SpecError;

/// Default `algorithms`: the asymmetric algorithms common OpenID Providers sign with.
pub const DEFAULT_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Default `leeway` for `exp` and `nbf`: absorbs clock skew between provider and proxy.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Largest `leeway` accepted: more would keep revoked-by-expiry tokens alive for long.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Default `jwks_cache_ttl`: how long fetched keys count as fresh.
pub const DEFAULT_JWKS_CACHE_TTL: Duration = Duration::from_secs(600);
/// Default `jwks_refetch_cooldown`: the least time between two JWKS fetches.
pub const DEFAULT_JWKS_REFETCH_COOLDOWN: Duration = Duration::from_secs(10);

/// YAML: one entry of the top-level `providers:` map.
///
/// ```yaml
/// providers:
///   main:
///     issuer: http://127.0.0.1:3001
///     client_id: web
///     client_secret: ${OIDC_CLIENT_SECRET}
///     audience: shop-api
///     scopes: [openid, profile, email, offline_access]
///     jwks_uri: http://127.0.0.1:3001/jwks       # optional; else from discovery
///     algorithms: [RS256, ES256, EdDSA]          # default
///     leeway: 30s
///     jwks_cache_ttl: 10m
///     jwks_refetch_cooldown: 10s
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The provider's issuer identifier. Tokens must carry exactly this `iss`, and the
    /// discovery document at `{issuer}/.well-known/openid-configuration` must name it.
    pub issuer: String,
    /// OAuth client id (used by the BFF, not by the `jwt` filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// OAuth client secret (used by the BFF); never shown by `/config` or in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    /// The `aud` value access tokens must carry to pass a `jwt` filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Scopes the BFF requests at login.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Where the signing keys are; when absent, taken from the discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Accepted signature algorithms. `none` and the HMAC family (`HS*`) are refused here,
    /// so no configuration can make a token verifiable with a shared secret.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (at most 5 minutes).
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// How long fetched keys count as fresh; after it they are refreshed in the background
    /// and still used until new ones arrive.
    #[serde(default = "default_ttl")]
    pub jwks_cache_ttl: HumanDuration,
    /// The least time between two JWKS fetches, whatever triggers them (a token with an
    /// unknown `kid`, expired keys, a provider that is down).
    #[serde(default = "default_cooldown")]
    pub jwks_refetch_cooldown: HumanDuration,
}

fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS
        .iter()
        .map(|a| (*a).to_string())
        .collect()
}

fn default_leeway() -> HumanDuration {
    HumanDuration(DEFAULT_LEEWAY)
}

fn default_ttl() -> HumanDuration {
    HumanDuration(DEFAULT_JWKS_CACHE_TTL)
}

fn default_cooldown() -> HumanDuration {
    HumanDuration(DEFAULT_JWKS_REFETCH_COOLDOWN)
}

impl ProviderSpec {
    /// A spec with `issuer` and every other field at its default, for code and tests that
    /// build providers without YAML.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: None,
            client_secret: None,
            audience: None,
            scopes: Vec::new(),
            jwks_uri: None,
            algorithms: default_algorithms(),
            leeway: default_leeway(),
            jwks_cache_ttl: default_ttl(),
            jwks_refetch_cooldown: default_cooldown(),
        }
    }

    /// Every problem in the entry, paths relative to `providers.<name>`. Parses URLs but
    /// does no network I/O; messages never contain the client secret.
    pub fn check(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        if let Err(e) = check_url(&self.issuer, UrlRole::Issuer) {
            errors.push(SpecError::new("issuer", e));
        }
        if let Some(uri) = &self.jwks_uri {
            if let Err(e) = check_url(uri, UrlRole::Jwks) {
                errors.push(SpecError::new("jwks_uri", e));
            }
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            errors.push(SpecError::new("client_id", "must not be empty"));
        }
        if self.client_secret.as_ref().is_some_and(|s| s.0.is_empty()) {
            errors.push(SpecError::new("client_secret", "must not be empty"));
        }
        if self
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            errors.push(SpecError::new("audience", "must not be empty"));
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            if let Err(e) = check_scope_token(scope) {
                errors.push(SpecError::new(format!("scopes[{i}]"), e));
            }
        }
        if self.algorithms.is_empty() {
            errors.push(SpecError::new(
                "algorithms",
                "must list at least one algorithm",
            ));
        }
        for (i, alg) in self.algorithms.iter().enumerate() {
            if let Err(e) = parse_algorithm(alg) {
                errors.push(SpecError::new(format!("algorithms[{i}]"), e));
            }
        }
        if self.leeway.get() > MAX_LEEWAY {
            errors.push(SpecError::new("leeway", "must be at most 5m"));
        }
        if self.jwks_cache_ttl.get() < Duration::from_secs(1) {
            errors.push(SpecError::new("jwks_cache_ttl", "must be at least 1s"));
        }
        if self.jwks_refetch_cooldown.get().is_zero() {
            errors.push(SpecError::new(
                "jwks_refetch_cooldown",
                "must be greater than zero: it is what stops a flood of unknown `kid`s from \
                 becoming a flood of JWKS fetches",
            ));
        }
        errors
    }

    /// The accepted algorithms, deduplicated, in the order written. Call after
    /// [`check`](Self::check) passed; invalid names are skipped.
    pub(crate) fn parsed_algorithms(&self) -> Vec<Algorithm> {
        let mut out = Vec::with_capacity(self.algorithms.len());
        for alg in self
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a).ok())
        {
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        out
    }
}

/// Parses one `algorithms` entry. Only asymmetric JWS algorithms are accepted: a JWKS
/// holds public keys, and a token "signed" with HMAC under a public key as secret is the
/// classic algorithm-confusion forgery.
pub(crate) fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" | "HS384" | "HS512" => {
            return Err(format!(
                "{name} is never accepted: HMAC needs a secret shared with every verifier, \
                 and with a published key as the secret anyone could sign tokens"
            ))
        }
        _ if name.eq_ignore_ascii_case("none") => {
            return Err("`none` (unsigned tokens) is never accepted".to_string())
        }
        _ => {
            return Err(format!(
                "unknown algorithm {name:?}; expected one of RS256, RS384, RS512, PS256, \
                 PS384, PS512, ES256, ES384, EdDSA"
            ))
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlRole {
    Issuer,
    Jwks,
}

/// Checks an issuer or JWKS URL. Messages never echo the URL: a misplaced secret (a
/// password in the userinfo, a token in the query) must not reach logs.
fn check_url(raw: &str, role: UrlRole) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".to_string());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_string());
    }
    // OpenID Connect Discovery §2: an issuer has no query or fragment, because it is
    // compared as a string and used as the base of the discovery URL.
    if role == UrlRole::Issuer && (url.query().is_some() || url.fragment().is_some()) {
        return Err("an issuer has no query or fragment".to_string());
    }
    Ok(url)
}

/// An OAuth scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
pub(crate) fn check_scope_token(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Err("must not be empty".to_string());
    }
    let ok = scope
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{scope:?} is not a scope token (printable ASCII without space, `\"` or `\\`)"
        ))
    }
}

/// A secret from the config (usually `${ENV}`): readable by code that needs it, shown as
/// `[redacted]` everywhere else (`Debug`, `/config`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the code that sends it to the provider.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// YAML: `jwt: { provider: main, scopes: [orders:write], roles: [customer], forward_claims: true }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Name of the entry under `providers:` whose tokens this route accepts.
    pub provider: String,
    /// Scopes the token must all carry (in its space-separated `scope` claim or its `scp`
    /// claim); a token lacking one gets 403 `insufficient_scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Roles of which the token's `roles` claim must hold at least one; otherwise 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Send the verified identity upstream as `x-meshgate-sub` and `x-meshgate-roles`.
    /// Client-sent copies of those headers are removed either way.
    #[serde(default = "yes")]
    pub forward_claims: bool,
}

fn yes() -> bool {
    true
}

impl JwtSpec {
    /// A spec accepting any valid token of `provider`, forwarding its claims.
    pub fn new(provider: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            scopes: Vec::new(),
            roles: Vec::new(),
            forward_claims: true,
        }
    }

    /// Every problem in the filter's own fields, paths relative to the `jwt` key. Whether
    /// `provider` names a configured provider is the config loader's check.
    pub fn check(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        if self.provider.trim().is_empty() {
            errors.push(SpecError::new(
                "provider",
                "must name an entry of `providers`",
            ));
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            if let Err(e) = check_scope_token(scope) {
                errors.push(SpecError::new(format!("scopes[{i}]"), e));
            }
        }
        for (i, role) in self.roles.iter().enumerate() {
            if role.is_empty() {
                errors.push(SpecError::new(format!("roles[{i}]"), "must not be empty"));
            } else if role.chars().any(char::is_control) {
                errors.push(SpecError::new(
                    format!("roles[{i}]"),
                    "must not contain control characters",
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(v: serde_json::Value) -> Result<ProviderSpec, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let spec =
            provider(serde_json::json!({ "issuer": "http://127.0.0.1:3001" })).expect("shape");
        assert_eq!(spec.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(spec.leeway.get(), Duration::from_secs(30));
        assert_eq!(spec.jwks_cache_ttl.get(), Duration::from_secs(600));
        assert_eq!(spec.jwks_refetch_cooldown.get(), Duration::from_secs(10));
        assert!(spec.check().is_empty(), "{:?}", spec.check());
        assert_eq!(spec, ProviderSpec::new("http://127.0.0.1:3001"));
    }

    #[test]
    fn the_full_example_parses_and_unknown_keys_are_refused() {
        let full = serde_json::json!({
            "issuer": "http://127.0.0.1:3001",
            "client_id": "web",
            "client_secret": "s3cr3t-value",
            "audience": "shop-api",
            "scopes": ["openid", "profile", "email", "offline_access"],
            "jwks_uri": "http://127.0.0.1:3001/jwks",
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "leeway": "30s",
            "jwks_cache_ttl": "10m",
            "jwks_refetch_cooldown": "10s"
        });
        let spec = provider(full.clone()).expect("shape");
        assert!(spec.check().is_empty(), "{:?}", spec.check());
        let mut extra = full;
        extra["jwks_url"] = serde_json::json!("http://x");
        assert!(provider(extra).is_err());
    }

    #[test]
    fn the_secret_never_shows() {
        let spec = provider(serde_json::json!({
            "issuer": "https://idp.example", "client_secret": "s3cr3t-value"
        }))
        .expect("shape");
        assert_eq!(
            spec.client_secret.as_ref().map(Secret::expose),
            Some("s3cr3t-value")
        );
        let shown = serde_json::to_string(&spec).expect("serialize");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!format!("{spec:?}").contains("s3cr3t"));
    }

    #[test]
    fn hmac_none_and_unknown_algorithms_are_config_errors() {
        let mut spec = ProviderSpec::new("https://idp.example");
        spec.algorithms = ["RS256", "HS256", "none", "NONE", "RS1", "HS512"]
            .map(String::from)
            .to_vec();
        let errors = spec.check();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "algorithms[1]",
                "algorithms[2]",
                "algorithms[3]",
                "algorithms[4]",
                "algorithms[5]"
            ]
        );
        assert!(errors[0].message.contains("never accepted"));
        assert!(errors[1].message.contains("unsigned"));
        spec.algorithms.clear();
        assert_eq!(spec.check()[0].path, "algorithms");
    }

    #[test]
    fn algorithms_are_deduplicated_in_order() {
        let mut spec = ProviderSpec::new("https://idp.example");
        spec.algorithms = ["ES256", "RS256", "ES256"].map(String::from).to_vec();
        assert_eq!(
            spec.parsed_algorithms(),
            [Algorithm::ES256, Algorithm::RS256]
        );
    }

    #[test]
    fn urls_durations_and_fields_are_checked_without_echoing_urls() {
        let mut spec = ProviderSpec::new("ftp://idp.example");
        spec.jwks_uri = Some("https://user:pa55word@idp.example/jwks".into());
        spec.audience = Some(" ".into());
        spec.client_id = Some(String::new());
        spec.scopes = vec!["openid".into(), "two words".into()];
        spec.leeway = HumanDuration(Duration::from_secs(301));
        spec.jwks_cache_ttl = HumanDuration(Duration::from_millis(10));
        spec.jwks_refetch_cooldown = HumanDuration(Duration::ZERO);
        let errors = spec.check();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "issuer",
                "jwks_uri",
                "client_id",
                "audience",
                "scopes[1]",
                "leeway",
                "jwks_cache_ttl",
                "jwks_refetch_cooldown"
            ]
        );
        assert!(errors.iter().all(|e| !e.message.contains("pa55word")));
        for bad in [
            "https://idp.example/?tenant=1",
            "https://idp.example/#x",
            "not a url",
            "http://",
        ] {
            let spec = ProviderSpec::new(bad);
            assert_eq!(spec.check().len(), 1, "{bad}");
        }
    }

    #[test]
    fn jwt_spec_defaults_and_checks() {
        let spec: JwtSpec =
            serde_json::from_value(serde_json::json!({ "provider": "main" })).expect("shape");
        assert_eq!(spec, JwtSpec::new("main"));
        assert!(spec.forward_claims);
        assert!(serde_json::from_value::<JwtSpec>(
            serde_json::json!({ "provider": "main", "scope": ["a"] })
        )
        .is_err());
        let bad = JwtSpec {
            provider: " ".into(),
            scopes: vec!["orders:write".into(), "a\"b".into(), String::new()],
            roles: vec!["customer".into(), String::new(), "a\nb".into()],
            forward_claims: false,
        };
        let paths: Vec<_> = bad.check().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            ["provider", "scopes[1]", "scopes[2]", "roles[1]", "roles[2]"]
        );
    }
}
