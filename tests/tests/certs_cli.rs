//! `meshgate certs init`: a mesh CA and one SPIFFE leaf per service, kept
//! across runs, re-issued on `--force` or near expiry, usable by a TLS
//! listener.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::{meshgate_cmd, ConfigDir, Meshgate};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

fn init(dir: &Path, extra: &[&str]) -> Output {
    let dir = dir.to_string_lossy().into_owned();
    let mut args = vec!["certs", "init", "--dir", dir.as_str()];
    args.extend_from_slice(extra);
    meshgate_cmd(&args)
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "certs init failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The line of the report about `file`, e.g. `wrote /d/a.crt (...)`.
fn line_for<'a>(stdout: &'a str, dir: &Path, file: &str) -> &'a str {
    let path = dir.join(file).to_string_lossy().into_owned();
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(path.as_str()))
        .unwrap_or_else(|| panic!("no report line for {file} in:\n{stdout}"))
}

/// DER of the single certificate in a PEM text (tiny base64 decoder: the
/// tests crate has no base64 dependency).
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = b64.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `openssl ARGS...` if the tool is installed, else `None`.
fn openssl(args: &[&str]) -> Option<Output> {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .ok()
}

#[test]
fn creates_ca_and_leaves_with_private_modes_and_spiffe_ids() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("mesh-certs");
    let stdout = ok(&init(&dir, &["--services", "orders,inventory"]));

    assert_eq!(mode(&dir), 0o700, "certificate directory is 0700");
    for key in ["ca.key", "orders.key", "inventory.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key} is 0600");
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "inventory.crt",
            "inventory.key",
            "orders.crt",
            "orders.key"
        ],
        "only the listed files"
    );
    assert_eq!(stdout.lines().count(), 6, "one line per file:\n{stdout}");
    for f in names {
        assert!(line_for(&stdout, &dir, &f).starts_with("wrote"), "{stdout}");
    }

    // The URI SAN is an IA5String inside the DER: look for its bytes.
    let der = pem_der(&read(&dir, "orders.crt"));
    assert!(contains(&der, b"spiffe://meshgate.local/orders"));
    assert!(!contains(&der, b"spiffe://meshgate.local/inventory"));

    // With openssl installed, also check the chain and the extensions.
    let ca = dir.join("ca.crt").to_string_lossy().into_owned();
    let leaf = dir.join("orders.crt").to_string_lossy().into_owned();
    if let Some(v) = openssl(&["verify", "-CAfile", &ca, &leaf]) {
        assert!(
            v.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        let text = openssl(&["x509", "-noout", "-text", "-in", &leaf]).expect("openssl x509");
        let text = String::from_utf8_lossy(&text.stdout);
        for want in [
            "URI:spiffe://meshgate.local/orders",
            "DNS:orders",
            "DNS:localhost",
            "IP Address:127.0.0.1",
            "TLS Web Server Authentication",
            "TLS Web Client Authentication",
            "CA:FALSE",
            "ecdsa-with-SHA256",
        ] {
            assert!(text.contains(want), "leaf lacks {want}:\n{text}");
        }
        let text = openssl(&["x509", "-noout", "-text", "-in", &ca]).expect("openssl x509");
        let text = String::from_utf8_lossy(&text.stdout);
        for want in ["CA:TRUE", "Certificate Sign", "prime256v1"] {
            assert!(text.contains(want), "CA lacks {want}:\n{text}");
        }
    }
}

#[test]
fn trust_domain_is_configurable() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    ok(&init(
        &dir,
        &["--services", "catalog", "--trust-domain", "shop.example"],
    ));
    let der = pem_der(&read(&dir, "catalog.crt"));
    assert!(contains(&der, b"spiffe://shop.example/catalog"));
}

#[test]
fn rerun_keeps_ca_and_leaves_and_adds_a_service() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    ok(&init(&dir, &["--services", "a,b"]));
    let (ca, a_crt, a_key) = (
        read(&dir, "ca.crt"),
        read(&dir, "a.crt"),
        read(&dir, "a.key"),
    );

    let stdout = ok(&init(&dir, &["--services", "a,b,c"]));
    assert_eq!(read(&dir, "ca.crt"), ca, "CA reused");
    assert_eq!(read(&dir, "a.crt"), a_crt, "valid leaf kept");
    assert_eq!(read(&dir, "a.key"), a_key, "valid key kept");
    for f in ["ca.crt", "ca.key", "a.crt", "a.key", "b.crt", "b.key"] {
        assert!(line_for(&stdout, &dir, f).starts_with("kept"), "{stdout}");
    }
    for f in ["c.crt", "c.key"] {
        assert!(line_for(&stdout, &dir, f).starts_with("wrote"), "{stdout}");
    }
    assert_eq!(mode(&dir.join("c.key")), 0o600);
    if let Some(v) = openssl(&[
        "verify",
        "-CAfile",
        &dir.join("ca.crt").to_string_lossy(),
        &dir.join("a.crt").to_string_lossy(),
        &dir.join("c.crt").to_string_lossy(),
    ]) {
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    }
}

#[test]
fn force_reissues_leaves_but_keeps_the_ca() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    ok(&init(&dir, &["--services", "a"]));
    let (ca, a_crt, a_key) = (
        read(&dir, "ca.crt"),
        read(&dir, "a.crt"),
        read(&dir, "a.key"),
    );
    let stdout = ok(&init(&dir, &["--services", "a", "--force"]));
    assert_eq!(read(&dir, "ca.crt"), ca, "CA kept");
    assert_ne!(read(&dir, "a.crt"), a_crt, "leaf re-issued");
    assert_ne!(read(&dir, "a.key"), a_key, "new key");
    assert!(line_for(&stdout, &dir, "a.crt").starts_with("wrote"));
    assert!(line_for(&stdout, &dir, "ca.crt").starts_with("kept"));
    assert_eq!(mode(&dir.join("a.key")), 0o600);
}

/// A leaf signed by the mesh CA whose remaining life is under a third of its
/// validity is re-issued without `--force`; one from another CA is too.
#[test]
fn near_expiry_or_foreign_leaf_is_reissued() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    ok(&init(&dir, &["--services", "a,b"]));

    // Sign a replacement `a` with the mesh CA's key and DN: issued 23h ago,
    // valid 24h → 1h left, under a third.
    let ca_key = KeyPair::from_pem(&read(&dir, "ca.key")).expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshgate mesh CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "meshgate");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "a");
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://meshgate.local/a"
            .to_string()
            .try_into()
            .expect("uri"),
    )];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(23 * 3600)).into();
    p.not_after = (now + std::time::Duration::from_secs(3600)).into();
    let old = p.signed_by(&leaf_key, &issuer).expect("sign").pem();
    std::fs::write(dir.join("a.crt"), &old).expect("write a.crt");
    std::fs::write(dir.join("a.key"), leaf_key.serialize_pem()).expect("write a.key");

    // Replace `b` with a leaf from a different CA (self-signed here).
    let other_key = KeyPair::generate().expect("key");
    let mut q = CertificateParams::new(vec!["b".to_string()]).expect("params");
    q.distinguished_name
        .push(DnType::CommonName, "meshgate mesh CA");
    let foreign = q.self_signed(&other_key).expect("self-sign").pem();
    std::fs::write(dir.join("b.crt"), &foreign).expect("write b.crt");
    std::fs::write(dir.join("b.key"), other_key.serialize_pem()).expect("write b.key");

    let stdout = ok(&init(&dir, &["--services", "a,b"]));
    let a_line = line_for(&stdout, &dir, "a.crt");
    assert!(
        a_line.starts_with("wrote") && a_line.contains("expires soon"),
        "{stdout}"
    );
    let b_line = line_for(&stdout, &dir, "b.crt");
    assert!(
        b_line.starts_with("wrote") && b_line.contains("not signed by the current CA"),
        "{stdout}"
    );
    assert_ne!(read(&dir, "a.crt"), old);
    assert_ne!(read(&dir, "b.crt"), foreign);
    assert!(line_for(&stdout, &dir, "ca.crt").starts_with("kept"));
}

#[test]
fn bad_input_exits_1_with_a_clear_message() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    let long = "x".repeat(64);
    for (services, want) in [
        ("Orders", "invalid service name \"Orders\""),
        ("a,b_c", "invalid service name \"b_c\""),
        ("a,,b", "invalid service name \"\""),
        (long.as_str(), "1-63 characters"),
        ("ca", "reserved"),
    ] {
        let out = init(&dir, &["--services", services]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{services}: {stderr}");
        assert!(stderr.contains(want), "{services}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!dir.exists(), "nothing written for {services}");
    }

    let out = init(&dir, &["--services", "a", "--trust-domain", "Bad/Domain"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid trust domain"));

    let out = init(
        &dir,
        &[
            "--services",
            "a",
            "--leaf-validity",
            "24h",
            "--ca-validity",
            "1h",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be longer"));
    assert!(!dir.exists());
}

#[test]
fn unusable_ca_is_an_error_unless_forced() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    ok(&init(&dir, &["--services", "a"]));
    let (ca, a_crt) = (read(&dir, "ca.crt"), read(&dir, "a.crt"));
    std::fs::remove_file(dir.join("ca.key")).expect("remove ca.key");

    let out = init(&dir, &["--services", "a"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ca.key is missing") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(read(&dir, "ca.crt"), ca, "nothing replaced");

    let stdout = ok(&init(&dir, &["--services", "a", "--force"]));
    assert_ne!(read(&dir, "ca.crt"), ca, "new CA");
    assert_ne!(
        read(&dir, "a.crt"),
        a_crt,
        "leaf re-issued under the new CA"
    );
    assert!(line_for(&stdout, &dir, "ca.key").starts_with("wrote"));
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
}

/// A generated leaf serves a meshgate TLS listener: `validate` accepts the
/// pair, and a client trusting only the mesh CA completes the handshake for
/// the service's DNS name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_leaf_serves_a_tls_listener() {
    let tmp = ConfigDir::new();
    let dir = tmp.path().join("c");
    ok(&init(&dir, &["--services", "inventory"]));
    let web = Backend::start("web").await;
    let (tls_port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        r#"mode: edge
service: edge
listeners:
  - name: secure
    address: 127.0.0.1:{tls_port}
    tls: {{ cert: {cert}, key: {key} }}
admin: {{ address: 127.0.0.1:{admin_port} }}
runtime: {{ threads: 1, work_stealing: false, grace_period: 5s }}
clusters:
  web: {{ endpoints: [{web}], protocol: http1 }}
routes:
  - {{ name: web, match: {{ path_prefix: / }}, to: web }}
"#,
        cert = dir.join("inventory.crt").display(),
        key = dir.join("inventory.key").display(),
        web = web.addr(),
    );
    let file = tmp.write("gw.yaml", &yaml);
    let out = meshgate_cmd(&["validate", &file]);
    assert!(
        out.status.success(),
        "validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let _gw = Meshgate::start(&yaml).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    let ca = read(&dir, "ca.crt");
    let c = client::tls(&ca, &[("inventory", addr), ("localhost", addr)]);
    for name in ["inventory", "localhost"] {
        let resp = c
            .get(format!("https://{name}:{tls_port}/x"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS to {name} with the mesh CA failed: {e:?}"));
        assert_eq!(
            client::peer_certificate(&resp).as_deref(),
            Some(&pem_der(&read(&dir, "inventory.crt"))[..]),
            "the generated leaf is presented"
        );
        assert_eq!(resp.status().as_u16(), 200);
    }
}
