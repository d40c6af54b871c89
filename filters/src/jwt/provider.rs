//! [`Provider`]: one OpenID Provider's keys, verification settings, verified-token cache
//! and counters — the state that must outlive config reloads.
//!
//! The engine builds one per `providers.<name>` and keeps it while a reloaded spec is
//! [compatible](Provider::is_compatible), so a reload neither refetches keys nor forgets
//! verified tokens.
//!
//! Key refresh rules, in one place:
//! - Keys are read lock-free (`arc-swap`) on every cache miss.
//! - A refresh is wanted when no keys were ever loaded, when a token names an unknown
//!   `kid`, or when the keys are older than `jwks_cache_ttl` (then in the background: the
//!   old keys keep verifying meanwhile).
//! - Refreshes are single-flight: callers that arrive while one runs wait for it and share
//!   its result, and it runs in its own task so a client hanging up does not cancel it.
//! - Whatever wants it, a refresh starts at most once per `jwks_refetch_cooldown`, so a
//!   flood of made-up `kid`s costs the provider one fetch per cooldown.
//! - A failed refresh keeps the last good keys. With no keys ever loaded, tokens are
//!   refused (fail closed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use jsonwebtoken::{Algorithm, Validation};

use super::cache::{TokenCache, TOKEN_CACHE_CAPACITY};
use super::fetch::{discovery_url, get_document, parse_discovery, FetchError};
use super::keys::{KeyChoice, KeySet};
use super::spec::ProviderSpec;
use super::stats::{Counters, FailureReason, FetchOutcome, JwtStats};
use super::token::{Claims, Identity, TokenHeader};
use crate::SpecError;

/// The settings that decide how tokens are verified and where keys come from. Two specs
/// with equal settings can share one [`Provider`] (and its keys and cache).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    issuer: String,
    audience: Option<String>,
    jwks_uri: Option<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    ttl: Duration,
    cooldown: Duration,
}

impl Settings {
    fn from_spec(spec: &ProviderSpec) -> Self {
        Self {
            issuer: spec.issuer.clone(),
            audience: spec.audience.clone(),
            jwks_uri: spec.jwks_uri.clone(),
            algorithms: spec.parsed_algorithms(),
            leeway: spec.leeway.get(),
            ttl: spec.jwks_cache_ttl.get(),
            cooldown: spec.jwks_refetch_cooldown.get(),
        }
    }
}

/// What verification with the current keys concluded.
pub(crate) enum Verdict {
    /// Signature and claims are good.
    Valid(Arc<Identity>),
    /// The token is refused; new keys would not change that.
    Invalid(FailureReason),
    /// No key for this token yet (`NoKeys` or `UnknownKey`); a refresh might bring one.
    NeedKeys(FailureReason),
}

/// One OpenID Provider as seen by `jwt` filters: its signing keys (fetched and cached),
/// the checks tokens must pass, the verified-token cache and the counters.
pub struct Provider {
    settings: Settings,
    /// One `Validation` per allowed algorithm: `jsonwebtoken` wants the algorithms of a
    /// validation to be of the key's family, and each token names exactly one.
    validations: Vec<(Algorithm, Validation)>,
    leeway_secs: u64,
    keys: ArcSwapOption<KeySet>,
    /// `jwks_uri` found by discovery; forgotten when a fetch from it fails.
    discovered_jwks_uri: Mutex<Option<String>>,
    /// Held by the one refresh in progress.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Refreshes finished so far: a waiter that sees it change shares that result.
    refreshes: AtomicU64,
    /// Whether a refresh is fetching now (waiting for it is always allowed).
    fetching: AtomicBool,
    /// Start of the last refresh, in nanoseconds after `epoch`, plus one (0 = never).
    last_attempt: AtomicU64,
    epoch: Instant,
    last_error: Mutex<Option<FetchError>>,
    tokens: TokenCache,
    counters: Counters,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .field("algorithms", &self.settings.algorithms)
            .field("keys", &self.keys.load().as_ref().map(|k| k.len()))
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Checks `spec` and builds the runtime provider. No network I/O: keys are fetched by
    /// [`prefetch`](Self::prefetch) or by the first request that needs them.
    pub fn new(spec: &ProviderSpec) -> Result<Arc<Self>, Vec<SpecError>> {
        Self::with_token_cache(spec, TOKEN_CACHE_CAPACITY)
    }

    /// [`new`](Self::new) with another bound on the verified-token cache.
    pub fn with_token_cache(
        spec: &ProviderSpec,
        capacity: usize,
    ) -> Result<Arc<Self>, Vec<SpecError>> {
        let errors = spec.check();
        if !errors.is_empty() {
            return Err(errors);
        }
        let settings = Settings::from_spec(spec);
        let leeway_secs = settings.leeway.as_secs();
        let validations = settings
            .algorithms
            .iter()
            .map(|alg| (*alg, validation(&settings, *alg, leeway_secs)))
            .collect();
        Ok(Arc::new(Self {
            settings,
            validations,
            leeway_secs,
            keys: ArcSwapOption::empty(),
            discovered_jwks_uri: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            last_attempt: AtomicU64::new(0),
            epoch: Instant::now(),
            last_error: Mutex::new(None),
            tokens: TokenCache::new(capacity),
            counters: Counters::default(),
        }))
    }

    /// Whether this provider can serve `spec` unchanged: same issuer, audience, key
    /// source, algorithms, leeway and cache timings. The engine reuses a compatible
    /// provider across a reload (keeping its keys and cache) and builds a new one
    /// otherwise. Client id, secret and login scopes do not matter here.
    pub fn is_compatible(&self, spec: &ProviderSpec) -> bool {
        spec.check().is_empty() && Settings::from_spec(spec) == self.settings
    }

    /// The issuer tokens must name.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The audience tokens must carry, if configured.
    pub fn audience(&self) -> Option<&str> {
        self.settings.audience.as_deref()
    }

    /// The accepted algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.settings.algorithms
    }

    /// Whether keys were ever loaded (they are kept even when the provider goes down):
    /// a readiness signal.
    pub fn has_keys(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Loads keys unless fresh ones are present, sharing a refresh already running. Meant
    /// to be spawned by the engine at startup so the first request finds keys; a failure
    /// is not fatal (requests retry, within the cooldown). Returns
    /// [`FetchError::CoolingDown`] when the last attempt was less than
    /// `jwks_refetch_cooldown` ago.
    pub async fn prefetch(self: &Arc<Self>) -> Result<(), FetchError> {
        if self
            .keys
            .load()
            .as_ref()
            .is_some_and(|k| k.fetched_at.elapsed() < self.settings.ttl)
        {
            return Ok(());
        }
        self.refresh().await
    }

    /// The last refresh error, if the last refresh failed.
    pub fn last_fetch_error(&self) -> Option<FetchError> {
        lock(&self.last_error).clone()
    }

    /// A snapshot of the counters, cache size and key state.
    pub fn stats(&self) -> JwtStats {
        let mut stats = self.counters.snapshot();
        stats.token_cache_entries = self.tokens.len();
        if let Some(keys) = self.keys.load().as_ref() {
            stats.keys_loaded = keys.len();
            stats.keys_age = Some(keys.fetched_at.elapsed());
        }
        stats
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The identity of a token verified before, if still valid at `now`.
    pub(crate) fn cached(&self, digest: &[u8; 32], now: u64) -> Option<Arc<Identity>> {
        let hit = self.tokens.get(digest, now);
        if hit.is_some() {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Verifies `token` with the keys at hand and caches a success. Keys past their TTL
    /// are still used, and a background refresh is started.
    pub(crate) fn verify(
        self: &Arc<Self>,
        token: &str,
        header: &TokenHeader,
        digest: [u8; 32],
        now: u64,
    ) -> Verdict {
        let Some(keys) = self.keys.load_full() else {
            return Verdict::NeedKeys(FailureReason::NoKeys);
        };
        if keys.fetched_at.elapsed() >= self.settings.ttl {
            self.refresh_in_background();
        }
        let key = match keys.choose(header.kid.as_deref(), header.alg) {
            KeyChoice::Found(key) => key,
            KeyChoice::Mismatch => return Verdict::Invalid(FailureReason::KeyMismatch),
            KeyChoice::UnknownKid => return Verdict::NeedKeys(FailureReason::UnknownKey),
            KeyChoice::NoUniqueKey => return Verdict::Invalid(FailureReason::UnknownKey),
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Verdict::Invalid(FailureReason::AlgorithmNotAllowed);
        };
        self.counters
            .signature_checks
            .fetch_add(1, Ordering::Relaxed);
        let claims = match jsonwebtoken::decode::<Claims>(token, &key.decoding, validation) {
            Ok(data) => data.claims,
            Err(e) => return Verdict::Invalid(failure_reason(e.kind())),
        };
        let identity = match Identity::from_claims(claims, self.leeway_secs) {
            Ok(identity) => Arc::new(identity),
            Err(reason) => return Verdict::Invalid(reason),
        };
        // Only cache under the key set that verified it: if the set was replaced (and the
        // cache cleared) meanwhile, the key may be gone.
        let current = self.keys.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &keys)) {
            self.tokens.insert(digest, Arc::clone(&identity), now);
        }
        Verdict::Valid(identity)
    }

    /// Verifies the signature of a compact JWS from this provider and returns its payload,
    /// for tokens other than access tokens (ID tokens, logout tokens). Keys are loaded or
    /// refreshed as for the `jwt` filter (an unknown `kid` refreshes at most once per
    /// cooldown), the header's `alg` must be allowed and fit the key, and `crit` is refused.
    /// No claim is checked here: the caller checks the ones its token type requires, and
    /// nothing is cached.
    pub async fn verify_jws(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, FailureReason> {
        // ID tokens may carry more claims than access tokens; 64 KiB still bounds the work.
        if token.len() > 64 * 1024 {
            return Err(FailureReason::Malformed);
        }
        let header = super::token::parse_header(token, &self.settings.algorithms)?;
        match self.verify_signature(token, &header) {
            Err(FailureReason::NoKeys | FailureReason::UnknownKey) if self.may_refresh() => {
                let _ = self.refresh().await;
                self.verify_signature(token, &header)
            }
            result => result,
        }
    }

    fn verify_signature(
        &self,
        token: &str,
        header: &TokenHeader,
    ) -> Result<serde_json::Map<String, serde_json::Value>, FailureReason> {
        let Some(keys) = self.keys.load_full() else {
            return Err(FailureReason::NoKeys);
        };
        let key = match keys.choose(header.kid.as_deref(), header.alg) {
            KeyChoice::Found(key) => key,
            KeyChoice::Mismatch => return Err(FailureReason::KeyMismatch),
            KeyChoice::UnknownKid | KeyChoice::NoUniqueKey => {
                return Err(FailureReason::UnknownKey)
            }
        };
        let mut v = Validation::new(header.alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        self.counters
            .signature_checks
            .fetch_add(1, Ordering::Relaxed);
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, &v)
            .map(|data| data.claims)
            .map_err(|e| failure_reason(e.kind()))
    }

    /// Refreshes finished so far. A caller that read it before [`verify`](Self::verify)
    /// and sees it changed knows new keys may have landed in between.
    pub(crate) fn generation(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// Whether a request missing keys may wait for a refresh: the cooldown since the last
    /// one is over, or one is running (join it). Counts the refusal otherwise.
    pub(crate) fn may_refresh(&self) -> bool {
        // The cooldown is read first: a refresh raises `fetching` before stamping its
        // start, so a caller that finds the cooldown running also sees that flag while the
        // refresh lasts.
        if self.cooldown_over(Instant::now()) || self.fetching.load(Ordering::SeqCst) {
            return true;
        }
        self.counters
            .refetch_suppressed
            .fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Runs a refresh, or joins the one running, and returns its result.
    pub(crate) async fn refresh(self: &Arc<Self>) -> Result<(), FetchError> {
        let seen = self.generation();
        let this = Arc::clone(self);
        let task = async move { this.refresh_after(seen).await };
        match tokio::runtime::Handle::try_current() {
            // Its own task, so that the fetch others wait on survives this caller going away.
            Ok(handle) => handle
                .spawn(task)
                .await
                .unwrap_or(Err(FetchError::Unreachable("refresh task failed"))),
            Err(_) => task.await,
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if !self.cooldown_over(Instant::now()) || self.fetching.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let this = Arc::clone(self);
            handle.spawn(async move {
                let _ = this.refresh().await;
            });
        }
    }

    async fn refresh_after(&self, seen: u64) -> Result<(), FetchError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        if self.generation() != seen {
            // A refresh finished while this one queued: share its outcome.
            return match lock(&self.last_error).clone() {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        let now = Instant::now();
        if !self.cooldown_over(now) {
            self.counters
                .refetch_suppressed
                .fetch_add(1, Ordering::Relaxed);
            return Err(FetchError::CoolingDown);
        }
        let _fetching = FetchingFlag::raise(&self.fetching);
        self.last_attempt
            .store(self.nanos_since_epoch(now) + 1, Ordering::SeqCst);
        let result = self.fetch_keys().await.map(|set| self.install(set));
        match &result {
            Ok(()) => self.counters.fetch(FetchOutcome::Ok),
            Err(e) => self.counters.fetch(e.outcome()),
        }
        *lock(&self.last_error) = result.as_ref().err().cloned();
        // After the keys are installed, so a changed generation means they are visible.
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn fetch_keys(&self) -> Result<KeySet, FetchError> {
        let uri = match &self.settings.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let known = lock(&self.discovered_jwks_uri).clone();
                match known {
                    Some(uri) => uri,
                    None => {
                        let body = get_document(&discovery_url(&self.settings.issuer)).await?;
                        let uri = parse_discovery(&body, &self.settings.issuer)?;
                        *lock(&self.discovered_jwks_uri) = Some(uri.clone());
                        uri
                    }
                }
            }
        };
        let result = match get_document(&uri).await {
            Ok(body) => KeySet::parse(&body, &self.settings.algorithms),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // The provider may have moved its keys: rediscover on the next attempt.
            *lock(&self.discovered_jwks_uri) = None;
        }
        result
    }

    /// Installs a key set as if fetched, for unit tests that run without a provider.
    #[cfg(test)]
    pub(crate) fn install_jwks(&self, body: &[u8]) -> Result<(), FetchError> {
        KeySet::parse(body, &self.settings.algorithms).map(|set| self.install(set))
    }

    fn install(&self, set: KeySet) {
        let changed = self
            .keys
            .load()
            .as_ref()
            .is_none_or(|old| old.fingerprint != set.fingerprint);
        self.keys.store(Some(Arc::new(set)));
        if changed {
            self.tokens.clear();
        }
    }

    fn cooldown_over(&self, now: Instant) -> bool {
        let last = self.last_attempt.load(Ordering::SeqCst);
        if last == 0 {
            return true;
        }
        let elapsed = self.nanos_since_epoch(now).saturating_sub(last - 1);
        Duration::from_nanos(elapsed) >= self.settings.cooldown
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

/// Clears the "fetching" flag however the fetch ends (including cancellation).
struct FetchingFlag<'a>(&'a AtomicBool);

impl<'a> FetchingFlag<'a> {
    fn raise(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Self(flag)
    }
}

impl Drop for FetchingFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A poisoned lock only means another thread panicked mid-update of a plain value; the
/// value is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn validation(settings: &Settings, alg: Algorithm, leeway_secs: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[settings.issuer.as_str()]);
    if let Some(aud) = &settings.audience {
        v.set_audience(&[aud.as_str()]);
    }
    v
}

/// The label of a `jsonwebtoken` refusal.
fn failure_reason(kind: &jsonwebtoken::errors::ErrorKind) -> FailureReason {
    use jsonwebtoken::errors::ErrorKind as E;
    match kind {
        E::InvalidSignature => FailureReason::BadSignature,
        E::ExpiredSignature => FailureReason::Expired,
        E::ImmatureSignature => FailureReason::NotYetValid,
        E::InvalidIssuer => FailureReason::WrongIssuer,
        E::InvalidAudience => FailureReason::WrongAudience,
        E::MissingRequiredClaim(_) | E::InvalidClaimFormat(_) => FailureReason::MissingClaim,
        E::InvalidAlgorithm | E::InvalidAlgorithmName | E::UnsupportedAlgorithm => {
            FailureReason::AlgorithmNotAllowed
        }
        E::InvalidEcdsaKey | E::InvalidEddsaKey | E::InvalidRsaKey(_) | E::InvalidKeyFormat => {
            FailureReason::KeyMismatch
        }
        _ => FailureReason::Malformed,
    }
}

/// Seconds since the Unix epoch (0 for a clock set before 1970, which the verifier
/// itself would refuse to run with).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
