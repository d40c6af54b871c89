//! Sidecar inbound mTLS: a listener with `mtls` admits only clients whose certificate
//! chains to the mesh CA, reads the caller's identity from its SPIFFE URI SAN, and
//! `allow_callers` lets only the listed services through. Certificates come from
//! `meshgate certs init`, as in the demo mesh.

use std::net::SocketAddr;
use std::path::Path;

use meshgate_tests::backend::Backend;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::{meshgate_cmd, ConfigDir, Meshgate};

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("certificate file")
}

/// A client presenting `service`'s certificate (or none), trusting only the mesh CA.
fn client(certs: &Path, service: Option<&str>, addr: SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(read(certs, "ca.crt").as_bytes()).expect("ca");
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("inventory", addr);
    if let Some(s) = service {
        let pem = format!(
            "{}{}",
            read(certs, &format!("{s}.crt")),
            read(certs, &format!("{s}.key"))
        );
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identity_and_allow_callers() {
    let dir = ConfigDir::new();
    let certs = dir.path().join("certs");
    let out = meshgate_cmd(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().expect("utf-8 path"),
        "--services",
        "inventory,orders,catalog",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = Backend::start("inventory-app").await;
    let (port, admin) = (free_port(), free_port());
    let c = |f: &str| certs.join(f).display().to_string();
    let yaml = format!(
        "mode: sidecar\nservice: inventory\n\
         listeners:\n  - name: inbound\n    address: 127.0.0.1:{port}\n\
         \x20   tls: {{ cert: \"{}\", key: \"{}\" }}\n    mtls: {{ ca: \"{}\" }}\n\
         admin: {{ address: 127.0.0.1:{admin} }}\n\
         clusters:\n  app: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - name: reserve\n    match: {{ path_prefix: /reserve }}\n    to: app\n\
         \x20   filters: [ {{ allow_callers: [orders] }} ]\n\
         \x20 - name: stock\n    match: {{ path_prefix: /stock }}\n    to: app\n",
        c("inventory.crt"),
        c("inventory.key"),
        c("ca.crt"),
        app.addr()
    );
    let _gw = Meshgate::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let url = |p: &str| format!("https://inventory:{port}{p}");

    // orders may reserve; the app learns who called, from the certificate.
    let orders = client(&certs, Some("orders"), addr);
    let r = orders
        .post(url("/reserve"))
        .header("x-meshgate-caller", "edge")
        .send()
        .await
        .expect("orders call");
    assert_eq!(r.status(), 200);
    let seen = app.last_request().expect("forwarded");
    assert_eq!(
        seen.header("x-meshgate-caller").as_deref(),
        Some("orders"),
        "identity from the certificate, not the header"
    );

    // catalog has a valid mesh certificate but is not allowed on /reserve ...
    let catalog = client(&certs, Some("catalog"), addr);
    let before = app.request_count();
    let r = catalog
        .post(url("/reserve"))
        .send()
        .await
        .expect("catalog call");
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "forbidden");
    assert_eq!(
        app.request_count(),
        before,
        "refused calls never reach the app"
    );
    // ... while a route without allow_callers admits any mesh member.
    let r = catalog
        .get(url("/stock/sku-1"))
        .send()
        .await
        .expect("stock");
    assert_eq!(r.status(), 200);

    // Without a client certificate the handshake itself fails.
    let anonymous = client(&certs, None, addr);
    assert!(
        anonymous.get(url("/stock/sku-1")).send().await.is_err(),
        "mTLS must require a client certificate"
    );
}

/// Outbound: the orders sidecar's loopback listener routes by `Host` to the inventory
/// sidecar, originating mTLS with orders' certificate and checking inventory's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_mtls_reaches_the_peer_sidecar_as_its_own_identity() {
    let dir = ConfigDir::new();
    let certs = dir.path().join("certs");
    let out = meshgate_cmd(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().expect("utf-8 path"),
        "--services",
        "inventory,orders",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = |f: &str| certs.join(f).display().to_string();

    let app = Backend::start("inventory-app").await;
    let (in_port, in_admin) = (free_port(), free_port());
    let inbound = format!(
        "mode: sidecar\nservice: inventory\n\
         listeners:\n  - name: inbound\n    address: 127.0.0.1:{in_port}\n\
         \x20   tls: {{ cert: \"{}\", key: \"{}\" }}\n    mtls: {{ ca: \"{}\" }}\n\
         admin: {{ address: 127.0.0.1:{in_admin} }}\n\
         clusters:\n  app: {{ endpoints: [\"{}\"] }}\n\
         routes:\n  - name: reserve\n    to: app\n    filters: [ {{ allow_callers: [orders] }} ]\n",
        c("inventory.crt"),
        c("inventory.key"),
        c("ca.crt"),
        app.addr()
    );
    let _inventory = Meshgate::start(&inbound).await;

    let (out_port, out_admin) = (free_port(), free_port());
    let outbound = |identity: &str| {
        format!(
            "mode: sidecar\nservice: orders\n\
             listeners:\n  - name: outbound\n    address: 127.0.0.1:{out_port}\n\
             admin: {{ address: 127.0.0.1:{out_admin} }}\n\
             clusters:\n  inventory:\n    endpoints: [\"127.0.0.1:{in_port}\"]\n\
             \x20   tls: {{ identity: {identity}, ca: \"{}\", cert: \"{}\", key: \"{}\" }}\n\
             routes:\n  - name: to-inventory\n    match: {{ host: inventory }}\n    to: inventory\n",
            c("ca.crt"),
            c("orders.crt"),
            c("orders.key")
        )
    };
    let orders = Meshgate::start(&outbound("inventory")).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{out_port}/reserve");
    let r = http
        .post(&url)
        .header("host", "inventory")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    let seen = app.last_request().expect("forwarded");
    assert_eq!(seen.header("x-meshgate-caller").as_deref(), Some("orders"));

    // Rotating every leaf: the outbound sidecar reloads its client certificate (a new
    // config generation) and the inbound one its server certificate; calls keep working.
    let out = meshgate_cmd(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().expect("utf-8 path"),
        "--services",
        "inventory,orders",
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloaded = meshgate_tests::wait::until(std::time::Duration::from_secs(10), || async {
        let g = orders
            .metric("meshgate_config_generation", &[])
            .await
            .unwrap_or(0.0);
        (g >= 2.0).then_some(g)
    })
    .await;
    assert!(
        reloaded.is_some(),
        "the outbound sidecar reloaded after its certificate changed"
    );
    let r = http
        .post(&url)
        .header("host", "inventory")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 200, "calls work with the rotated certificates");
    drop(orders);

    // Expecting another identity than the peer proves: the handshake fails, nothing is sent.
    let before = app.request_count();
    let wrong = Meshgate::start(&outbound("catalog")).await;
    let r = http
        .post(&url)
        .header("host", "inventory")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 502);
    assert_eq!(app.request_count(), before);
    drop(wrong);
}

/// Short-lived leaves are rotated on disk; the listener serves the new certificate without a
/// restart, and a rotation that leaves broken files keeps the previous certificate serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificates_rotate_without_restart() {
    use meshgate_tests::client;
    use meshgate_tests::wait;
    use std::time::Duration;

    let dir = ConfigDir::new();
    let certs = dir.path().join("certs");
    let init = |force: bool| {
        let mut args = vec![
            "certs",
            "init",
            "--dir",
            certs.to_str().expect("utf-8"),
            "--services",
            "inventory",
        ];
        if force {
            args.push("--force");
        }
        let out = meshgate_cmd(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    init(false);
    let app = Backend::start("app").await;
    let (port, admin) = (free_port(), free_port());
    let c = |f: &str| certs.join(f).display().to_string();
    let yaml = format!(
        "mode: sidecar\nservice: inventory\n\
         listeners:\n  - name: inbound\n    address: 127.0.0.1:{port}\n\
         \x20   tls: {{ cert: \"{}\", key: \"{}\" }}\n\
         admin: {{ address: 127.0.0.1:{admin} }}\n\
         clusters:\n  app: {{ endpoints: [\"{}\"] }}\n\
         routes:\n  - {{ name: all, to: app }}\n",
        c("inventory.crt"),
        c("inventory.key"),
        app.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ca = read(&certs, "ca.crt");
    let served = || async {
        // A fresh client per look: a pooled connection would keep the old handshake.
        let http = client::tls(&ca, &[("inventory", addr)]);
        let r = http
            .get(format!("https://inventory:{port}/"))
            .send()
            .await
            .ok()?;
        client::peer_certificate(&r)
    };
    let first = served().await.expect("served certificate");

    init(true);
    let rotated = wait::until(Duration::from_secs(10), || async {
        served().await.filter(|der| *der != first)
    })
    .await
    .expect("the listener picked up the re-issued certificate");
    let on_disk = std::fs::read_to_string(certs.join("inventory.crt")).expect("cert");
    assert!(!on_disk.is_empty());

    // Broken files: the rotated certificate keeps serving.
    std::fs::write(certs.join("inventory.key"), "not a key").expect("write");
    let noticed = wait::until(Duration::from_secs(10), || async {
        gw.stderr()
            .contains("certificate files changed but do not load")
            .then_some(())
    })
    .await;
    assert!(noticed.is_some(), "the broken rotation was seen and logged");
    assert_eq!(served().await.as_deref(), Some(rotated.as_slice()));
}
