//! The endpoints under `bff.base_path`: `login`, `callback`, `logout`, `user` and
//! `backchannel-logout`. The engine calls [`Bff::handle`] before routing and sends the
//! answer it returns; none of them is ever forwarded upstream.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, StatusCode};
use pingora::http::RequestHeader;
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::crypto::SessionHandle;
use super::oidc::OidcError;
use super::session::{cookie, safe_return_to, PreLogin, Record};
use super::stats::{CallbackOutcome, EndReason};
use super::{cookie_header, session_key, Bff, NoSession, LOGIN_TTL};
use crate::{ErrorKind, LocalResponse, RequestCtx};

/// Largest back-channel logout request body read.
pub const MAX_BACKCHANNEL_BODY: usize = 64 * 1024;

/// One of the BFF endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET login?return_to=/path`: starts a login at the provider.
    Login,
    /// `GET callback?code&state[&iss]`: finishes it and creates the session.
    Callback,
    /// `GET|POST logout`: ends the session (CSRF proof required) and logs out at the provider.
    Logout,
    /// `GET user`: the session's claims for the SPA (CSRF header required).
    User,
    /// `POST backchannel-logout`: the provider ends sessions.
    BackchannelLogout,
}

impl Endpoint {
    /// Whether the engine must read the request body (at most [`MAX_BACKCHANNEL_BODY`]
    /// bytes) before calling [`Bff::handle`].
    pub fn reads_body(self) -> bool {
        self == Endpoint::BackchannelLogout
    }

    /// Name for logs and the access log's route field.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Login => "bff:login",
            Endpoint::Callback => "bff:callback",
            Endpoint::Logout => "bff:logout",
            Endpoint::User => "bff:user",
            Endpoint::BackchannelLogout => "bff:backchannel-logout",
        }
    }
}

/// The request as an endpoint sees it.
#[derive(Debug, Clone, Copy)]
pub struct EndpointRequest<'a> {
    /// The request header.
    pub header: &'a RequestHeader,
    /// The request body (read only for endpoints that [need it](Endpoint::reads_body)).
    pub body: &'a [u8],
}

impl Bff {
    /// The endpoint `path` names, if any (exact match below `base_path`).
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let rest = path
            .strip_prefix(self.base_path.as_str())?
            .strip_prefix('/')?;
        Some(match rest {
            "login" => Endpoint::Login,
            "callback" => Endpoint::Callback,
            "logout" => Endpoint::Logout,
            "user" => Endpoint::User,
            "backchannel-logout" => Endpoint::BackchannelLogout,
            _ => return None,
        })
    }

    /// Answers one endpoint request. Never fails: every problem becomes an answer.
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        req: EndpointRequest<'_>,
        ctx: &mut RequestCtx,
    ) -> LocalResponse {
        let method = &req.header.method;
        let allowed: &[Method] = match endpoint {
            Endpoint::Login | Endpoint::Callback | Endpoint::User => &[Method::GET, Method::HEAD],
            Endpoint::Logout => &[Method::GET, Method::POST],
            Endpoint::BackchannelLogout => &[Method::POST],
        };
        if !allowed.contains(method) {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", ctx)
                .with_header(http::header::ALLOW, header_value(&allow));
        }
        let answer = match endpoint {
            Endpoint::Login => self.login(req, ctx).await,
            Endpoint::Callback => self.callback(req, ctx).await,
            Endpoint::Logout => self.logout(req, ctx).await,
            Endpoint::User => self.user(req, ctx).await,
            Endpoint::BackchannelLogout => self.backchannel(req, ctx).await,
        };
        answer.with_header(CACHE_CONTROL, HeaderValue::from_static("no-store"))
    }

    async fn login(&self, req: EndpointRequest<'_>, ctx: &mut RequestCtx) -> LocalResponse {
        let return_to = safe_return_to(query(req.header, "return_to").as_deref().unwrap_or("/"));
        let Some(origin) = origin(req.header, ctx) else {
            return LocalResponse::error(ErrorKind::BadRequest);
        };
        let redirect_uri = self
            .redirect_uri
            .clone()
            .unwrap_or_else(|| format!("{origin}{}/callback", self.base_path));
        let Ok(md) = self.oidc.metadata().await else {
            return LocalResponse::error(ErrorKind::AuthUnavailable);
        };
        let (Some(state), Some(nonce), Some(verifier), Ok(handle)) = (
            self.random(),
            self.random(),
            self.random(),
            SessionHandle::generate(&self.rng),
        ) else {
            return LocalResponse::error(ErrorKind::Internal);
        };
        let Ok(url) = self
            .oidc
            .authorize_url(&md, &redirect_uri, &state, &nonce, &verifier)
        else {
            return LocalResponse::error(ErrorKind::AuthUnavailable);
        };
        let pending = PreLogin {
            state,
            nonce,
            verifier,
            return_to,
            redirect_uri,
        };
        let sealed = serde_json::to_vec(&pending)
            .ok()
            .and_then(|plain| handle.seal(&self.key, &self.rng, &plain).ok());
        let Some(sealed) = sealed else {
            return LocalResponse::error(ErrorKind::Internal);
        };
        if self
            .store
            .save(&login_key(&handle), sealed, LOGIN_TTL)
            .await
            .is_err()
        {
            return LocalResponse::error(ErrorKind::AuthUnavailable);
        }
        self.stats.login();
        // Lax: the callback arrives as a top-level navigation from the provider's site.
        redirect(StatusCode::FOUND, &url).with_header(
            SET_COOKIE,
            cookie_header(
                &self.login_cookie_name,
                &handle.cookie_value(),
                LOGIN_TTL,
                "Lax",
            ),
        )
    }

    async fn callback(&self, req: EndpointRequest<'_>, ctx: &mut RequestCtx) -> LocalResponse {
        let clear_login = cookie_header(&self.login_cookie_name, "", Duration::ZERO, "Lax");
        let (answer, outcome) = self.finish_login(req, ctx).await;
        self.stats.callback(outcome);
        answer.with_header(SET_COOKIE, clear_login)
    }

    async fn finish_login(
        &self,
        req: EndpointRequest<'_>,
        ctx: &mut RequestCtx,
    ) -> (LocalResponse, CallbackOutcome) {
        let failed = |code: &str, outcome: CallbackOutcome, ctx: &RequestCtx| {
            (json(StatusCode::BAD_REQUEST, code, ctx), outcome)
        };
        let unavailable = || {
            (
                LocalResponse::error(ErrorKind::AuthUnavailable),
                CallbackOutcome::Unavailable,
            )
        };
        let headers = &req.header.headers;
        let Some(handle) = cookie(headers, &self.login_cookie_name).and_then(SessionHandle::parse)
        else {
            return failed("invalid_state", CallbackOutcome::InvalidState, ctx);
        };
        let key = login_key(&handle);
        let sealed = match self.store.load(&key).await {
            Ok(Some(s)) => s,
            Ok(None) => return failed("invalid_state", CallbackOutcome::InvalidState, ctx),
            Err(_) => return unavailable(),
        };
        // One use: whatever happens next, this pending login is spent.
        if self.store.remove(&key).await.is_err() {
            return unavailable();
        }
        let Some(pending) = handle
            .open(&self.key, &sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice::<PreLogin>(&plain).ok())
        else {
            return failed("invalid_state", CallbackOutcome::InvalidState, ctx);
        };
        let state = query(req.header, "state").unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            return failed("invalid_state", CallbackOutcome::InvalidState, ctx);
        }
        // RFC 9207: when the provider names itself, it must be the one we sent the user to.
        if let Some(iss) = query(req.header, "iss") {
            if iss != self.oidc.provider().issuer() {
                return failed("wrong_issuer", CallbackOutcome::ProviderError, ctx);
            }
        }
        if query(req.header, "error").is_some() {
            return failed("login_failed", CallbackOutcome::ProviderError, ctx);
        }
        let Some(code) = query(req.header, "code").filter(|c| !c.is_empty()) else {
            return failed("login_failed", CallbackOutcome::ProviderError, ctx);
        };
        let Ok(md) = self.oidc.metadata().await else {
            return unavailable();
        };
        let tokens = match self
            .oidc
            .exchange_code(&md, &pending.redirect_uri, &code, &pending.verifier)
            .await
        {
            Ok(t) => t,
            Err(OidcError::Unavailable(_)) => return unavailable(),
            Err(_) => return failed("login_failed", CallbackOutcome::ExchangeFailed, ctx),
        };
        let Some(id_token) = tokens.id_token.as_deref() else {
            return failed("login_failed", CallbackOutcome::InvalidIdToken, ctx);
        };
        let claims = match self
            .oidc
            .verify_id_token(id_token, Some(&pending.nonce))
            .await
        {
            Ok(c) => c,
            Err(_) => return failed("login_failed", CallbackOutcome::InvalidIdToken, ctx),
        };
        // A session the browser may still hold is replaced, never reused (no fixation).
        if let Some(old) = cookie(headers, &self.cookie_name).and_then(SessionHandle::parse) {
            let _ = self.store.remove(&session_key(&old)).await;
        }
        let Ok(handle) = SessionHandle::generate(&self.rng) else {
            return (
                LocalResponse::error(ErrorKind::Internal),
                CallbackOutcome::Unavailable,
            );
        };
        let now = crate::jwt::unix_now();
        let record = Record {
            sub: claims.sub,
            sid: claims.sid,
            name: claims.name,
            email: claims.email,
            roles: claims.roles,
            access_token: tokens.access_token,
            access_expires_at: now + tokens.expires_in.map_or(300, |d| d.as_secs()),
            refresh_token: tokens.refresh_token,
            id_token: Some(id_token.to_string()),
            created_at: now,
            expires_at: now + self.absolute_timeout.as_secs(),
            touched_at: now,
        };
        if self.save(&handle, &record).await.is_err() {
            return unavailable();
        }
        let member = session_key(&handle);
        for index in [
            record.sid.as_deref().map(|s| index_key("sid", s)),
            Some(index_key("sub", &record.sub)),
        ]
        .into_iter()
        .flatten()
        {
            if self
                .store
                .index_add(&index, &member, self.absolute_timeout)
                .await
                .is_err()
            {
                return unavailable();
            }
        }
        self.stats.created();
        ctx.user = Some(record.sub.as_str().into());
        let answer = redirect(StatusCode::SEE_OTHER, &pending.return_to).with_header(
            SET_COOKIE,
            self.set_cookie(&handle.cookie_value(), self.absolute_timeout),
        );
        (answer, CallbackOutcome::Ok)
    }

    async fn logout(&self, req: EndpointRequest<'_>, ctx: &mut RequestCtx) -> LocalResponse {
        let headers = &req.header.headers;
        let fallback = self
            .post_logout_redirect_uri
            .clone()
            .unwrap_or_else(|| "/".to_string());
        let Some(handle) = cookie(headers, &self.cookie_name).and_then(SessionHandle::parse) else {
            // Nothing to end: no proof needed to clear a cookie.
            return redirect(StatusCode::FOUND, &fallback)
                .with_header(SET_COOKIE, self.clear_cookie());
        };
        let record = match self.load(&handle).await {
            Ok(r) => r,
            Err(NoSession::Unavailable) => return LocalResponse::error(ErrorKind::AuthUnavailable),
            Err(_) => {
                return redirect(StatusCode::FOUND, &fallback)
                    .with_header(SET_COOKIE, self.clear_cookie())
            }
        };
        let header_proof = self.csrf_ok(req.header);
        let query_proof = query(req.header, "sid")
            .is_some_and(|sid| bool::from(sid.as_bytes().ct_eq(logout_proof(&handle).as_bytes())));
        if !header_proof && !query_proof {
            self.stats.csrf_rejected();
            return LocalResponse::error(ErrorKind::CsrfRequired);
        }
        let md = self.oidc.metadata().await.ok();
        if let (Some(md), Some(rt)) = (&md, &record.refresh_token) {
            let _ = self.oidc.revoke(md, rt).await;
        }
        if self.store.remove(&session_key(&handle)).await.is_err() {
            return LocalResponse::error(ErrorKind::AuthUnavailable);
        }
        self.stats.ended(EndReason::Logout);
        ctx.user = Some(record.sub.as_str().into());
        let target = match md.as_ref().and_then(|m| m.end_session_endpoint.as_deref()) {
            Some(end_session) => {
                let post_logout = match &self.post_logout_redirect_uri {
                    Some(uri) => Some(uri.clone()),
                    None => origin(req.header, ctx).map(|o| format!("{o}/")),
                };
                let mut url = match url::Url::parse(end_session) {
                    Ok(u) => u,
                    Err(_) => return LocalResponse::error(ErrorKind::Internal),
                };
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(id_token) = &record.id_token {
                        q.append_pair("id_token_hint", id_token);
                    }
                    if let Some(uri) = &post_logout {
                        q.append_pair("post_logout_redirect_uri", uri);
                    }
                    q.append_pair("client_id", self.oidc.client_id());
                }
                url.to_string()
            }
            None => fallback,
        };
        redirect(StatusCode::FOUND, &target).with_header(SET_COOKIE, self.clear_cookie())
    }

    async fn user(&self, req: EndpointRequest<'_>, ctx: &mut RequestCtx) -> LocalResponse {
        if !self.csrf_ok(req.header) {
            self.stats.csrf_rejected();
            return LocalResponse::error(ErrorKind::CsrfRequired);
        }
        let sent = cookie(&req.header.headers, &self.cookie_name);
        let Some(handle) = sent.and_then(SessionHandle::parse) else {
            return self.anonymous(sent.is_some());
        };
        let record = match self.load(&handle).await {
            Ok(r) => r,
            Err(NoSession::Unavailable) => return LocalResponse::error(ErrorKind::AuthUnavailable),
            Err(_) => return self.anonymous(true),
        };
        ctx.user = Some(record.sub.as_str().into());
        let body = serde_json::json!({
            "sub": record.sub,
            "name": record.name,
            "email": record.email,
            "roles": record.roles,
            "session_expires_at": record.expires_at,
            "logout_url": format!("{}/logout?sid={}", self.base_path, logout_proof(&handle)),
        });
        answer(
            StatusCode::OK,
            "application/json",
            Bytes::from(body.to_string()),
        )
    }

    async fn backchannel(&self, req: EndpointRequest<'_>, ctx: &mut RequestCtx) -> LocalResponse {
        let token = url::form_urlencoded::parse(req.body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned());
        let Some(token) = token else {
            self.stats.backchannel(false);
            return json(StatusCode::BAD_REQUEST, "invalid_request", ctx);
        };
        let claims = match self.oidc.verify_logout_token(&token).await {
            Ok(c) => c,
            Err(_) => {
                self.stats.backchannel(false);
                return json(StatusCode::BAD_REQUEST, "invalid_request", ctx);
            }
        };
        // With a `sid`, only that provider session ends; with only a `sub`, all of the
        // user's sessions do (Back-Channel Logout §2.4).
        let index = match (&claims.sid, &claims.sub) {
            (Some(sid), _) => index_key("sid", sid),
            (None, Some(sub)) => index_key("sub", sub),
            (None, None) => return json(StatusCode::BAD_REQUEST, "invalid_request", ctx),
        };
        let Ok(members) = self.store.index_take(&index).await else {
            return LocalResponse::error(ErrorKind::AuthUnavailable);
        };
        for member in members {
            if self.store.remove(&member).await.is_err() {
                return LocalResponse::error(ErrorKind::AuthUnavailable);
            }
            self.stats.ended(EndReason::Backchannel);
        }
        self.stats.backchannel(true);
        answer(StatusCode::OK, "text/plain", Bytes::new())
    }

    /// Whether the request carries the CSRF header with the value `1`.
    pub(crate) fn csrf_ok(&self, header: &RequestHeader) -> bool {
        header
            .headers
            .get(&self.csrf_header)
            .is_some_and(|v| v.as_bytes() == b"1")
    }

    /// 401 for a request without a usable session; clears a cookie that was sent.
    pub(crate) fn anonymous(&self, cookie_sent: bool) -> LocalResponse {
        let answer = LocalResponse::error(ErrorKind::Unauthorized);
        if cookie_sent {
            answer.with_header(SET_COOKIE, self.clear_cookie())
        } else {
            answer
        }
    }

    fn random(&self) -> Option<String> {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).ok()?;
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// The store key of a pending login.
fn login_key(handle: &SessionHandle) -> String {
    format!("l:{}", handle.store_key())
}

/// The index set of sessions by provider session id or subject (hashed: bounded length,
/// nothing readable about the user in the store's key space).
fn index_key(kind: &str, value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{hex}")
}

/// The logout CSRF proof for a session: derived from its id, so only pages that read
/// `/auth/user` (same origin, with the CSRF header) learn it.
fn logout_proof(handle: &SessionHandle) -> String {
    use base64::Engine as _;
    let digest = Sha256::digest(format!("meshgate logout {}", handle.store_key()).as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The first value of query parameter `name`, decoded.
fn query(header: &RequestHeader, name: &str) -> Option<String> {
    let q = header.uri.query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `http(s)://host[:port]` of the request, from `Host` (or the HTTP/2 authority); `None`
/// when it is missing or not a plain authority.
fn origin(header: &RequestHeader, ctx: &RequestCtx) -> Option<String> {
    let raw = header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))?;
    let authority: http::uri::Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let scheme = if ctx.tls { "https" } else { "http" };
    Some(format!("{scheme}://{}", authority.as_str()))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("/"))
}

/// A non-error answer (not counted as a local error) with this body, keeping the
/// connection.
fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> LocalResponse {
    LocalResponse {
        status,
        error: None,
        headers: Vec::new(),
        body: Some((HeaderValue::from_static(content_type), body)),
        close: false,
    }
}

/// A redirect to `location` with an empty body.
pub(crate) fn redirect(status: StatusCode, location: &str) -> LocalResponse {
    answer(status, "text/plain", Bytes::new()).with_header(LOCATION, header_value(location))
}

/// A JSON answer `{"error": code, "request_id": …}` with a status outside the error table.
fn json(status: StatusCode, code: &str, ctx: &RequestCtx) -> LocalResponse {
    let body = LocalResponse::json_error_body(code, &ctx.request_id);
    answer(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_are_hashed_and_distinct_per_kind() {
        let a = index_key("sid", "abc");
        assert!(a.starts_with("sid:") && a.len() == 4 + 32);
        assert!(!a.contains("abc"));
        assert_eq!(index_key("sub", "abc")[4..], a[4..]);
        assert_ne!(index_key("sid", "abd"), a);
    }
}
