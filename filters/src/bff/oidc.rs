//! The OpenID Connect relying party of the BFF: discovery, the authorization URL with PKCE,
//! the code and refresh-token exchanges (through the `openidconnect` crate), RFC 7009
//! revocation, and the checks on ID tokens and back-channel logout tokens.
//!
//! Signatures are verified with the same [`Provider`] (and key cache) the `jwt` filters of
//! that provider use, so one JWKS fetch serves both and a rotated key is picked up once.
//! HTTP to the provider goes through one client with short timeouts, no redirects (a
//! redirected token request could leak the client secret) and bounded bodies.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreJsonWebKeySet, CoreTokenResponse,
};
use openidconnect::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenUrl,
};
use serde_json::{Map, Value};

use crate::jwt::{FailureReason, Provider, ProviderSpec};

/// Longest one request to the provider may take (connect, send, whole body).
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest provider answer read (discovery, token responses).
const MAX_BODY: usize = 256 * 1024;
/// How long discovery metadata is reused before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Least time between two discovery fetches after a failure.
const METADATA_RETRY: Duration = Duration::from_secs(2);
/// Clock skew allowed on `exp` and `iat` of ID and logout tokens.
const LEEWAY_SECS: u64 = 60;
/// `events` member of a back-channel logout token (OpenID Back-Channel Logout §2.4).
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The provider endpoints the BFF uses, from discovery.
#[derive(Debug)]
pub(crate) struct Metadata {
    authorization_endpoint: String,
    token_endpoint: String,
    pub(crate) end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    /// `client_secret_post` when the provider does not support `client_secret_basic`.
    post_auth: bool,
    fetched_at: Instant,
}

/// Why talking to the provider failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OidcError {
    /// The provider could not be reached or answered garbage: try again later.
    #[error("identity provider unavailable: {0}")]
    Unavailable(&'static str),
    /// The provider refused the grant (`invalid_grant`): the code or refresh token is dead.
    #[error("the provider refused the grant")]
    InvalidGrant,
    /// The provider refused for another reason (misconfigured client, …).
    #[error("the provider refused the request: {0}")]
    Refused(String),
    /// A token failed verification.
    #[error("token rejected: {0}")]
    BadToken(&'static str),
}

/// Tokens from a code or refresh exchange.
pub(crate) struct Tokens {
    pub(crate) access_token: String,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) refresh_token: Option<String>,
    pub(crate) id_token: Option<String>,
}

/// What the BFF keeps from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdClaims {
    pub(crate) sub: String,
    pub(crate) sid: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) roles: Vec<String>,
}

/// Who a verified logout token logs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogoutClaims {
    pub(crate) sub: Option<String>,
    pub(crate) sid: Option<String>,
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
>;

/// One provider as seen by the BFF.
pub(crate) struct Oidc {
    provider: Arc<Provider>,
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    scopes: Vec<String>,
    metadata: ArcSwapOption<Metadata>,
    last_failure: std::sync::Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    stats: Arc<super::BffStats>,
}

impl Oidc {
    /// The relying party for `spec` (which must have a `client_id`), verifying with
    /// `provider`'s keys.
    pub(crate) fn new(
        spec: &ProviderSpec,
        provider: Arc<Provider>,
        stats: Arc<super::BffStats>,
    ) -> Result<Self, String> {
        let client_id = spec
            .client_id
            .clone()
            .ok_or("the provider needs a `client_id` for the BFF to log in with it")?;
        Ok(Self {
            provider,
            issuer: spec.issuer.clone(),
            client_id,
            client_secret: spec.client_secret.as_ref().map(|s| s.expose().to_string()),
            scopes: spec.scopes.clone(),
            metadata: ArcSwapOption::empty(),
            last_failure: std::sync::Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            stats,
        })
    }

    /// The OAuth client id.
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The provider whose keys verify tokens.
    pub(crate) fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Discovery metadata, fetched on first use and every [`METADATA_TTL`]; concurrent
    /// callers share one fetch, and after a failure the next fetch waits
    /// [`METADATA_RETRY`] (callers meanwhile get the error, or the stale metadata).
    pub(crate) async fn metadata(&self) -> Result<Arc<Metadata>, OidcError> {
        if let Some(md) = self.metadata.load_full() {
            if md.fetched_at.elapsed() < METADATA_TTL {
                return Ok(md);
            }
        }
        let _one = self.fetch_lock.lock().await;
        let current = self.metadata.load_full();
        if let Some(md) = &current {
            if md.fetched_at.elapsed() < METADATA_TTL {
                return Ok(md.clone());
            }
        }
        let recent_failure = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < METADATA_RETRY);
        if recent_failure {
            return current.ok_or(OidcError::Unavailable("discovery failed recently"));
        }
        match self.discover().await {
            Ok(md) => {
                self.stats.discovery(true);
                let md = Arc::new(md);
                self.metadata.store(Some(md.clone()));
                Ok(md)
            }
            Err(e) => {
                self.stats.discovery(false);
                *self
                    .last_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                // Stale metadata beats none: endpoints rarely move.
                current.ok_or(e)
            }
        }
    }

    async fn discover(&self) -> Result<Metadata, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = crate::jwt::fetch_document(&url)
            .await
            .map_err(|_| OidcError::Unavailable("discovery document unavailable"))?;
        parse_metadata(&body, &self.issuer)
    }

    fn client(&self, md: &Metadata, redirect_uri: &str) -> Result<Client, OidcError> {
        let bad = |_| OidcError::Unavailable("the provider's endpoints are not valid URLs");
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(bad)?;
        let mut client = CoreClient::new(
            ClientId::new(self.client_id.clone()),
            issuer,
            CoreJsonWebKeySet::new(Vec::new()),
        )
        .set_auth_uri(AuthUrl::new(md.authorization_endpoint.clone()).map_err(bad)?)
        .set_token_uri(TokenUrl::new(md.token_endpoint.clone()).map_err(bad)?)
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_string())
                .map_err(|_| OidcError::Refused("invalid redirect_uri".to_string()))?,
        );
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        if md.post_auth {
            client = client.set_auth_type(AuthType::RequestBody);
        }
        Ok(client)
    }

    /// The URL to send the browser to, asking for the configured scopes with PKCE S256.
    pub(crate) fn authorize_url(
        &self,
        md: &Metadata,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let client = self.client(md, redirect_uri)?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            verifier.to_string(),
        ));
        let (state, nonce) = (state.to_string(), nonce.to_string());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge);
        for scope in self.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        Ok(request.url().0.to_string())
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub(crate) async fn exchange_code(
        &self,
        md: &Metadata,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
    ) -> Result<Tokens, OidcError> {
        let client = self.client(md, redirect_uri)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&send)
            .await;
        tokens(response)
    }

    /// Exchanges a refresh token for new tokens.
    pub(crate) async fn refresh(
        &self,
        md: &Metadata,
        refresh_token: &str,
    ) -> Result<Tokens, OidcError> {
        // The redirect URI is not part of a refresh request; any valid URL satisfies the
        // client type.
        let client = self.client(md, &md.token_endpoint)?;
        let token = RefreshToken::new(refresh_token.to_string());
        let response = client
            .exchange_refresh_token(&token)
            .request_async(&send)
            .await;
        tokens(response)
    }

    /// Revokes a refresh token (RFC 7009). Best effort: the session ends either way.
    pub(crate) async fn revoke(&self, md: &Metadata, refresh_token: &str) -> Result<(), OidcError> {
        let Some(endpoint) = &md.revocation_endpoint else {
            return Ok(());
        };
        // Built in full before any await: the serializer is not `Send`.
        let (body, authorization) = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", refresh_token)
                .append_pair("token_type_hint", "refresh_token");
            let authorization = match (&self.client_secret, md.post_auth) {
                (Some(secret), false) => Some(basic_auth(&self.client_id, secret)),
                (secret, _) => {
                    form.append_pair("client_id", &self.client_id);
                    if let Some(secret) = secret {
                        form.append_pair("client_secret", secret);
                    }
                    None
                }
            };
            (form.finish().into_bytes(), authorization)
        };
        let mut request = http::Request::post(endpoint.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(body)
            .map_err(|_| OidcError::Unavailable("revocation request"))?;
        let response = send(request)
            .await
            .map_err(|_| OidcError::Unavailable("revocation endpoint unreachable"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(OidcError::Refused(format!(
                "revocation answered HTTP {}",
                response.status().as_u16()
            )))
        }
    }

    /// Verifies an ID token: signature with the provider's keys, then `iss`, `aud`
    /// (must contain our client id; `azp` must be us when there are several audiences),
    /// `exp`, `iat`, `sub`, and `nonce` when one is expected (the code flow; refreshed ID
    /// tokens carry none or the original).
    pub(crate) async fn verify_id_token(
        &self,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<IdClaims, OidcError> {
        let claims = self
            .provider
            .verify_jws(token)
            .await
            .map_err(|r| OidcError::BadToken(reason_text(r)))?;
        self.check_common(&claims)?;
        let now = crate::jwt::unix_now();
        match claims.get("exp").and_then(Value::as_u64) {
            Some(exp) if exp + LEEWAY_SECS > now => {}
            Some(_) => return Err(OidcError::BadToken("id token expired")),
            None => return Err(OidcError::BadToken("id token has no exp")),
        }
        if let Some(expected) = nonce {
            if claims.get("nonce").and_then(Value::as_str) != Some(expected) {
                return Err(OidcError::BadToken("nonce mismatch"));
            }
        }
        let string = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
        let sub = string("sub")
            .filter(|s| !s.is_empty())
            .ok_or(OidcError::BadToken("id token has no sub"))?;
        let roles = match claims.get("roles") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(IdClaims {
            sub,
            sid: string("sid"),
            name: string("name").or_else(|| string("preferred_username")),
            email: string("email"),
            roles,
        })
    }

    /// Verifies a back-channel logout token (OpenID Back-Channel Logout §2.6): signature,
    /// `iss`, `aud`, `iat`, the back-channel `events` member, `sid` or `sub`, and no
    /// `nonce` (so an ID token cannot be replayed as a logout token).
    pub(crate) async fn verify_logout_token(&self, token: &str) -> Result<LogoutClaims, OidcError> {
        let claims = self
            .provider
            .verify_jws(token)
            .await
            .map_err(|r| OidcError::BadToken(reason_text(r)))?;
        self.check_common(&claims)?;
        if let Some(exp) = claims.get("exp") {
            let ok = exp
                .as_u64()
                .is_some_and(|e| e + LEEWAY_SECS > crate::jwt::unix_now());
            if !ok {
                return Err(OidcError::BadToken("logout token expired"));
            }
        }
        let event = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|e| e.get(BACKCHANNEL_EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err(OidcError::BadToken("not a back-channel logout token"));
        }
        if claims.contains_key("nonce") {
            return Err(OidcError::BadToken("logout tokens carry no nonce"));
        }
        let string = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let (sub, sid) = (string("sub"), string("sid"));
        if sub.is_none() && sid.is_none() {
            return Err(OidcError::BadToken("logout token names no sid or sub"));
        }
        Ok(LogoutClaims { sub, sid })
    }

    /// `iss`, `aud`/`azp` and `iat`, shared by ID and logout tokens.
    fn check_common(&self, claims: &Map<String, Value>) -> Result<(), OidcError> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(OidcError::BadToken("wrong issuer"));
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&self.client_id.as_str()) {
            return Err(OidcError::BadToken("wrong audience"));
        }
        if audiences.len() > 1
            && claims
                .get("azp")
                .is_some_and(|azp| azp.as_str() != Some(self.client_id.as_str()))
        {
            return Err(OidcError::BadToken("authorized party is another client"));
        }
        match claims.get("iat").and_then(Value::as_u64) {
            Some(iat) if iat <= crate::jwt::unix_now() + LEEWAY_SECS => Ok(()),
            Some(_) => Err(OidcError::BadToken("issued in the future")),
            None => Err(OidcError::BadToken("no iat")),
        }
    }
}

fn reason_text(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::AlgorithmNotAllowed => "algorithm not allowed",
        FailureReason::BadSignature => "bad signature",
        FailureReason::NoKeys => "no provider keys",
        FailureReason::UnknownKey | FailureReason::KeyMismatch => "unknown signing key",
        _ => "malformed token",
    }
}

fn tokens<E: std::error::Error + 'static>(
    response: Result<
        CoreTokenResponse,
        RequestTokenError<E, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
    >,
) -> Result<Tokens, OidcError> {
    match response {
        Ok(r) => Ok(Tokens {
            access_token: r.access_token().secret().clone(),
            expires_in: r.expires_in(),
            refresh_token: r.refresh_token().map(|t| t.secret().clone()),
            id_token: r.extra_fields().id_token().map(|t| t.to_string()),
        }),
        Err(RequestTokenError::ServerResponse(e)) => match e.error() {
            CoreErrorResponseType::InvalidGrant => Err(OidcError::InvalidGrant),
            other => Err(OidcError::Refused(other.as_ref().to_string())),
        },
        Err(RequestTokenError::Request(_)) => {
            Err(OidcError::Unavailable("token endpoint unreachable"))
        }
        // A malformed answer (e.g. an ID token without `exp`) will not get better by
        // retrying: a refusal, not an outage.
        Err(RequestTokenError::Parse(_, _)) => Err(OidcError::Refused(
            "token response is not valid".to_string(),
        )),
        Err(RequestTokenError::Other(_)) => Err(OidcError::Unavailable(
            "token endpoint answered unexpectedly",
        )),
    }
}

/// Parses the discovery document of `issuer` (which it must name exactly).
fn parse_metadata(body: &[u8], issuer: &str) -> Result<Metadata, OidcError> {
    let doc: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| OidcError::Unavailable("discovery document is not JSON"))?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(OidcError::Unavailable(
            "discovery document names another issuer",
        ));
    }
    let url = |k: &str| -> Option<String> {
        doc.get(k)
            .and_then(Value::as_str)
            .filter(|u| url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")))
            .map(str::to_string)
    };
    let authorization_endpoint = url("authorization_endpoint").ok_or(OidcError::Unavailable(
        "discovery document lacks authorization_endpoint",
    ))?;
    let token_endpoint = url("token_endpoint").ok_or(OidcError::Unavailable(
        "discovery document lacks token_endpoint",
    ))?;
    let methods: Vec<&str> = doc
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Absent means client_secret_basic (OpenID Connect Discovery §3).
    let post_auth = !methods.is_empty()
        && !methods.contains(&"client_secret_basic")
        && methods.contains(&"client_secret_post");
    Ok(Metadata {
        authorization_endpoint,
        token_endpoint,
        end_session_endpoint: url("end_session_endpoint"),
        revocation_endpoint: url("revocation_endpoint"),
        post_auth,
        fetched_at: Instant::now(),
    })
}

/// `Basic` credentials per RFC 6749 §2.3.1 (form-encoded, then base64).
fn basic_auth(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Why an HTTP exchange with the provider failed (no URL or body: they may hold secrets).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HttpError(&'static str);

fn http_client() -> Result<&'static reqwest::Client, HttpError> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(PROVIDER_TIMEOUT)
                .connect_timeout(PROVIDER_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("meshgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .ok()
        })
        .as_ref()
        .ok_or(HttpError("HTTP client unavailable"))
}

/// The HTTP function handed to `openidconnect`: one bounded exchange.
async fn send(request: HttpRequest) -> Result<HttpResponse, HttpError> {
    let client = http_client()?;
    let (parts, body) = request.into_parts();
    let exchange = async {
        let mut response = client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|_| HttpError("provider unreachable"))?;
        let mut out = http::Response::builder().status(response.status());
        if let Some(headers) = out.headers_mut() {
            for (k, v) in response.headers() {
                headers.append(k.clone(), v.clone());
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| HttpError("provider answer broken"))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpError("provider answer too large"));
            }
            body.extend_from_slice(&chunk);
        }
        out.body(body)
            .map_err(|_| HttpError("provider answer invalid"))
    };
    tokio::time::timeout(PROVIDER_TIMEOUT, exchange)
        .await
        .map_err(|_| HttpError("provider timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_needs_our_issuer_and_http_endpoints() {
        let doc = br#"{"issuer":"http://idp","authorization_endpoint":"http://idp/a",
            "token_endpoint":"http://idp/t","end_session_endpoint":"http://idp/logout",
            "token_endpoint_auth_methods_supported":["client_secret_post"]}"#;
        let md = parse_metadata(doc, "http://idp").expect("valid");
        assert_eq!(
            md.end_session_endpoint.as_deref(),
            Some("http://idp/logout")
        );
        assert!(md.revocation_endpoint.is_none());
        assert!(md.post_auth);
        assert!(parse_metadata(doc, "http://other").is_err());
        let no_token = br#"{"issuer":"http://idp","authorization_endpoint":"http://idp/a",
            "token_endpoint":"javascript:x"}"#;
        assert!(parse_metadata(no_token, "http://idp").is_err());
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        use base64::Engine as _;
        let v = basic_auth("web", "a:b c");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.trim_start_matches("Basic "))
            .expect("base64");
        assert_eq!(raw, b"web:a%3Ab+c");
    }
}
