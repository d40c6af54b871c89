//! The `cors` route filter: answer CORS preflights at the proxy and put the CORS response
//! headers on every answer for an allowed origin — upstream responses and the proxy's own
//! 401/429/503 alike, so a browser app can read why it was refused.
//!
//! The gateway owns CORS for a route that has this filter: upstream `Access-Control-Allow-*`
//! headers are replaced or removed, so a backend that reflects any Origin cannot widen the
//! policy. Origins are exact (`https://shop.example`) or one-label wildcards
//! (`https://*.example.com` matches `https://a.example.com`, not `https://a.b.example.com`
//! nor `https://example.com`). With `credentials: true` the allowed origin is echoed back,
//! never `*`, and `*` in `origins` is a configuration error — so a credentialed response is
//! never readable by an origin nobody listed.
//!
//! Place `cors` before authentication filters: browsers send preflights without
//! credentials, and an earlier `jwt` or `api_key` would refuse them. Everything is parsed
//! once per config generation; per request the filter compares bytes and, for an allowed
//! origin, leaves one small marker in the request context.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::ResponseHeader;
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;
use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, SpecError, Step};

/// YAML: `cors: { origins: [...], methods: [GET, POST], headers: [content-type],
/// expose_headers: [], credentials: true, max_age: 10m }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Allowed origins: `https://shop.example`, `https://*.example.com` (one label), or `*`
    /// (any origin; not with `credentials`).
    pub origins: Vec<String>,
    /// Methods a preflight may ask for. Defaults to `[GET, HEAD, POST]`.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for, beyond the CORS-safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Response headers the page may read, beyond the CORS-safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` on cross-origin requests.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight answer. Defaults to 10 minutes (browsers cap
    /// it: Chromium at 2 h, Firefox at 24 h).
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_max_age() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}

/// `scheme://*.rest`: the scheme prefix and the part after the wildcard label.
#[derive(Debug)]
struct OriginPattern {
    /// `https://`
    prefix: Box<[u8]>,
    /// `.example.com` or `.example.com:8443`
    suffix: Box<[u8]>,
}

impl OriginPattern {
    fn matches(&self, origin: &[u8]) -> bool {
        let (p, s) = (self.prefix.len(), self.suffix.len());
        if origin.len() <= p + s {
            return false;
        }
        let (head, rest) = origin.split_at(p);
        let (label, tail) = rest.split_at(rest.len() - s);
        head.eq_ignore_ascii_case(&self.prefix)
            && tail.eq_ignore_ascii_case(&self.suffix)
            && label.len() <= 63
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    }
}

/// What the request hook found, for the response hook.
#[derive(Debug, Clone)]
struct CorsMatch {
    /// The request's Origin, echoed back (or `*` for any-origin without credentials).
    allow_origin: HeaderValue,
    preflight: bool,
}

/// Compiled `cors` filter.
#[derive(Debug)]
pub struct CorsFilter {
    any_origin: bool,
    exact: Vec<Box<[u8]>>,
    patterns: Vec<OriginPattern>,
    credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// One checked `origins` entry.
#[derive(Debug)]
enum OriginSpec {
    /// `*`
    Any,
    /// Lowercased `scheme://host[:port]`.
    Exact(Box<[u8]>),
    /// `scheme://*.domain[:port]`
    Pattern(OriginPattern),
}

/// Checks one `origins` entry.
fn parse_origin(raw: &str) -> Result<OriginSpec, String> {
    let s = raw.trim();
    if s == "*" {
        return Ok(OriginSpec::Any);
    }
    if s.eq_ignore_ascii_case("null") {
        return Err(
            "the \"null\" origin is shared by sandboxed frames and local files; it cannot be allowed"
                .into(),
        );
    }
    let lower = s.to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return Err(format!(
            "{raw:?} is not an origin: expected scheme://host[:port]"
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if !scheme_ok {
        return Err(format!("{raw:?} has an invalid scheme"));
    }
    if authority.contains('/') || authority.contains('?') || authority.contains('#') {
        return Err(format!(
            "{raw:?} is not an origin: remove the path (an Origin header never has one, not even \"/\")"
        ));
    }
    let bad_char = |c: char| !(c.is_ascii_alphanumeric() || "-.:[]*".contains(c));
    if authority.is_empty() || authority.contains(bad_char) {
        return Err(format!("{raw:?} has an invalid host"));
    }
    if let Some(rest) = authority.strip_prefix("*.") {
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        if rest.contains('*') || !host.contains('.') {
            return Err(format!(
                "{raw:?}: a wildcard stands for exactly one leftmost label of a domain with at least two more, e.g. https://*.example.com"
            ));
        }
        return Ok(OriginSpec::Pattern(OriginPattern {
            prefix: format!("{scheme}://").into_bytes().into_boxed_slice(),
            suffix: format!(".{rest}").into_bytes().into_boxed_slice(),
        }));
    }
    if authority.contains('*') {
        return Err(format!(
            "{raw:?}: a wildcard stands for exactly one leftmost label, e.g. https://*.example.com"
        ));
    }
    Ok(OriginSpec::Exact(lower.into_bytes().into_boxed_slice()))
}

/// Joins validated tokens into one header value (`GET, POST`).
fn join(items: &[String]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl CorsFilter {
    /// Compiles the spec, reporting every bad origin, method or header name and every
    /// wildcard combined with `credentials`, with its path (`origins[1]`, `methods[0]`, …).
    pub fn new(spec: &CorsSpec) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut any_origin = false;
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        if spec.origins.is_empty() {
            errors.push(SpecError::new("origins", "list at least one origin"));
        }
        for (i, raw) in spec.origins.iter().enumerate() {
            match parse_origin(raw) {
                Ok(OriginSpec::Any) if spec.credentials => errors.push(SpecError::new(
                    format!("origins[{i}]"),
                    "\"*\" cannot be combined with `credentials: true`; list the origins",
                )),
                Ok(OriginSpec::Any) => any_origin = true,
                Ok(OriginSpec::Exact(origin)) => exact.push(origin),
                Ok(OriginSpec::Pattern(pattern)) => patterns.push(pattern),
                Err(e) => errors.push(SpecError::new(format!("origins[{i}]"), e)),
            }
        }

        let wildcard = |field: &str, i: usize, errors: &mut Vec<SpecError>| {
            if spec.credentials {
                errors.push(SpecError::new(
                    format!("{field}[{i}]"),
                    "\"*\" is not a wildcard for credentialed requests; list the names",
                ));
            }
        };
        let mut methods = Vec::with_capacity(spec.methods.len());
        for (i, m) in spec.methods.iter().enumerate() {
            let m = m.trim();
            if m == "*" {
                wildcard("methods", i, &mut errors);
                methods.push(m.to_string());
            } else if Method::from_bytes(m.as_bytes()).is_ok() {
                methods.push(m.to_string());
            } else {
                errors.push(SpecError::new(
                    format!("methods[{i}]"),
                    format!("invalid method {m:?}"),
                ));
            }
        }
        let names = |field: &str, list: &[String], errors: &mut Vec<SpecError>| {
            let mut out = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                let h = h.trim();
                if h == "*" {
                    wildcard(field, i, errors);
                    out.push(h.to_string());
                } else {
                    match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(n) => out.push(n.as_str().to_string()),
                        Err(_) => errors.push(SpecError::new(
                            format!("{field}[{i}]"),
                            format!("invalid header name {h:?}"),
                        )),
                    }
                }
            }
            out
        };
        let headers = names("headers", &spec.headers, &mut errors);
        let expose = names("expose_headers", &spec.expose_headers, &mut errors);

        if !errors.is_empty() {
            return Err(errors);
        }
        let allow_methods =
            join(&methods).unwrap_or_else(|| HeaderValue::from_static("GET, HEAD, POST"));
        Ok(Self {
            any_origin,
            exact,
            patterns,
            credentials: spec.credentials,
            allow_methods,
            allow_headers: join(&headers),
            expose_headers: join(&expose),
            max_age: HeaderValue::from(spec.max_age.get().as_secs()),
        })
    }

    /// Whether `origin` (an Origin header value) is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        if self.any_origin {
            return true;
        }
        self.exact.iter().any(|o| o.eq_ignore_ascii_case(origin))
            || self.patterns.iter().any(|p| p.matches(origin))
    }

    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Adds `Vary: Origin` unless the response already varies on it (or on everything).
    /// Skipped for `*` without credentials: the answer is the same for every origin.
    fn vary_origin(&self, response: &mut ResponseHeader) {
        if self.any_origin && !self.credentials {
            return;
        }
        let already = response.headers.get_all(VARY).iter().any(|v| {
            v.as_bytes().split(|b| *b == b',').any(|item| {
                let item = item.trim_ascii();
                item == b"*" || item.eq_ignore_ascii_case(b"origin")
            })
        });
        if !already {
            let _ = response.append_header(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

impl Filter for CorsFilter {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn request_filter<'a>(&'a self, req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        let headers = &req.header.headers;
        let mut origins = headers.get_all(ORIGIN).iter();
        // No Origin: not a CORS request. Two Origin headers: not something a browser sends,
        // so not something to grant access to.
        let origin = match (origins.next(), origins.next()) {
            (Some(origin), None) => Some(origin),
            _ => None,
        };
        let preflight = req.header.method == Method::OPTIONS
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = origin.filter(|o| self.allows(o.as_bytes()));
        match (allowed, preflight) {
            (Some(origin), preflight) => {
                ctx.extensions.insert(CorsMatch {
                    allow_origin: self.allow_origin(origin),
                    preflight,
                });
                if preflight {
                    // Answered here: the route's upstream never sees preflights. The
                    // browser enforces methods and headers against the lists we send.
                    return Step::Done(Action::Respond(LocalResponse {
                        status: StatusCode::NO_CONTENT,
                        error: None,
                        headers: Vec::new(),
                        body: Some((HeaderValue::from_static("text/plain"), bytes::Bytes::new())),
                        close: false,
                    }));
                }
                Step::Done(Action::Continue)
            }
            (None, true) if origin.is_some() => {
                Step::Done(Action::Respond(LocalResponse::error(ErrorKind::Forbidden)))
            }
            (None, _) => Step::Done(Action::Continue),
        }
    }

    fn response_filter(&self, response: &mut ResponseHeader, ctx: &mut RequestCtx) {
        // The gateway's policy replaces whatever the upstream said.
        for name in [
            &ACCESS_CONTROL_ALLOW_ORIGIN,
            &ACCESS_CONTROL_ALLOW_CREDENTIALS,
            &ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            response.remove_header(name);
        }
        let Some(found) = ctx.extensions.get::<CorsMatch>() else {
            self.vary_origin(response);
            return;
        };
        let _ = response.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, found.allow_origin.clone());
        if self.credentials {
            let _ = response.insert_header(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if found.preflight {
            let _ =
                response.insert_header(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
            if let Some(h) = &self.allow_headers {
                let _ = response.insert_header(ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
            }
            let _ = response.insert_header(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            let _ = response.insert_header(VARY, PREFLIGHT_VARY);
            // A 204 has no body and must not announce one (RFC 9110 §8.6); the response
            // writer adds both headers to every local answer.
            response.remove_header(&CONTENT_LENGTH);
            response.remove_header(&CONTENT_TYPE);
        } else {
            if let Some(h) = &self.expose_headers {
                let _ = response.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, h.clone());
            }
            self.vary_origin(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn filter(v: serde_json::Value) -> CorsFilter {
        CorsFilter::new(&serde_json::from_value(v).expect("shape")).expect("valid")
    }

    fn shop() -> CorsFilter {
        filter(serde_json::json!({
            "origins": ["https://shop.example", "https://*.example.com"],
            "methods": ["GET", "POST"], "headers": ["Content-Type", "x-csrf"],
            "expose_headers": ["x-request-id"], "credentials": true, "max_age": "10m"
        }))
    }

    /// Runs the request hook and, like the response writer, the response hook on whatever
    /// answer results (a local one, or a plain upstream 200).
    fn exchange(
        f: &CorsFilter,
        method: &str,
        headers: &[(&str, &str)],
    ) -> (Action, ResponseHeader) {
        let mut req = RequestHeader::build(method, b"/api", None).expect("req");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("h");
        }
        let mut ctx = RequestCtx::default();
        let view = RequestView {
            header: &req,
            path: "/api",
            host: "",
            peer: None,
        };
        let Step::Done(action) = f.request_filter(view, &mut ctx) else {
            panic!("cors decides without waiting");
        };
        let mut resp = match &action {
            Action::Respond(r) => {
                let mut h = ResponseHeader::build(r.status, None).expect("resp");
                h.insert_header(CONTENT_TYPE, "application/json")
                    .expect("h");
                h.insert_header(CONTENT_LENGTH, "0").expect("h");
                h
            }
            Action::Continue => {
                let mut h = ResponseHeader::build(200, None).expect("resp");
                // A careless upstream reflecting anything must not widen the policy.
                h.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, "https://evil.example")
                    .expect("h");
                h
            }
        };
        f.response_filter(&mut resp, &mut ctx);
        (action, resp)
    }

    fn get<'a>(resp: &'a ResponseHeader, name: &HeaderName) -> Option<&'a str> {
        resp.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn allowed_origin_gets_credentialed_headers_and_vary() {
        let (action, resp) = exchange(&shop(), "GET", &[("origin", "https://shop.example")]);
        assert!(matches!(action, Action::Continue));
        assert_eq!(
            get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://shop.example")
        );
        assert_eq!(get(&resp, &ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
        assert_eq!(
            get(&resp, &ACCESS_CONTROL_EXPOSE_HEADERS),
            Some("x-request-id")
        );
        assert_eq!(get(&resp, &VARY), Some("Origin"));
    }

    #[test]
    fn disallowed_origin_gets_nothing_not_even_the_upstreams_reflection() {
        for origin in [
            "https://evil.example",
            "https://shop.example.evil.com",
            "http://shop.example",
            "https://a.b.example.com",
            "https://example.com",
            "https://.example.com",
            "https://a.example.com.evil",
            "null",
        ] {
            let (action, resp) = exchange(&shop(), "GET", &[("origin", origin)]);
            assert!(
                matches!(action, Action::Continue),
                "{origin}: the browser, not us, blocks reads"
            );
            assert!(
                get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
                "{origin}"
            );
            assert!(
                get(&resp, &ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none(),
                "{origin}"
            );
            assert_eq!(
                get(&resp, &VARY),
                Some("Origin"),
                "{origin}: caches must key on Origin"
            );
        }
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let f = shop();
        assert!(f.allows(b"https://a.example.com"));
        assert!(f.allows(b"https://Api-2.Example.COM"));
        assert!(!f.allows(b"https://a.example.com:8443"));
        assert!(!f.allows(b"https://a_b.example.com"));
        let (_, resp) = exchange(&f, "POST", &[("origin", "https://a.example.com")]);
        assert_eq!(
            get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://a.example.com")
        );
    }

    #[test]
    fn preflight_is_answered_here() {
        let (action, resp) = exchange(
            &shop(),
            "OPTIONS",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type,x-csrf"),
            ],
        );
        let Action::Respond(answer) = action else {
            panic!("preflight is answered by the proxy");
        };
        assert_eq!(answer.status.as_u16(), 204);
        assert!(answer.error.is_none());
        assert_eq!(
            get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://shop.example")
        );
        assert_eq!(get(&resp, &ACCESS_CONTROL_ALLOW_METHODS), Some("GET, POST"));
        assert_eq!(
            get(&resp, &ACCESS_CONTROL_ALLOW_HEADERS),
            Some("content-type, x-csrf")
        );
        assert_eq!(get(&resp, &ACCESS_CONTROL_MAX_AGE), Some("600"));
        assert_eq!(get(&resp, &ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
        assert!(get(&resp, &VARY).is_some_and(|v| v.contains("Access-Control-Request-Method")));
        assert!(resp.headers.get(CONTENT_LENGTH).is_none());
        assert!(resp.headers.get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn preflight_from_a_disallowed_origin_is_403_without_cors_headers() {
        let (action, resp) = exchange(
            &shop(),
            "OPTIONS",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        let Action::Respond(answer) = action else {
            panic!("refused");
        };
        assert_eq!(answer.status.as_u16(), 403);
        assert_eq!(answer.error, Some(ErrorKind::Forbidden));
        assert!(get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        // A plain OPTIONS (no Access-Control-Request-Method) is not a preflight: upstream's.
        let (action, _) = exchange(&shop(), "OPTIONS", &[("origin", "https://evil.example")]);
        assert!(matches!(action, Action::Continue));
    }

    #[test]
    fn local_refusals_carry_cors_headers_for_allowed_origins() {
        // The writer runs this hook on a 429 produced by a later filter.
        let f = shop();
        let mut req = RequestHeader::build("GET", b"/api", None).expect("req");
        req.insert_header("origin", "https://shop.example")
            .expect("h");
        let mut ctx = RequestCtx::default();
        let view = RequestView {
            header: &req,
            path: "/api",
            host: "",
            peer: None,
        };
        assert!(matches!(
            f.request_filter(view, &mut ctx),
            Step::Done(Action::Continue)
        ));
        let mut resp = ResponseHeader::build(429, None).expect("resp");
        f.response_filter(&mut resp, &mut ctx);
        assert_eq!(
            get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://shop.example")
        );
        assert_eq!(get(&resp, &ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
    }

    #[test]
    fn any_origin_without_credentials_is_a_plain_star() {
        let f = filter(serde_json::json!({ "origins": ["*"] }));
        let (_, resp) = exchange(&f, "GET", &[("origin", "https://anything.example")]);
        assert_eq!(get(&resp, &ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
        assert!(get(&resp, &ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert!(get(&resp, &VARY).is_none());
    }

    #[test]
    fn existing_vary_is_kept_and_not_duplicated() {
        let f = shop();
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header(VARY, "Accept-Encoding").expect("h");
        f.response_filter(&mut resp, &mut RequestCtx::default());
        let vary: Vec<_> = resp.headers.get_all(VARY).iter().collect();
        assert_eq!(vary.len(), 2);
        f.response_filter(&mut resp, &mut RequestCtx::default());
        assert_eq!(resp.headers.get_all(VARY).iter().count(), 2);
    }

    #[test]
    fn unsafe_or_malformed_specs_are_refused_with_paths() {
        let errors = CorsFilter::new(
            &serde_json::from_value(serde_json::json!({
                "origins": ["*", "https://shop.example/", "null", "https://*.com", "https://a.*.example.com", "shop.example"],
                "methods": ["GET", "BAD METHOD", "*"],
                "headers": ["bad header"],
                "expose_headers": ["*"],
                "credentials": true
            }))
            .expect("shape"),
        )
        .expect_err("invalid");
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "origins[0]",
                "origins[1]",
                "origins[2]",
                "origins[3]",
                "origins[4]",
                "origins[5]",
                "methods[1]",
                "methods[2]",
                "headers[0]",
                "expose_headers[0]"
            ]
        );
        assert!(serde_json::from_value::<CorsSpec>(
            serde_json::json!({ "origins": ["https://a.example"], "allow_origin": "*" })
        )
        .is_err());
    }
}
