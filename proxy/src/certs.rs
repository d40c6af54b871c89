//! `meshgate certs init`: a development mesh CA and one short-lived leaf
//! certificate per service identity (DESIGN §6).
//!
//! The directory holds `ca.crt`/`ca.key` (ECDSA P-256, `CA:true`,
//! `keyCertSign`) and, per service, `<svc>.crt`/`<svc>.key`: an ECDSA P-256
//! leaf signed by the CA with the URI SAN `spiffe://<trust-domain>/<svc>`, the
//! DNS SANs `<svc>` and `localhost`, the IP SAN `127.0.0.1` and the EKUs
//! serverAuth and clientAuth.
//!
//! Re-running is safe: a valid CA is reused (so existing leaves stay valid)
//! and a valid leaf is kept unless `--force` is given or less than a third of
//! its validity remains. Files are replaced atomically (write to a temporary
//! file, then rename), so a proxy watching them never reads half a file.
//! Keys are written 0600 and a directory created here is 0700.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "meshgate.local";
/// Default leaf lifetime.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Default CA lifetime.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Shortest accepted leaf lifetime.
const MIN_LEAF_VALIDITY: Duration = Duration::from_secs(5 * 60);
/// Backdating of `notBefore`, to tolerate small clock differences between processes.
const BACKDATE: Duration = Duration::from_secs(60);
/// Common name of the mesh CA.
const CA_COMMON_NAME: &str = "meshgate mesh CA";

/// What `certs init` was asked to do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub services: Vec<String>,
    pub trust_domain: String,
    pub leaf_validity: Duration,
    pub ca_validity: Duration,
    pub force: bool,
}

/// Why `certs init` failed. The message is meant for the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsError(pub String);

impl fmt::Display for CertsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertsError {}

fn err(msg: impl Into<String>) -> CertsError {
    CertsError(msg.into())
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Wrote,
    Kept,
}

/// One line of the report: a file and what was done with it.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub action: Action,
    /// Why, e.g. `mesh CA, expires 2027-01-01` or `spiffe://meshgate.local/orders, ...`.
    pub detail: String,
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.action {
            Action::Wrote => "wrote",
            Action::Kept => "kept ",
        };
        write!(f, "{verb} {} ({})", self.path.display(), self.detail)
    }
}

/// Checks a service name: 1-63 characters of `[a-z0-9-]`, not starting or
/// ending with `-`, and not `ca` (that name belongs to the CA's files).
pub fn validate_service(name: &str) -> Result<(), CertsError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 || !ok_chars {
        return Err(err(format!(
            "invalid service name {name:?}: use 1-63 characters of a-z, 0-9 and '-'"
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(err(format!(
            "invalid service name {name:?}: must not start or end with '-'"
        )));
    }
    if name == "ca" {
        return Err(err(
            "invalid service name \"ca\": reserved for the CA's own files (ca.crt, ca.key)",
        ));
    }
    Ok(())
}

/// Checks a SPIFFE trust domain: 1-255 characters of `[a-z0-9._-]`.
pub fn validate_trust_domain(td: &str) -> Result<(), CertsError> {
    let ok_chars = td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if td.is_empty() || td.len() > 255 || !ok_chars {
        return Err(err(format!(
            "invalid trust domain {td:?}: use 1-255 characters of a-z, 0-9, '.', '-' and '_'"
        )));
    }
    Ok(())
}

/// Splits `a,b,c` into validated, de-duplicated service names (order kept).
pub fn parse_services(list: &[String]) -> Result<Vec<String>, CertsError> {
    let mut out: Vec<String> = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')) {
        let name = item.trim();
        validate_service(name)?;
        if !out.iter().any(|s| s == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        return Err(err("no services given: pass --services a,b,c"));
    }
    Ok(out)
}

/// The SPIFFE identity of `service` in `trust_domain`.
pub fn spiffe_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/{service}")
}

/// Creates or refreshes the CA and the leaves described by `opts`, returning
/// one report line per file written or kept.
pub fn init(opts: &InitOptions) -> Result<Vec<FileReport>, CertsError> {
    validate_trust_domain(&opts.trust_domain)?;
    for s in &opts.services {
        validate_service(s)?;
    }
    if opts.services.is_empty() {
        return Err(err("no services given: pass --services a,b,c"));
    }
    if opts.leaf_validity < MIN_LEAF_VALIDITY {
        return Err(err(format!(
            "--leaf-validity {} is too short: at least {}",
            humantime::format_duration(opts.leaf_validity),
            humantime::format_duration(MIN_LEAF_VALIDITY)
        )));
    }
    if opts.ca_validity <= opts.leaf_validity {
        return Err(err(format!(
            "--ca-validity {} must be longer than --leaf-validity {}",
            humantime::format_duration(opts.ca_validity),
            humantime::format_duration(opts.leaf_validity)
        )));
    }
    ensure_dir(&opts.dir)?;

    let now = OffsetDateTime::now_utc();
    let mut report = Vec::new();
    let ca = load_or_create_ca(opts, now, &mut report)?;
    for svc in &opts.services {
        leaf(opts, &ca, svc, now, &mut report)?;
    }
    Ok(report)
}

/// The CA in memory: its certificate (DER), and an issuer to sign leaves.
struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ensure_dir(dir: &Path) -> Result<(), CertsError> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(err(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| err(format!("cannot create {}: {e}", parent.display())))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    // The umask may have narrowed the mode further; make it exactly 0700.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("cannot set permissions on {}: {e}", dir.display())))
}

/// Writes `contents` to `path` atomically with the given mode.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(format!("cannot write {}: {e}", path.display()))
    })
}

fn read_text(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// PEM → DER of the first certificate in `pem`.
fn cert_der(pem: &str, path: &Path) -> Result<Vec<u8>, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if p.label != "CERTIFICATE" {
        return Err(format!(
            "{}: expected a CERTIFICATE, found {}",
            path.display(),
            p.label
        ));
    }
    Ok(p.contents)
}

fn parse_cert<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("{}: cannot parse certificate: {e}", path.display()))
}

fn load_key(path: &Path) -> Result<KeyPair, String> {
    let pem = read_text(path)?;
    KeyPair::from_pem(&pem)
        .map_err(|e| format!("{}: not a usable private key: {e}", path.display()))
}

fn date(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .map(|t| format!("{}", t.date()))
        .unwrap_or_else(|_| ts.to_string())
}

/// Checks that `cert`'s public key is `key`'s.
fn key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> bool {
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

/// Loads the CA if both files exist and are valid. `Ok(None)` when neither
/// file exists; `Err(reason)` when something is there but unusable.
fn load_ca(
    crt: &Path,
    key_path: &Path,
    now: OffsetDateTime,
    min_left: Duration,
) -> Result<Option<(Ca, i64)>, String> {
    match (crt.exists(), key_path.exists()) {
        (false, false) => return Ok(None),
        (true, false) => return Err(format!("{} is missing", key_path.display())),
        (false, true) => return Err(format!("{} is missing", crt.display())),
        (true, true) => {}
    }
    let pem = read_text(crt)?;
    let der = cert_der(&pem, crt)?;
    let key = load_key(key_path)?;
    let not_after = {
        let cert = parse_cert(&der, crt)?;
        if !cert.is_ca() {
            return Err(format!(
                "{}: not a CA certificate (CA:false)",
                crt.display()
            ));
        }
        let can_sign = cert
            .key_usage()
            .ok()
            .flatten()
            .is_none_or(|ku| ku.value.key_cert_sign());
        if !can_sign {
            return Err(format!("{}: key usage lacks keyCertSign", crt.display()));
        }
        if !key_matches(&cert, &key) {
            return Err(format!(
                "{} does not belong to {}",
                key_path.display(),
                crt.display()
            ));
        }
        let not_after = cert.validity().not_after.timestamp();
        let left = not_after - now.unix_timestamp();
        if left <= 0 {
            return Err(format!("{}: expired on {}", crt.display(), date(not_after)));
        }
        if (left as u64) < min_left.as_secs() {
            return Err(format!(
                "{}: expires on {}, before a new leaf would",
                crt.display(),
                date(not_after)
            ));
        }
        not_after
    };
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
        .map_err(|e| format!("{}: cannot use as issuer: {e}", crt.display()))?;
    Ok(Some((Ca { der, issuer }, not_after)))
}

fn load_or_create_ca(
    opts: &InitOptions,
    now: OffsetDateTime,
    report: &mut Vec<FileReport>,
) -> Result<Ca, CertsError> {
    let crt = opts.dir.join("ca.crt");
    let key_path = opts.dir.join("ca.key");
    match load_ca(&crt, &key_path, now, opts.leaf_validity) {
        Ok(Some((ca, not_after))) => {
            let detail = format!("mesh CA, expires {}", date(not_after));
            report.push(FileReport {
                path: crt,
                action: Action::Kept,
                detail: detail.clone(),
            });
            report.push(FileReport {
                path: key_path,
                action: Action::Kept,
                detail: "mesh CA key".into(),
            });
            return Ok(ca);
        }
        Ok(None) => {}
        Err(reason) if opts.force => {
            // `--force` replaces an unusable CA; every leaf is then re-issued
            // because none of them chains to the new one.
            eprintln!("replacing the mesh CA: {reason}");
        }
        Err(reason) => {
            return Err(err(format!(
                "existing mesh CA cannot be used: {reason}; fix or remove it, or pass --force to create a new CA (every leaf is then re-issued)"
            )));
        }
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err(format!("cannot generate the CA key: {e}")))?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "meshgate");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + opts.ca_validity;
    let cert = params
        .self_signed(&key)
        .map_err(|e| err(format!("cannot sign the CA certificate: {e}")))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&crt, cert.pem().as_bytes(), 0o644)?;
    let detail = format!(
        "mesh CA, expires {}",
        date(params.not_after.unix_timestamp())
    );
    report.push(FileReport {
        path: crt,
        action: Action::Wrote,
        detail,
    });
    report.push(FileReport {
        path: key_path,
        action: Action::Wrote,
        detail: "mesh CA key".into(),
    });
    let der = cert.der().to_vec();
    Ok(Ca {
        der,
        issuer: Issuer::new(params, key),
    })
}

/// `Ok(not_after)` when the existing leaf can be kept: both files present,
/// key matching, signed by the current CA, carrying `id`, and more than a
/// third of its validity left. Otherwise `Err(why it must be re-issued)`.
fn leaf_keep(
    crt: &Path,
    key_path: &Path,
    ca: &Ca,
    id: &str,
    now: OffsetDateTime,
) -> Result<i64, String> {
    if !crt.exists() || !key_path.exists() {
        return Err("missing".into());
    }
    let pem = read_text(crt)?;
    let der = cert_der(&pem, crt)?;
    let cert = parse_cert(&der, crt)?;
    let key = load_key(key_path)?;
    if !key_matches(&cert, &key) {
        return Err("key does not match certificate".into());
    }
    let ca_cert = parse_cert(&ca.der, Path::new("ca.crt"))?;
    if cert.issuer() != ca_cert.subject()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err("not signed by the current CA".into());
    }
    let has_id = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::URI(u) if *u == id))
        });
    if !has_id {
        return Err(format!("identity is not {id}"));
    }
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let left = na - now.unix_timestamp();
    if left <= 0 {
        return Err("expired".into());
    }
    if left * 3 < na - nb {
        return Err(format!("expires soon ({})", date(na)));
    }
    Ok(na)
}

fn leaf(
    opts: &InitOptions,
    ca: &Ca,
    svc: &str,
    now: OffsetDateTime,
    report: &mut Vec<FileReport>,
) -> Result<(), CertsError> {
    let crt = opts.dir.join(format!("{svc}.crt"));
    let key_path = opts.dir.join(format!("{svc}.key"));
    let id = spiffe_id(&opts.trust_domain, svc);

    let reason = if opts.force {
        "--force".to_string()
    } else {
        match leaf_keep(&crt, &key_path, ca, &id, now) {
            Ok(not_after) => {
                report.push(FileReport {
                    path: crt,
                    action: Action::Kept,
                    detail: format!("{id}, expires {}", date(not_after)),
                });
                report.push(FileReport {
                    path: key_path,
                    action: Action::Kept,
                    detail: format!("{id} key"),
                });
                return Ok(());
            }
            Err(reason) => reason,
        }
    };

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err(format!("cannot generate a key for {svc}: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, svc);
    let uri = id
        .clone()
        .try_into()
        .map_err(|e| err(format!("invalid identity {id}: {e}")))?;
    let dns_svc = svc
        .to_string()
        .try_into()
        .map_err(|e| err(format!("invalid DNS name {svc}: {e}")))?;
    let dns_localhost = "localhost"
        .to_string()
        .try_into()
        .map_err(|e| err(format!("invalid DNS name localhost: {e}")))?;
    params.subject_alt_names = vec![
        SanType::URI(uri),
        SanType::DnsName(dns_svc),
        SanType::DnsName(dns_localhost),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + opts.leaf_validity;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| err(format!("cannot sign the certificate for {svc}: {e}")))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&crt, cert.pem().as_bytes(), 0o644)?;
    let why = if reason == "missing" {
        String::new()
    } else {
        format!(", re-issued: {reason}")
    };
    report.push(FileReport {
        path: crt,
        action: Action::Wrote,
        detail: format!(
            "{id}, expires {}{why}",
            date(params.not_after.unix_timestamp())
        ),
    });
    report.push(FileReport {
        path: key_path,
        action: Action::Wrote,
        detail: format!("{id} key"),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["a", "orders", "a-1", &"x".repeat(63)] {
            assert!(validate_service(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "a.b",
            "-a",
            "a-",
            "ca",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(validate_service(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services_split_and_dedup() {
        let got = parse_services(&["a,b".into(), "b, c".into()]).expect("valid");
        assert_eq!(got, ["a", "b", "c"]);
        assert!(parse_services(&["a,,b".into()]).is_err());
        assert!(parse_services(&[]).is_err());
    }

    #[test]
    fn trust_domains() {
        assert!(validate_trust_domain("meshgate.local").is_ok());
        assert!(validate_trust_domain("Mesh").is_err());
        assert!(validate_trust_domain("a/b").is_err());
        assert!(validate_trust_domain("").is_err());
    }
}
