//! The `bff` route filter: session cookie in, `Authorization: Bearer <access token>` out.
//!
//! On a `bff` route every request must carry the CSRF header (`X-CSRF: 1`), except
//! top-level `GET`/`HEAD` navigations, which a cross-site page cannot make with our
//! `SameSite=Strict` cookie attached. A client-sent `Authorization` header is never
//! trusted here: it is removed, and only the session's token is sent upstream. The session
//! cookie (and the pre-login cookie) are removed from the upstream request.

use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderValue, Method, StatusCode};
use pingora::http::RequestHeader;

use super::crypto::SessionHandle;
use super::endpoints::redirect;
use super::session::{cookie, cookies_without};
use super::spec::BffFilterSpec;
use super::{Bff, NoSession};
use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, Step};

/// The access token of the request's session, left in the request context by the `bff`
/// filter: sent upstream as `Authorization: Bearer`, and checked by a later `jwt` filter
/// instead of any client-sent header.
#[derive(Clone)]
pub struct SessionBearer {
    /// `Bearer <token>`, checked to be a valid header value (so ASCII).
    header: HeaderValue,
}

impl SessionBearer {
    /// The access token itself.
    pub fn token(&self) -> &str {
        self.header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for SessionBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionBearer([redacted])")
    }
}

/// Compiled `bff` filter.
#[derive(Debug)]
pub struct BffFilter {
    bff: Arc<Bff>,
    require_login: bool,
}

impl BffFilter {
    /// The filter for one route, using the config generation's [`Bff`].
    pub fn new(spec: &BffFilterSpec, bff: Arc<Bff>) -> Self {
        Self {
            bff,
            require_login: spec.require_login,
        }
    }

    fn no_session(&self, req: &RequestView<'_>, navigate: bool, cookie_sent: bool) -> Action {
        if !self.require_login {
            return Action::Continue;
        }
        if navigate {
            let target = req
                .header
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str());
            let encoded: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
            let location = format!("{}/login?return_to={encoded}", self.bff.base_path());
            return Action::Respond(redirect(StatusCode::FOUND, &location));
        }
        Action::Respond(self.bff.anonymous(cookie_sent))
    }
}

impl Filter for BffFilter {
    fn name(&self) -> &'static str {
        "bff"
    }

    fn request_filter<'a>(&'a self, req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        let header = req.header;
        let navigate = matches!(header.method, Method::GET | Method::HEAD)
            && header
                .headers
                .get("sec-fetch-mode")
                .is_some_and(|v| v.as_bytes() == b"navigate");
        if !navigate && !self.bff.csrf_ok(header) {
            self.bff.stats().csrf_rejected();
            return Step::Done(Action::Respond(LocalResponse::error(
                ErrorKind::CsrfRequired,
            )));
        }
        let sent = cookie(&header.headers, self.bff.cookie_name());
        let Some(handle) = sent.and_then(SessionHandle::parse) else {
            return Step::Done(self.no_session(&req, navigate, sent.is_some()));
        };
        Step::Wait(Box::pin(async move {
            match self.bff.session(&handle).await {
                Ok(active) => {
                    ctx.user = Some(active.sub);
                    ctx.extensions.insert(SessionBearer {
                        header: active.bearer,
                    });
                    Action::Continue
                }
                Err(NoSession::Unavailable) => {
                    Action::Respond(LocalResponse::error(ErrorKind::AuthUnavailable))
                }
                Err(NoSession::Absent | NoSession::Ended) => self.no_session(&req, navigate, true),
            }
        }))
    }

    fn upstream_request_filter(&self, upstream: &mut RequestHeader, ctx: &mut RequestCtx) {
        upstream.remove_header(&AUTHORIZATION);
        if upstream.headers.contains_key(COOKIE) {
            let login = format!("{}-login", self.bff.cookie_name());
            let kept = cookies_without(&upstream.headers, &[self.bff.cookie_name(), &login]);
            upstream.remove_header(&COOKIE);
            if let Some(v) = kept.and_then(|k| HeaderValue::from_str(&k).ok()) {
                let _ = upstream.insert_header(COOKIE, v);
            }
        }
        if let Some(session) = ctx.extensions.get::<SessionBearer>() {
            let _ = upstream.insert_header(AUTHORIZATION, session.header.clone());
        }
    }
}
