//! The admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`,
//! `/routes`) and the JSON access log.

use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

async fn start() -> (Backend, Ports, Meshgate) {
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n  orders: {{ endpoints: [{}] }}\nroutes:\n  - {{ name: orders-api, match: {{ path_prefix: /api }}, to: orders }}\n  - {{ name: status, match: {{ path_prefix: /status }}, to: orders }}\n",
        p.preamble(""),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    (b, p, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_config_and_routes() {
    let (_b, _p, gw) = start().await;
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    let (status, config) = gw.admin_get("/config").await;
    assert_eq!(status, 200);
    assert!(
        config.contains("orders-api") && config.contains("orders"),
        "/config shows the effective config: {config}"
    );
    let (status, routes) = gw.admin_get("/routes").await;
    assert_eq!(status, 200);
    assert!(
        routes.contains("orders-api") && routes.contains("/api"),
        "/routes lists routes: {routes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_cluster_status() {
    let (_b, p, gw) = start().await;
    let c = client::http1();
    for i in 0..5 {
        assert_eq!(
            client::get(&c, &p.url(&format!("/api/{i}"))).await.status,
            200
        );
    }
    assert_eq!(client::get(&c, &p.url("/status/500")).await.status, 500);
    assert_eq!(client::get(&c, &p.url("/nowhere")).await.status, 404);

    let labels = [
        ("route", "orders-api"),
        ("cluster", "orders"),
        ("status", "200"),
    ];
    wait::assert_eventually(
        Duration::from_secs(5),
        "requests_total{route,cluster,status=200} = 5",
        || async { gw.metric("meshgate_requests_total", &labels).await == Some(5.0) },
    )
    .await;
    let (_, text) = gw.admin_get("/metrics").await;
    assert_eq!(
        meshgate_tests::proc::metric_value(
            &text,
            "meshgate_requests_total",
            &[
                ("route", "status"),
                ("cluster", "orders"),
                ("status", "500")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        meshgate_tests::proc::metric_value(&text, "meshgate_requests_total", &[("status", "404")])
            .unwrap_or(0.0)
            >= 1.0,
        "404 counted: {text}"
    );
    for name in [
        "meshgate_request_duration_seconds_bucket",
        "meshgate_request_duration_seconds_count",
        "meshgate_active_connections",
        "meshgate_config_generation",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "/metrics has {name}:\n{text}"
        );
    }
    let generation = meshgate_tests::proc::metric_value(&text, "meshgate_config_generation", &[]);
    assert!(
        generation.unwrap_or(0.0) >= 1.0,
        "config generation {generation:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let (b, p, gw) = start().await;
    let c = client::http1();
    let r = client::send(
        c.post(p.url("/api/orders?x=1"))
            .header("x-request-id", "abcdef0123456789abcdef0123456789")
            .body("12345"),
    )
    .await;
    assert_eq!(r.status, 200);
    let endpoint = b.addr().to_string();
    let line = wait::until(Duration::from_secs(5), || async {
        gw.access_log()
            .into_iter()
            .find(|l| l["request_id"] == "abcdef0123456789abcdef0123456789")
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no access-log line with the request id on stdout:\n{}",
            gw.stdout()
        )
    });
    assert_eq!(line["route"], "orders-api", "{line}");
    assert_eq!(line["cluster"], "orders", "{line}");
    assert_eq!(line["endpoint"], endpoint.as_str(), "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert!(
        line["path"]
            .as_str()
            .unwrap_or_default()
            .starts_with("/api/orders"),
        "{line}"
    );
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["duration_ms"].is_number(), "{line}");
    assert!(line["bytes_sent"].as_u64().unwrap_or(0) > 0, "{line}");
    assert_eq!(line["attempts"], 1, "{line}");

    client::get(&c, &p.url("/nowhere")).await;
    wait::assert_eventually(
        Duration::from_secs(5),
        "a 404 gets its access-log line too",
        || async { gw.access_log().iter().any(|l| l["status"] == 404) },
    )
    .await;
    assert_eq!(
        gw.access_log().len(),
        2,
        "exactly one line per request:\n{}",
        gw.stdout()
    );
}
