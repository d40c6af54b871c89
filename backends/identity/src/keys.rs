//! Signing keys: generated on first start, persisted in the data directory,
//! rotated on request, published as a JWKS, and used to sign and verify JWTs.
//!
//! The key file is `<data-dir>/signing-keys.json` (mode 0600), a list of
//! `{kid, alg, created_at, private_key_pem}` in creation order. The newest key of
//! each algorithm signs; every key in the file stays published so tokens signed
//! before a rotation keep verifying. `kid` is the RFC 7638 thumbprint of the
//! public key, so it is stable across restarts by construction.
//!
//! Keys are generated with RustCrypto (`rsa`, `p256`) because `jsonwebtoken`
//! signs but does not generate keys.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{
    CommonParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::SigningAlg;

pub const KEY_FILE: &str = "signing-keys.json";

/// Longest token we will try to parse: anything larger is not ours.
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not valid: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: SigningAlg,
    created_at: u64,
    private_key_pem: String,
}

struct SigningKey {
    kid: String,
    alg: SigningAlg,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The provider's keys. Immutable once loaded: rotation happens at start-up.
pub struct KeyStore {
    keys: Vec<SigningKey>,
    current: HashMap<SigningAlg, usize>,
    by_kid: HashMap<String, usize>,
    jwks: JwkSet,
}

/// Makes `jsonwebtoken` use RustCrypto whatever other crates in the build
/// enable: with two backends compiled in it would refuse to pick one.
pub fn install_crypto_provider() {
    let _already_installed = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
    );
}

/// Why a token was not accepted; callers decide what the client sees.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token is malformed")]
    Malformed,
    #[error("token was not signed by one of our keys")]
    UnknownKey,
    #[error("token is invalid: {0}")]
    Invalid(String),
}

impl KeyStore {
    /// Loads the key file in `dir`, creating missing keys; with `rotate`, adds a
    /// new current key per algorithm.
    pub fn load_or_create(dir: &Path, rotate: bool) -> Result<Self, KeyError> {
        install_crypto_provider();
        let path = dir.join(KEY_FILE);
        let mut file = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<KeyFile>(&text).map_err(|e| KeyError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyFile { keys: Vec::new() },
            Err(source) => return Err(KeyError::Io { path, source }),
        };
        let mut changed = false;
        for alg in [SigningAlg::RS256, SigningAlg::ES256] {
            if rotate || !file.keys.iter().any(|k| k.alg == alg) {
                file.keys.push(generate(alg)?);
                changed = true;
            }
        }
        let store = Self::from_stored(&file.keys, &path)?;
        if changed {
            write_private(dir, &path, &file)?;
        }
        Ok(store)
    }

    fn from_stored(stored: &[StoredKey], path: &Path) -> Result<Self, KeyError> {
        let corrupt = |detail: String| KeyError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let mut keys = Vec::with_capacity(stored.len());
        let mut current = HashMap::new();
        let mut by_kid = HashMap::new();
        let mut jwks = Vec::with_capacity(stored.len());
        for (i, s) in stored.iter().enumerate() {
            let encoding = match s.alg {
                SigningAlg::RS256 => EncodingKey::from_rsa_pem(s.private_key_pem.as_bytes()),
                SigningAlg::ES256 => EncodingKey::from_ec_pem(s.private_key_pem.as_bytes()),
            }
            .map_err(|e| corrupt(format!("keys[{i}]: {e}")))?;
            let mut jwk = Jwk::from_encoding_key(&encoding, algorithm(s.alg))
                .map_err(|e| corrupt(format!("keys[{i}]: {e}")))?;
            let kid = jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|e| corrupt(format!("keys[{i}]: {e}")))?;
            if kid != s.kid {
                return Err(corrupt(format!(
                    "keys[{i}]: kid does not match the key's thumbprint"
                )));
            }
            jwk.common = CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(match s.alg {
                    SigningAlg::RS256 => KeyAlgorithm::RS256,
                    SigningAlg::ES256 => KeyAlgorithm::ES256,
                }),
                key_id: Some(kid.clone()),
                ..Default::default()
            };
            let decoding =
                DecodingKey::from_jwk(&jwk).map_err(|e| corrupt(format!("keys[{i}]: {e}")))?;
            if by_kid.insert(kid.clone(), i).is_some() {
                return Err(corrupt(format!("keys[{i}]: duplicate kid")));
            }
            current.insert(s.alg, i);
            jwks.push(jwk);
            keys.push(SigningKey {
                kid,
                alg: s.alg,
                encoding,
                decoding,
            });
        }
        // Current keys first (RS256, the default, leading), then older keys newest
        // first: a consumer that picks the first usable key picks a current one.
        let mut order: Vec<usize> = (0..jwks.len()).rev().collect();
        order.sort_by_key(|&i| match keys.get(i) {
            Some(key) => (
                current.get(&key.alg) != Some(&i),
                key.alg != SigningAlg::RS256,
            ),
            None => (true, true),
        });
        let jwks: Vec<Jwk> = order
            .into_iter()
            .filter_map(|i| jwks.get(i).cloned())
            .collect();
        Ok(Self {
            keys,
            current,
            by_kid,
            jwks: JwkSet { keys: jwks },
        })
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// The `kid` that currently signs with `alg`.
    pub fn current_kid(&self, alg: SigningAlg) -> Option<&str> {
        self.current
            .get(&alg)
            .and_then(|&i| self.keys.get(i))
            .map(|k| k.kid.as_str())
    }

    /// Signs `claims` with the current key for `alg`, setting `typ` and `kid`.
    pub fn sign<T: Serialize>(
        &self,
        alg: SigningAlg,
        typ: &str,
        claims: &T,
    ) -> Result<String, KeyError> {
        let key = self
            .current
            .get(&alg)
            .and_then(|&i| self.keys.get(i))
            .ok_or_else(|| KeyError::Sign(format!("no {} key", alg.as_str())))?;
        let mut header = Header::new(algorithm(key.alg));
        header.typ = Some(typ.to_string());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies a token we issued: known `kid`, the algorithm that key is for,
    /// our issuer, the expected `typ` (so an ID token is never taken for an
    /// access token), and (when `check_exp`) not expired. Audience is the
    /// caller's business: it is not checked here.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        check_exp: bool,
        typ: Option<&str>,
    ) -> Result<T, VerifyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if typ.is_some_and(|t| header.typ.as_deref() != Some(t)) {
            return Err(VerifyError::Invalid("unexpected token type".into()));
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.by_kid.get(kid))
            .and_then(|&i| self.keys.get(i))
            .ok_or(VerifyError::UnknownKey)?;
        let mut validation = Validation::new(algorithm(key.alg));
        validation.set_issuer(&[issuer]);
        validation.validate_aud = false;
        validation.validate_exp = check_exp;
        validation.validate_nbf = true;
        validation.leeway = 30;
        let mut required = vec!["iss"];
        if check_exp {
            required.push("exp");
        }
        validation.set_required_spec_claims(&required);
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| VerifyError::Invalid(e.to_string()))
    }
}

fn algorithm(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::RS256 => Algorithm::RS256,
        SigningAlg::ES256 => Algorithm::ES256,
    }
}

fn generate(alg: SigningAlg) -> Result<StoredKey, KeyError> {
    let mut rng = rand::rngs::OsRng;
    let pem = match alg {
        SigningAlg::RS256 => {
            use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            key.to_pkcs1_pem(LineEnding::LF)
                .map_err(|e| KeyError::Generate(e.to_string()))?
                .to_string()
        }
        SigningAlg::ES256 => {
            use p256::pkcs8::{EncodePrivateKey, LineEnding};
            let key = p256::SecretKey::random(&mut rng);
            key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeyError::Generate(e.to_string()))?
                .to_string()
        }
    };
    let encoding = match alg {
        SigningAlg::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        SigningAlg::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .map_err(|e| KeyError::Generate(e.to_string()))?;
    let kid = Jwk::from_encoding_key(&encoding, algorithm(alg))
        .and_then(|jwk| jwk.thumbprint(ThumbprintHash::SHA256))
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    tracing::info!(kid = %kid, alg = alg.as_str(), "generated signing key");
    Ok(StoredKey {
        kid,
        alg,
        created_at: crate::store::now(),
        private_key_pem: pem,
    })
}

/// Writes the key file atomically (temp file + rename), readable by the owner only.
fn write_private(dir: &Path, path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    create_private_dir(dir).map_err(io)?;
    let text = serde_json::to_string_pretty(file).map_err(|e| KeyError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(&tmp).map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}
