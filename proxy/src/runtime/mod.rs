//! The immutable [`Runtime`]: one config generation compiled for the request path.
//!
//! A reload compiles a whole new `Runtime` and swaps it in atomically ([`arc_swap`]); each
//! request loads the current one once and uses it to the end, so a request never sees half
//! of one config and half of another. State that must outlive a generation (endpoint health
//! and load) lives in [`cluster::EndpointRegistry`], outside the runtime.

pub mod cluster;
pub mod health;
pub mod router;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use meshgate_filters::body_limit::BodyLimitFilter;
use meshgate_filters::headers::HeadersFilter;
use meshgate_filters::{Filter, FilterChain};

use crate::config::spec::{ConfigSpec, FilterSpec, RouteSpec};
use crate::config::yaml::{child_index, child_key};
use crate::config::ConfigError;
use crate::forwarding::TrustedProxies;
use cluster::{Cluster, EndpointRegistry};
use router::{Matcher, Rewrite, Route, Router, Target};

/// Request-path limits from `runtime:`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request header block in bytes.
    pub max_header_size: usize,
    /// Downstream keep-alive idle timeout.
    pub idle_timeout: Duration,
}

/// One compiled config generation.
#[derive(Debug)]
pub struct Runtime {
    /// Generation number, 1 for the config loaded at start, +1 per successful reload.
    pub generation: u64,
    /// The spec this runtime was compiled from (served, redacted, by `/config`).
    pub spec: Arc<ConfigSpec>,
    /// Route table.
    pub router: Router,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Proxies whose forwarding headers are trusted.
    pub trusted: TrustedProxies,
    /// Request-path limits.
    pub limits: Limits,
}

impl Runtime {
    /// Compiles a validated spec. Errors carry YAML paths; the caller adds positions.
    pub fn compile(
        spec: Arc<ConfigSpec>,
        generation: u64,
        registry: &EndpointRegistry,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();

        let mut clusters = BTreeMap::new();
        for (name, c) in &spec.clusters {
            match Cluster::compile(name, c, registry) {
                Ok(c) => {
                    clusters.insert(name.clone(), Arc::new(c));
                }
                Err(errs) => {
                    for (i, msg) in errs {
                        errors.push(ConfigError::new(
                            child_index(&child_key(&child_key("clusters", name), "endpoints"), i),
                            msg,
                        ));
                    }
                }
            }
        }

        let mut routes = Vec::with_capacity(spec.routes.len());
        for (i, r) in spec.routes.iter().enumerate() {
            if let Some(route) = compile_route(r, &child_index("routes", i), &clusters, &mut errors)
            {
                routes.push(Arc::new(route));
            }
        }

        let nets = spec
            .trusted_proxies
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c))
            .collect();

        if !errors.is_empty() {
            return Err(errors);
        }
        let live: HashSet<(String, String)> = spec
            .clusters
            .iter()
            .flat_map(|(n, c)| c.endpoints.iter().map(move |e| (n.clone(), e.clone())))
            .collect();
        registry.retain(&live);

        let limits = Limits {
            max_header_size: usize::try_from(spec.runtime.max_header_size.bytes())
                .unwrap_or(usize::MAX),
            idle_timeout: spec.runtime.idle_timeout.get(),
        };
        Ok(Self {
            generation,
            router: Router::new(routes),
            clusters,
            trusted: TrustedProxies::new(nets),
            limits,
            spec,
        })
    }

    /// Cluster lookup by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

fn compile_route(
    r: &RouteSpec,
    base: &str,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Route> {
    let m = &r.matcher;
    // Names and values were validated; parse failures here would be bugs, reported not panicked.
    let methods: Vec<Method> = m
        .methods
        .iter()
        .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
        .collect();
    let headers: Vec<(HeaderName, HeaderValue)> = m
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    let matcher = Matcher::new(
        m.host.as_deref(),
        m.path.as_deref(),
        m.path_prefix.as_deref(),
        methods,
        headers,
    );
    let rewrite = r.rewrite.as_ref().and_then(|rw| {
        if let Some(p) = &rw.strip_prefix {
            Some(Rewrite::StripPrefix(p.trim_end_matches('/').to_string()))
        } else {
            rw.replace_prefix
                .as_ref()
                .map(|with| Rewrite::ReplacePrefix {
                    matched: m
                        .path_prefix
                        .as_deref()
                        .unwrap_or("")
                        .trim_end_matches('/')
                        .to_string(),
                    with: with.clone(),
                })
        }
    });

    let target = match (&r.to, &r.split) {
        (Some(to), _) => Target::Cluster(lookup(clusters, to, &child_key(base, "to"), errors)?),
        (None, Some(split)) => {
            let mut targets = Vec::with_capacity(split.len());
            let mut cum = 0u64;
            for (i, s) in split.iter().enumerate() {
                let path = child_key(&child_index(&child_key(base, "split"), i), "cluster");
                let c = lookup(clusters, &s.cluster, &path, errors)?;
                cum += u64::from(s.weight);
                targets.push((c, cum));
            }
            let last = targets.last()?.0.clone();
            Target::Split {
                targets,
                total: cum,
                last,
            }
        }
        (None, None) => return None,
    };

    let mut filters: Vec<Arc<dyn Filter>> = Vec::with_capacity(r.filters.len());
    for (i, f) in r.filters.iter().enumerate() {
        let fbase = child_key(&child_index(&child_key(base, "filters"), i), f.name());
        match compile_filter(f) {
            Ok(f) => filters.push(f),
            Err(errs) => errors.extend(
                errs.into_iter()
                    .map(|e| ConfigError::new(child_key_path(&fbase, &e.path), e.message)),
            ),
        }
    }

    Some(Route {
        name: r.name.as_str().into(),
        matcher,
        rewrite,
        target,
        timeout: r.timeout.get(),
        filters: FilterChain::new(filters),
    })
}

/// Joins a filter-relative path (`request.set.x`) under the filter's own path.
fn child_key_path(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{rel}")
    }
}

fn lookup(
    clusters: &BTreeMap<String, Arc<Cluster>>,
    name: &str,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<Cluster>> {
    let found = clusters.get(name).cloned();
    if found.is_none() && !errors.iter().any(|e| e.path.starts_with("clusters.")) {
        errors.push(ConfigError::new(path, format!("unknown cluster {name:?}")));
    }
    found
}

fn compile_filter(spec: &FilterSpec) -> Result<Arc<dyn Filter>, Vec<meshgate_filters::SpecError>> {
    Ok(match spec {
        FilterSpec::Headers(h) => Arc::new(HeadersFilter::new(h)?),
        FilterSpec::BodyLimit(limit) => Arc::new(BodyLimitFilter::new(*limit)),
    })
}

/// Summary of a route for `/routes` and `explain`.
pub fn describe_route(route: &Route) -> HashMap<&'static str, serde_json::Value> {
    let mut out = HashMap::new();
    out.insert("name", serde_json::Value::from(route.name.as_ref()));
    out.insert("filters", serde_json::Value::from(route.filters.names()));
    out.insert(
        "targets",
        serde_json::Value::from(
            route
                .target
                .describe()
                .into_iter()
                .map(|(c, share)| serde_json::json!({ "cluster": c, "percent": share }))
                .collect::<Vec<_>>(),
        ),
    );
    out.insert(
        "timeout",
        serde_json::Value::from(humantime::format_duration(route.timeout).to_string()),
    );
    out
}
