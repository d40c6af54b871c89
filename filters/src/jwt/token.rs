//! A request's bearer token: finding it in `Authorization`, reading its JWS header, and
//! the [`Identity`] a verified token yields.
//!
//! The header is read here, before any key lookup or signature check, so that `alg: none`,
//! HMAC, unknown algorithms and `crit` extensions are refused for the price of a base64
//! decode. Key-carrying header parameters (`jwk`, `jku`, `x5u`, `x5c`) are ignored: keys
//! come only from the configured provider. Nothing read from a token is ever put into an
//! error message.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::spec::parse_algorithm;
use super::stats::FailureReason;

/// Longest `Authorization` value read. Real access tokens are 1–2 KiB; the bound keeps
/// base64 and JSON work per request small whatever a client sends.
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// Bytes of a compact JWS: base64url and `.`. A table, because every request's token is
/// checked byte by byte (a table lookup per byte instead of a chain of range tests).
static JWS_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        b += 1;
    }
    table
};

/// The token of the request's one `Authorization: Bearer` header.
///
/// No header, or a header with another scheme (`Basic …`), is
/// [`FailureReason::MissingToken`]: no bearer credentials were presented. Several
/// headers, an oversized value, an empty token or a character outside base64url and `.`
/// is [`FailureReason::Malformed`].
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, FailureReason> {
    checked_token(bearer_candidate(headers)?)
}

/// The bytes after the scheme of the request's one `Authorization: Bearer` header, with
/// every check of [`bearer_token`] except the byte check ([`checked_token`]). The jwt filter
/// looks a candidate up in its verified-token cache first: a hit is a token that passed
/// every check when it was verified, so only a miss needs the byte check.
pub(crate) fn bearer_candidate(headers: &HeaderMap) -> Result<&[u8], FailureReason> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(FailureReason::MissingToken),
        // Which of two credentials an upstream would believe is anyone's guess.
        (Some(_), Some(_)) => return Err(FailureReason::Malformed),
        (Some(value), None) => value.as_bytes(),
    };
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(FailureReason::Malformed);
    }
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(at) => (&value[..at], &value[at..]),
        None => (value, &value[value.len()..]),
    };
    // RFC 9110 §11.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(FailureReason::MissingToken);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(FailureReason::Malformed);
    }
    Ok(token)
}

/// `candidate` as a token, if it is made of a compact JWS's bytes: base64url segments joined
/// by dots. Anything else (padding, spaces, a second credential) is not a token we could
/// verify, and is [`FailureReason::Malformed`].
pub(crate) fn checked_token(candidate: &[u8]) -> Result<&str, FailureReason> {
    if candidate.is_empty() || !candidate.iter().all(|&b| JWS_BYTE[usize::from(b)]) {
        return Err(FailureReason::Malformed);
    }
    std::str::from_utf8(candidate).map_err(|_| FailureReason::Malformed)
}

/// SHA-256 of the token: the verified-token cache key. A cryptographic hash, because a
/// collision would hand one caller another's identity.
pub(crate) fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// What the JWS header says about how to verify the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// Reads the header of a compact JWS and checks `alg` against `allowed`.
pub(crate) fn parse_header(
    token: &str,
    allowed: &[Algorithm],
) -> Result<TokenHeader, FailureReason> {
    #[derive(Deserialize)]
    struct Raw {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
        #[serde(default)]
        crit: Option<IgnoredAny>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(FailureReason::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(FailureReason::Malformed);
    }
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| FailureReason::Malformed)?;
    let raw: Raw = serde_json::from_slice(&json).map_err(|_| FailureReason::Malformed)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood, and we understand
    // none (e.g. `b64: false` would change what the signature covers).
    if raw.crit.is_some() {
        return Err(FailureReason::Malformed);
    }
    let alg = parse_algorithm(&raw.alg).map_err(|_| FailureReason::AlgorithmNotAllowed)?;
    if !allowed.contains(&alg) {
        return Err(FailureReason::AlgorithmNotAllowed);
    }
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// A claim that providers write either as one string or as an array of strings; any
/// other shape reads as absent, so a malformed `roles` grants nothing.
#[derive(Deserialize)]
#[serde(untagged)]
enum Strings {
    One(String),
    Many(Vec<String>),
    Other(IgnoredAny),
}

impl Strings {
    fn into_vec(self, split_on_space: bool) -> Vec<String> {
        match self {
            Strings::One(s) if split_on_space => s
                .split(' ')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            Strings::One(s) => vec![s],
            Strings::Many(v) => v,
            Strings::Other(_) => Vec::new(),
        }
    }
}

/// The claims the filter uses. Everything is optional here so a missing mandatory claim
/// is reported by the validator as such, not as a JSON error.
#[derive(Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    /// RFC 8693 / RFC 9068: space-separated scopes.
    #[serde(default)]
    scope: Option<Strings>,
    /// The array form some providers use (Okta, Azure AD).
    #[serde(default)]
    scp: Option<Strings>,
    #[serde(default)]
    roles: Option<Strings>,
}

/// The identity of a verified token: what routes check and what upstreams receive.
///
/// Left in [`crate::RequestCtx::extensions`] as an `Arc<Identity>` by the `jwt` filter,
/// so later filters and the access log can read it.
#[derive(Debug)]
pub struct Identity {
    sub: Arc<str>,
    scopes: Box<[Box<str>]>,
    roles: Box<[Box<str>]>,
    /// `exp` plus the leeway, in Unix seconds: the last second the token is accepted.
    valid_until: u64,
    sub_header: HeaderValue,
    roles_header: Option<HeaderValue>,
}

impl Identity {
    /// Builds the identity of a token whose signature and registered claims were verified.
    pub(crate) fn from_claims(claims: Claims, leeway_secs: u64) -> Result<Self, FailureReason> {
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(FailureReason::MissingClaim)?;
        // The subject goes upstream as a header; one that cannot be a header value is not
        // a subject we can vouch for.
        let sub_header =
            HeaderValue::from_bytes(sub.as_bytes()).map_err(|_| FailureReason::Malformed)?;
        let exp = claims
            .exp
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or(FailureReason::MissingClaim)?;
        let mut scopes: Vec<String> = claims.scope.map(|s| s.into_vec(true)).unwrap_or_default();
        if let Some(scp) = claims.scp {
            scopes.extend(scp.into_vec(true));
        }
        let roles: Vec<String> = claims.roles.map(|r| r.into_vec(false)).unwrap_or_default();
        Ok(Self {
            sub: Arc::from(sub),
            roles_header: roles_header(&roles),
            scopes: scopes.into_iter().map(String::into_boxed_str).collect(),
            roles: roles.into_iter().map(String::into_boxed_str).collect(),
            // `as` saturates for floats; exp was checked to be finite and non-negative.
            valid_until: (exp as u64).saturating_add(leeway_secs),
            sub_header,
        })
    }

    /// The token's `sub`.
    pub fn sub(&self) -> &Arc<str> {
        &self.sub
    }

    /// The token's scopes (`scope` split on spaces, plus `scp`).
    pub fn scopes(&self) -> &[Box<str>] {
        &self.scopes
    }

    /// The token's `roles`.
    pub fn roles(&self) -> &[Box<str>] {
        &self.roles
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }

    /// The last Unix second at which the token is still accepted (`exp` + leeway).
    pub fn valid_until(&self) -> u64 {
        self.valid_until
    }

    pub(crate) fn sub_header(&self) -> &HeaderValue {
        &self.sub_header
    }

    pub(crate) fn roles_header(&self) -> Option<&HeaderValue> {
        self.roles_header.as_ref()
    }
}

/// `x-meshgate-roles`: the roles joined by commas. A role that contains a comma (or
/// cannot be a header value) is left out rather than split into two roles upstream.
fn roles_header(roles: &[String]) -> Option<HeaderValue> {
    let mut joined = String::new();
    for role in roles {
        if role.is_empty() || role.contains(',') || role.bytes().any(|b| b.is_ascii_control()) {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(role);
    }
    if joined.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(joined.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).expect("value"));
        }
        map
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in [
            &b"Bearer abc.def.ghi"[..],
            b"bearer abc.def.ghi",
            b"BEARER   abc.def.ghi",
        ] {
            assert_eq!(bearer_token(&headers(&[v])), Ok("abc.def.ghi"));
        }
    }

    #[test]
    fn no_token_or_another_scheme_is_missing() {
        assert_eq!(
            bearer_token(&headers(&[])),
            Err(FailureReason::MissingToken)
        );
        for v in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearerx abc",
            b"Token abc.def.ghi",
        ] {
            assert_eq!(
                bearer_token(&headers(&[v])),
                Err(FailureReason::MissingToken),
                "{v:?}"
            );
        }
    }

    #[test]
    fn odd_authorization_values_are_malformed() {
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        for v in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer abc def",
            b"Bearer abc.def.ghi=",
            b"Bearer abc,def",
            b"Bearer \xffabc",
            long.as_bytes(),
        ] {
            assert_eq!(
                bearer_token(&headers(&[v])),
                Err(FailureReason::Malformed),
                "{:?}",
                String::from_utf8_lossy(&v[..v.len().min(20)])
            );
        }
        assert_eq!(
            bearer_token(&headers(&[b"Bearer a.b.c", b"Bearer a.b.c"])),
            Err(FailureReason::Malformed)
        );
    }

    #[test]
    fn exactly_base64url_and_dots_pass_the_byte_check() {
        for b in 0u8..=255 {
            let expected = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
            assert_eq!(JWS_BYTE[usize::from(b)], expected, "byte {b:#04x}");
            let mut v = b"Bearer ab".to_vec();
            v.push(b);
            v.extend_from_slice(b"cd");
            // Control bytes are not valid header values at all.
            let Ok(value) = HeaderValue::from_bytes(&v) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.append(AUTHORIZATION, value);
            let got = bearer_token(&map);
            if expected {
                assert!(got.is_ok(), "byte {b:#04x} refused");
            } else {
                assert!(got.is_err(), "byte {b:#04x} accepted");
            }
        }
    }

    #[test]
    fn headers_with_wrong_shapes_are_malformed() {
        let h = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let allowed = [Algorithm::RS256];
        assert_eq!(
            parse_header(&format!("{h}.e30.c2ln"), &allowed),
            Ok(TokenHeader {
                alg: Algorithm::RS256,
                kid: Some("k".into())
            })
        );
        for token in [
            format!("{h}.e30"),
            format!("{h}.e30.c2ln.eHg"),
            format!("{h}..c2ln"),
            format!("{h}.e30."),
            "!!!.e30.c2ln".to_string(),
            format!("{}.e30.c2ln", b64("not json")),
            format!("{}.e30.c2ln", b64(r#"{"kid":"k"}"#)),
            format!(
                "{}.e30.c2ln",
                b64(r#"{"alg":"RS256","crit":["b64"],"b64":false}"#)
            ),
        ] {
            assert_eq!(
                parse_header(&token, &allowed),
                Err(FailureReason::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn none_hmac_and_unlisted_algorithms_are_refused() {
        let allowed = [Algorithm::RS256, Algorithm::ES256];
        for alg in ["none", "None", "HS256", "HS512", "ES384", "RS1", ""] {
            let token = format!("{}.e30.c2ln", b64(&format!(r#"{{"alg":"{alg}"}}"#)));
            assert_eq!(
                parse_header(&token, &allowed),
                Err(FailureReason::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }

    fn claims(v: serde_json::Value) -> Claims {
        serde_json::from_value(v).expect("claims")
    }

    #[test]
    fn identity_reads_scope_scp_and_roles() {
        let id = Identity::from_claims(
            claims(serde_json::json!({
                "sub": "alice", "exp": 1000, "scope": "openid  orders:write",
                "scp": ["orders:read"], "roles": ["customer", "a,b", "admin"]
            })),
            30,
        )
        .expect("identity");
        assert_eq!(&**id.sub(), "alice");
        assert!(id.has_scope("orders:write") && id.has_scope("orders:read"));
        assert!(!id.has_scope(""));
        assert!(id.has_role("a,b"), "policy still sees every role");
        assert_eq!(
            id.roles_header().and_then(|v| v.to_str().ok()),
            Some("customer,admin")
        );
        assert_eq!(id.valid_until(), 1030);
    }

    #[test]
    fn odd_claim_shapes_grant_nothing() {
        let id = Identity::from_claims(
            claims(serde_json::json!({
                "sub": "bob", "exp": 1.5e3, "scope": 7, "roles": [1, "admin"]
            })),
            0,
        )
        .expect("identity");
        assert!(id.scopes().is_empty());
        assert!(id.roles().is_empty());
        assert!(id.roles_header().is_none());
        assert_eq!(id.valid_until(), 1500);
        let single = Identity::from_claims(
            claims(serde_json::json!({ "sub": "c", "exp": 1, "roles": "admin" })),
            0,
        )
        .expect("identity");
        assert!(single.has_role("admin"));
    }

    #[test]
    fn a_missing_or_unusable_subject_is_refused() {
        for v in [
            serde_json::json!({ "exp": 1 }),
            serde_json::json!({ "sub": "", "exp": 1 }),
            serde_json::json!({ "sub": "a" }),
        ] {
            assert_eq!(
                Identity::from_claims(claims(v), 0).err(),
                Some(FailureReason::MissingClaim)
            );
        }
        assert_eq!(
            Identity::from_claims(claims(serde_json::json!({ "sub": "a\nb", "exp": 1 })), 0).err(),
            Some(FailureReason::Malformed)
        );
    }

    #[test]
    fn digests_differ_per_token() {
        assert_ne!(token_digest(b"a.b.c"), token_digest(b"a.b.d"));
        assert_eq!(token_digest(b"a.b.c"), token_digest(b"a.b.c"));
    }
}
