//! BFF counters for `/metrics`: logins, callbacks and refreshes by outcome, sessions
//! created and ended, back-channel logouts. They live outside the config generation, so a
//! reload does not reset them.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallbackOutcome {
    Ok,
    /// No pending login, or `state` missing, mismatched or already used.
    InvalidState,
    /// The provider answered with `error=…`, or the `iss` parameter names another issuer.
    ProviderError,
    /// The code exchange failed.
    ExchangeFailed,
    /// The ID token failed verification (signature, iss, aud, nonce, exp).
    InvalidIdToken,
    /// The store or the provider was unreachable.
    Unavailable,
}

impl CallbackOutcome {
    pub(crate) const ALL: [CallbackOutcome; 6] = [
        CallbackOutcome::Ok,
        CallbackOutcome::InvalidState,
        CallbackOutcome::ProviderError,
        CallbackOutcome::ExchangeFailed,
        CallbackOutcome::InvalidIdToken,
        CallbackOutcome::Unavailable,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            CallbackOutcome::Ok => "ok",
            CallbackOutcome::InvalidState => "invalid_state",
            CallbackOutcome::ProviderError => "provider_error",
            CallbackOutcome::ExchangeFailed => "exchange_failed",
            CallbackOutcome::InvalidIdToken => "invalid_id_token",
            CallbackOutcome::Unavailable => "unavailable",
        }
    }
}

/// How a refresh attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    Ok,
    /// Another request (maybe on another replica) refreshed; its tokens were used.
    Shared,
    /// The provider refused the refresh token: the session ended.
    InvalidGrant,
    /// The refreshed ID token did not verify.
    Rejected,
    /// The provider or the store could not answer.
    Unavailable,
}

impl RefreshOutcome {
    pub(crate) const ALL: [RefreshOutcome; 5] = [
        RefreshOutcome::Ok,
        RefreshOutcome::Shared,
        RefreshOutcome::InvalidGrant,
        RefreshOutcome::Rejected,
        RefreshOutcome::Unavailable,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::Shared => "shared",
            RefreshOutcome::InvalidGrant => "invalid_grant",
            RefreshOutcome::Rejected => "rejected",
            RefreshOutcome::Unavailable => "unavailable",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Logout,
    Backchannel,
    RefreshRefused,
    Expired,
}

impl EndReason {
    pub(crate) const ALL: [EndReason; 4] = [
        EndReason::Logout,
        EndReason::Backchannel,
        EndReason::RefreshRefused,
        EndReason::Expired,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::Backchannel => "backchannel",
            EndReason::RefreshRefused => "refresh_refused",
            EndReason::Expired => "expired",
        }
    }
}

/// The BFF's counters (process-wide, shared by every config generation).
#[derive(Debug, Default)]
pub struct BffStats {
    logins: AtomicU64,
    callbacks: [AtomicU64; 6],
    refreshes: [AtomicU64; 5],
    created: AtomicU64,
    ended: [AtomicU64; 4],
    backchannel_ok: AtomicU64,
    backchannel_rejected: AtomicU64,
    csrf_rejected: AtomicU64,
    discovery_ok: AtomicU64,
    discovery_failed: AtomicU64,
}

/// A point-in-time copy of [`BffStats`] with metric labels.
#[derive(Debug, Clone, Default)]
pub struct BffStatsSnapshot {
    /// Logins started (`/login` answered with a redirect to the provider).
    pub logins: u64,
    /// Callbacks by outcome label.
    pub callbacks: Vec<(&'static str, u64)>,
    /// Refresh attempts by outcome label.
    pub refreshes: Vec<(&'static str, u64)>,
    /// Sessions created.
    pub sessions_created: u64,
    /// Sessions ended by reason label.
    pub sessions_ended: Vec<(&'static str, u64)>,
    /// Sessions alive now, when the store can tell (memory store).
    pub sessions_active: Option<usize>,
    /// Back-channel logout tokens accepted and rejected.
    pub backchannel: (u64, u64),
    /// Requests refused for lack of the CSRF header.
    pub csrf_rejected: u64,
    /// Discovery document fetches: (ok, failed).
    pub discovery_fetches: (u64, u64),
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl BffStats {
    pub(crate) fn login(&self) {
        inc(&self.logins);
    }
    pub(crate) fn callback(&self, o: CallbackOutcome) {
        if let Some(i) = CallbackOutcome::ALL.iter().position(|x| *x == o) {
            inc(&self.callbacks[i]);
        }
    }
    pub(crate) fn refresh(&self, o: RefreshOutcome) {
        if let Some(i) = RefreshOutcome::ALL.iter().position(|x| *x == o) {
            inc(&self.refreshes[i]);
        }
    }
    pub(crate) fn created(&self) {
        inc(&self.created);
    }
    pub(crate) fn ended(&self, r: EndReason) {
        if let Some(i) = EndReason::ALL.iter().position(|x| *x == r) {
            inc(&self.ended[i]);
        }
    }
    pub(crate) fn backchannel(&self, ok: bool) {
        inc(if ok {
            &self.backchannel_ok
        } else {
            &self.backchannel_rejected
        });
    }
    pub(crate) fn discovery(&self, ok: bool) {
        inc(if ok {
            &self.discovery_ok
        } else {
            &self.discovery_failed
        });
    }
    pub(crate) fn csrf_rejected(&self) {
        inc(&self.csrf_rejected);
    }

    /// The counters now, with `active` sessions as the session store reports them.
    pub fn snapshot(&self, active: Option<usize>) -> BffStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BffStatsSnapshot {
            logins: get(&self.logins),
            callbacks: CallbackOutcome::ALL
                .iter()
                .zip(&self.callbacks)
                .map(|(o, c)| (o.label(), get(c)))
                .collect(),
            refreshes: RefreshOutcome::ALL
                .iter()
                .zip(&self.refreshes)
                .map(|(o, c)| (o.label(), get(c)))
                .collect(),
            sessions_created: get(&self.created),
            sessions_ended: EndReason::ALL
                .iter()
                .zip(&self.ended)
                .map(|(r, c)| (r.label(), get(c)))
                .collect(),
            sessions_active: active,
            backchannel: (get(&self.backchannel_ok), get(&self.backchannel_rejected)),
            csrf_rejected: get(&self.csrf_rejected),
            discovery_fetches: (get(&self.discovery_ok), get(&self.discovery_failed)),
        }
    }
}
