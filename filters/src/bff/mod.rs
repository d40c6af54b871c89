//! The browser BFF (DESIGN §5): OIDC Authorization Code + PKCE login at the edge,
//! server-side sessions, and the `bff` route filter that turns the session cookie into
//! `Authorization: Bearer <access token>`.
//!
//! - [`Bff`] is one config generation's BFF: settings, the relying party ([`oidc`]) and the
//!   session store. The engine answers the endpoints under `base_path` with
//!   [`Bff::handle`]; routes reach it through [`BffFilter`].
//! - Sessions: the cookie holds an opaque id and a per-session secret ([`crypto`]); the
//!   store holds the record sealed under a key derived from `session_key` and that secret,
//!   so a store dump alone reveals no token.
//! - Refresh: an access token expiring within `refresh_before` is refreshed by exactly one
//!   request per session, across replicas, under the store's refresh lock (renewed while
//!   the provider answers); the others wait for its result.
//! - Every failure to decide (store or provider down) is a 503: a request never goes on
//!   anonymously because authentication could not be checked.

pub mod crypto;
mod endpoints;
mod filter;
mod oidc;
pub mod redis_store;
mod session;
pub mod spec;
mod stats;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ring::rand::SystemRandom;

pub use endpoints::{Endpoint, EndpointRequest, MAX_BACKCHANNEL_BODY};
pub use filter::{BffFilter, SessionBearer};
pub use spec::{BffFilterSpec, BffSpec, SameSite, SessionStoreSpec};
pub use stats::{BffStats, BffStatsSnapshot};

use crate::jwt::{Provider, ProviderSpec};
use crate::rate_limit::StoreBackend;
use crate::SpecError;
use crypto::{SessionHandle, SessionKey};
use oidc::Oidc;
use session::Record;
use store::{MemoryStore, SessionStore, StoreError};

/// Default cap of the memory session store.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Default per-operation deadline of the Redis session store.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lifetime of a pending login (the pre-login cookie and its record).
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// The refresh lock's lifetime; renewed every third of it while a refresh runs.
const REFRESH_LOCK_TTL: Duration = Duration::from_secs(10);
/// Longest a request waits for another request's refresh before deciding without it.
const REFRESH_WAIT: Duration = Duration::from_secs(6);

/// Builds the session store `stores.sessions` describes (memory when absent). No I/O:
/// a Redis store connects on first use.
pub fn build_store(spec: Option<&SessionStoreSpec>) -> Result<Arc<dyn SessionStore>, String> {
    let Some(spec) = spec else {
        return Ok(Arc::new(MemoryStore::new(DEFAULT_MAX_SESSIONS)));
    };
    if let Some(e) = spec.check().into_iter().next() {
        return Err(format!("{}: {}", e.path, e.message));
    }
    match spec.backend {
        StoreBackend::Memory => Ok(Arc::new(MemoryStore::new(
            spec.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
        ))),
        StoreBackend::Redis => {
            let store = match &spec.url {
                Some(url) => redis_store::RedisSessionStore::standalone(url)?,
                None => redis_store::RedisSessionStore::cluster(&spec.cluster)?,
            };
            let timeout = spec.timeout.map_or(DEFAULT_STORE_TIMEOUT, |t| t.get());
            Ok(Arc::new(store.with_timeout(timeout)))
        }
    }
}

/// One config generation's BFF.
pub struct Bff {
    base_path: String,
    cookie_name: String,
    login_cookie_name: String,
    same_site: SameSite,
    csrf_header: HeaderName,
    idle_timeout: Duration,
    absolute_timeout: Duration,
    refresh_before: Duration,
    redirect_uri: Option<String>,
    post_logout_redirect_uri: Option<String>,
    key: SessionKey,
    rng: SystemRandom,
    oidc: Oidc,
    store: Arc<dyn SessionStore>,
    stats: Arc<BffStats>,
}

impl std::fmt::Debug for Bff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bff")
            .field("base_path", &self.base_path)
            .field("cookie", &self.cookie_name)
            .finish_non_exhaustive()
    }
}

/// Why a request has no usable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSession {
    /// No cookie, or one that opens nothing (unknown, expired, tampered): anonymous.
    Absent,
    /// The session existed but the provider refused its refresh token: it was deleted.
    Ended,
    /// The store or the provider could not answer: fail closed.
    Unavailable,
}

impl Bff {
    /// Compiles the `bff` section. `provider_spec` and `provider` are the entry `spec.provider`
    /// names; `store` and `stats` outlive reloads.
    pub fn new(
        spec: &BffSpec,
        provider_spec: &ProviderSpec,
        provider: Arc<Provider>,
        store: Arc<dyn SessionStore>,
        stats: Arc<BffStats>,
    ) -> Result<Arc<Self>, Vec<SpecError>> {
        let mut errors = spec.check();
        let key = SessionKey::from_base64(spec.session_key.expose());
        let oidc = Oidc::new(provider_spec, provider, stats.clone())
            .map_err(|e| errors.push(SpecError::new("provider", e)))
            .ok();
        let csrf_header = HeaderName::from_bytes(spec.csrf_header.as_bytes()).ok();
        let (Ok(key), Some(oidc), Some(csrf_header), true) =
            (key, oidc, csrf_header, errors.is_empty())
        else {
            return Err(errors);
        };
        Ok(Arc::new(Self {
            base_path: spec.base_path.clone(),
            login_cookie_name: format!("{}-login", spec.cookie.name),
            cookie_name: spec.cookie.name.clone(),
            same_site: spec.cookie.same_site,
            csrf_header,
            idle_timeout: spec.session.idle_timeout.get(),
            absolute_timeout: spec.session.absolute_timeout.get(),
            refresh_before: spec.session.refresh_before.get(),
            redirect_uri: spec.redirect_uri.clone(),
            post_logout_redirect_uri: spec.post_logout_redirect_uri.clone(),
            key,
            rng: SystemRandom::new(),
            oidc,
            store,
            stats,
        }))
    }

    /// Where the endpoints live (`/auth` by default).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<BffStats> {
        &self.stats
    }

    /// The provider whose keys verify ID and logout tokens.
    pub fn provider(&self) -> &Arc<Provider> {
        self.oidc.provider()
    }

    fn set_cookie(&self, value: &str, max_age: Duration) -> HeaderValue {
        let same_site = match self.same_site {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
        };
        cookie_header(&self.cookie_name, value, max_age, same_site)
    }

    fn clear_cookie(&self) -> HeaderValue {
        cookie_header(&self.cookie_name, "", Duration::ZERO, "Strict")
    }

    /// The decrypted record a cookie value names; `Absent` for anything that does not open
    /// (unknown id, wrong secret, tampered record).
    async fn open(&self, handle: &SessionHandle) -> Result<Vec<u8>, NoSession> {
        let sealed = match self.store.load(&session_key(handle)).await {
            Ok(Some(sealed)) => sealed,
            Ok(None) => return Err(NoSession::Absent),
            Err(StoreError(_)) => return Err(NoSession::Unavailable),
        };
        handle
            .open(&self.key, &sealed)
            .map_err(|_| NoSession::Absent)
    }

    /// Ends a session found past its absolute end.
    async fn expire(&self, handle: &SessionHandle) -> NoSession {
        let _ = self.store.remove(&session_key(handle)).await;
        self.stats.ended(stats::EndReason::Expired);
        NoSession::Absent
    }

    /// Loads and opens the whole session record; `Absent` as for [`Self::open`] and past
    /// the session's absolute end.
    async fn load(&self, handle: &SessionHandle) -> Result<Record, NoSession> {
        let plain = self.open(handle).await?;
        let record: Record = serde_json::from_slice(&plain).map_err(|_| NoSession::Absent)?;
        if record.expires_at <= crate::jwt::unix_now() {
            return Err(self.expire(handle).await);
        }
        Ok(record)
    }

    /// Seals and stores `record`, living until the idle or the absolute timeout,
    /// whichever comes first.
    async fn save(&self, handle: &SessionHandle, record: &Record) -> Result<(), NoSession> {
        let now = crate::jwt::unix_now();
        let remaining = Duration::from_secs(record.expires_at.saturating_sub(now));
        let ttl = remaining.min(self.idle_timeout);
        if ttl.is_zero() {
            return Err(NoSession::Absent);
        }
        let plain = serde_json::to_vec(record).map_err(|_| NoSession::Unavailable)?;
        let sealed = handle
            .seal(&self.key, &self.rng, &plain)
            .map_err(|_| NoSession::Unavailable)?;
        self.store
            .save(&session_key(handle), sealed, ttl)
            .await
            .map_err(|_| NoSession::Unavailable)
    }

    /// The session behind `handle`, with an access token valid for at least
    /// `refresh_before` when the provider allows: refreshed here if needed, by one request
    /// per session at a time. Also pushes the idle timer back now and then.
    ///
    /// The common case — a fresh token — reads only the fields a request needs, borrowed
    /// from the decrypted record (no copy of the ID and refresh tokens).
    pub(crate) async fn session(&self, handle: &SessionHandle) -> Result<Active, NoSession> {
        let plain = self.open(handle).await?;
        let hot: Hot<'_> = serde_json::from_slice(&plain).map_err(|_| NoSession::Absent)?;
        let now = crate::jwt::unix_now();
        if hot.expires_at <= now {
            return Err(self.expire(handle).await);
        }
        if hot.access_expires_at > now + self.refresh_before.as_secs() {
            let active = Active::new(&hot.sub, &hot.access_token)?;
            let touch_every = (self.idle_timeout / 16).as_secs().max(30);
            if now.saturating_sub(hot.touched_at) >= touch_every {
                self.touch(handle).await;
            }
            return Ok(active);
        }
        let record: Record = serde_json::from_slice(&plain).map_err(|_| NoSession::Absent)?;
        let record = self.refresh(handle, record).await?;
        Active::new(&record.sub, &record.access_token)
    }

    /// Pushes the idle timer back, under the refresh lock so it cannot write an old
    /// refresh token over a new one. Skipped when the lock is busy (someone else writes).
    async fn touch(&self, handle: &SessionHandle) {
        let key = session_key(handle);
        if !matches!(self.store.try_lock(&key, REFRESH_LOCK_TTL).await, Ok(true)) {
            return;
        }
        if let Ok(mut record) = self.load(handle).await {
            record.touched_at = crate::jwt::unix_now();
            let _ = self.save(handle, &record).await;
        }
        let _ = self.store.unlock(&key).await;
    }

    async fn refresh(&self, handle: &SessionHandle, stale: Record) -> Result<Record, NoSession> {
        let key = session_key(handle);
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        let fresh_enough = |r: &Record| {
            r.access_expires_at > crate::jwt::unix_now() + self.refresh_before.as_secs()
        };
        // Still usable if refreshing fails for lack of a provider.
        let fallback = |r: Record| {
            if r.access_expires_at > crate::jwt::unix_now() {
                Ok(r)
            } else {
                Err(NoSession::Unavailable)
            }
        };
        loop {
            match self.store.try_lock(&key, REFRESH_LOCK_TTL).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return fallback(stale),
            }
            // Someone else refreshes: wait for their result.
            if tokio::time::Instant::now() >= deadline {
                self.stats.refresh(stats::RefreshOutcome::Unavailable);
                return fallback(stale);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            match self.load(handle).await {
                Ok(r) if fresh_enough(&r) => {
                    self.stats.refresh(stats::RefreshOutcome::Shared);
                    return Ok(r);
                }
                Ok(_) => {}
                Err(NoSession::Absent) => return Err(NoSession::Ended),
                Err(e) => return Err(e),
            }
        }
        let result = self.refresh_locked(handle, &key).await;
        let _ = self.store.unlock(&key).await;
        match result {
            Ok(record) => Ok(record),
            Err(Refused::Ended) => Err(NoSession::Ended),
            Err(Refused::Gone) => Err(NoSession::Absent),
            Err(Refused::Unavailable(record)) => fallback(*record.unwrap_or(Box::new(stale))),
        }
    }

    /// The refresh proper, with the lock held (and renewed while the provider answers).
    async fn refresh_locked(&self, handle: &SessionHandle, key: &str) -> Result<Record, Refused> {
        // Another replica may have refreshed between our read and our lock.
        let mut record = match self.load(handle).await {
            Ok(r) => r,
            Err(NoSession::Unavailable) => return Err(Refused::Unavailable(None)),
            Err(_) => return Err(Refused::Gone),
        };
        if record.access_expires_at > crate::jwt::unix_now() + self.refresh_before.as_secs() {
            self.stats.refresh(stats::RefreshOutcome::Shared);
            return Ok(record);
        }
        let Some(refresh_token) = record.refresh_token.clone() else {
            // Nothing to refresh with: the session lasts as long as its access token.
            if record.access_expires_at > crate::jwt::unix_now() {
                return Ok(record);
            }
            let _ = self.store.remove(key).await;
            self.stats.ended(stats::EndReason::Expired);
            return Err(Refused::Ended);
        };
        let md = match self.oidc.metadata().await {
            Ok(md) => md,
            Err(_) => {
                self.stats.refresh(stats::RefreshOutcome::Unavailable);
                return Err(Refused::Unavailable(Some(Box::new(record))));
            }
        };
        let exchange = self.oidc.refresh(&md, &refresh_token);
        tokio::pin!(exchange);
        let mut renew = tokio::time::interval(REFRESH_LOCK_TTL / 3);
        renew.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut exchange => break outcome,
                _ = renew.tick() => {
                    let _ = self.store.extend_lock(key, REFRESH_LOCK_TTL).await;
                }
            }
        };
        let tokens = match outcome {
            Ok(tokens) => tokens,
            Err(oidc::OidcError::InvalidGrant) => {
                self.stats.refresh(stats::RefreshOutcome::InvalidGrant);
                let _ = self.store.remove(key).await;
                self.stats.ended(stats::EndReason::RefreshRefused);
                return Err(Refused::Ended);
            }
            Err(_) => {
                self.stats.refresh(stats::RefreshOutcome::Unavailable);
                return Err(Refused::Unavailable(Some(Box::new(record))));
            }
        };
        if let Some(id_token) = &tokens.id_token {
            // A refreshed ID token must still be about the same user.
            match self.oidc.verify_id_token(id_token, None).await {
                Ok(claims) if claims.sub == record.sub => {
                    record.id_token = Some(id_token.clone());
                }
                _ => {
                    self.stats.refresh(stats::RefreshOutcome::Rejected);
                    return Err(Refused::Unavailable(Some(Box::new(record))));
                }
            }
        }
        let now = crate::jwt::unix_now();
        record.access_token = tokens.access_token;
        record.access_expires_at = now + tokens.expires_in.map_or(300, |d| d.as_secs());
        if tokens.refresh_token.is_some() {
            record.refresh_token = tokens.refresh_token;
        }
        record.touched_at = now;
        match self.save(handle, &record).await {
            Ok(()) => {
                self.stats.refresh(stats::RefreshOutcome::Ok);
                Ok(record)
            }
            Err(_) => {
                // The provider rotated the refresh token and we could not keep the new
                // one: this session cannot refresh again, but its new access token works.
                self.stats.refresh(stats::RefreshOutcome::Unavailable);
                Err(Refused::Unavailable(Some(Box::new(record))))
            }
        }
    }
}

/// The fields of a session record every request needs (see [`Bff::session`]).
#[derive(serde::Deserialize)]
struct Hot<'a> {
    #[serde(borrow)]
    sub: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    access_token: std::borrow::Cow<'a, str>,
    access_expires_at: u64,
    expires_at: u64,
    touched_at: u64,
}

/// A request's session: who, and the `Authorization` value for the upstream.
pub(crate) struct Active {
    pub(crate) sub: std::sync::Arc<str>,
    pub(crate) bearer: HeaderValue,
}

impl Active {
    fn new(sub: &str, access_token: &str) -> Result<Self, NoSession> {
        let mut text = String::with_capacity(7 + access_token.len());
        text.push_str("Bearer ");
        text.push_str(access_token);
        // Takes the string's buffer without copying it; a token that cannot be a header
        // value is a broken session, not something to forward.
        let mut bearer = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .map_err(|_| NoSession::Absent)?;
        bearer.set_sensitive(true);
        Ok(Self {
            sub: sub.into(),
            bearer,
        })
    }
}

/// How a locked refresh ended without new tokens.
enum Refused {
    /// The provider refused the refresh token; the session was deleted.
    Ended,
    /// The session disappeared meanwhile.
    Gone,
    /// The provider or store failed; the freshest record known, if any.
    Unavailable(Option<Box<Record>>),
}

/// The store key of a session.
fn session_key(handle: &SessionHandle) -> String {
    format!("s:{}", handle.store_key())
}

/// `Set-Cookie` for a `__Host-` cookie: Secure, HttpOnly, Path=/, no Domain.
fn cookie_header(name: &str, value: &str, max_age: Duration, same_site: &str) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={}",
        max_age.as_secs()
    );
    // Names are checked token characters and values base64url: always a valid header.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("x=; Max-Age=0"))
}

#[cfg(test)]
mod tests;
