//! Fetching provider documents: OpenID discovery and the JWKS, each one bounded GET.
//!
//! A fetch runs while requests wait for keys, so it is short (2 s per document) and its
//! answer is capped (256 KiB) before it is parsed: a slow or hostile provider can delay
//! key rotation, but cannot stall requests for long or exhaust memory. Error messages name
//! a category, never the response body or the URL (which may carry a token in its query).

use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use super::stats::FetchOutcome;

/// Longest one document fetch (connect, request and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest discovery document or key set accepted.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Why a key refresh failed. Never contains remote content or a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer within [`FETCH_TIMEOUT`].
    #[error("the provider did not answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    /// The connection could not be made or broke.
    #[error("the provider is unreachable ({0})")]
    Unreachable(&'static str),
    /// A non-2xx status.
    #[error("the provider answered HTTP {0}")]
    Status(u16),
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the provider's document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// The document is not what was asked for.
    #[error("invalid provider document: {0}")]
    Invalid(&'static str),
    /// No refresh ran: the last one was too recent.
    #[error("the last key fetch was less than jwks_refetch_cooldown ago")]
    CoolingDown,
}

impl FetchError {
    /// The metrics outcome this error counts as.
    pub fn outcome(&self) -> FetchOutcome {
        match self {
            FetchError::Timeout => FetchOutcome::Timeout,
            FetchError::Unreachable(_) => FetchOutcome::Unreachable,
            FetchError::Status(_) => FetchOutcome::HttpStatus,
            FetchError::TooLarge => FetchOutcome::TooLarge,
            FetchError::Invalid(_) | FetchError::CoolingDown => FetchOutcome::Invalid,
        }
    }
}

/// The HTTP client shared by every provider of the process.
///
/// Built on first use rather than in `Provider::new`, so building a config never touches
/// the network stack. Idle connections are not pooled: fetches are minutes apart, and a
/// pooled connection would belong to whichever Pingora runtime happened to open it.
fn client() -> Result<&'static reqwest::Client, FetchError> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::limited(3))
                .user_agent(concat!("meshgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .ok()
        })
        .as_ref()
        .ok_or(FetchError::Unreachable("HTTP client unavailable"))
}

/// GETs `url` and returns its body, enforcing the status, time and size bounds.
pub(crate) async fn get_document(url: &str) -> Result<Vec<u8>, FetchError> {
    let client = client()?;
    // reqwest's own timeout covers each request; this one also bounds a body that trickles.
    tokio::time::timeout(FETCH_TIMEOUT, async {
        let mut response = client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    })
    .await
    .map_err(|_| FetchError::Timeout)?
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_connect() {
        FetchError::Unreachable("connection failed")
    } else if e.is_redirect() {
        FetchError::Unreachable("too many redirects")
    } else {
        FetchError::Unreachable("request failed")
    }
}

/// The fields of an OpenID Provider configuration document this crate uses.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The discovery URL of `issuer` (OpenID Connect Discovery §4).
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Reads `jwks_uri` from a discovery document, which must name exactly `issuer`
/// (OpenID Connect Discovery §4.3: otherwise anyone able to serve that document could
/// substitute another provider's keys).
pub(crate) fn parse_discovery(body: &[u8], issuer: &str) -> Result<String, FetchError> {
    let doc: Discovery = serde_json::from_slice(body)
        .map_err(|_| FetchError::Invalid("discovery document lacks issuer or jwks_uri"))?;
    if doc.issuer != issuer {
        return Err(FetchError::Invalid(
            "discovery document names another issuer",
        ));
    }
    let ok = reqwest::Url::parse(&doc.jwks_uri)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !ok {
        return Err(FetchError::Invalid(
            "discovery jwks_uri is not an http(s) URL",
        ));
    }
    Ok(doc.jwks_uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_appends_the_well_known_path_once() {
        assert_eq!(
            discovery_url("https://idp.example/realms/shop/"),
            "https://idp.example/realms/shop/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("http://127.0.0.1:3001"),
            "http://127.0.0.1:3001/.well-known/openid-configuration"
        );
    }

    #[test]
    fn discovery_must_name_our_issuer_and_an_http_jwks_uri() {
        let doc =
            br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/jwks","x":1}"#;
        assert_eq!(
            parse_discovery(doc, "https://idp.example").as_deref(),
            Ok("https://idp.example/jwks")
        );
        assert!(matches!(
            parse_discovery(doc, "https://idp.example/"),
            Err(FetchError::Invalid(_))
        ));
        for bad in [
            &br#"{"issuer":"https://idp.example"}"#[..],
            br#"{"issuer":"https://idp.example","jwks_uri":"file:///etc/passwd"}"#,
            b"<html>",
        ] {
            assert!(parse_discovery(bad, "https://idp.example").is_err());
        }
    }

    #[test]
    fn errors_map_to_outcomes() {
        assert_eq!(FetchError::Timeout.outcome(), FetchOutcome::Timeout);
        assert_eq!(FetchError::Status(503).outcome(), FetchOutcome::HttpStatus);
        assert_eq!(FetchError::TooLarge.outcome(), FetchOutcome::TooLarge);
    }
}
