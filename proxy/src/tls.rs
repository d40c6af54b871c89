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

use crate::config::spec::{MtlsSpec, TlsSpec};
use pingora::tls::{RootCertStore, WebPkiClientVerifier};

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

/// A listener's certificates, re-read when their files change (short-lived mesh leaves are
/// rotated without a restart). Handshakes always use the last set that loaded completely;
/// a broken rotation is logged and the previous certificates keep serving.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: arc_swap::ArcSwap<SniResolver>,
    spec: TlsSpec,
    base: std::path::PathBuf,
    stamp: std::sync::Mutex<Vec<Option<(std::time::SystemTime, u64)>>>,
}

impl ReloadingResolver {
    /// Loads the certificates of `spec` now.
    pub fn new(spec: &TlsSpec, base: &Path) -> Result<Self, String> {
        let first = resolver(spec, base)?;
        let r = Self {
            current: arc_swap::ArcSwap::from_pointee(first),
            spec: spec.clone(),
            base: base.to_path_buf(),
            stamp: std::sync::Mutex::new(Vec::new()),
        };
        let stamps = r.stamps();
        *r.stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps;
        Ok(r)
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        let mut files = vec![
            self.base.join(&self.spec.cert),
            self.base.join(&self.spec.key),
        ];
        for s in &self.spec.sni {
            files.push(self.base.join(&s.cert));
            files.push(self.base.join(&s.key));
        }
        files
    }

    fn stamps(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        self.files()
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }

    /// Reloads when any file changed since the last look; returns whether new certificates
    /// are now serving.
    pub fn check(&self) -> bool {
        let now = self.stamps();
        let mut seen = self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *seen == now {
            return false;
        }
        *seen = now;
        match resolver(&self.spec, &self.base) {
            Ok(r) => {
                self.current.store(Arc::new(r));
                tracing::info!(cert = %self.spec.cert, "listener certificates reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but do not load; keeping the previous ones");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()).clone())
    }
}

/// Pingora TLS settings for a listener: our resolver, TLS 1.2+, h2 by ALPN when enabled.
/// Also returns the resolver so its files can be watched.
pub fn settings(
    spec: &TlsSpec,
    mtls: Option<&MtlsSpec>,
    base: &Path,
) -> Result<(TlsSettings, Arc<ReloadingResolver>), String> {
    let resolver = Arc::new(ReloadingResolver::new(spec, base)?);
    let mut settings = match mtls {
        // The handshake callback reads the client's SPIFFE identity once per connection,
        // so requests only look it up.
        Some(_) => TlsSettings::with_callbacks(Box::new(PeerIdentityCallback)),
        // The paths are unused once a resolver is set; `intermediate` is the constructor
        // that takes no callbacks.
        None => TlsSettings::intermediate("", ""),
    }
    .map_err(|e| format!("TLS settings: {e}"))?;
    settings.set_cert_resolver(resolver.clone());
    if let Some(m) = mtls {
        let roots = load_roots(base, &m.ca)?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| format!("mtls.ca: cannot build a client verifier: {e}"))?;
        settings.set_client_cert_verifier(verifier);
    }
    if spec.http2 {
        settings.enable_h2();
    }
    Ok((settings, resolver))
}

/// What an mTLS client needs to reach one cluster: the CA to trust, the name to verify,
/// and the certificate to present.
pub struct UpstreamTls {
    /// Expected identity (verified as the server name).
    pub identity: String,
    /// CA certificates for Pingora's per-peer trust store.
    pub ca: Arc<pingora::protocols::tls::CaType>,
    /// Client certificate and key.
    pub cert_key: Arc<pingora::utils::tls::CertKey>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Loads a cluster's TLS material. Certificates and the key are parsed here (and the pair
/// checked) so nothing can fail later inside Pingora's connector, which panics on bad keys.
pub fn upstream(
    base: &Path,
    identity: &str,
    ca: &str,
    cert: &str,
    key: &str,
) -> Result<UpstreamTls, String> {
    use pingora::utils::tls::{parse_x509, WrappedX509};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    check_pair(base, cert, key)?;
    let roots = load_roots(base, ca)?;
    drop(roots);
    let ca_path = base.join(ca);
    let mut ca_certs = Vec::new();
    for c in CertificateDer::pem_file_iter(&ca_path)
        .map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?
    {
        let c = c.map_err(|e| format!("invalid PEM in {}: {e}", ca_path.display()))?;
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|_| format!("invalid certificate in {}", ca_path.display()))?;
        ca_certs.push(WrappedX509::new(c.as_ref().to_vec(), parse_x509));
    }
    let cert_path = base.join(cert);
    let mut chain = Vec::new();
    for c in CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?
    {
        let c = c.map_err(|e| format!("invalid PEM in {}: {e}", cert_path.display()))?;
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|_| format!("invalid certificate in {}", cert_path.display()))?;
        chain.push(c.as_ref().to_vec());
    }
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    let key_path = base.join(key);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|_| format!("no usable private key in {}", key_path.display()))?;
    let key_der = key.secret_der().to_vec();
    if PrivateKeyDer::try_from(key_der.clone()).is_err() {
        return Err(format!(
            "unsupported private key format in {}",
            key_path.display()
        ));
    }
    Ok(UpstreamTls {
        identity: identity.to_string(),
        ca: Arc::from(ca_certs.into_boxed_slice()),
        cert_key: Arc::new(pingora::utils::tls::CertKey::new(chain, key_der)),
    })
}

/// Reads the CA certificates client certificates must chain to.
pub fn load_roots(base: &Path, ca: &str) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = base.join(ca);
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no CA certificate", path.display()));
    }
    Ok(roots)
}

/// The verified client identity of an mTLS connection, kept in Pingora's TLS digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The full SPIFFE ID, e.g. `spiffe://meshgate.local/orders`.
    pub spiffe_id: String,
    /// Its last path segment: the service name used by `allow_callers`.
    pub service: Arc<str>,
}

/// The first `spiffe://` URI SAN of a DER certificate.
pub fn spiffe_identity(der: &[u8]) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            let rest = &uri["spiffe://".len()..];
            let (_, path) = rest.split_once('/')?;
            let service = path.rsplit('/').next().filter(|s| !s.is_empty())?;
            Some(PeerIdentity {
                spiffe_id: (*uri).to_string(),
                service: Arc::from(service),
            })
        }
        _ => None,
    })
}

struct PeerIdentityCallback;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for PeerIdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        spiffe_identity(der).map(|id| Arc::new(id) as Arc<dyn std::any::Any + Send + Sync>)
    }
}
