//! The `headers` filter: set, add and remove request headers on the way up and response
//! headers on the way down.
//!
//! Names and values are parsed once per config generation, so the per-request work is a few
//! header-map operations with no parsing. Framing and hop-by-hop headers cannot be touched:
//! changing them would desynchronise the proxy's message framing from what it forwards.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};

use crate::{Filter, RequestCtx, SpecError};

/// YAML: `headers: { request: {...}, response: {...} }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    /// Edits applied to the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderEditsSpec>,
    /// Edits applied to the downstream response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderEditsSpec>,
}

/// YAML: `{ set: { name: value }, add: { name: value }, remove: [name] }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsSpec {
    /// Replace any existing values with this one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append this value, keeping existing ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove every value of these headers. Applied first, so `remove` + `add` replaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

const PROTECTED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    fn compile(spec: &HeaderEditsSpec, base: &str, errors: &mut Vec<SpecError>) -> Self {
        let name = |raw: &str, path: String, errors: &mut Vec<SpecError>| {
            let parsed = HeaderName::from_bytes(raw.as_bytes());
            match parsed {
                Ok(n) if PROTECTED.contains(&n.as_str()) => {
                    errors.push(SpecError::new(
                        path,
                        format!("header {raw:?} controls message framing and cannot be edited"),
                    ));
                    None
                }
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(SpecError::new(path, format!("invalid header name {raw:?}")));
                    None
                }
            }
        };
        let pairs = |map: &BTreeMap<String, String>, op: &str, errors: &mut Vec<SpecError>| {
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                let path = format!("{base}.{op}.{k}");
                let n = name(k, path.clone(), errors);
                let value = HeaderValue::from_str(v);
                if value.is_err() {
                    errors.push(SpecError::new(
                        path,
                        "header value contains characters not allowed in HTTP headers",
                    ));
                }
                if let (Some(n), Ok(v)) = (n, value) {
                    out.push((n, v));
                }
            }
            out
        };
        let remove = spec
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| name(raw, format!("{base}.remove[{i}]"), errors))
            .collect();
        Edits {
            remove,
            set: pairs(&spec.set, "set", errors),
            add: pairs(&spec.add, "add", errors),
        }
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Applies the same edits to either header type without duplicating the logic.
trait HeaderTarget {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: &HeaderName, value: &HeaderValue);
    fn add(&mut self, name: &HeaderName, value: &HeaderValue);
}

impl HeaderTarget for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        // Infallible for a parsed name and value; the Result is pingora's general signature.
        let _ = self.insert_header(name.clone(), value.clone());
    }
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
        let _ = self.append_header(name.clone(), value.clone());
    }
}

impl HeaderTarget for ResponseHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        let _ = self.insert_header(name.clone(), value.clone());
    }
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
        let _ = self.append_header(name.clone(), value.clone());
    }
}

fn apply(edits: &Edits, target: &mut impl HeaderTarget) {
    for n in &edits.remove {
        target.remove(n);
    }
    for (n, v) in &edits.set {
        target.set(n, v);
    }
    for (n, v) in &edits.add {
        target.add(n, v);
    }
}

/// Compiled `headers` filter.
#[derive(Debug)]
pub struct HeadersFilter {
    request: Edits,
    response: Edits,
}

impl HeadersFilter {
    /// Compiles the spec, reporting every invalid or protected header name and bad value.
    pub fn new(spec: &HeadersSpec) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        let empty = HeaderEditsSpec::default();
        let request = Edits::compile(
            spec.request.as_ref().unwrap_or(&empty),
            "request",
            &mut errors,
        );
        let response = Edits::compile(
            spec.response.as_ref().unwrap_or(&empty),
            "response",
            &mut errors,
        );
        if errors.is_empty() {
            Ok(Self { request, response })
        } else {
            Err(errors)
        }
    }
}

impl Filter for HeadersFilter {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn upstream_request_filter(&self, upstream: &mut RequestHeader, _ctx: &mut RequestCtx) {
        if !self.request.is_empty() {
            apply(&self.request, upstream);
        }
    }

    fn response_filter(&self, response: &mut ResponseHeader, _ctx: &mut RequestCtx) {
        if !self.response.is_empty() {
            apply(&self.response, response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml_like: serde_json::Value) -> HeadersSpec {
        serde_json::from_value(yaml_like).expect("spec")
    }

    #[test]
    fn request_edits_remove_then_set_then_add() {
        let f = HeadersFilter::new(&spec(serde_json::json!({
            "request": { "remove": ["x-debug"], "set": { "x-env": "dev" }, "add": { "x-tag": "b" } }
        })))
        .expect("valid");
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.insert_header("x-debug", "1").expect("h");
        req.insert_header("x-env", "prod").expect("h");
        req.insert_header("x-tag", "a").expect("h");
        f.upstream_request_filter(&mut req, &mut RequestCtx::default());
        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(
            req.headers.get("x-env").map(|v| v.as_bytes()),
            Some(&b"dev"[..])
        );
        let tags: Vec<_> = req.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags.len(), 2);
    }

    #[test]
    fn response_edits_apply_to_response() {
        let f = HeadersFilter::new(&spec(serde_json::json!({
            "response": { "remove": ["server"], "set": { "x-frame-options": "DENY" } }
        })))
        .expect("valid");
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("server", "upstream").expect("h");
        f.response_filter(&mut resp, &mut RequestCtx::default());
        assert!(resp.headers.get("server").is_none());
        assert!(resp.headers.get("x-frame-options").is_some());
    }

    #[test]
    fn bad_and_protected_names_are_all_reported() {
        let errors = HeadersFilter::new(&spec(serde_json::json!({
            "request": { "set": { "bad name": "x", "content-length": "5", "x-ok": "line\nbreak" } },
            "response": { "remove": ["transfer-encoding"] }
        })))
        .expect_err("invalid");
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"request.set.bad name"), "{paths:?}");
        assert!(paths.contains(&"request.set.content-length"), "{paths:?}");
        assert!(paths.contains(&"request.set.x-ok"), "{paths:?}");
        assert!(paths.contains(&"response.remove[0]"), "{paths:?}");
    }
}
