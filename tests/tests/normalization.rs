//! Path normalization: the route is matched on the normalized path and the
//! upstream receives exactly that path. Requests are sent over raw TCP since
//! HTTP client libraries normalize URLs themselves.

use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::client::raw_exchange;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;

async fn start() -> (Backend, Backend, Ports, Meshgate) {
    let admin = Backend::start("admin").await;
    let api = Backend::start("api").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  admin: {{ endpoints: [{}] }}\n  api: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: admin, match: {{ path_prefix: /admin }}, to: admin }}\n\
         \x20 - {{ name: api, match: {{ path_prefix: /api }}, to: api }}\n",
        p.preamble(""),
        admin.addr(),
        api.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (admin, api, p, gw)
}

/// Sends `GET {target}` and expects the `admin` backend to receive `want`.
async fn expect_admin_path(p: &Ports, admin: &Backend, target: &str, want: &str) {
    admin.clear_requests();
    let req = format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    let out = raw_exchange(p.public_addr(), req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(out.status(), Some(200), "GET {target}: {}", out.text());
    assert_eq!(
        out.header("x-backend").as_deref(),
        Some("admin"),
        "GET {target} routed as {want}"
    );
    let seen = admin
        .last_request()
        .expect("request reached the admin backend");
    assert_eq!(seen.path, want, "GET {target}: backend path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_double_slashes_route_as_the_normalized_path() {
    let (admin, api, p, _gw) = start().await;
    expect_admin_path(&p, &admin, "/api/../admin", "/admin").await;
    expect_admin_path(&p, &admin, "/api/%2e%2e/admin", "/admin").await;
    expect_admin_path(&p, &admin, "/api/%2E%2E/admin", "/admin").await;
    expect_admin_path(&p, &admin, "//admin", "/admin").await;
    expect_admin_path(&p, &admin, "/admin/./x//y", "/admin/x/y").await;
    expect_admin_path(&p, &admin, "/../admin", "/admin").await;
    assert_eq!(
        api.request_count(),
        0,
        "nothing was routed by its raw /api prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_unreserved_characters_are_decoded() {
    let (admin, _api, p, _gw) = start().await;
    expect_admin_path(&p, &admin, "/%61dmin/x", "/admin/x").await;
    expect_admin_path(&p, &admin, "/admin/%7Euser", "/admin/~user").await;
    expect_admin_path(&p, &admin, "/admin/a%2Fb", "/admin/a%2Fb").await;
    expect_admin_path(&p, &admin, "/admin/a%20b", "/admin/a%20b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_is_kept_untouched() {
    let (admin, _api, p, _gw) = start().await;
    let req = "GET /api/../admin?next=/a/../b&x=%2e HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(p.public_addr(), req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(out.status(), Some(200), "{}", out.text());
    let seen = admin
        .last_request()
        .expect("request reached the admin backend");
    assert_eq!(seen.path, "/admin");
    assert_eq!(seen.query.as_deref(), Some("next=/a/../b&x=%2e"));
}
