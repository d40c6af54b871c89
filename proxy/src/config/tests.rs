//! Loader tests: every error is reported, with its YAML path and line.

use std::path::Path;

use super::*;

fn load(text: &str) -> Result<LoadedConfig, Vec<ConfigError>> {
    load_str(text, Path::new("."), &|name| match name {
        "BACKEND" => Some("127.0.0.1:9000".into()),
        _ => None,
    })
}

const VALID: &str = "\
mode: edge
service: edge
listeners:
  - name: public
    address: 127.0.0.1:3000
admin: { address: 127.0.0.1:9901 }
clusters:
  orders:
    endpoints: [\"${BACKEND}\"]
routes:
  - name: orders
    match: { path_prefix: /api/orders }
    to: orders
    filters:
      - body_limit: 1MB
";

#[test]
fn valid_config_loads_with_defaults() {
    let cfg = load(VALID).expect("valid");
    assert_eq!(
        cfg.spec.clusters["orders"].endpoints,
        vec!["127.0.0.1:9000"]
    );
    assert_eq!(cfg.spec.runtime.threads, 1);
    assert_eq!(cfg.spec.routes[0].filters.len(), 1);
}

fn errors(text: &str) -> Vec<ConfigError> {
    load(text).expect_err("should be rejected")
}

fn has(errs: &[ConfigError], path: &str, needle: &str) -> bool {
    errs.iter()
        .any(|e| e.path == path && e.message.contains(needle))
}

#[test]
fn unknown_cluster_is_reported_with_path_line_and_suggestion() {
    let text = VALID.replace("    to: orders", "    to: ordrs");
    let errs = errors(&text);
    let e = errs
        .iter()
        .find(|e| e.path == "routes[0].to")
        .expect("error at routes[0].to");
    assert!(e.message.contains("unknown cluster \"ordrs\""), "{e}");
    assert!(e.message.contains("did you mean \"orders\""), "{e}");
    assert_eq!(e.location.map(|l| l.line), Some(13), "{e}");
}

#[test]
fn every_error_is_collected_not_just_the_first() {
    let text = "\
mode: edge
service: edge
bogus: 1
listeners:
  - name: a
    address: nope
  - name: a
    address: 127.0.0.1:1
    colour: red
clusters:
  c:
    endpoints: [127.0.0.1:1]
    connect_timeout: soon
routes:
  - name: r
    to: c
    timeout: 5 parsecs
  - name: r
    to: missing
    filters:
      - headers: { request: { set: { \"bad name\": x } } }
      - body_limit: lots
";
    let errs = errors(text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(has(&errs, "bogus", "unknown key"), "{shown:#?}");
    assert!(
        has(&errs, "listeners[1].colour", "unknown field"),
        "{shown:#?}"
    );
    assert!(
        has(&errs, "clusters.c.connect_timeout", "invalid duration"),
        "{shown:#?}"
    );
    assert!(
        has(&errs, "routes[0].timeout", "invalid duration"),
        "{shown:#?}"
    );
    assert!(
        has(&errs, "routes[1].filters[1].body_limit", "invalid size"),
        "{shown:#?}"
    );
    assert!(errs.iter().all(|e| e.location.is_some()), "{shown:#?}");
}

#[test]
fn semantic_errors_are_collected() {
    let text = "\
mode: edge
service: edge
listeners:
  - name: a
    address: nope
  - name: a
    address: 127.0.0.1:1
clusters:
  c:
    endpoints: [127.0.0.1:1]
routes:
  - name: r
    to: c
  - name: r
    match: { path_prefix: /a/../b, methods: [get] }
    to: missing
  - name: s
    rewrite: { replace_prefix: /v2 }
    split: [{ cluster: c, weight: 0 }]
";
    let errs = errors(text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        has(&errs, "listeners[0].address", "invalid address"),
        "{shown:#?}"
    );
    assert!(has(&errs, "listeners[1].name", "duplicate"), "{shown:#?}");
    assert!(
        has(&errs, "routes[1].name", "duplicate route name"),
        "{shown:#?}"
    );
    assert!(
        has(
            &errs,
            "routes[1].match.path_prefix",
            "not a normalized path"
        ),
        "{shown:#?}"
    );
    assert!(
        has(&errs, "routes[1].match.methods[0]", "invalid method"),
        "{shown:#?}"
    );
    assert!(has(&errs, "routes[1].to", "unknown cluster"), "{shown:#?}");
    assert!(
        has(&errs, "routes[2].rewrite.replace_prefix", "path_prefix"),
        "{shown:#?}"
    );
    assert!(
        has(&errs, "routes[2].split[0].weight", "greater than zero"),
        "{shown:#?}"
    );
}

#[test]
fn missing_env_var_is_an_error_without_its_value() {
    let text = VALID.replace("${BACKEND}", "${NOT_SET_ANYWHERE}");
    let errs = errors(&text);
    assert!(errs
        .iter()
        .any(|e| e.path.starts_with("clusters.orders.endpoints")
            && e.message.contains("NOT_SET_ANYWHERE")));
}

#[test]
fn redaction_hides_secrets_and_url_passwords() {
    let v = serde_json::json!({
        "providers": { "main": { "client_secret": "s3cret", "issuer": "http://idp" } },
        "stores": { "url": "redis://user:hunter2@127.0.0.1:6379/0" }
    });
    let mut v2 = v.clone();
    redact(&mut v2);
    let text = v2.to_string();
    assert!(
        !text.contains("s3cret") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(
        text.contains("redis://user:[redacted]@127.0.0.1:6379/0"),
        "{text}"
    );
}

#[test]
fn type_errors_do_not_hide_cross_reference_errors() {
    let text = VALID
        .replace("    to: orders", "    to: ordrs\n    timeout: 30 parsecs")
        .replace("service: edge", "service: edge\nmax_conns: 5");
    let errs = errors(&text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(has(&errs, "max_conns", "unknown key"), "{shown:#?}");
    assert!(
        has(&errs, "routes[0].timeout", "invalid duration"),
        "{shown:#?}"
    );
    // The route failed to parse, so its target is checked by the route's own error only;
    // a second route with a bad target is still reported.
    let text = format!("{text}  - name: other\n    to: nowhere\n");
    let errs = errors(&text);
    assert!(has(&errs, "routes[1].to", "unknown cluster"), "{:#?}", errs);
}

#[test]
fn a_broken_cluster_is_not_also_reported_as_unknown() {
    let text = VALID.replace(
        "    endpoints: [\"${BACKEND}\"]",
        "    endpoints: [\"${BACKEND}\"]\n    connect_timeout: never",
    );
    let errs = errors(&text);
    assert!(
        has(&errs, "clusters.orders.connect_timeout", "invalid duration"),
        "{errs:#?}"
    );
    assert!(
        !errs.iter().any(|e| e.message.contains("unknown cluster")),
        "{errs:#?}"
    );
}

#[test]
fn config_view_shows_templates_not_environment_values() {
    let text = VALID.replace(
        "      - body_limit: 1MB",
        "      - body_limit: 1MB\n      - headers: { request: { set: { authorization: \"Bearer ${BACKEND}\" } } }",
    );
    let cfg = load(&text).expect("valid");
    let shown = redacted(&cfg.spec, &cfg.interpolated).to_string();
    assert!(!shown.contains("127.0.0.1:9000"), "{shown}");
    assert!(shown.contains("Bearer ${BACKEND}"), "{shown}");
    assert!(shown.contains("${BACKEND}"), "{shown}");
}

#[test]
fn routes_may_only_name_existing_listeners() {
    let text = VALID.replace(
        "    match: { path_prefix: /api/orders }",
        "    match: { path_prefix: /api/orders, listeners: [public, inbound] }",
    );
    let errs = errors(&text);
    assert!(
        has(
            &errs,
            "routes[0].match.listeners[1]",
            "unknown listener \"inbound\""
        ),
        "{errs:#?}"
    );
}
