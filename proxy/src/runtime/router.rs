//! Routes at runtime: request matching, path rewriting and target choice.
//!
//! Routes are tried in file order and the first match wins, like Envoy's route table; a
//! linear scan over pre-parsed matchers is faster than any index for the tens of routes a
//! gateway has, and keeps `meshgate explain` honest: it runs this exact code.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use meshgate_filters::FilterChain;

use super::cluster::Cluster;

/// What a request looks like to the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host without port, lowercased.
    pub host: &'a str,
    /// Normalized path without query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// Name of the listener the request arrived on (`None`: any, e.g. for `explain`
    /// without `--listener`).
    pub listener: Option<&'a str>,
}

/// Why a route did not match (shown by `meshgate explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Host differs from the route's `match.host`.
    Host(String),
    /// Path differs from `match.path`.
    Path(String),
    /// Path is outside `match.path_prefix`.
    PathPrefix(String),
    /// Method not in `match.methods`.
    Method,
    /// A header in `match.headers` is missing or different.
    Header(HeaderName),
    /// The request arrived on a listener not in `match.listeners`.
    Listener,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Host(h) => write!(f, "host is not {h}"),
            Mismatch::Path(p) => write!(f, "path is not {p}"),
            Mismatch::PathPrefix(p) => write!(f, "path is not under {p}"),
            Mismatch::Method => f.write_str("method not allowed by the route"),
            Mismatch::Header(h) => write!(f, "header {h} missing or different"),
            Mismatch::Listener => f.write_str("arrived on a listener the route does not serve"),
        }
    }
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches exactly one more label.
    Wildcard(String),
}

/// Compiled `routes[].match`.
#[derive(Debug, Default)]
pub struct Matcher {
    host: Option<HostMatch>,
    path: Option<String>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    listeners: Vec<String>,
}

impl Matcher {
    /// Restricts the route to requests arriving on these listeners (empty: all).
    pub fn on_listeners(mut self, listeners: Vec<String>) -> Self {
        self.listeners = listeners;
        self
    }

    /// Builds a matcher from already validated parts.
    pub fn new(
        host: Option<&str>,
        path: Option<&str>,
        path_prefix: Option<&str>,
        methods: Vec<Method>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        let host = host.map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                None => HostMatch::Exact(h),
            }
        });
        Self {
            host,
            path: path.map(str::to_string),
            // A prefix of "/" matches everything; store it without the trailing slash so
            // the segment check below is one comparison.
            path_prefix: path_prefix.map(|p| p.trim_end_matches('/').to_string()),
            methods,
            headers,
            listeners: Vec::new(),
        }
    }

    /// Checks every condition, cheapest first.
    pub fn check(&self, req: &RouteInput<'_>) -> Result<(), Mismatch> {
        if let (false, Some(l)) = (self.listeners.is_empty(), req.listener) {
            if !self.listeners.iter().any(|x| x == l) {
                return Err(Mismatch::Listener);
            }
        }
        if let Some(p) = &self.path {
            if req.path != p {
                return Err(Mismatch::Path(p.clone()));
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !under_prefix(req.path, prefix) {
                return Err(Mismatch::PathPrefix(if prefix.is_empty() {
                    "/".into()
                } else {
                    prefix.clone()
                }));
            }
        }
        match &self.host {
            Some(HostMatch::Exact(h)) if req.host != h => return Err(Mismatch::Host(h.clone())),
            Some(HostMatch::Wildcard(suffix)) => {
                let ok = req
                    .host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'));
                if !ok {
                    return Err(Mismatch::Host(format!("*{suffix}")));
                }
            }
            _ => {}
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return Err(Mismatch::Method);
        }
        for (name, value) in &self.headers {
            if req.headers.get(name) != Some(value) {
                return Err(Mismatch::Header(name.clone()));
            }
        }
        Ok(())
    }
}

/// Segment-aware prefix test: `/api` covers `/api`, `/api/` and `/api/x`, not `/apix`.
/// `prefix` has no trailing slash (empty = root).
fn under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Compiled `routes[].rewrite`.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Remove this prefix (no trailing slash) when the path is under it.
    StripPrefix(String),
    /// Replace the matched prefix (no trailing slash) with this one.
    ReplacePrefix {
        /// The route's `match.path_prefix`, normalized without trailing slash.
        matched: String,
        /// Replacement.
        with: String,
    },
}

impl Rewrite {
    /// The upstream path for `path`. Never returns an empty path.
    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let (prefix, with) = match self {
            Rewrite::StripPrefix(p) => (p.as_str(), ""),
            Rewrite::ReplacePrefix { matched, with } => (matched.as_str(), with.as_str()),
        };
        if !under_prefix(path, prefix) {
            return Cow::Borrowed(path);
        }
        let rest = &path[prefix.len()..];
        let with = with.trim_end_matches('/');
        let mut out = String::with_capacity(with.len() + rest.len() + 1);
        out.push_str(with);
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Cow::Owned(out)
    }
}

/// Where a route sends requests.
#[derive(Debug)]
pub enum Target {
    /// One cluster.
    Cluster(Arc<Cluster>),
    /// Weighted clusters.
    Split {
        /// `(cluster, cumulative weight)` in config order.
        targets: Vec<(Arc<Cluster>, u64)>,
        /// Sum of the weights.
        total: u64,
        /// The last target, so a draw always lands somewhere without a fallible lookup.
        last: Arc<Cluster>,
    },
}

impl Target {
    /// The cluster for this request (a weighted random draw for splits).
    pub fn choose(&self) -> &Arc<Cluster> {
        match self {
            Target::Cluster(c) => c,
            Target::Split {
                targets,
                total,
                last,
            } => {
                let draw = fastrand::u64(..(*total).max(1));
                targets
                    .iter()
                    .find(|(_, cum)| draw < *cum)
                    .map_or(last, |(c, _)| c)
            }
        }
    }

    /// Cluster names with their share in percent, for explain and `/routes`.
    pub fn describe(&self) -> Vec<(String, f64)> {
        match self {
            Target::Cluster(c) => vec![(c.name.to_string(), 100.0)],
            Target::Split { targets, total, .. } => {
                let total = (*total).max(1) as f64;
                let mut prev = 0;
                targets
                    .iter()
                    .map(|(c, cum)| {
                        let share = (cum - prev) as f64 * 100.0 / total;
                        prev = *cum;
                        (c.name.to_string(), share)
                    })
                    .collect()
            }
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name (metrics label).
    pub name: Arc<str>,
    /// Match conditions.
    pub matcher: Matcher,
    /// Path rewrite.
    pub rewrite: Option<Rewrite>,
    /// Destination.
    pub target: Target,
    /// Bound on the whole upstream exchange, retries included.
    pub timeout: Duration,
    /// Retry policy from the route's `retry` filter.
    pub retry: Option<super::resilience::retry::RetryPolicy>,
    /// Filters in request order.
    pub filters: FilterChain,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// A router trying `routes` in order.
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        Self { routes }
    }

    /// The first route matching `req`.
    pub fn find(&self, req: &RouteInput<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matcher.check(req).is_ok())
    }

    /// Every route with its verdict up to and including the first match (for explain).
    pub fn trace(&self, req: &RouteInput<'_>) -> Vec<(&Arc<Route>, Result<(), Mismatch>)> {
        let mut out = Vec::new();
        for r in &self.routes {
            let verdict = r.matcher.check(req);
            let matched = verdict.is_ok();
            out.push((r, verdict));
            if matched {
                break;
            }
        }
        out
    }

    /// All routes in order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        method: &'a Method,
        host: &'a str,
        path: &'a str,
        headers: &'a http::HeaderMap,
    ) -> RouteInput<'a> {
        RouteInput {
            method,
            host,
            path,
            headers,
            listener: None,
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        assert!(under_prefix("/api", "/api"));
        assert!(under_prefix("/api/", "/api"));
        assert!(under_prefix("/api/x", "/api"));
        assert!(!under_prefix("/apix", "/api"));
        assert!(under_prefix("/anything", ""));
    }

    #[test]
    fn matcher_checks_every_condition() {
        let m = Matcher::new(
            Some("*.shop.local"),
            None,
            Some("/api/"),
            vec![Method::GET],
            vec![(
                HeaderName::from_static("x-canary"),
                HeaderValue::from_static("1"),
            )],
        );
        let mut h = http::HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("1"));
        let get = Method::GET;
        assert_eq!(m.check(&input(&get, "eu.shop.local", "/api/x", &h)), Ok(()));
        assert!(matches!(
            m.check(&input(&get, "shop.local", "/api/x", &h)),
            Err(Mismatch::Host(_))
        ));
        assert!(matches!(
            m.check(&input(&get, "a.b.shop.local", "/api/x", &h)),
            Err(Mismatch::Host(_))
        ));
        assert!(matches!(
            m.check(&input(&get, "eu.shop.local", "/apix", &h)),
            Err(Mismatch::PathPrefix(_))
        ));
        assert_eq!(
            m.check(&input(&Method::POST, "eu.shop.local", "/api", &h)),
            Err(Mismatch::Method)
        );
        let empty = http::HeaderMap::new();
        assert!(matches!(
            m.check(&input(&get, "eu.shop.local", "/api", &empty)),
            Err(Mismatch::Header(_))
        ));
    }

    #[test]
    fn listener_restriction_keeps_inbound_and_outbound_apart() {
        let m =
            Matcher::new(None, None, None, vec![], vec![]).on_listeners(vec!["outbound".into()]);
        let h = http::HeaderMap::new();
        let get = Method::GET;
        let mut req = input(&get, "inventory", "/x", &h);
        req.listener = Some("outbound");
        assert_eq!(m.check(&req), Ok(()));
        req.listener = Some("inbound");
        assert_eq!(m.check(&req), Err(Mismatch::Listener));
        req.listener = None;
        assert_eq!(
            m.check(&req),
            Ok(()),
            "explain without a listener considers every route"
        );
    }

    #[test]
    fn rewrites_strip_and_replace() {
        let strip = Rewrite::StripPrefix("/api".into());
        assert_eq!(strip.apply("/api/orders/1"), "/orders/1");
        assert_eq!(strip.apply("/api"), "/");
        assert_eq!(strip.apply("/apix"), "/apix");
        let replace = Rewrite::ReplacePrefix {
            matched: "/v1".into(),
            with: "/v2/".into(),
        };
        assert_eq!(replace.apply("/v1/items"), "/v2/items");
        assert_eq!(replace.apply("/v1"), "/v2");
        let to_root = Rewrite::ReplacePrefix {
            matched: "/legacy".into(),
            with: "/".into(),
        };
        assert_eq!(to_root.apply("/legacy/x"), "/x");
    }
}
