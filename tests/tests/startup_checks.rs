//! Problems that can only be found by touching the machine — certificate files, busy
//! ports — are reported before serving starts, with the YAML path, and exit 1.

use std::time::Duration;

use meshgate_tests::certs::TestCa;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::{meshgate_cmd, meshgate_cmd_env, ConfigDir};

fn tls_config(ports: &Ports, cert: &str, key: &str) -> String {
    format!(
        "mode: edge\nservice: edge\nlisteners:\n  - name: tls\n    address: 127.0.0.1:{}\n    tls: {{ cert: \"{cert}\", key: \"{key}\" }}\nadmin: {{ address: 127.0.0.1:{} }}\nclusters:\n  c: {{ endpoints: [\"127.0.0.1:9\"] }}\nroutes:\n  - {{ name: r, to: c }}\n",
        ports.public, ports.admin
    )
}

#[test]
fn a_key_that_does_not_match_its_certificate_fails_validation() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"]);
    let b = ca.leaf("b", &["b.test"]);
    let dir = ConfigDir::new();
    let ports = Ports::new();
    let good = dir.write(
        "good.yaml",
        &tls_config(&ports, &a.cert_str(), &a.key_str()),
    );
    let out = meshgate_cmd(&["validate", &good]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.write("bad.yaml", &tls_config(&ports, &a.cert_str(), &b.key_str()));
    let out = meshgate_cmd(&["validate", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listeners[0].tls") && stderr.contains("does not match"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "key material must never be printed: {stderr}"
    );
}

#[test]
fn a_corrupt_certificate_fails_validation() {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"]);
    let dir = ConfigDir::new();
    let junk = dir.write(
        "junk.crt",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let ports = Ports::new();
    let bad = dir.write("bad.yaml", &tls_config(&ports, &junk, &a.key_str()));
    let out = meshgate_cmd(&["validate", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listeners[0].tls"), "{stderr}");
}

#[test]
fn a_busy_listener_port_stops_the_process_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let ports = Ports::new();
    let dir = ConfigDir::new();
    let cfg = dir.write(
        "busy.yaml",
        &format!(
            "mode: edge\nservice: edge\nlisteners:\n  - {{ name: public, address: \"127.0.0.1:{port}\" }}\nadmin: {{ address: 127.0.0.1:{} }}\nclusters:\n  c: {{ endpoints: [\"127.0.0.1:9\"] }}\nroutes:\n  - {{ name: r, to: c }}\n",
            ports.admin
        ),
    );
    let started = std::time::Instant::now();
    let out = meshgate_cmd_env(&["run", "-c", &cfg], &[], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listeners[0].address") && stderr.contains("cannot listen"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(taken);
}
