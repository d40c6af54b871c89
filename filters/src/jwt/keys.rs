//! A provider's signing keys: parsing a JWKS into verification keys, and choosing the key
//! for a token's `kid` and `alg`.
//!
//! Only public signature keys that fit an allowed algorithm are kept. Symmetric (`oct`)
//! keys are dropped whatever the configuration, and every key is tied to the algorithms
//! its type can verify (RSA → RS*/PS*, P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA), so
//! a token cannot choose how its key is interpreted. Keys that do not parse are skipped
//! one by one: one odd entry must not cost the provider all its keys.

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::fetch::FetchError;

/// Smallest RSA modulus accepted (NIST SP 800-131A: 2048 bits).
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted: the verifier refuses bigger ones, and each verification
/// costs quadratically more, so a huge key would be a cheap way to burn our CPU.
const MAX_RSA_BITS: usize = 4096;
/// Most keys kept from one set; real providers publish a handful.
const MAX_KEYS: usize = 64;

/// The type of a verification key, which fixes the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyType::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyType::P256, Algorithm::ES256)
                | (KeyType::P384, Algorithm::ES384)
                | (KeyType::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One verification key from the set.
pub(crate) struct VerifyKey {
    kid: Option<Box<str>>,
    key_type: KeyType,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl VerifyKey {
    fn verifies(&self, alg: Algorithm) -> bool {
        self.key_type.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// The keys of one successful fetch.
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
    /// When they were fetched, for the TTL.
    pub(crate) fetched_at: Instant,
    /// Digest of the document, to tell a changed set from a re-fetched identical one.
    pub(crate) fingerprint: [u8; 32],
}

/// The key a token should be verified with.
pub(crate) enum KeyChoice<'a> {
    /// This key.
    Found(&'a VerifyKey),
    /// A key has the token's `kid`, but not of a type (or pinned `alg`) for its `alg`.
    Mismatch,
    /// No key with that `kid`; a refreshed set might have it.
    UnknownKid,
    /// The token has no `kid` and there is not exactly one key for its `alg`.
    NoUniqueKey,
}

impl KeySet {
    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token with header `kid` and `alg`. Without a `kid` the key must be
    /// the only one of the set able to verify `alg`: trying several would multiply the
    /// cost of every forged token.
    pub(crate) fn choose(&self, kid: Option<&str>, alg: Algorithm) -> KeyChoice<'_> {
        match kid {
            Some(kid) => {
                let mut seen = false;
                for key in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    if key.verifies(alg) {
                        return KeyChoice::Found(key);
                    }
                    seen = true;
                }
                if seen {
                    KeyChoice::Mismatch
                } else {
                    KeyChoice::UnknownKid
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.verifies(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => KeyChoice::Found(key),
                    _ => KeyChoice::NoUniqueKey,
                }
            }
        }
    }

    /// Parses a JWKS document, keeping the keys usable with one of `allowed`. A set with
    /// no usable key is an error, so a provider serving `{"keys":[]}` by mistake does not
    /// replace good keys with none.
    pub(crate) fn parse(body: &[u8], allowed: &[Algorithm]) -> Result<KeySet, FetchError> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(body)
            .map_err(|_| FetchError::Invalid("JWKS is not a JSON object with a keys array"))?;
        let mut keys = Vec::new();
        for value in doc.keys {
            if keys.len() == MAX_KEYS {
                break;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some(key) = verify_key(&jwk, allowed) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(FetchError::Invalid(
                "JWKS holds no public signing key for the allowed algorithms",
            ));
        }
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
            fingerprint: Sha256::digest(body).into(),
        })
    }
}

/// The verification key for `jwk`, or `None` when it is not a public signature key of
/// a type, size and `alg` we accept.
fn verify_key(jwk: &Jwk, allowed: &[Algorithm]) -> Option<VerifyKey> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let key_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let bits = significant_bits(&p.n)?;
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return None;
            }
            KeyType::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (key_type, len) = match p.curve {
                EllipticCurve::P256 => (KeyType::P256, 32),
                EllipticCurve::P384 => (KeyType::P384, 48),
                _ => return None,
            };
            if decoded_len(&p.x)? != len || decoded_len(&p.y)? != len {
                return None;
            }
            key_type
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 || decoded_len(&p.x)? != 32 {
                return None;
            }
            KeyType::Ed25519
        }
        // `oct` keys are HMAC secrets: never a way to verify a token here.
        _ => return None,
    };
    let alg = match common.key_algorithm {
        None => None,
        // A key pinned to an algorithm we do not know (or allow) is not usable.
        Some(pinned) => Some(Algorithm::try_from(pinned).ok()?),
    };
    let usable = allowed
        .iter()
        .any(|a| key_type.fits(*a) && alg.is_none_or(|pinned| pinned == *a));
    if !usable {
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: common.key_id.as_deref().map(Box::from),
        key_type,
        alg,
        decoding,
    })
}

fn decoded_len(b64: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(b64).ok().map(|v| v.len())
}

/// Bit length of a base64url big-endian unsigned integer (an RSA modulus).
fn significant_bits(b64: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let top = bytes[first];
    Some((bytes.len() - first - 1) * 8 + (8 - top.leading_zeros() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A syntactically valid RSA JWK with a `bits`-bit modulus (not a real key: parsing
    /// never checks primality).
    fn rsa_jwk(kid: &str, bits: usize) -> serde_json::Value {
        let mut n = vec![0xa5u8; bits / 8];
        n[0] = 0xc1;
        serde_json::json!({ "kty": "RSA", "kid": kid, "use": "sig", "n": b64(&n), "e": "AQAB" })
    }

    fn ec_jwk(kid: &str, crv: &str, len: usize) -> serde_json::Value {
        serde_json::json!({ "kty": "EC", "kid": kid, "crv": crv,
            "x": b64(&vec![7u8; len]), "y": b64(&vec![9u8; len]) })
    }

    fn parse(keys: Vec<serde_json::Value>, allowed: &[Algorithm]) -> Result<KeySet, FetchError> {
        let doc = serde_json::json!({ "keys": keys });
        KeySet::parse(doc.to_string().as_bytes(), allowed)
    }

    const DEFAULT: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

    #[test]
    fn keys_are_bound_to_the_algorithms_of_their_type() {
        let set = parse(
            vec![
                rsa_jwk("r", 2048),
                ec_jwk("e", "P-256", 32),
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "kid": "d", "x": b64(&[1u8; 32]) }),
            ],
            &DEFAULT,
        )
        .expect("valid set");
        assert_eq!(set.len(), 3);
        assert!(matches!(
            set.choose(Some("r"), Algorithm::RS256),
            KeyChoice::Found(_)
        ));
        assert!(matches!(
            set.choose(Some("e"), Algorithm::ES256),
            KeyChoice::Found(_)
        ));
        assert!(matches!(
            set.choose(Some("d"), Algorithm::EdDSA),
            KeyChoice::Found(_)
        ));
        // A token cannot make an RSA key verify ES256 (or HS256) by asking for it.
        assert!(matches!(
            set.choose(Some("r"), Algorithm::ES256),
            KeyChoice::Mismatch
        ));
        assert!(matches!(
            set.choose(Some("r"), Algorithm::HS256),
            KeyChoice::Mismatch
        ));
        assert!(matches!(
            set.choose(Some("zz"), Algorithm::RS256),
            KeyChoice::UnknownKid
        ));
        assert!(matches!(
            set.choose(None, Algorithm::ES256),
            KeyChoice::Found(_)
        ));
    }

    #[test]
    fn without_kid_only_a_unique_candidate_is_used() {
        let set = parse(
            vec![rsa_jwk("a", 2048), rsa_jwk("b", 3072)],
            &[Algorithm::RS256],
        )
        .expect("valid");
        assert!(matches!(
            set.choose(None, Algorithm::RS256),
            KeyChoice::NoUniqueKey
        ));
    }

    #[test]
    fn symmetric_small_odd_and_encryption_keys_are_dropped() {
        let mut enc = rsa_jwk("enc", 2048);
        enc["use"] = "enc".into();
        let mut sign_only = rsa_jwk("ops", 2048);
        sign_only["key_ops"] = serde_json::json!(["sign"]);
        let mut pinned_hs = rsa_jwk("pinned", 2048);
        pinned_hs["alg"] = "HS256".into();
        let set = parse(
            vec![
                serde_json::json!({ "kty": "oct", "kid": "h", "k": b64(b"secret-secret-secret") }),
                rsa_jwk("small", 1024),
                rsa_jwk("huge", 8192),
                enc,
                sign_only,
                pinned_hs,
                ec_jwk("p521", "P-521", 66),
                ec_jwk("short", "P-256", 31),
                serde_json::json!({ "kty": "OKP", "crv": "X25519", "kid": "x", "x": b64(&[1u8; 32]) }),
                serde_json::json!({ "kty": "RSA", "kid": "broken" }),
                serde_json::json!("not an object"),
                rsa_jwk("good", 2048),
            ],
            &DEFAULT,
        )
        .expect("one good key");
        assert_eq!(set.len(), 1);
        assert!(matches!(
            set.choose(Some("good"), Algorithm::RS256),
            KeyChoice::Found(_)
        ));
    }

    #[test]
    fn a_pinned_alg_restricts_the_key() {
        let mut ps = rsa_jwk("ps", 2048);
        ps["alg"] = "PS256".into();
        let set = parse(vec![ps], &[Algorithm::RS256, Algorithm::PS256]).expect("valid");
        assert!(matches!(
            set.choose(Some("ps"), Algorithm::PS256),
            KeyChoice::Found(_)
        ));
        assert!(matches!(
            set.choose(Some("ps"), Algorithm::RS256),
            KeyChoice::Mismatch
        ));
    }

    #[test]
    fn keys_for_disallowed_algorithms_are_not_kept() {
        assert!(matches!(
            parse(vec![ec_jwk("p384", "P-384", 48)], &DEFAULT),
            Err(FetchError::Invalid(_))
        ));
        assert!(parse(vec![ec_jwk("p384", "P-384", 48)], &[Algorithm::ES384]).is_ok());
    }

    #[test]
    fn garbage_and_empty_sets_are_errors() {
        for body in [&b"[]"[..], b"{\"keys\":{}}", b"<html>", b"{\"keys\":[]}"] {
            assert!(KeySet::parse(body, &DEFAULT).is_err());
        }
    }

    #[test]
    fn modulus_bits_ignore_leading_zeros() {
        assert_eq!(significant_bits(&b64(&[0, 0, 0x80, 0])), Some(16));
        assert_eq!(significant_bits(&b64(&[0x01])), Some(1));
        assert_eq!(significant_bits(&b64(&[0, 0])), None);
    }
}
