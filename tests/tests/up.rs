//! `meshgate up`: the whole demo shop mesh from one command — the dev OpenID Provider, the
//! four backends each behind its sidecar, the edge with the browser BFF, and the web app —
//! on fresh loopback ports (a generated mesh file that points at the repository's real
//! proxy configs). A login through the provider's form and an order through
//! edge → orders sidecar → orders → (catalog, inventory, payments sidecars) prove the
//! chain; a restart keeps the data; a killed child is restarted; a down file holds one
//! down.
//!
//! Needs the binaries: `cargo build -p meshgate -p identity -p catalog -p inventory
//! -p payments -p orders`.

mod up_harness;

use std::time::{Duration, Instant};

use meshgate_tests::browser::Browser;
use meshgate_tests::proc::meshgate_cmd;
use meshgate_tests::wait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use up_harness::{get, healthy, login, UpMesh, SERVICES};

/// Places an order for one unit of the first product in stock; returns the order.
async fn order_something(mesh: &UpMesh, b: &mut Browser) -> serde_json::Value {
    let products = b
        .api(reqwest::Method::GET, &mesh.url("/api/catalog/products"))
        .await;
    assert_eq!(
        products.status, 200,
        "GET /api/catalog/products: {}",
        products.body
    );
    let list = products.json();
    let list = list
        .as_array()
        .or_else(|| list["products"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("a product list: {}", products.body));
    assert!(!list.is_empty(), "the catalog has products");
    let sku = list[0]["sku"]
        .as_str()
        .unwrap_or_else(|| panic!("products have a sku: {}", products.body))
        .to_string();

    let body = serde_json::json!({ "items": [{ "sku": sku, "quantity": 1 }] });
    let placed = b
        .send(
            reqwest::Method::POST,
            &mesh.url("/api/orders"),
            &[("x-csrf", "1"), ("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(placed.status, 201, "POST /api/orders: {}", placed.body);
    placed.json()
}

async fn order_ids(mesh: &UpMesh, b: &mut Browser) -> Vec<String> {
    let page = b.api(reqwest::Method::GET, &mesh.url("/api/orders")).await;
    assert_eq!(page.status, 200, "GET /api/orders: {}", page.body);
    let v = page.json();
    v.as_array()
        .or_else(|| v["orders"].as_array())
        .unwrap_or_else(|| panic!("an order list: {}", page.body))
        .iter()
        .filter_map(|o| {
            o["id"]
                .as_str()
                .map(str::to_string)
                .or_else(|| o["id"].as_i64().map(|i| i.to_string()))
        })
        .collect()
}

fn id_of(order: &serde_json::Value) -> String {
    order["id"]
        .as_str()
        .map(str::to_string)
        .or_else(|| order["id"].as_i64().map(|i| i.to_string()))
        .unwrap_or_else(|| panic!("order without id: {order}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_shop_comes_up_takes_an_order_and_keeps_it_across_a_restart() {
    let mut mesh = UpMesh::new();
    mesh.start().await;
    eprintln!("meshgate up was ready after {:?}", mesh.last_start);
    let banner = mesh.stdout();
    assert!(
        banner.contains(&mesh.url("")),
        "the banner names the shop URL:\n{banner}"
    );
    assert!(
        banner.contains("alice / alice"),
        "and the demo login:\n{banner}"
    );
    assert!(banner.contains("logs"), "and where the logs are:\n{banner}");

    // The state directory: certificates for every identity, secrets private to the user.
    let state = mesh.state();
    for svc in ["edge", "catalog", "inventory", "payments", "orders"] {
        assert!(
            state.join(format!("certs/{svc}.crt")).is_file(),
            "{svc}.crt"
        );
    }
    for secret in ["session-key", "oidc-client-secret"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(state.join("secrets").join(secret))
                .expect("secret file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{secret} is 0600");
    }
    let session_key = std::fs::read_to_string(state.join("secrets/session-key")).expect("key");

    // The SPA, from the edge.
    let (status, ct, body) = get(&mesh.url("/")).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        body.contains("data-testid=\"login-button\""),
        "the shop page: {body}"
    );
    let (status, ct, _) = get(&mesh.url("/app.js")).await;
    assert_eq!(
        (status, ct.starts_with("text/javascript")),
        (200, true),
        "{ct}"
    );
    let (status, _, _) = get(&mesh.url("/no-such-file.js")).await;
    assert_eq!(status, 404);

    // Anonymous: no session, no API.
    let mut b = Browser::new();
    let me = b.api(reqwest::Method::GET, &mesh.url("/auth/user")).await;
    assert_eq!(me.status, 401, "/auth/user without a session: {}", me.body);
    let anon = b
        .api(reqwest::Method::GET, &mesh.url("/api/catalog/products"))
        .await;
    assert_eq!(anon.status, 401, "the API needs a session: {}", anon.body);

    // A real login through the provider's form, then an order through the whole mesh.
    login(&mesh, &mut b, "alice", "alice").await;
    let me = b.api(reqwest::Method::GET, &mesh.url("/auth/user")).await;
    assert_eq!(me.status, 200, "/auth/user after login: {}", me.body);
    assert!(me.body.contains("alice"), "{}", me.body);
    let order = order_something(&mesh, &mut b).await;
    assert_eq!(order["status"], "confirmed", "a confirmed order: {order}");
    let id = id_of(&order);
    assert!(order_ids(&mesh, &mut b).await.contains(&id));

    // `--check` validates every shipped config with the mesh's environment, and does not
    // mind that the mesh is running.
    let check = meshgate_cmd(&[
        "up",
        "--check",
        "--config",
        mesh.mesh_file().to_str().expect("utf-8"),
    ]);
    assert!(
        check.status.success(),
        "meshgate up --check:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // SIGTERM stops every child and exits 0.
    let pids: Vec<(String, i32)> = ["identity", "edge"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            SERVICES
                .iter()
                .flat_map(|s| [s.to_string(), format!("{s}-sidecar")]),
        )
        .map(|n| {
            let pid = mesh
                .pid_of(&n)
                .unwrap_or_else(|| panic!("{n} has a pid file"));
            (n, pid)
        })
        .collect();
    let status = mesh.stop().await;
    assert!(
        status.success(),
        "meshgate up exits 0 on SIGTERM: {status}\n{}",
        mesh.report()
    );
    for (name, pid) in &pids {
        // Signal 0 only checks existence; the children were reaped by `meshgate up`.
        assert!(
            kill(Pid::from_raw(*pid), None).is_err(),
            "{name} (pid {pid}) is still running after meshgate up stopped"
        );
    }
    assert!(!healthy(mesh.ports.edge_admin, "/healthz").await);

    // Started again on the same state directory: same key, same data.
    mesh.start().await;
    eprintln!("meshgate up was ready again after {:?}", mesh.last_start);
    assert_eq!(
        std::fs::read_to_string(state.join("secrets/session-key")).expect("key"),
        session_key,
        "the session key is kept"
    );
    let mut b = Browser::new();
    login(&mesh, &mut b, "alice", "alice").await;
    assert!(
        order_ids(&mesh, &mut b).await.contains(&id),
        "order {id} survives the restart"
    );
    assert!(mesh.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_child_is_restarted_and_a_down_file_holds_one_down() {
    let mut mesh = UpMesh::new();
    mesh.start().await;
    let catalog = mesh.ports.service("catalog");

    // SIGKILL the catalog app: `meshgate up` reports it and starts it again.
    let old = mesh.pid_of("catalog").expect("catalog pid");
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill catalog");
    wait::assert_eventually(
        Duration::from_secs(30),
        "catalog restarted and healthy",
        || async {
            mesh.pid_of("catalog").is_some_and(|p| p != old)
                && healthy(catalog.app, "/healthz").await
        },
    )
    .await;
    assert!(
        mesh.stderr().contains("catalog exited"),
        "the death is reported:\n{}",
        mesh.stderr()
    );
    wait::assert_eventually(
        Duration::from_secs(10),
        "the recovery is reported",
        || async { mesh.stderr().contains("catalog is healthy again") },
    )
    .await;

    // The same for a sidecar: the edge's route to catalog works again afterwards.
    let old = mesh.pid_of("catalog-sidecar").expect("sidecar pid");
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill catalog sidecar");
    wait::assert_eventually(
        Duration::from_secs(30),
        "catalog sidecar restarted",
        || async {
            mesh.pid_of("catalog-sidecar").is_some_and(|p| p != old)
                && healthy(catalog.admin, "/readyz").await
        },
    )
    .await;
    let mut b = Browser::new();
    login(&mesh, &mut b, "alice", "alice").await;
    // The edge's outlier detection may still hold the old connection's failures; poll.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = b
            .api(reqwest::Method::GET, &mesh.url("/api/catalog/products"))
            .await;
        if page.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "products through the restarted sidecar: {} {}",
            page.status,
            page.body
        );
        tokio::time::sleep(meshgate_tests::wait::POLL_INTERVAL).await;
    }

    // down/payments holds payments down (and it stays down: no restart) until removed.
    let payments = mesh.ports.service("payments");
    let down = mesh.state().join("down/payments");
    std::fs::write(&down, "").expect("down file");
    wait::assert_eventually(Duration::from_secs(20), "payments stopped", || async {
        mesh.pid_of("payments").is_none() && !healthy(payments.app, "/healthz").await
    })
    .await;
    let order = order_something(&mesh, &mut b).await;
    assert_eq!(
        order["status"], "failed",
        "no payments, no confirmed order: {order}"
    );
    assert_eq!(order["reason"], "payment_unavailable", "{order}");
    assert!(mesh.pid_of("payments").is_none(), "still held down");
    std::fs::remove_file(&down).expect("rm down file");
    wait::assert_eventually(Duration::from_secs(30), "payments back", || async {
        healthy(payments.app, "/healthz").await
    })
    .await;
    assert!(mesh.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_named_with_its_owner_before_anything_starts() {
    let mut mesh = UpMesh::new();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", mesh.ports.edge)).expect("bind");
    mesh.spawn(&[]);
    let status = mesh.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let err = mesh.stderr();
    assert!(
        err.contains(&format!(
            "port {} (edge) is in use by pid {}",
            mesh.ports.edge,
            std::process::id()
        )),
        "{err}"
    );
    assert!(
        !mesh.state().join("logs").exists(),
        "nothing was started or prepared"
    );
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_picks_fresh_ports_when_one_was_taken_meanwhile() {
    let mut mesh = UpMesh::new();
    let taken = mesh.ports.edge;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).expect("bind");
    mesh.start().await;
    assert_ne!(mesh.ports.edge, taken, "started on other ports");
    let (status, _, _) = get(&mesh.url("/")).await;
    assert_eq!(status, 200);
    assert!(mesh.stop().await.success());
    drop(squatter);
}

/// Stock of every SKU, read from the inventory app itself with a token of `user`.
async fn stock(mesh: &UpMesh, token: &str) -> serde_json::Value {
    let url = format!(
        "http://127.0.0.1:{}/stock",
        mesh.ports.service("inventory").app
    );
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /stock");
    assert_eq!(r.status(), 200);
    r.json().await.expect("stock json")
}

/// `meshgate_circuit_breaker_state` of cluster `payments` in the orders sidecar (1 = open).
async fn payments_breaker_open(mesh: &UpMesh) -> bool {
    let admin = mesh.ports.service("orders").admin;
    let (_, _, text) = get(&format!("http://127.0.0.1:{admin}/metrics")).await;
    text.lines().any(|l| {
        l.starts_with("meshgate_circuit_breaker_state{")
            && l.contains("cluster=\"payments\"")
            && l.ends_with(" 1")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payments_outage_opens_the_breaker_releases_stock_and_heals() {
    let mut mesh = UpMesh::new();
    mesh.start().await;
    let mut b = Browser::new();
    login(&mesh, &mut b, "alice", "alice").await;
    let secret = std::fs::read_to_string(mesh.state().join("secrets/oidc-client-secret"))
        .expect("client secret");
    let token = meshgate_tests::identity::access_token(
        &mesh.issuer(),
        secret.trim(),
        &mesh.url("/auth/callback"),
        "alice",
        "openid",
    )
    .await;
    let before = stock(&mesh, &token).await;

    // Payments stops mid-run (its sidecar stays up and answers 502 for it).
    std::fs::write(mesh.state().join("down/payments"), "").expect("down file");
    let payments = mesh.ports.service("payments");
    wait::assert_eventually(Duration::from_secs(20), "payments stopped", || async {
        mesh.pid_of("payments").is_none() && !healthy(payments.app, "/healthz").await
    })
    .await;
    let mut last = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        let order = order_something(&mesh, &mut b).await;
        last = started.elapsed();
        assert_eq!(order["status"], "failed", "{order}");
        assert_eq!(order["reason"], "payment_unavailable", "{order}");
    }
    assert!(
        payments_breaker_open(&mesh).await,
        "orders' breaker on payments is open"
    );
    assert!(
        last < Duration::from_secs(1),
        "with the breaker open an order fails fast: {last:?}"
    );
    assert_eq!(
        stock(&mesh, &token).await,
        before,
        "every failed order released its reservation"
    );

    // Payments returns: after the breaker's open period a probe gets through and orders
    // are confirmed again, with nothing else restarted.
    std::fs::remove_file(mesh.state().join("down/payments")).expect("rm down file");
    wait::assert_eventually(Duration::from_secs(30), "payments back", || async {
        healthy(payments.app, "/healthz").await
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let order = order_something(&mesh, &mut b).await;
        if order["status"] == "confirmed" {
            break;
        }
        assert!(Instant::now() < deadline, "orders never recovered: {order}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(mesh.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_orders_may_call_inventory_and_strangers_cannot_connect() {
    let mut mesh = UpMesh::new();
    mesh.start().await;
    let certs = mesh.state().join("certs");
    let read = |name: &str| std::fs::read(certs.join(name)).expect("cert file");
    let inbound =
        std::net::SocketAddr::from(([127, 0, 0, 1], mesh.ports.service("inventory").inbound));
    // A client trusting the mesh CA, presenting `identity` (certificate and key PEM) if any.
    let client_with = |identity: Option<&[u8]>| {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt")).expect("ca"))
            .resolve("inventory", inbound);
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem).expect("identity"));
        }
        builder.build().expect("client")
    };
    // A client presenting the mesh certificate `up` issued to service `who`.
    let client = |who: Option<&str>| {
        let pem = who.map(|s| {
            let mut pem = read(&format!("{s}.crt"));
            pem.extend(read(&format!("{s}.key")));
            pem
        });
        client_with(pem.as_deref())
    };
    let url = format!("https://inventory:{}/stock", inbound.port());

    // The edge has a valid mesh certificate, but inventory only admits orders.
    let r = client(Some("edge"))
        .get(&url)
        .send()
        .await
        .expect("edge call");
    assert_eq!(r.status(), 403, "the edge is not an allowed caller");
    // Orders passes the caller check (and then needs a token: 401 without one).
    let r = client(Some("orders"))
        .get(&url)
        .send()
        .await
        .expect("orders call");
    assert_eq!(r.status(), 401);
    // Without a client certificate the handshake fails.
    assert!(
        client(None).get(&url).send().await.is_err(),
        "no certificate, no connection"
    );
    // An `orders` certificate from another CA, or an expired one from the mesh CA: refused.
    let ca_pem = String::from_utf8(read("ca.crt")).expect("pem");
    let ca_key = rcgen::KeyPair::from_pem(&String::from_utf8(read("ca.key")).expect("pem"))
        .expect("mesh CA key");
    let mesh_ca = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("mesh CA");
    let foreign_key = rcgen::KeyPair::generate().expect("key");
    let mut foreign = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    foreign.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca = rcgen::Issuer::new(foreign, foreign_key);
    for (what, issuer, expired) in [
        ("another CA", &foreign_ca, false),
        ("an expired certificate", &mesh_ca, true),
    ] {
        let stranger = client_with(Some(orders_leaf(issuer, expired).as_bytes()));
        assert!(
            stranger.get(&url).send().await.is_err(),
            "{what}: the handshake is refused"
        );
    }
    // The control: a fresh `orders` certificate from the mesh CA passes the handshake.
    let fresh = client_with(Some(orders_leaf(&mesh_ca, false).as_bytes()));
    let r = fresh
        .get(&url)
        .send()
        .await
        .expect("a fresh certificate connects");
    assert_eq!(
        r.status(),
        401,
        "admitted as orders, then asked for a token"
    );
    // The edge's public listener has no route to inventory at all.
    let (status, _, _) = get(&mesh.url("/api/inventory/stock")).await;
    assert!(
        matches!(status, 401 | 404),
        "not routed at the edge: {status}"
    );
    assert!(mesh.stop().await.success());
}

/// An `orders` client certificate (SPIFFE URI SAN) signed by `issuer`, valid now or expired
/// in 2021; certificate and key in one PEM.
fn orders_leaf(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, expired: bool) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["orders".to_string()]).expect("params");
    let uri = "spiffe://meshgate.local/orders".to_string();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(uri.try_into().expect("uri")));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    format!("{}{}", cert.pem(), key.serialize_pem())
}
