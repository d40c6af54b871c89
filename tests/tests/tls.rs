//! TLS listeners: a default certificate, more certificates chosen by SNI, h2
//! negotiated by ALPN, gRPC-style h2 passed through to an h2c upstream, and
//! h2c on a plain listener.

use std::net::SocketAddr;

use meshgate_tests::backend::Backend;
use meshgate_tests::certs::{Leaf, TestCa};
use meshgate_tests::client;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::Meshgate;

struct Setup {
    ca: TestCa,
    a: Leaf,
    b: Leaf,
    web: Backend,
    grpc: Backend,
    tls_port: u16,
    plain_port: u16,
    _gw: Meshgate,
}

impl Setup {
    fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    fn client_for(&self, names: &[&str]) -> reqwest::Client {
        let resolve: Vec<(&str, SocketAddr)> =
            names.iter().map(|n| (*n, self.tls_addr())).collect();
        client::tls(self.ca.ca_pem(), &resolve)
    }

    fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.tls_port)
    }
}

async fn setup() -> Setup {
    let ca = TestCa::new();
    let a = ca.leaf("a", &["a.test"]);
    let b = ca.leaf("b", &["b.test", "*.c.test"]);
    let web = Backend::start("web").await;
    let grpc = Backend::builder().name("grpc").h2c(true).start().await;
    let (tls_port, plain_port, admin_port) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"mode: edge
service: edge
listeners:
  - name: secure
    address: 127.0.0.1:{tls_port}
    tls:
      cert: {a_cert}
      key: {a_key}
      sni:
        - {{ server_names: [b.test, "*.c.test"], cert: {b_cert}, key: {b_key} }}
  - name: plain
    address: 127.0.0.1:{plain_port}
    h2c: true
admin: {{ address: 127.0.0.1:{admin_port} }}
runtime: {{ threads: 1, work_stealing: false, grace_period: 5s }}
clusters:
  web: {{ endpoints: [{web}], protocol: http1 }}
  grpc: {{ endpoints: [{grpc}], protocol: h2 }}
routes:
  - {{ name: grpc, match: {{ path_prefix: /echo.Echo }}, to: grpc }}
  - {{ name: web, match: {{ path_prefix: / }}, to: web }}
"#,
        a_cert = a.cert_str(),
        a_key = a.key_str(),
        b_cert = b.cert_str(),
        b_key = b.key_str(),
        web = web.addr(),
        grpc = grpc.addr(),
    );
    let gw = Meshgate::start(&yaml).await;
    Setup {
        ca,
        a,
        b,
        web,
        grpc,
        tls_port,
        plain_port,
        _gw: gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_certificate_and_https_forwarding() {
    let s = setup().await;
    let resp = s
        .client_for(&["a.test"])
        .get(s.url("a.test", "/hello"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HTTPS request to a.test failed: {e:?}"));
    assert_eq!(
        client::peer_certificate(&resp).as_deref(),
        Some(&s.a.der[..]),
        "a.test gets the default certificate"
    );
    let r = client::Reply::read(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.web.last_request().expect("request reached the backend");
    assert_eq!(seen.path, "/hello");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate() {
    let s = setup().await;
    let c = s.client_for(&["a.test", "b.test", "api.c.test"]);
    for (name, want, which) in [
        ("b.test", &s.b.der, "b"),
        ("api.c.test", &s.b.der, "b (wildcard *.c.test)"),
        ("a.test", &s.a.der, "a (default)"),
    ] {
        let resp = c
            .get(s.url(name, "/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS request with SNI {name} failed: {e:?}"));
        assert_eq!(
            client::peer_certificate(&resp).as_deref(),
            Some(&want[..]),
            "SNI {name} should get certificate {which}"
        );
        assert_eq!(resp.status().as_u16(), 200);
    }

    // An unknown name gets the default certificate (which the client then
    // cannot verify for that name, so accept it blindly just to look).
    let lax = client::tls_builder(s.ca.ca_pem(), &[("unknown.test", s.tls_addr())])
        .danger_accept_invalid_certs(true)
        .build()
        .expect("build lax client");
    let resp = lax
        .get(s.url("unknown.test", "/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HTTPS request with unknown SNI failed: {e:?}"));
    assert_eq!(
        client::peer_certificate(&resp).as_deref(),
        Some(&s.a.der[..]),
        "unknown SNI gets the default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_is_negotiated_by_alpn_and_http1_still_works() {
    let s = setup().await;
    let r = client::get(&s.client_for(&["a.test"]), &s.url("a.test", "/alpn")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.version,
        http::Version::HTTP_2,
        "client offered h2 via ALPN"
    );
    assert_eq!(r.json()["path"], "/alpn");

    let h1 = client::tls_builder(s.ca.ca_pem(), &[("a.test", s.tls_addr())])
        .http1_only()
        .build()
        .expect("build HTTP/1.1 TLS client");
    let r = client::get(&h1, &s.url("a.test", "/h1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_h2_passes_through_to_h2c_upstream() {
    let s = setup().await;
    let reply = client::grpc_call(
        &s.client_for(&["a.test"]),
        &s.url("a.test", "/echo.Echo/Say"),
        b"\0\0\0\0\x05hello",
    )
    .await;
    assert_eq!(reply.status, 200, "body {:?}", reply.body);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(&reply.body[..], b"\0\0\0\0\x05hello", "body echoed");
    assert_eq!(
        reply.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    let trailers = reply
        .trailers
        .unwrap_or_else(|| panic!("no trailers in the response (grpc-status lost)"));
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{trailers:?}"
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"ok"[..]),
        "{trailers:?}"
    );

    let seen = s
        .grpc
        .last_request()
        .expect("request reached the gRPC backend");
    assert_eq!(
        seen.version,
        http::Version::HTTP_2,
        "cluster protocol h2 speaks h2c upstream"
    );
    assert_eq!(seen.path, "/echo.Echo/Say");
    assert_eq!(seen.body_len, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_accepts_h2c_when_enabled() {
    let s = setup().await;
    let url = format!("http://127.0.0.1:{}/h2c", s.plain_port);
    let r = client::get(&client::h2c(), &url).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2);
    let r = client::get(&client::http1(), &url).await;
    assert_eq!(
        r.status,
        200,
        "HTTP/1.1 on the same h2c-enabled listener: {}",
        r.text()
    );

    let reply = client::grpc_call(
        &client::h2c(),
        &format!("http://127.0.0.1:{}/echo.Echo/Say", s.plain_port),
        b"\0\0\0\0\x02hi",
    )
    .await;
    assert_eq!(reply.status, 200);
    let status = reply
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(
        status.as_deref(),
        Some(&b"0"[..]),
        "grpc-status trailer over h2c: {:?}",
        reply.trailers
    );
}
