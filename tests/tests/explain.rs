//! `meshgate explain -c FILE METHOD URL [-H 'k: v']...`: which route matches,
//! why earlier ones did not, which filters run and which cluster serves.

use std::time::Duration;

use meshgate_tests::proc::{meshgate_cmd_env, ConfigDir};

const CONFIG: &str = r#"mode: edge
service: edge
listeners: [{ name: public, address: 127.0.0.1:18080 }]
admin: { address: 127.0.0.1:19901 }
clusters:
  admin-pool: { endpoints: [127.0.0.1:4001] }
  canary-pool: { endpoints: [127.0.0.1:4002] }
  stable-pool: { endpoints: [127.0.0.1:4003] }
routes:
  - name: admin-only
    match: { path_prefix: /admin }
    to: admin-pool
  - name: orders-canary
    match: { host: shop.local, path_prefix: /api/orders, methods: [GET, POST], headers: { x-canary: "1" } }
    rewrite: { strip_prefix: /api }
    to: canary-pool
    filters:
      - headers: { request: { set: { x-env: canary } } }
      - body_limit: 1MB
  - name: orders-stable
    match: { host: shop.local, path_prefix: /api/orders }
    to: stable-pool
"#;

fn explain(args: &[&str]) -> (Option<i32>, String) {
    let dir = ConfigDir::new();
    let file = dir.write("edge.yaml", CONFIG);
    let mut full = vec!["explain", "-c", file.as_str()];
    full.extend_from_slice(args);
    let out = meshgate_cmd_env(&full, &[], Duration::from_secs(30));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_mentions(text: &str, words: &[&str]) {
    for w in words {
        assert!(
            text.contains(w),
            "explain output should mention {w:?}:\n{text}"
        );
    }
}

/// Some line names both `label` (case-insensitive) and `value`, e.g.
/// `cluster: canary-pool`.
fn assert_line_with(text: &str, label: &str, value: &str) {
    assert!(
        text.lines()
            .any(|l| l.to_lowercase().contains(label) && l.contains(value)),
        "explain output should have a line naming the {label} {value:?}:\n{text}"
    );
}

#[test]
fn names_route_filters_and_cluster_and_why_earlier_routes_missed() {
    let (code, text) = explain(&[
        "GET",
        "http://shop.local/api/orders/42",
        "-H",
        "x-canary: 1",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_mentions(
        &text,
        &["orders-canary", "canary-pool", "headers", "body_limit"],
    );
    // The earlier route is reported as not matching, with its reason (path).
    assert_mentions(&text, &["admin-only", "/admin"]);
    assert_line_with(&text, "route", "orders-canary");
    assert_line_with(&text, "cluster", "canary-pool");
}

#[test]
fn header_mismatch_is_explained_and_next_route_chosen() {
    let (code, text) = explain(&["GET", "http://shop.local/api/orders/42"]);
    assert_eq!(code, Some(0), "{text}");
    assert_mentions(
        &text,
        &["orders-stable", "stable-pool", "orders-canary", "x-canary"],
    );
    assert_line_with(&text, "cluster", "stable-pool");
}

#[test]
fn method_mismatch_is_explained() {
    let (code, text) = explain(&[
        "DELETE",
        "http://shop.local/api/orders/42",
        "-H",
        "x-canary: 1",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_mentions(
        &text,
        &["orders-stable", "stable-pool", "orders-canary", "DELETE"],
    );
}

#[test]
fn no_match_is_reported() {
    let (_code, text) = explain(&["GET", "http://other.local/nothing"]);
    let lower = text.to_lowercase();
    assert!(
        lower.contains("no route")
            || lower.contains("no_route")
            || lower.contains("no matching route"),
        "explain should say that no route matches:\n{text}"
    );
}
