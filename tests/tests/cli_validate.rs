//! `meshgate validate FILE...`: every bad-config case exits 1 and names the
//! file, line, YAML path and what is wrong; valid files exit 0.

use std::time::{Duration, Instant};

use meshgate_tests::certs::TestCa;
use meshgate_tests::diag::{self, line_of, nth_line_of, Diagnostic};
use meshgate_tests::proc::{meshgate_cmd_env, ConfigDir};

const SPARE_VAR: &str = "MESHGATE_TEST_SPARE_ENDPOINT";

/// A file using every key of the issue-2 contract. Addresses are never bound:
/// `validate` only reads the file.
fn full_config(ca: &TestCa) -> String {
    let a = ca.leaf("a", &["a.test"]);
    let b = ca.leaf("b", &["b.test", "*.c.test"]);
    format!(
        r#"mode: edge
service: edge
trusted_proxies: [10.0.0.0/8]
listeners:
  - name: public
    address: 127.0.0.1:18080
    h2c: true
  - name: secure
    address: 127.0.0.1:18443
    tls:
      cert: {a_cert}
      key: {a_key}
      sni:
        - {{ server_names: [b.test, "*.c.test"], cert: {b_cert}, key: {b_key} }}
admin: {{ address: 127.0.0.1:19901 }}
runtime: {{ threads: 1, work_stealing: false, grace_period: 5s, header_read_timeout: 10s, max_header_size: 64KiB, idle_timeout: 60s }}
clusters:
  orders:
    endpoints: [127.0.0.1:4004, 127.0.0.1:4005]
    load_balancing: round_robin
    connect_timeout: 1s
    protocol: http1
    health_check: {{ path: /healthz, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 1 }}
  orders-v2:
    endpoints: [127.0.0.1:4006]
    load_balancing: hash(header:x-user)
    protocol: h2
  spare:
    endpoints: ["${{{SPARE_VAR}}}"]
    load_balancing: least_request
  rnd:
    endpoints: [127.0.0.1:4008]
    load_balancing: random
routes:
  - name: orders-api
    match: {{ host: shop.local, path_prefix: /api/orders, methods: [GET, POST], headers: {{ x-canary: "1" }} }}
    rewrite: {{ strip_prefix: /api }}
    to: orders
    timeout: 30s
    filters:
      - headers: {{ request: {{ set: {{ x-env: dev }}, add: {{ x-a: b }}, remove: [x-debug] }}, response: {{ set: {{ x-served-by: meshgate }}, remove: [server] }} }}
      - body_limit: 10MB
  - name: v2
    match: {{ host: "*.shop.local", path_prefix: /v1 }}
    rewrite: {{ replace_prefix: /v2 }}
    split: [{{ cluster: orders, weight: 90 }}, {{ cluster: orders-v2, weight: 10 }}]
  - name: exact
    match: {{ path: /exact }}
    to: rnd
  - name: spare
    match: {{ path_prefix: /spare }}
    to: spare
"#,
        a_cert = a.cert_str(),
        a_key = a.key_str(),
        b_cert = b.cert_str(),
        b_key = b.key_str(),
    )
}

struct Validated {
    code: Option<i32>,
    output: String,
    diagnostics: Vec<Diagnostic>,
    elapsed: Duration,
}

fn validate(files: &[&str], env: &[(&str, Option<&str>)]) -> Validated {
    let mut args = vec!["validate"];
    args.extend_from_slice(files);
    let start = Instant::now();
    let out = meshgate_cmd_env(&args, env, Duration::from_secs(30));
    let elapsed = start.elapsed();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Validated {
        code: out.status.code(),
        diagnostics: diag::parse(&output),
        output,
        elapsed,
    }
}

fn with_spare() -> [(&'static str, Option<&'static str>); 1] {
    [(SPARE_VAR, Some("127.0.0.1:4007"))]
}

/// Validates `yaml` (with the spare endpoint variable set) and expects exit 1
/// with a diagnostic on `line` whose path satisfies `path_ok` and whose
/// message contains every one of `words` (case-insensitive).
fn expect_error(
    yaml: &str,
    line: u32,
    path_ok: impl Fn(&str) -> bool,
    path_desc: &str,
    words: &[&str],
) {
    let dir = ConfigDir::new();
    let file = dir.write("bad.yaml", yaml);
    let v = validate(&[&file], &with_spare());
    assert_eq!(v.code, Some(1), "expected exit 1, output:\n{}", v.output);
    let found = v.diagnostics.iter().find(|d| {
        d.file == file
            && d.line == line
            && path_ok(&d.path)
            && words.iter().all(|w| {
                let w = w.to_lowercase();
                d.message.to_lowercase().contains(&w) || d.path.to_lowercase().contains(&w)
            })
    });
    assert!(
        found.is_some(),
        "expected `{file}: line {line}:C: {path_desc}: ...` mentioning {words:?}; got diagnostics {:#?}\nraw output:\n{}",
        v.diagnostics,
        v.output
    );
}

#[test]
fn full_contract_config_is_valid() {
    let ca = TestCa::new();
    let dir = ConfigDir::new();
    let yaml = full_config(&ca);
    let file = dir.write("edge.yaml", &yaml);
    let v = validate(&[&file], &with_spare());
    assert_eq!(v.code, Some(0), "valid file rejected:\n{}", v.output);
    assert!(v.diagnostics.is_empty(), "{:#?}", v.diagnostics);
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace(
        "    protocol: http1\n",
        "    protocol: http1\n    max_conns: 10\n",
    );
    expect_error(
        &yaml,
        line_of(&yaml, "max_conns"),
        |p| p.starts_with("clusters.orders"),
        "clusters.orders[.max_conns]",
        &["max_conns"],
    );
}

#[test]
fn unknown_key_in_route_match_is_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace(
        "    match: { path: /exact }",
        "    match:\n      path: /exact\n      hosts: [a.test]",
    );
    expect_error(
        &yaml,
        line_of(&yaml, "hosts: [a.test]"),
        |p| p.starts_with("routes[2].match"),
        "routes[2].match[.hosts]",
        &["hosts"],
    );
}

#[test]
fn unknown_cluster_reference_names_route_path_and_line() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace("    to: rnd\n", "    to: ordrs\n");
    expect_error(
        &yaml,
        line_of(&yaml, "to: ordrs"),
        |p| p == "routes[2].to",
        "routes[2].to",
        &["ordrs"],
    );
}

#[test]
fn unknown_cluster_in_split_is_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace(
        "{ cluster: orders-v2, weight: 10 }",
        "{ cluster: orders-v3, weight: 10 }",
    );
    expect_error(
        &yaml,
        line_of(&yaml, "orders-v3"),
        |p| p == "routes[1].split[1].cluster",
        "routes[1].split[1].cluster",
        &["orders-v3"],
    );
}

#[test]
fn duplicate_route_names_are_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace("  - name: exact\n", "  - name: orders-api\n");
    expect_error(
        &yaml,
        nth_line_of(&yaml, "- name: orders-api", 1),
        |p| p == "routes[2].name",
        "routes[2].name",
        &["duplicate", "orders-api"],
    );
}

#[test]
fn bad_duration_is_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace("    timeout: 30s\n", "    timeout: 30 parsecs\n");
    expect_error(
        &yaml,
        line_of(&yaml, "30 parsecs"),
        |p| p == "routes[0].timeout",
        "routes[0].timeout",
        &["30 parsecs"],
    );
}

#[test]
fn bad_size_is_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace(
        "      - body_limit: 10MB\n",
        "      - body_limit: ten megabytes\n",
    );
    expect_error(
        &yaml,
        line_of(&yaml, "ten megabytes"),
        |p| p == "routes[0].filters[1].body_limit",
        "routes[0].filters[1].body_limit",
        &["ten megabytes"],
    );
}

#[test]
fn bad_size_in_runtime_is_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace("max_header_size: 64KiB", "max_header_size: 64XB");
    expect_error(
        &yaml,
        line_of(&yaml, "64XB"),
        |p| p == "runtime.max_header_size",
        "runtime.max_header_size",
        &["64XB"],
    );
}

#[test]
fn unknown_load_balancing_is_an_error() {
    let ca = TestCa::new();
    let yaml = full_config(&ca).replace(
        "    load_balancing: random\n",
        "    load_balancing: fastest\n",
    );
    expect_error(
        &yaml,
        line_of(&yaml, "fastest"),
        |p| p == "clusters.rnd.load_balancing",
        "clusters.rnd.load_balancing",
        &["fastest"],
    );
}

#[test]
fn missing_env_var_is_an_error_and_set_var_is_used() {
    let ca = TestCa::new();
    let dir = ConfigDir::new();
    let yaml = full_config(&ca);
    let file = dir.write("edge.yaml", &yaml);

    let v = validate(&[&file], &[(SPARE_VAR, None)]);
    assert_eq!(
        v.code,
        Some(1),
        "missing ${{{SPARE_VAR}}} accepted:\n{}",
        v.output
    );
    let line = line_of(&yaml, SPARE_VAR);
    assert!(
        v.diagnostics.iter().any(|d| d.file == file
            && d.line == line
            && d.path == "clusters.spare.endpoints[0]"
            && d.message.contains(SPARE_VAR)),
        "expected `{file}: line {line}:C: clusters.spare.endpoints[0]: ...{SPARE_VAR}...`, got {:#?}\n{}",
        v.diagnostics,
        v.output
    );

    let v = validate(&[&file], &with_spare());
    assert_eq!(
        v.code,
        Some(0),
        "with the variable set the file is valid:\n{}",
        v.output
    );

    let v = validate(&[&file], &[(SPARE_VAR, Some("not an address"))]);
    assert_eq!(
        v.code,
        Some(1),
        "the interpolated value is validated too:\n{}",
        v.output
    );
}

#[test]
fn every_error_is_collected_in_one_run() {
    let ca = TestCa::new();
    let dir = ConfigDir::new();
    let yaml = full_config(&ca)
        .replace("    to: rnd\n", "    to: ordrs\n")
        .replace("    timeout: 30s\n", "    timeout: 30 parsecs\n")
        .replace(
            "    protocol: http1\n",
            "    protocol: http1\n    max_conns: 10\n",
        );
    let file = dir.write("bad.yaml", &yaml);
    let v = validate(&[&file], &with_spare());
    assert_eq!(v.code, Some(1), "{}", v.output);
    for needle in ["to: ordrs", "30 parsecs", "max_conns"] {
        let line = line_of(&yaml, needle);
        assert!(
            v.diagnostics.iter().any(|d| d.line == line),
            "no diagnostic for line {line} ({needle}); all errors must be reported in one run, got {:#?}\n{}",
            v.diagnostics,
            v.output
        );
    }
}

#[test]
fn several_files_are_checked_and_only_bad_ones_reported() {
    let ca = TestCa::new();
    let dir = ConfigDir::new();
    let good = full_config(&ca);
    let bad = good.replace("    to: rnd\n", "    to: ordrs\n");
    let good_a = dir.write("good-a.yaml", &good);
    let good_b = dir.write("good-b.yaml", &good);
    let bad_file = dir.write("bad.yaml", &bad);

    let v = validate(&[&good_a, &good_b], &with_spare());
    assert_eq!(v.code, Some(0), "{}", v.output);

    let v = validate(&[&good_a, &bad_file, &good_b], &with_spare());
    assert_eq!(v.code, Some(1), "{}", v.output);
    assert!(
        v.diagnostics
            .iter()
            .any(|d| d.file == bad_file && d.path == "routes[2].to"),
        "{:#?}\n{}",
        v.diagnostics,
        v.output
    );
    assert!(
        v.diagnostics.iter().all(|d| d.file == bad_file),
        "only bad.yaml has errors: {:#?}",
        v.diagnostics
    );
}

#[test]
fn missing_file_is_an_error() {
    let dir = ConfigDir::new();
    let missing = dir.path().join("nope.yaml");
    let missing = missing.to_string_lossy();
    let v = validate(&[&missing], &[]);
    assert_eq!(v.code, Some(1), "{}", v.output);
    assert!(
        v.output.contains(&*missing),
        "error names the file: {}",
        v.output
    );
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let dir = ConfigDir::new();
    let yaml =
        "mode: edge\nservice: edge\nlisteners:\n  - name: public\n    address: [127.0.0.1:1\n";
    let file = dir.write("broken.yaml", yaml);
    let v = validate(&[&file], &[]);
    assert_eq!(v.code, Some(1), "{}", v.output);
    assert!(
        v.diagnostics.iter().any(|d| d.file == file && d.line >= 5),
        "syntax error reported as `{file}: line L:C: ...` near line 5: {:#?}\n{}",
        v.diagnostics,
        v.output
    );
}

#[test]
fn alias_bomb_is_rejected_fast() {
    // Nine levels of nine aliases: 9^9 (~387 million) strings if expanded.
    let mut yaml = String::from("mode: edge\nservice: edge\n");
    yaml.push_str("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..=9 {
        let prev = level - 1;
        let refs = vec![format!("*l{prev}"); 9].join(", ");
        yaml.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
    }
    yaml.push_str("listeners: [{ name: public, address: 127.0.0.1:18080 }]\n");
    yaml.push_str("admin: { address: 127.0.0.1:19901 }\n");
    yaml.push_str("clusters: { c: { endpoints: [127.0.0.1:4004] } }\n");
    yaml.push_str("routes:\n  - name: all\n    match: { path_prefix: / }\n    to: c\n");
    yaml.push_str("    filters:\n      - headers: { request: { remove: *l9 } }\n");

    let dir = ConfigDir::new();
    let file = dir.write("bomb.yaml", &yaml);
    let v = validate(&[&file], &[]);
    assert_eq!(
        v.code,
        Some(1),
        "alias bomb must be rejected:\n{}",
        v.output
    );
    assert!(
        v.elapsed < Duration::from_secs(5),
        "alias bomb took {:?} to reject (bounded time expected)",
        v.elapsed
    );
    assert!(
        v.diagnostics.iter().any(|d| d.file == file),
        "rejection reported as `{file}: line L:C: PATH: MESSAGE`: {}",
        v.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_an_invalid_file_with_the_same_diagnostics() {
    let p = meshgate_tests::config::Ports::new();
    let yaml = format!(
        "{}clusters:\n  c: {{ endpoints: [127.0.0.1:4004] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, to: ordrs }}\n",
        p.preamble("")
    );
    let mut gw = meshgate_tests::proc::Meshgate::spawn(&yaml, &[]);
    let exit = gw.wait_exit(Duration::from_secs(10)).await;
    let status = exit.unwrap_or_else(|| {
        panic!(
            "`meshgate run` with an invalid file still running after 10s:\n{}",
            gw.logs()
        )
    });
    assert!(
        !status.success(),
        "`meshgate run` with an invalid file exited with {status}"
    );
    let line = line_of(&yaml, "to: ordrs");
    assert!(
        diag::parse(&gw.logs())
            .iter()
            .any(|d| d.line == line && d.path == "routes[0].to" && d.message.contains("ordrs")),
        "`meshgate run` prints `FILE: line {line}:C: routes[0].to: ...ordrs...`:\n{}",
        gw.logs()
    );
}
