//! Semantic checks that types cannot express: names, cross-references, value ranges, files.
//!
//! Every check appends to the error list and carries on, so one run reports everything.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::error::ConfigError;
use super::spec::{ConfigSpec, MatchSpec, RouteSpec};
use super::yaml::{child_index, child_key};
use super::Partial;
use crate::normalize::normalize_path;

/// Runs every semantic check on `spec`, appending problems to `errors`.
pub(super) fn validate(
    spec: &ConfigSpec,
    partial: &Partial,
    base_dir: &Path,
    errors: &mut Vec<ConfigError>,
) {
    let mut err = |path: String, msg: String| errors.push(ConfigError::new(path, msg));
    let failed = |section: &str| partial.failed_sections.contains(section);

    if spec.service.trim().is_empty() && !failed("service") {
        err("service".into(), "must not be empty".into());
    }
    for (i, cidr) in spec.trusted_proxies.iter().enumerate() {
        if parse_cidr(cidr).is_none() {
            err(
                child_index("trusted_proxies", i),
                format!("invalid CIDR {cidr:?} (expected e.g. 10.0.0.0/8 or 192.0.2.7)"),
            );
        }
    }

    // Listeners.
    if spec.listeners.is_empty() && !failed("listeners") {
        err(
            "listeners".into(),
            "at least one listener is required".into(),
        );
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let base = child_index("listeners", partial.listener(i));
        if !valid_name(&l.name) {
            err(child_key(&base, "name"), name_rule(&l.name));
        } else if !names.insert(l.name.as_str()) {
            err(
                child_key(&base, "name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if !addrs.insert(a) {
                    err(
                        child_key(&base, "address"),
                        format!("address {a} is used twice"),
                    );
                }
            }
            Err(_) => err(
                child_key(&base, "address"),
                format!("invalid address {:?} (expected ip:port)", l.address),
            ),
        }
        if let Some(m) = &l.mtls {
            if l.tls.is_none() {
                err(
                    child_key(&base, "mtls"),
                    "mtls needs `tls` on the same listener".into(),
                );
            }
            if let Err(msg) = crate::tls::load_roots(base_dir, &m.ca) {
                err(child_key(&child_key(&base, "mtls"), "ca"), msg);
            }
        }
        if let Some(tls) = &l.tls {
            if l.h2c {
                err(
                    child_key(&base, "h2c"),
                    "h2c is for cleartext listeners; TLS listeners negotiate HTTP/2 by ALPN".into(),
                );
            }
            let tbase = child_key(&base, "tls");
            check_pem(base_dir, &tls.cert, &tls.key, &tbase, &mut err);
            for (j, sni) in tls.sni.iter().enumerate() {
                let sbase = child_index(&child_key(&tbase, "sni"), j);
                if sni.server_names.is_empty() {
                    err(
                        child_key(&sbase, "server_names"),
                        "at least one name is required".into(),
                    );
                }
                for (k, name) in sni.server_names.iter().enumerate() {
                    if !valid_host_pattern(name) {
                        err(
                            child_index(&child_key(&sbase, "server_names"), k),
                            format!("invalid server name {name:?}"),
                        );
                    }
                }
                check_pem(base_dir, &sni.cert, &sni.key, &sbase, &mut err);
            }
        }
    }
    if let Some(admin) = &spec.admin {
        match admin.address.parse::<SocketAddr>() {
            Ok(a) if addrs.contains(&a) => err(
                "admin.address".into(),
                format!("address {a} is also used by a listener"),
            ),
            Ok(_) => {}
            Err(_) => err(
                "admin.address".into(),
                format!("invalid address {:?} (expected ip:port)", admin.address),
            ),
        }
    }

    // Runtime.
    let rt = &spec.runtime;
    if !(1..=256).contains(&rt.threads) {
        err("runtime.threads".into(), "must be between 1 and 256".into());
    }
    if rt.header_read_timeout.get().is_zero() {
        err(
            "runtime.header_read_timeout".into(),
            "must be greater than zero".into(),
        );
    }
    if rt.idle_timeout.get() < Duration::from_secs(1) {
        err("runtime.idle_timeout".into(), "must be at least 1s".into());
    }
    if rt.grace_period.get() > Duration::from_secs(3600) {
        err("runtime.grace_period".into(), "must be at most 1h".into());
    }
    // Pingora refuses header blocks above ~1 MiB with its own bare 400; keeping our limit
    // well below makes every oversized header get our 431. Below 1 KiB nothing real fits.
    if !(1024..=512 * 1024).contains(&rt.max_header_size.bytes()) {
        err(
            "runtime.max_header_size".into(),
            "must be between 1KiB and 512KiB".into(),
        );
    }

    // Stores.
    if let Some(rl) = &spec.stores.rate_limits {
        for e in rl.check() {
            let path = if e.path.is_empty() {
                "stores.rate_limits".to_string()
            } else {
                format!("stores.rate_limits.{}", e.path)
            };
            err(path, e.message);
        }
    }

    if let Some(s) = &spec.stores.sessions {
        for e in s.check() {
            err(join_rel("stores.sessions", &e.path), e.message);
        }
    }

    // BFF.
    if let Some(bff) = &spec.bff {
        for e in bff.check() {
            err(join_rel("bff", &e.path), e.message);
        }
        if spec.mode == super::spec::Mode::Sidecar {
            err(
                "bff".into(),
                "browser sessions belong at the edge (`mode: edge`)".into(),
            );
        }
        match spec.providers.get(&bff.provider) {
            Some(p) if p.client_id.is_none() => err(
                "bff.provider".into(),
                format!(
                    "provider {:?} needs a `client_id` to log users in",
                    bff.provider
                ),
            ),
            Some(_) => {}
            None if partial.failed_providers.contains(&bff.provider)
                || partial.failed_sections.contains("providers") => {}
            None => err(
                "bff.provider".into(),
                format!(
                    "unknown provider {:?}{}",
                    bff.provider,
                    suggestion(&bff.provider, spec.providers.keys())
                ),
            ),
        }
    }

    // Providers.
    for (name, p) in &spec.providers {
        let base = child_key("providers", name);
        if !valid_name(name) {
            err(base.clone(), name_rule(name));
        }
        for e in p.check() {
            err(join_rel(&base, &e.path), e.message);
        }
    }

    // Clusters.
    for (name, c) in &spec.clusters {
        let base = child_key("clusters", name);
        if !valid_name(name) {
            err(base.clone(), name_rule(name));
        }
        if c.endpoints.is_empty() {
            err(
                child_key(&base, "endpoints"),
                "at least one endpoint is required".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, ep) in c.endpoints.iter().enumerate() {
            let p = child_index(&child_key(&base, "endpoints"), i);
            if let Err(msg) = check_endpoint(ep) {
                err(p, msg);
            } else if !seen.insert(ep.as_str()) {
                err(p, format!("duplicate endpoint {ep:?}"));
            }
        }
        if let Some(t) = &c.tls {
            let tb = child_key(&base, "tls");
            if !valid_host_pattern(&t.identity) || t.identity.contains('*') {
                err(
                    child_key(&tb, "identity"),
                    format!("invalid identity {:?}", t.identity),
                );
            }
            if let Err(msg) = crate::tls::load_roots(base_dir, &t.ca) {
                err(child_key(&tb, "ca"), msg);
            }
            check_pem(base_dir, &t.cert, &t.key, &tb, &mut err);
            if c.health_check.is_some() {
                err(
                    child_key(&base, "health_check"),
                    "active health checks over TLS are not supported yet; rely on outlier_detection".into(),
                );
            }
        }
        if c.connect_timeout.get().is_zero() {
            err(
                child_key(&base, "connect_timeout"),
                "must be greater than zero".into(),
            );
        }
        if let super::spec::LoadBalancingSpec::HashHeader(h) = &c.load_balancing {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(
                    child_key(&base, "load_balancing"),
                    format!("invalid header name {h:?}"),
                );
            }
        }
        if let Some(hc) = &c.health_check {
            let hb = child_key(&base, "health_check");
            if !hc.path.starts_with('/') || hc.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                err(
                    child_key(&hb, "path"),
                    "must be an origin-form path starting with /".into(),
                );
            }
            if hc.interval.get() < Duration::from_millis(10) {
                err(child_key(&hb, "interval"), "must be at least 10ms".into());
            }
            if hc.timeout.get().is_zero() {
                err(
                    child_key(&hb, "timeout"),
                    "must be greater than zero".into(),
                );
            }
            if hc.unhealthy_after == 0 {
                err(
                    child_key(&hb, "unhealthy_after"),
                    "must be at least 1".into(),
                );
            }
            if hc.healthy_after == 0 {
                err(child_key(&hb, "healthy_after"), "must be at least 1".into());
            }
        }
    }

    // Routes.
    let mut route_names = HashSet::new();
    for (i, r) in spec.routes.iter().enumerate() {
        let base = child_index("routes", partial.route(i));
        if !valid_name(&r.name) {
            err(child_key(&base, "name"), name_rule(&r.name));
        } else if !route_names.insert(r.name.as_str()) {
            err(
                child_key(&base, "name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        check_match(&r.matcher, &child_key(&base, "match"), &mut err);
        for (j, l) in r.matcher.listeners.iter().enumerate() {
            let known = spec.listeners.iter().any(|x| &x.name == l) || failed("listeners");
            if !known {
                err(
                    child_index(&child_key(&child_key(&base, "match"), "listeners"), j),
                    format!("unknown listener {l:?}"),
                );
            }
        }
        check_rewrite(r, &base, &mut err);
        check_target(spec, partial, r, &base, &mut err);
        for (j, f) in r.filters.iter().enumerate() {
            if matches!(f, super::spec::FilterSpec::Bff(_))
                && spec.bff.is_none()
                && !partial.failed_sections.contains("bff")
            {
                err(
                    child_key(&child_index(&child_key(&base, "filters"), j), "bff"),
                    "the bff filter needs the top-level `bff` section".into(),
                );
            }
            if let super::spec::FilterSpec::Jwt(jwt) = f {
                let fbase = child_key(&child_index(&child_key(&base, "filters"), j), "jwt");
                for e in jwt.check() {
                    err(join_rel(&fbase, &e.path), e.message);
                }
                let known = spec.providers.contains_key(&jwt.provider)
                    || partial.failed_providers.contains(&jwt.provider)
                    || partial.failed_sections.contains("providers");
                if !known {
                    err(
                        child_key(&fbase, "provider"),
                        format!(
                            "unknown provider {:?}{}",
                            jwt.provider,
                            suggestion(&jwt.provider, spec.providers.keys())
                        ),
                    );
                }
            }
        }
        if r.timeout.get().is_zero() {
            err(
                child_key(&base, "timeout"),
                "must be greater than zero".into(),
            );
        }
    }
}

fn check_match(m: &MatchSpec, base: &str, err: &mut impl FnMut(String, String)) {
    if m.path.is_some() && m.path_prefix.is_some() {
        err(
            base.to_string(),
            "set either `path` or `path_prefix`, not both".into(),
        );
    }
    for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(p) = value {
            check_normal_path(p, &child_key(base, key), err);
        }
    }
    if let Some(h) = &m.host {
        if !valid_host_pattern(h) {
            err(child_key(base, "host"), format!("invalid host {h:?}"));
        }
    }
    for (i, method) in m.methods.iter().enumerate() {
        let ok = !method.is_empty()
            && method.bytes().all(|b| b.is_ascii_uppercase())
            && http::Method::from_bytes(method.as_bytes()).is_ok();
        if !ok {
            err(
                child_index(&child_key(base, "methods"), i),
                format!("invalid method {method:?} (methods are upper-case tokens such as GET)"),
            );
        }
    }
    for (name, value) in &m.headers {
        let p = child_key(&child_key(base, "headers"), name);
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            err(p, format!("invalid header name {name:?}"));
        } else if http::HeaderValue::from_str(value).is_err() {
            err(p, "invalid header value".into());
        }
    }
}

fn check_rewrite(r: &RouteSpec, base: &str, err: &mut impl FnMut(String, String)) {
    let Some(rw) = &r.rewrite else { return };
    let rbase = child_key(base, "rewrite");
    match (&rw.strip_prefix, &rw.replace_prefix) {
        (Some(_), Some(_)) | (None, None) => err(
            rbase,
            "set exactly one of `strip_prefix` or `replace_prefix`".into(),
        ),
        (Some(p), None) => check_normal_path(p, &child_key(&rbase, "strip_prefix"), err),
        (None, Some(p)) => {
            check_normal_path(p, &child_key(&rbase, "replace_prefix"), err);
            if r.matcher.path_prefix.is_none() {
                err(
                    child_key(&rbase, "replace_prefix"),
                    "replace_prefix replaces the matched `match.path_prefix`, which this route does not set".into(),
                );
            }
        }
    }
}

fn check_target(
    spec: &ConfigSpec,
    partial: &Partial,
    r: &RouteSpec,
    base: &str,
    err: &mut impl FnMut(String, String),
) {
    let unknown = |name: &str| -> Option<String> {
        // A cluster that exists but failed to parse already has its own error.
        if spec.clusters.contains_key(name)
            || partial.failed_clusters.contains(name)
            || partial.failed_sections.contains("clusters")
        {
            None
        } else {
            Some(format!(
                "unknown cluster {name:?}{}",
                suggestion(name, spec.clusters.keys())
            ))
        }
    };
    match (&r.to, &r.split) {
        (Some(_), Some(_)) | (None, None) => err(
            base.to_string(),
            "set exactly one of `to` or `split`".into(),
        ),
        (Some(to), None) => {
            if let Some(msg) = unknown(to) {
                err(child_key(base, "to"), msg);
            }
        }
        (None, Some(split)) => {
            let sbase = child_key(base, "split");
            if split.is_empty() {
                err(sbase.clone(), "at least one target is required".into());
            }
            for (i, s) in split.iter().enumerate() {
                let p = child_index(&sbase, i);
                if let Some(msg) = unknown(&s.cluster) {
                    err(child_key(&p, "cluster"), msg);
                }
                if s.weight == 0 {
                    err(child_key(&p, "weight"), "must be greater than zero".into());
                }
            }
            let total: u64 = split.iter().map(|s| u64::from(s.weight)).sum();
            if total > u64::from(u32::MAX) {
                err(sbase, "weights sum to more than 4294967295".into());
            }
        }
    }
}

fn check_normal_path(p: &str, path: &str, err: &mut impl FnMut(String, String)) {
    match normalize_path(p) {
        Ok(n) if n == p => {}
        Ok(n) => err(
            path.to_string(),
            format!("{p:?} is not a normalized path; requests are matched on {n:?}"),
        ),
        Err(e) => err(path.to_string(), format!("invalid path {p:?}: {e}")),
    }
}

fn check_pem(
    base_dir: &Path,
    cert: &str,
    key: &str,
    base: &str,
    err: &mut impl FnMut(String, String),
) {
    let cert_path = base_dir.join(cert);
    if let Err(e) = std::fs::metadata(&cert_path) {
        err(
            child_key(base, "cert"),
            format!("cannot read {}: {e}", cert_path.display()),
        );
        return;
    }
    let key_path = base_dir.join(key);
    if let Err(e) = std::fs::metadata(&key_path) {
        err(
            child_key(base, "key"),
            format!("cannot read {}: {e}", key_path.display()),
        );
        return;
    }
    // Load exactly as the listener will, so a corrupt file or a key that does not belong to
    // the certificate fails here rather than at the first handshake. Messages name files,
    // never key material.
    if let Err(msg) = crate::tls::check_pair(base_dir, cert, key) {
        err(base.to_string(), msg);
    }
}

/// `base.rel`, or `base` when `rel` is empty (filter specs report paths relative to
/// their own key).
fn join_rel(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{rel}")
    }
}

/// Parses a CIDR or a bare address (a single host).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn check_endpoint(ep: &str) -> Result<(), String> {
    let Some((host, port)) = ep.rsplit_once(':') else {
        return Err(format!("invalid endpoint {ep:?} (expected host:port)"));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("invalid port in endpoint {ep:?}"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() || valid_host_pattern(host) && !host.contains('*') {
        Ok(())
    } else {
        Err(format!("invalid host in endpoint {ep:?}"))
    }
}

/// Names used as metrics labels and in paths: short and boring on purpose.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn name_rule(name: &str) -> String {
    format!("invalid name {name:?}: use 1-64 characters from A-Z a-z 0-9 - _ .")
}

/// DNS host names, optionally with one leading `*.` label.
pub(crate) fn valid_host_pattern(h: &str) -> bool {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    !rest.is_empty()
        && h.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// ` (did you mean "orders"?)` when a known name is one or two edits away.
fn suggestion<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
