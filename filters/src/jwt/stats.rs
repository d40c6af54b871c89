//! Counters of one provider's key fetches and token decisions, and their snapshot.
//!
//! Plain atomics: this crate has no metrics dependency, and the admin endpoint turns a
//! [`JwtStats`] snapshot into Prometheus text with the labels given by `as_str`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How one JWKS refresh (discovery, when used, plus the key set) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchOutcome {
    /// New keys were loaded.
    Ok,
    /// The provider did not answer within the fetch timeout.
    Timeout,
    /// The connection failed (refused, reset, DNS, TLS).
    Unreachable,
    /// The provider answered with a non-2xx status.
    HttpStatus,
    /// The document exceeded the size bound.
    TooLarge,
    /// The document was not a usable discovery document or key set.
    Invalid,
}

impl FetchOutcome {
    /// Every outcome, in label order.
    pub const ALL: [FetchOutcome; 6] = [
        FetchOutcome::Ok,
        FetchOutcome::Timeout,
        FetchOutcome::Unreachable,
        FetchOutcome::HttpStatus,
        FetchOutcome::TooLarge,
        FetchOutcome::Invalid,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchOutcome::Ok => "ok",
            FetchOutcome::Timeout => "timeout",
            FetchOutcome::Unreachable => "unreachable",
            FetchOutcome::HttpStatus => "http_status",
            FetchOutcome::TooLarge => "too_large",
            FetchOutcome::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request was refused by a `jwt` filter. The label goes to metrics and, through
/// [`super::JwtRejection`], to the access log; the client only sees 401 or 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No bearer token was presented.
    MissingToken,
    /// Not a compact JWS: wrong segment count, bad base64 or JSON, too long, several
    /// `Authorization` headers, unsupported `crit` header.
    Malformed,
    /// The header's `alg` is not in the provider's allow-list (this includes `none` and HS*).
    AlgorithmNotAllowed,
    /// The key named by `kid` is of another type than `alg` needs (or pinned to another `alg`).
    KeyMismatch,
    /// No key with the token's `kid` (or no single candidate when it has none).
    UnknownKey,
    /// No keys were ever loaded from the provider: fail closed.
    NoKeys,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not the provider's issuer.
    WrongIssuer,
    /// `aud` does not contain the provider's audience.
    WrongAudience,
    /// A mandatory claim (`exp`, `iss`, `aud`, `sub`) is missing or has the wrong type.
    MissingClaim,
    /// A scope required by the route is missing (403).
    InsufficientScope,
    /// None of the roles the route requires is present (403).
    MissingRole,
}

impl FailureReason {
    /// Every reason, in label order.
    pub const ALL: [FailureReason; 14] = [
        FailureReason::MissingToken,
        FailureReason::Malformed,
        FailureReason::AlgorithmNotAllowed,
        FailureReason::KeyMismatch,
        FailureReason::UnknownKey,
        FailureReason::NoKeys,
        FailureReason::BadSignature,
        FailureReason::Expired,
        FailureReason::NotYetValid,
        FailureReason::WrongIssuer,
        FailureReason::WrongAudience,
        FailureReason::MissingClaim,
        FailureReason::InsufficientScope,
        FailureReason::MissingRole,
    ];

    /// The metrics and access-log label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::MissingToken => "missing_token",
            FailureReason::Malformed => "malformed",
            FailureReason::AlgorithmNotAllowed => "alg_not_allowed",
            FailureReason::KeyMismatch => "key_mismatch",
            FailureReason::UnknownKey => "unknown_kid",
            FailureReason::NoKeys => "no_keys",
            FailureReason::BadSignature => "bad_signature",
            FailureReason::Expired => "expired",
            FailureReason::NotYetValid => "not_yet_valid",
            FailureReason::WrongIssuer => "wrong_issuer",
            FailureReason::WrongAudience => "wrong_audience",
            FailureReason::MissingClaim => "missing_claim",
            FailureReason::InsufficientScope => "insufficient_scope",
            FailureReason::MissingRole => "missing_role",
        }
    }

    /// Whether this refusal is a 403 (valid token, not enough rights) rather than a 401.
    pub fn is_forbidden(self) -> bool {
        matches!(
            self,
            FailureReason::InsufficientScope | FailureReason::MissingRole
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The live counters, owned by a provider.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    fetches: [AtomicU64; FetchOutcome::ALL.len()],
    failures: [AtomicU64; FailureReason::ALL.len()],
    pub(crate) refetch_suppressed: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) signature_checks: AtomicU64,
}

impl Counters {
    pub(crate) fn fetch(&self, outcome: FetchOutcome) {
        self.fetches[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self, reason: FailureReason) {
        self.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> JwtStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        JwtStats {
            jwks_fetches: FetchOutcome::ALL.map(|o| (o, load(&self.fetches[o.index()]))),
            jwks_refetch_suppressed: load(&self.refetch_suppressed),
            failures: FailureReason::ALL.map(|r| (r, load(&self.failures[r.index()]))),
            accepted: load(&self.accepted),
            token_cache_hits: load(&self.cache_hits),
            signature_checks: load(&self.signature_checks),
            token_cache_entries: 0,
            keys_loaded: 0,
            keys_age: None,
        }
    }
}

/// A point-in-time copy of one provider's counters, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtStats {
    /// JWKS refreshes by outcome.
    pub jwks_fetches: [(FetchOutcome, u64); FetchOutcome::ALL.len()],
    /// Refreshes wanted (unknown `kid`, stale or missing keys) but skipped because the
    /// last one was less than `jwks_refetch_cooldown` ago.
    pub jwks_refetch_suppressed: u64,
    /// Refused requests by reason.
    pub failures: [(FailureReason, u64); FailureReason::ALL.len()],
    /// Requests admitted.
    pub accepted: u64,
    /// Tokens recognised in the verified-token cache, skipping signature verification.
    pub token_cache_hits: u64,
    /// Signature verifications run (cache misses that reached a key).
    pub signature_checks: u64,
    /// Entries in the verified-token cache now.
    pub token_cache_entries: usize,
    /// Usable keys in the current key set (0 when none was ever loaded).
    pub keys_loaded: usize,
    /// Time since the current key set was fetched.
    pub keys_age: Option<Duration>,
}

impl JwtStats {
    /// JWKS refreshes that ended with `outcome`.
    pub fn fetches(&self, outcome: FetchOutcome) -> u64 {
        self.jwks_fetches[outcome.index()].1
    }

    /// JWKS refreshes of any outcome.
    pub fn total_fetches(&self) -> u64 {
        self.jwks_fetches.iter().map(|(_, n)| n).sum()
    }

    /// Requests refused for `reason`.
    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failures[reason.index()].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexes_match_the_tables() {
        for (i, o) in FetchOutcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        for (i, r) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FailureReason::ALL.len());
    }

    #[test]
    fn snapshot_reads_the_counters() {
        let c = Counters::default();
        c.fetch(FetchOutcome::Timeout);
        c.fetch(FetchOutcome::Ok);
        c.fetch(FetchOutcome::Ok);
        c.failure(FailureReason::Expired);
        let s = c.snapshot();
        assert_eq!(s.fetches(FetchOutcome::Ok), 2);
        assert_eq!(s.total_fetches(), 3);
        assert_eq!(s.failures(FailureReason::Expired), 1);
        assert_eq!(s.failures(FailureReason::Malformed), 0);
    }
}
