//! The `jwt` route filter: admit requests that carry a valid access token of a configured
//! OpenID Provider, enforce the route's scopes and roles, and tell the upstream who the
//! caller is.
//!
//! A request goes through these steps, cheapest first:
//! 1. Exactly one `Authorization: Bearer <token>` of at most 8 KiB, else 401.
//! 2. The verified-token cache (by SHA-256 of the token): a hit skips 3–5.
//! 3. The JWS header: `alg` must be in the provider's allow-list (never `none` or HS*),
//!    no `crit` extensions.
//! 4. The key named by `kid`, of a type that fits `alg`. No keys yet, or an unknown `kid`,
//!    waits for a key refresh ([`Step::Wait`]) when the cooldown allows; else 401.
//! 5. Signature, then `iss`, `aud`, `exp`, `sub` (all mandatory) and `nbf`, with leeway.
//! 6. The route's `scopes` (all of them) and `roles` (any of them): 403 with
//!    `WWW-Authenticate: Bearer error="insufficient_scope"` when not met.
//!
//! Refusals follow RFC 6750 §3: `WWW-Authenticate: Bearer realm="meshgate"`, plus
//! `error="invalid_token"` when a token was presented. The reason is counted in the
//! provider's [`JwtStats`] and left in [`RequestCtx::extensions`] as a [`JwtRejection`] for
//! the access log; nothing from the token is echoed anywhere.
//!
//! Upstream, client-sent `x-meshgate-sub` / `x-meshgate-roles` are always removed (a
//! client must not be able to claim an identity), and the verified ones are set when
//! `forward_claims` is on.

mod cache;
mod fetch;
mod keys;
mod provider;
mod spec;
mod stats;
mod token;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

pub use cache::TOKEN_CACHE_CAPACITY;
pub use fetch::{FetchError, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES};
pub use provider::Provider;
pub use spec::{
    JwtSpec, ProviderSpec, Secret, DEFAULT_ALGORITHMS, DEFAULT_JWKS_CACHE_TTL,
    DEFAULT_JWKS_REFETCH_COOLDOWN, DEFAULT_LEEWAY, MAX_LEEWAY,
};
pub use stats::{FailureReason, FetchOutcome, JwtStats};
pub use token::{Identity, MAX_AUTHORIZATION_BYTES};

pub(crate) use fetch::get_document as fetch_document;

pub(crate) use provider::unix_now;
use provider::Verdict;
use token::{bearer_candidate, bearer_token, parse_header, token_digest};

use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, SpecError, Step};

/// `x-meshgate-sub`: the verified subject, sent upstream.
pub static SUB_HEADER: HeaderName = HeaderName::from_static("x-meshgate-sub");
/// `x-meshgate-roles`: the verified roles, comma-joined, sent upstream.
pub static ROLES_HEADER: HeaderName = HeaderName::from_static("x-meshgate-roles");

/// Challenge when no bearer token was presented (RFC 6750 §3.1: no error code then).
const CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"meshgate\"");
/// Challenge when a token was presented but is not acceptable.
const CHALLENGE_INVALID: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"meshgate\", error=\"invalid_token\"");

/// Why the `jwt` filter refused the request, left in [`RequestCtx::extensions`] for the
/// access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtRejection(pub FailureReason);

/// Compiled `jwt` filter: a provider plus this route's requirements. Cheap to rebuild on
/// every reload; keys and cached tokens live in the shared [`Provider`].
pub struct JwtFilter {
    provider: Arc<Provider>,
    scopes: Box<[Box<str>]>,
    roles: Box<[Box<str>]>,
    forward_claims: bool,
    /// The 403 challenge, naming the scopes this route requires.
    insufficient: HeaderValue,
}

impl std::fmt::Debug for JwtFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtFilter")
            .field("issuer", &self.provider.issuer())
            .field("scopes", &self.scopes)
            .field("roles", &self.roles)
            .field("forward_claims", &self.forward_claims)
            .finish()
    }
}

impl JwtFilter {
    /// Compiles the filter for `provider` (the one `spec.provider` names), reporting every
    /// problem with its path below the `jwt` key. The provider must have an `audience`:
    /// without one, a token minted for any other service of the same provider would pass.
    pub fn new(spec: &JwtSpec, provider: Arc<Provider>) -> Result<Self, Vec<SpecError>> {
        let mut errors = spec.check();
        if provider.audience().is_none() {
            errors.push(SpecError::new(
                "provider",
                format!(
                    "provider {:?} has no `audience`; the jwt filter needs one to know which \
                     tokens are meant for this proxy",
                    spec.provider
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut challenge = String::from("Bearer realm=\"meshgate\", error=\"insufficient_scope\"");
        if !spec.scopes.is_empty() {
            // Scope tokens were checked to be quote-free printable ASCII.
            challenge.push_str(", scope=\"");
            challenge.push_str(&spec.scopes.join(" "));
            challenge.push('"');
        }
        let insufficient = HeaderValue::from_str(&challenge).map_err(|_| {
            vec![SpecError::new(
                "scopes",
                "cannot be written in a WWW-Authenticate header",
            )]
        })?;
        Ok(Self {
            provider,
            scopes: spec.scopes.iter().map(|s| Box::from(s.as_str())).collect(),
            roles: spec.roles.iter().map(|r| Box::from(r.as_str())).collect(),
            forward_claims: spec.forward_claims,
            insufficient,
        })
    }

    /// The provider this filter checks tokens against.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Applies the route's requirements to a verified identity.
    fn admit(&self, identity: Arc<Identity>, ctx: &mut RequestCtx) -> Action {
        // Known even when refused below: the access log should say who was refused.
        ctx.user = Some(Arc::clone(identity.sub()));
        if !self.scopes.iter().all(|s| identity.has_scope(s)) {
            return self.reject(FailureReason::InsufficientScope, ctx);
        }
        if !self.roles.is_empty() && !self.roles.iter().any(|r| identity.has_role(r)) {
            return self.reject(FailureReason::MissingRole, ctx);
        }
        self.provider
            .counters()
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        ctx.extensions.insert(identity);
        Action::Continue
    }

    fn reject(&self, reason: FailureReason, ctx: &mut RequestCtx) -> Action {
        self.provider.counters().failure(reason);
        ctx.extensions.insert(JwtRejection(reason));
        let (kind, challenge) = match reason {
            FailureReason::MissingToken => (ErrorKind::Unauthorized, CHALLENGE),
            r if r.is_forbidden() => (ErrorKind::Forbidden, self.insufficient.clone()),
            _ => (ErrorKind::Unauthorized, CHALLENGE_INVALID),
        };
        Action::Respond(LocalResponse::error(kind).with_header(WWW_AUTHENTICATE, challenge))
    }

    fn conclude(&self, verdict: Verdict, ctx: &mut RequestCtx) -> Action {
        match verdict {
            Verdict::Valid(identity) => self.admit(identity, ctx),
            Verdict::Invalid(reason) | Verdict::NeedKeys(reason) => self.reject(reason, ctx),
        }
    }
}

impl Filter for JwtFilter {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn request_filter<'a>(&'a self, req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        // After a `bff` filter, the session's access token is the credential; the
        // client's own `Authorization` header is not trusted on such routes.
        let session_token = ctx
            .extensions
            .get::<crate::bff::SessionBearer>()
            .map(|session| session.token().to_string());
        let candidate: &[u8] = match &session_token {
            Some(token) => token.as_bytes(),
            None => match bearer_candidate(&req.header.headers) {
                Ok(candidate) => candidate,
                Err(reason) => return Step::Done(self.reject(reason, ctx)),
            },
        };
        let digest = token_digest(candidate);
        if let Some(identity) = self.provider.cached(&digest, unix_now()) {
            // Verified before, so it passed every check below then: same bytes, same hash.
            return Step::Done(self.admit(identity, ctx));
        }
        let token: std::borrow::Cow<'a, str> = match session_token {
            Some(token) => std::borrow::Cow::Owned(token),
            // First sight of this token: every check.
            None => match bearer_token(&req.header.headers) {
                Ok(token) => std::borrow::Cow::Borrowed(token),
                Err(reason) => return Step::Done(self.reject(reason, ctx)),
            },
        };
        let header = match parse_header(&token, self.provider.algorithms()) {
            Ok(header) => header,
            Err(reason) => return Step::Done(self.reject(reason, ctx)),
        };
        let generation = self.provider.generation();
        match self.provider.verify(&token, &header, digest, unix_now()) {
            Verdict::NeedKeys(_) if self.provider.may_refresh() => {
                Step::Wait(Box::pin(async move {
                    // The refresh's own outcome does not matter here: whatever keys are present
                    // afterwards (new ones, or the last good ones) decide, and still no key is
                    // a refusal.
                    let _ = self.provider.refresh().await;
                    let verdict = self.provider.verify(&token, &header, digest, unix_now());
                    self.conclude(verdict, ctx)
                }))
            }
            // A refresh finished between the lookup and the cooldown check: look again.
            Verdict::NeedKeys(_) if self.provider.generation() != generation => {
                let verdict = self.provider.verify(&token, &header, digest, unix_now());
                Step::Done(self.conclude(verdict, ctx))
            }
            verdict => Step::Done(self.conclude(verdict, ctx)),
        }
    }

    fn upstream_request_filter(&self, upstream: &mut RequestHeader, ctx: &mut RequestCtx) {
        upstream.remove_header(&SUB_HEADER);
        upstream.remove_header(&ROLES_HEADER);
        if !self.forward_claims {
            return;
        }
        let Some(identity) = ctx.extensions.get::<Arc<Identity>>() else {
            return;
        };
        // Both values were validated as header values when the token was verified. Static
        // names, because Pingora copies the text of a `HeaderName` it is given.
        let _ = upstream.insert_header(SUB_HEADER.as_str(), identity.sub_header().clone());
        if let Some(roles) = identity.roles_header() {
            let _ = upstream.insert_header(ROLES_HEADER.as_str(), roles.clone());
        }
    }
}

#[cfg(test)]
mod tests;
