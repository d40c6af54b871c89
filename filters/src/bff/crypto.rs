//! Session handles and token sealing.
//!
//! A session cookie carries `base64url(id) "." base64url(secret)`: a 128-bit random id
//! naming the stored record and a 256-bit random secret that never leaves the browser and
//! the request. Records are sealed with AES-256-GCM under a key derived by HKDF-SHA256 from
//! the server's `session_key` (salted with the id, the secret as context), so a dump of the
//! store alone — without the cookies and the server key — reveals no token, and a cookie
//! with a valid id but a wrong secret opens nothing. `ring` provides the primitives: it is
//! already in the build through rustls, and its AEAD API makes nonce reuse hard.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of the random session id.
pub const ID_LEN: usize = 16;
/// Bytes of the random per-session secret.
pub const SECRET_LEN: usize = 32;
/// Minimum bytes of the server `session_key`.
pub const MIN_KEY_LEN: usize = 32;
/// Format version byte in front of every sealed record.
const VERSION: u8 = 1;

/// Why sealing or opening failed. Deliberately coarse: callers treat every failure as
/// "no session", and details would only help an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The system random source failed.
    #[error("random source unavailable")]
    Random,
    /// The record is malformed, was sealed for another session, or was tampered with.
    #[error("sealed record rejected")]
    Rejected,
}

/// The server's `session_key`. Never printed: `Debug` shows only its length.
pub struct SessionKey([u8; MIN_KEY_LEN]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

impl SessionKey {
    /// Parses a base64 (standard or URL-safe, padded or not) key of at least 32 bytes;
    /// longer keys are compressed by HKDF's extract step, so every byte counts.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
            .or_else(|_| URL_SAFE_NO_PAD.decode(t))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
            .map_err(|_| {
                "session_key must be base64 (e.g. `openssl rand -base64 32`)".to_string()
            })?;
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "session_key is {} bytes; at least {MIN_KEY_LEN} random bytes are required",
                bytes.len()
            ));
        }
        let prk = Salt::new(HKDF_SHA256, b"meshgate session key").extract(&bytes);
        let mut key = [0u8; MIN_KEY_LEN];
        prk.expand(&[b"normalize"], Len(MIN_KEY_LEN))
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| "session_key could not be derived".to_string())?;
        Ok(Self(key))
    }
}

/// HKDF output length helper.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// What a session cookie carries.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionHandle {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionHandle({}, [secret])", self.store_key())
    }
}

impl SessionHandle {
    /// A new random handle (a new one at every login: no session fixation).
    pub fn generate(rng: &SystemRandom) -> Result<Self, CryptoError> {
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut id).map_err(|_| CryptoError::Random)?;
        rng.fill(&mut secret).map_err(|_| CryptoError::Random)?;
        Ok(Self { id, secret })
    }

    /// The cookie value: `base64url(id).base64url(secret)`.
    pub fn cookie_value(&self) -> String {
        let mut out = URL_SAFE_NO_PAD.encode(self.id);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(self.secret));
        out
    }

    /// Parses a cookie value; anything but exactly the two parts of the right lengths is
    /// refused (a truncated, padded or extended value is not a session).
    pub fn parse(value: &str) -> Option<Self> {
        let (id, secret) = value.split_once('.')?;
        let id = URL_SAFE_NO_PAD.decode(id).ok()?;
        let secret = URL_SAFE_NO_PAD.decode(secret).ok()?;
        Some(Self {
            id: id.try_into().ok()?,
            secret: secret.try_into().ok()?,
        })
    }

    /// The key the store files the record under: the id only (the secret is never stored).
    pub fn store_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.id)
    }

    fn aead_key(&self, server: &SessionKey) -> Result<LessSafeKey, CryptoError> {
        let prk = Salt::new(HKDF_SHA256, &self.id).extract(&server.0);
        let mut key = [0u8; 32];
        prk.expand(&[b"meshgate session record", &self.secret], Len(32))
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| CryptoError::Rejected)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| CryptoError::Rejected)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Seals `plaintext` for this session: `version || nonce || ciphertext+tag`, with the
    /// id as associated data so a record cannot be moved to another session's key.
    pub fn seal(
        &self,
        server: &SessionKey,
        rng: &SystemRandom,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self.aead_key(server)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.id),
            &mut body,
        )
        .map_err(|_| CryptoError::Rejected)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a record sealed by [`Self::seal`] for this same handle and server key.
    pub fn open(&self, server: &SessionKey, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::Rejected)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(CryptoError::Rejected);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Rejected)?;
        let key = self.aead_key(server)?;
        // One copy: the plaintext is decrypted in place at the start of this buffer.
        let mut body = body.to_vec();
        let len = key
            .open_in_place(nonce, Aad::from(self.id), &mut body)
            .map_err(|_| CryptoError::Rejected)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").expect("32 bytes")
    }

    #[test]
    fn short_or_invalid_keys_are_refused_with_a_clear_message() {
        assert!(SessionKey::from_base64("c2hvcnQ=").is_err_and(|e| e.contains("at least 32")));
        assert!(SessionKey::from_base64("not base64 !!").is_err());
        assert!(SessionKey::from_base64("").is_err());
        assert_eq!(format!("{:?}", key()), "SessionKey([redacted])");
    }

    #[test]
    fn seal_and_open_round_trip_and_hide_the_plaintext() {
        let rng = SystemRandom::new();
        let h = SessionHandle::generate(&rng).expect("handle");
        let token = b"eyJhbGciOiJSUzI1NiJ9.access-token-payload.signature";
        let sealed = h.seal(&key(), &rng, token).expect("seal");
        assert!(!sealed.windows(token.len()).any(|w| w == token));
        assert_eq!(h.open(&key(), &sealed).expect("open"), token);
    }

    #[test]
    fn a_wrong_secret_or_server_key_or_tampering_opens_nothing() {
        let rng = SystemRandom::new();
        let h = SessionHandle::generate(&rng).expect("handle");
        let sealed = h.seal(&key(), &rng, b"tokens").expect("seal");
        let mut wrong_secret = h.clone();
        wrong_secret.secret[0] ^= 1;
        assert_eq!(
            wrong_secret.open(&key(), &sealed),
            Err(CryptoError::Rejected)
        );
        let other =
            SessionKey::from_base64("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=").expect("key");
        assert_eq!(h.open(&other, &sealed), Err(CryptoError::Rejected));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert_eq!(h.open(&key(), &bad), Err(CryptoError::Rejected), "byte {i}");
        }
        assert_eq!(
            h.open(&key(), &sealed[..sealed.len() - 1]),
            Err(CryptoError::Rejected)
        );
        assert_eq!(h.open(&key(), &[]), Err(CryptoError::Rejected));
    }

    #[test]
    fn records_cannot_move_between_sessions() {
        let rng = SystemRandom::new();
        let a = SessionHandle::generate(&rng).expect("a");
        let mut b = a.clone();
        b.id[0] ^= 1;
        let sealed = a.seal(&key(), &rng, b"tokens").expect("seal");
        assert_eq!(b.open(&key(), &sealed), Err(CryptoError::Rejected));
    }

    #[test]
    fn cookie_values_parse_strictly() {
        let rng = SystemRandom::new();
        let h = SessionHandle::generate(&rng).expect("handle");
        let v = h.cookie_value();
        assert_eq!(SessionHandle::parse(&v), Some(h.clone()));
        assert!(
            !format!("{h:?}").contains(&v[v.len() - 10..]),
            "Debug must not show the secret"
        );
        let bad = [
            String::new(),
            ".".to_string(),
            v[..v.len() - 1].to_string(),
            format!("{v}A"),
            format!("{v}.x"),
            v.replace('.', ""),
            format!("{v}="),
            "a\u{0}b.c".to_string(),
        ];
        for b in &bad {
            assert_eq!(SessionHandle::parse(b), None, "{b:?}");
        }
        let other = SessionHandle::generate(&rng).expect("other");
        assert_ne!(other.store_key(), h.store_key());
    }
}
