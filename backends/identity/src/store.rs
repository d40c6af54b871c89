//! In-memory protocol state: pending logins, authorization codes, sessions,
//! refresh-token families and revoked access tokens.
//!
//! Nothing here survives a restart, on purpose: restarting the provider logs
//! everyone out (their refresh tokens stop working and the BFF sends them to
//! log in again). Only signing keys are persisted (see `keys`).
//!
//! Codes and refresh tokens are stored by their SHA-256, never in clear.
//! Every entry has an expiry; `sweep` drops what has expired and the server runs
//! it periodically, and the number of pending logins is capped so an
//! unauthenticated client cannot grow memory without bound.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `bytes` random bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

pub type Digest32 = [u8; 32];

pub fn sha256(value: &str) -> Digest32 {
    Sha256::digest(value.as_bytes()).into()
}

/// Upper bound on logins started but not finished.
pub const MAX_PENDING: usize = 10_000;
/// How long a login form stays usable.
pub const PENDING_TTL: u64 = 600;
/// Password attempts allowed on one login form before it is discarded.
pub const MAX_LOGIN_ATTEMPTS: u32 = 5;
/// How long a redeemed code is remembered so that a replay can be detected.
pub const CODE_MEMORY: u64 = 600;

/// An authorization request that passed validation and waits for the user.
#[derive(Debug, Clone)]
pub struct PendingAuth {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub login_hint: Option<String>,
    pub expires_at: u64,
    pub attempts: u32,
}

/// What the login bound to an authorization code.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub scope: Vec<String>,
    pub sub: String,
    pub sid: String,
    pub auth_time: u64,
}

#[derive(Debug)]
struct CodeEntry {
    grant: CodeGrant,
    expires_at: u64,
    forget_at: u64,
    /// Set once the code was presented: a second presentation is a replay.
    consumed: bool,
    /// The tokens issued for it, revoked if the code is replayed.
    issued_family: Option<String>,
    issued_jtis: Vec<(String, u64)>,
}

/// Outcome of presenting a code at the token endpoint.
pub enum CodeRedemption {
    Fresh(CodeGrant),
    Unknown,
    Expired,
    /// Presented before; the tokens issued from it have now been revoked.
    Replayed,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub sid: String,
    pub sub: String,
    pub auth_time: u64,
    /// Clients that received tokens in this session: they get back-channel logout.
    pub clients: BTreeSet<String>,
    pub ended: bool,
    families: Vec<String>,
    access_jtis: Vec<(String, u64)>,
    last_used: u64,
}

/// A chain of refresh tokens, each replacing the previous one.
#[derive(Debug, Clone)]
pub struct Family {
    pub client_id: String,
    pub sub: String,
    pub sid: String,
    pub scope: Vec<String>,
    pub auth_time: u64,
    pub revoked: bool,
    access_jtis: Vec<(String, u64)>,
    expires_at: u64,
}

#[derive(Debug)]
struct RefreshEntry {
    family_id: String,
    /// Already exchanged for a newer token: presenting it again is reuse.
    rotated: bool,
    expires_at: u64,
}

/// Outcome of presenting a refresh token.
pub enum RefreshUse {
    /// Valid: the token is now rotated; issue the next one into `family_id`.
    Valid {
        family_id: String,
        family: Family,
    },
    Unknown,
    /// Reuse of a rotated token, or use of a revoked family. The family is now revoked.
    Revoked,
}

#[derive(Default)]
pub struct Store {
    pending: HashMap<String, PendingAuth>,
    codes: HashMap<Digest32, CodeEntry>,
    sessions: HashMap<String, Session>,
    families: HashMap<String, Family>,
    refresh: HashMap<Digest32, RefreshEntry>,
    /// Revoked access-token `jti`s, kept until the token would have expired.
    revoked_jtis: HashMap<String, u64>,
}

impl Store {
    // ------------------------------------------------------------ pending logins

    /// Stores a pending login and returns its id, or `None` when too many are open.
    pub fn add_pending(&mut self, pending: PendingAuth) -> Option<String> {
        if self.pending.len() >= MAX_PENDING {
            self.sweep(now());
            if self.pending.len() >= MAX_PENDING {
                return None;
            }
        }
        let id = random_token(32);
        self.pending.insert(id.clone(), pending);
        Some(id)
    }

    /// Counts one password attempt; `None` if the login is unknown, expired or
    /// out of attempts (then it is gone).
    pub fn attempt_pending(&mut self, id: &str) -> Option<PendingAuth> {
        let now = now();
        let entry = self.pending.get_mut(id)?;
        if entry.expires_at <= now || entry.attempts >= MAX_LOGIN_ATTEMPTS {
            self.pending.remove(id);
            return None;
        }
        entry.attempts += 1;
        Some(entry.clone())
    }

    pub fn take_pending(&mut self, id: &str) -> Option<PendingAuth> {
        self.pending.remove(id)
    }

    // ------------------------------------------------------------ sessions and codes

    pub fn create_session(&mut self, sub: &str, auth_time: u64) -> String {
        let sid = random_token(16);
        self.sessions.insert(
            sid.clone(),
            Session {
                sid: sid.clone(),
                sub: sub.to_string(),
                auth_time,
                clients: BTreeSet::new(),
                ended: false,
                families: Vec::new(),
                access_jtis: Vec::new(),
                last_used: auth_time,
            },
        );
        sid
    }

    pub fn session(&self, sid: &str) -> Option<&Session> {
        self.sessions.get(sid)
    }

    /// Issues a one-time code for `grant`, valid for `ttl` seconds.
    pub fn add_code(&mut self, grant: CodeGrant, ttl: u64) -> String {
        let code = random_token(32);
        let now = now();
        if let Some(session) = self.sessions.get_mut(&grant.sid) {
            session.clients.insert(grant.client_id.clone());
        }
        self.codes.insert(
            sha256(&code),
            CodeEntry {
                grant,
                expires_at: now + ttl,
                forget_at: now + ttl.max(CODE_MEMORY),
                consumed: false,
                issued_family: None,
                issued_jtis: Vec::new(),
            },
        );
        code
    }

    /// Marks a code as used whatever happens next: a code is good for one
    /// attempt only, so a failed PKCE check cannot be retried with another verifier.
    pub fn redeem_code(&mut self, code: &str) -> CodeRedemption {
        let key = sha256(code);
        let now = now();
        let Some(entry) = self.codes.get_mut(&key) else {
            return CodeRedemption::Unknown;
        };
        if entry.consumed {
            let family = entry.issued_family.take();
            let jtis = std::mem::take(&mut entry.issued_jtis);
            if let Some(family) = family {
                self.revoke_family(&family);
            }
            for (jti, exp) in jtis {
                self.revoked_jtis.insert(jti, exp);
            }
            return CodeRedemption::Replayed;
        }
        entry.consumed = true;
        if entry.expires_at <= now {
            return CodeRedemption::Expired;
        }
        CodeRedemption::Fresh(entry.grant.clone())
    }

    /// Records what a code produced, so a later replay can revoke it.
    pub fn bind_code_tokens(&mut self, code: &str, family_id: Option<&str>, jti: &str, exp: u64) {
        if let Some(entry) = self.codes.get_mut(&sha256(code)) {
            entry.issued_family = family_id.map(str::to_string);
            entry.issued_jtis.push((jti.to_string(), exp));
        }
    }

    pub fn session_is_active(&self, sid: &str) -> bool {
        self.sessions.get(sid).is_some_and(|s| !s.ended)
    }

    /// Records an access token issued in a session (and refresh family), so
    /// logout and family revocation can revoke it too.
    pub fn record_access_token(&mut self, sid: &str, family_id: Option<&str>, jti: &str, exp: u64) {
        let now = now();
        if let Some(session) = self.sessions.get_mut(sid) {
            session.access_jtis.retain(|(_, e)| *e > now);
            session.access_jtis.push((jti.to_string(), exp));
            session.last_used = now;
        }
        if let Some(family) = family_id.and_then(|id| self.families.get_mut(id)) {
            family.access_jtis.retain(|(_, e)| *e > now);
            family.access_jtis.push((jti.to_string(), exp));
        }
    }

    // ------------------------------------------------------------ refresh tokens

    /// Starts a refresh-token family and returns its id.
    pub fn create_family(&mut self, grant: &CodeGrant) -> String {
        let id = random_token(16);
        self.families.insert(
            id.clone(),
            Family {
                client_id: grant.client_id.clone(),
                sub: grant.sub.clone(),
                sid: grant.sid.clone(),
                scope: grant.scope.clone(),
                auth_time: grant.auth_time,
                revoked: false,
                access_jtis: Vec::new(),
                expires_at: 0,
            },
        );
        if let Some(session) = self.sessions.get_mut(&grant.sid) {
            session.families.push(id.clone());
        }
        id
    }

    /// Mints the next refresh token of `family_id`, valid for `ttl` seconds.
    pub fn add_refresh_token(&mut self, family_id: &str, ttl: u64) -> String {
        let token = random_token(32);
        let expires_at = now() + ttl;
        if let Some(family) = self.families.get_mut(family_id) {
            family.expires_at = family.expires_at.max(expires_at);
        }
        self.refresh.insert(
            sha256(&token),
            RefreshEntry {
                family_id: family_id.to_string(),
                rotated: false,
                expires_at,
            },
        );
        token
    }

    /// Presents a refresh token. A valid one is rotated (it will never work
    /// again); presenting a rotated one revokes its whole family.
    pub fn use_refresh_token(&mut self, token: &str) -> RefreshUse {
        let now = now();
        let Some(entry) = self.refresh.get_mut(&sha256(token)) else {
            return RefreshUse::Unknown;
        };
        if entry.expires_at <= now {
            return RefreshUse::Unknown;
        }
        let family_id = entry.family_id.clone();
        let reused = entry.rotated;
        entry.rotated = true;
        let family = match self.families.get(&family_id) {
            Some(f) if !f.revoked && !reused && self.session_is_active(&f.sid) => f.clone(),
            Some(_) => {
                self.revoke_family(&family_id);
                return RefreshUse::Revoked;
            }
            None => return RefreshUse::Unknown,
        };
        RefreshUse::Valid { family_id, family }
    }

    /// The family a refresh token belongs to, without using it.
    pub fn refresh_token_family(&self, token: &str) -> Option<(String, &Family)> {
        let entry = self.refresh.get(&sha256(token))?;
        let family = self.families.get(&entry.family_id)?;
        Some((entry.family_id.clone(), family))
    }

    /// Revokes a family: all its refresh tokens and the access tokens issued with them.
    pub fn revoke_family(&mut self, family_id: &str) {
        if let Some(family) = self.families.get_mut(family_id) {
            family.revoked = true;
            for (jti, exp) in family.access_jtis.drain(..) {
                self.revoked_jtis.insert(jti, exp);
            }
        }
    }

    // ------------------------------------------------------------ access tokens

    pub fn revoke_jti(&mut self, jti: &str, exp: u64) {
        self.revoked_jtis.insert(jti.to_string(), exp);
    }

    pub fn is_jti_revoked(&self, jti: &str) -> bool {
        self.revoked_jtis.contains_key(jti)
    }

    // ------------------------------------------------------------ logout

    /// Ends a session: revokes its refresh families and access tokens. Returns
    /// the session as it was, or `None` if unknown.
    pub fn end_session(&mut self, sid: &str) -> Option<Session> {
        let session = self.sessions.get_mut(sid)?;
        let already_ended = session.ended;
        session.ended = true;
        let families = std::mem::take(&mut session.families);
        let jtis = std::mem::take(&mut session.access_jtis);
        let snapshot = session.clone();
        for family in families {
            self.revoke_family(&family);
        }
        for (jti, exp) in jtis {
            self.revoked_jtis.insert(jti, exp);
        }
        if already_ended {
            // Already notified: do not send back-channel logouts twice.
            let mut snapshot = snapshot;
            snapshot.clients.clear();
            return Some(snapshot);
        }
        Some(snapshot)
    }

    // ------------------------------------------------------------ housekeeping

    /// Drops everything that has expired. `session_idle` is how long a session
    /// with no live refresh token is remembered.
    pub fn sweep(&mut self, now: u64) {
        self.pending.retain(|_, p| p.expires_at > now);
        self.codes.retain(|_, c| c.forget_at > now);
        self.refresh.retain(|_, r| r.expires_at > now);
        self.revoked_jtis.retain(|_, exp| *exp + 60 > now);
        self.families
            .retain(|_, f| f.expires_at > now || f.access_jtis.iter().any(|(_, e)| *e > now));
        let families = &self.families;
        self.sessions.retain(|_, s| {
            s.families.retain(|id| families.contains_key(id));
            let recent = s.last_used + PENDING_TTL > now;
            let live_tokens = s.access_jtis.iter().any(|(_, e)| *e > now);
            !s.families.is_empty() || recent || live_tokens
        });
    }

    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.pending.len(),
            self.codes.len(),
            self.sessions.len(),
            self.families.len(),
            self.refresh.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(sid: &str) -> CodeGrant {
        CodeGrant {
            client_id: "web".into(),
            redirect_uri: "http://127.0.0.1:3000/cb".into(),
            code_challenge: "c".into(),
            nonce: None,
            scope: vec!["openid".into()],
            sub: "alice".into(),
            sid: sid.into(),
            auth_time: now(),
        }
    }

    #[test]
    fn codes_are_one_time_and_replay_revokes() {
        let mut store = Store::default();
        let sid = store.create_session("alice", now());
        let code = store.add_code(grant(&sid), 60);
        let CodeRedemption::Fresh(g) = store.redeem_code(&code) else {
            panic!("fresh code refused");
        };
        let family = store.create_family(&g);
        let refresh = store.add_refresh_token(&family, 3600);
        store.record_access_token(&sid, Some(&family), "jti-1", now() + 300);
        store.bind_code_tokens(&code, Some(&family), "jti-1", now() + 300);
        assert!(matches!(store.redeem_code(&code), CodeRedemption::Replayed));
        assert!(store.is_jti_revoked("jti-1"));
        assert!(matches!(
            store.use_refresh_token(&refresh),
            RefreshUse::Revoked
        ));
    }

    #[test]
    fn rotated_refresh_token_reuse_revokes_family() {
        let mut store = Store::default();
        let sid = store.create_session("alice", now());
        let family = store.create_family(&grant(&sid));
        let first = store.add_refresh_token(&family, 3600);
        assert!(matches!(
            store.use_refresh_token(&first),
            RefreshUse::Valid { .. }
        ));
        let second = store.add_refresh_token(&family, 3600);
        assert!(matches!(
            store.use_refresh_token(&first),
            RefreshUse::Revoked
        ));
        assert!(matches!(
            store.use_refresh_token(&second),
            RefreshUse::Revoked
        ));
    }

    #[test]
    fn sweep_forgets_expired_entries() {
        let mut store = Store::default();
        let sid = store.create_session("alice", now());
        let _code = store.add_code(grant(&sid), 60);
        let family = store.create_family(&grant(&sid));
        let _refresh = store.add_refresh_token(&family, 60);
        store.add_pending(PendingAuth {
            client_id: "web".into(),
            redirect_uri: "x".into(),
            scope: vec![],
            state: None,
            nonce: None,
            code_challenge: "c".into(),
            login_hint: None,
            expires_at: now() + 10,
            attempts: 0,
        });
        store.sweep(now() + 100_000);
        assert_eq!(store.counts(), (0, 0, 0, 0, 0));
    }
}
