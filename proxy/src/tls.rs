//! Downstream TLS: certificates loaded once at start, chosen per handshake by SNI.
//!
//! rustls' built-in SNI resolver has no default certificate and no wildcards, which every
//! edge proxy needs, so [`SniResolver`] adds both on top of rustls' certificate types.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls::InconsistentKeys;

use crate::config::spec::TlsSpec;

/// Picks a certificate by SNI: exact name, then `*.parent` wildcard, then the default.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The certificate for a requested server name (already lower-case per RFC 6066).
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.');
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return c;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

fn load(base: &Path, cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let cert_path = base.join(cert);
    let key_path = base.join(key);
    let (certs, key) = pingora::tls::load_certs_and_key_files(
        &cert_path.to_string_lossy(),
        &key_path.to_string_lossy(),
    )
    .ok()
    .flatten()
    .ok_or_else(|| {
        format!(
            "cannot load certificate {} with key {}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider installed".to_string())?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key {}: {e}", key_path.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    // A key that does not belong to the certificate would only fail at handshake time.
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        // Some key types cannot expose their public key; nothing to compare then.
        Err(pingora::tls::RusTlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(pingora::tls::RusTlsError::InconsistentKeys(_)) => Err(format!(
            "private key {} does not match certificate {}",
            key_path.display(),
            cert_path.display()
        )),
        Err(e) => Err(format!("invalid certificate {}: {e}", cert_path.display())),
    }
}

/// Loads a certificate and key pair as a listener would, for `meshgate validate`.
pub fn check_pair(base: &Path, cert: &str, key: &str) -> Result<(), String> {
    load(base, cert, key).map(|_| ())
}

/// Builds the SNI resolver of a listener. Paths are relative to `base`.
pub fn resolver(spec: &TlsSpec, base: &Path) -> Result<SniResolver, String> {
    let default = load(base, &spec.cert, &spec.key)?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for sni in &spec.sni {
        let ck = load(base, &sni.cert, &sni.key)?;
        for name in &sni.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), ck.clone()),
                None => exact.insert(name, ck.clone()),
            };
        }
    }
    Ok(SniResolver {
        default,
        exact,
        wildcard,
    })
}

/// Pingora TLS settings for a listener: our resolver, TLS 1.2+, h2 by ALPN when enabled.
pub fn settings(spec: &TlsSpec, base: &Path) -> Result<TlsSettings, String> {
    let resolver = resolver(spec, base)?;
    // The paths are unused once a resolver is set; `intermediate` is the constructor that
    // takes no callbacks.
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| format!("TLS settings: {e}"))?;
    settings.set_cert_resolver(Arc::new(resolver));
    if spec.http2 {
        settings.enable_h2();
    }
    Ok(settings)
}
