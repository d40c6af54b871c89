//! The immutable [`Runtime`]: one config generation compiled for the request path.
//!
//! A reload compiles a whole new `Runtime` and swaps it in atomically ([`arc_swap`]); each
//! request loads the current one once and uses it to the end, so a request never sees half
//! of one config and half of another. State that must outlive a generation (endpoint health
//! and load) lives in [`cluster::EndpointRegistry`], outside the runtime.

pub mod cluster;
pub mod health;
pub mod resilience;
pub mod router;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use meshgate_filters::allow_callers::AllowCallersFilter;
use meshgate_filters::api_key::ApiKeyFilter;
use meshgate_filters::bff::store::SessionStore;
use meshgate_filters::bff::{Bff, BffFilter, BffStats};
use meshgate_filters::body_limit::BodyLimitFilter;
use meshgate_filters::cors::CorsFilter;
use meshgate_filters::fault::FaultFilter;
use meshgate_filters::headers::HeadersFilter;
use meshgate_filters::jwt::{JwtFilter, Provider};
use meshgate_filters::rate_limit::{RateLimitFilter, RateLimitStores};
use meshgate_filters::{Filter, FilterChain};

use crate::config::spec::{ConfigSpec, FilterSpec, RouteSpec};
use crate::config::yaml::{child_index, child_key};
use crate::config::ConfigError;
use crate::forwarding::TrustedProxies;
use cluster::{Cluster, EndpointRegistry};
use resilience::budget::BudgetRegistry;
use resilience::retry::{RetryMarker, RetryPolicy};
use router::{Matcher, Rewrite, Route, Router, Target};

/// State that outlives config generations: endpoint health, breakers and ejections, retry
/// budgets, rate-limit buckets and the Redis connection. Created once per process from the
/// config's `stores` section; each compile takes `Arc`s into it.
#[derive(Debug)]
pub struct SharedState {
    /// Per-endpoint state, keyed by cluster and endpoint.
    pub endpoints: EndpointRegistry,
    /// Retry budgets, keyed by route.
    pub budgets: BudgetRegistry,
    /// Rate-limit buckets and the global store.
    pub rate_limits: RateLimitStores,
    /// The `stores` section these were built from (JSON), to detect changes on reload.
    pub stores_fingerprint: String,
    /// OpenID Providers by name: their key caches survive reloads that keep them compatible.
    providers: std::sync::Mutex<std::collections::HashMap<String, Arc<Provider>>>,
    /// BFF sessions (memory or Redis, from `stores.sessions`).
    pub sessions: Arc<dyn SessionStore>,
    /// BFF counters.
    pub bff_stats: Arc<BffStats>,
}

impl SharedState {
    /// Builds the process state for `stores`. No network I/O happens here.
    pub fn new(stores: &crate::config::spec::StoresSpec) -> Result<Self, String> {
        Ok(Self {
            endpoints: EndpointRegistry::default(),
            budgets: BudgetRegistry::default(),
            rate_limits: RateLimitStores::new(stores.rate_limits.as_ref())?,
            sessions: meshgate_filters::bff::build_store(stores.sessions.as_ref())
                .map_err(|e| format!("stores.sessions: {e}"))?,
            bff_stats: Arc::default(),
            stores_fingerprint: serde_json::to_string(stores).unwrap_or_default(),
            providers: std::sync::Mutex::default(),
        })
    }

    /// The provider `name` for `spec`: the existing one when its settings are compatible
    /// (keeping its key cache), else a new one.
    pub fn provider(
        &self,
        name: &str,
        spec: &meshgate_filters::jwt::ProviderSpec,
    ) -> Result<Arc<Provider>, Vec<meshgate_filters::SpecError>> {
        let mut map = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = map.get(name).filter(|p| p.is_compatible(spec)) {
            return Ok(p.clone());
        }
        let p = Provider::new(spec)?;
        map.insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// Every provider currently known, with its name (for metrics and prefetching).
    pub fn providers(&self) -> Vec<(String, Arc<Provider>)> {
        self.providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }
}

/// Request-path limits from `runtime:`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request header block in bytes.
    pub max_header_size: usize,
    /// Downstream keep-alive idle timeout.
    pub idle_timeout: Duration,
    /// Whether a client's FIN after its HTTP/1 request abandons the request.
    pub abort_on_client_close: bool,
}

/// One compiled config generation.
#[derive(Debug)]
pub struct Runtime {
    /// Generation number, 1 for the config loaded at start, +1 per successful reload.
    pub generation: u64,
    /// The spec this runtime was compiled from (served, redacted, by `/config`).
    pub spec: Arc<ConfigSpec>,
    /// Scalars of the source file that used `${...}` (path, template), for `/config`.
    pub templates: Vec<(String, String)>,
    /// Route table.
    pub router: Router,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Proxies whose forwarding headers are trusted.
    pub trusted: TrustedProxies,
    /// Request-path limits.
    pub limits: Limits,
    /// Browser sessions and the `/auth/*` endpoints, when configured.
    pub bff: Option<Arc<Bff>>,
}

impl Runtime {
    /// Compiles a validated spec. Errors carry YAML paths; the caller adds positions.
    pub fn compile(
        spec: Arc<ConfigSpec>,
        generation: u64,
        shared: &SharedState,
        base_dir: &Path,
    ) -> Result<Self, Vec<ConfigError>> {
        let registry = &shared.endpoints;
        let mut errors = Vec::new();

        let mut clusters = BTreeMap::new();
        for (name, c) in &spec.clusters {
            match Cluster::compile(name, c, registry) {
                Ok(mut compiled) => {
                    if let Some(t) = &c.tls {
                        match crate::tls::upstream(base_dir, &t.identity, &t.ca, &t.cert, &t.key) {
                            Ok(u) => compiled.tls = Some(Arc::new(u)),
                            Err(msg) => errors.push(ConfigError::new(
                                child_key(&child_key("clusters", name), "tls"),
                                msg,
                            )),
                        }
                    }
                    clusters.insert(name.clone(), Arc::new(compiled));
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

        let mut bff = None;
        if let Some(b) = &spec.bff {
            let made = match spec.providers.get(&b.provider) {
                Some(pspec) => shared.provider(&b.provider, pspec).and_then(|p| {
                    Bff::new(
                        b,
                        pspec,
                        p,
                        shared.sessions.clone(),
                        shared.bff_stats.clone(),
                    )
                }),
                None => Err(vec![meshgate_filters::SpecError::new(
                    "provider",
                    format!("unknown provider {:?}", b.provider),
                )]),
            };
            match made {
                Ok(made) => bff = Some(made),
                Err(errs) => errors.extend(
                    errs.into_iter()
                        .map(|e| ConfigError::new(child_key_path("bff", &e.path), e.message)),
                ),
            }
        }

        let mut routes = Vec::with_capacity(spec.routes.len());
        for (i, r) in spec.routes.iter().enumerate() {
            if let Some(route) = compile_route(
                r,
                &child_index("routes", i),
                &clusters,
                Auth {
                    providers: &spec.providers,
                    bff: bff.as_ref(),
                },
                shared,
                base_dir,
                &mut errors,
            ) {
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
            abort_on_client_close: spec.runtime.abort_on_client_close,
        };
        Ok(Self {
            generation,
            router: Router::new(routes),
            clusters,
            trusted: TrustedProxies::new(nets),
            limits,
            spec,
            templates: Vec::new(),
            bff,
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
    auth: Auth<'_>,
    shared: &SharedState,
    base_dir: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<Route> {
    let Auth { providers, bff } = auth;
    let m = &r.matcher;
    // Names and values were validated; parse failures here would be bugs, reported not panicked.
    let mut methods: Vec<Method> = m
        .methods
        .iter()
        .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
        .collect();
    // A CORS preflight is an OPTIONS request for the route's resource; without this a route
    // limited to GET/POST would answer the browser's preflight with 404.
    let has_cors = r.filters.iter().any(|f| matches!(f, FilterSpec::Cors(_)));
    if has_cors && !methods.is_empty() && !methods.contains(&Method::OPTIONS) {
        methods.push(Method::OPTIONS);
    }
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
    )
    .on_listeners(m.listeners.clone());
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
    let mut retry = None;
    for (i, f) in r.filters.iter().enumerate() {
        let fbase = child_key(&child_index(&child_key(base, "filters"), i), f.name());
        if let FilterSpec::Retry(spec) = f {
            if retry.is_some() {
                errors.push(ConfigError::new(
                    fbase,
                    "a route takes at most one retry filter",
                ));
                continue;
            }
            if !(1..=10).contains(&spec.attempts) {
                errors.push(ConfigError::new(
                    format!("{fbase}.attempts"),
                    "must be between 1 and 10",
                ));
            }
            if spec.per_try_timeout.is_some_and(|d| d.get().is_zero()) {
                errors.push(ConfigError::new(
                    format!("{fbase}.per_try_timeout"),
                    "must be greater than zero",
                ));
            }
            retry = Some(RetryPolicy::new(spec, shared.budgets.budget(&r.name)));
            filters.push(Arc::new(RetryMarker));
            continue;
        }
        if let FilterSpec::Bff(b) = f {
            match bff {
                Some(bff) => filters.push(Arc::new(BffFilter::new(b, bff.clone()))),
                None => errors.push(ConfigError::new(
                    fbase,
                    "the bff filter needs the top-level `bff` section",
                )),
            }
            continue;
        }
        if let FilterSpec::Jwt(jwt) = f {
            let Some(pspec) = providers.get(&jwt.provider) else {
                errors.push(ConfigError::new(
                    format!("{fbase}.provider"),
                    format!("unknown provider {:?}", jwt.provider),
                ));
                continue;
            };
            let made = shared
                .provider(&jwt.provider, pspec)
                .and_then(|p| JwtFilter::new(jwt, p));
            match made {
                Ok(f) => filters.push(Arc::new(f)),
                Err(errs) => errors.extend(
                    errs.into_iter()
                        .map(|e| ConfigError::new(child_key_path(&fbase, &e.path), e.message)),
                ),
            }
            continue;
        }
        match compile_filter(f, &r.name, i, shared, base_dir) {
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
        retry,
        filters: FilterChain::new(filters),
    })
}

/// What authentication filters compile against: the providers and the generation's BFF.
#[derive(Clone, Copy)]
struct Auth<'a> {
    providers: &'a BTreeMap<String, meshgate_filters::jwt::ProviderSpec>,
    bff: Option<&'a Arc<Bff>>,
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

fn compile_filter(
    spec: &FilterSpec,
    route: &str,
    index: usize,
    shared: &SharedState,
    base_dir: &Path,
) -> Result<Arc<dyn Filter>, Vec<meshgate_filters::SpecError>> {
    Ok(match spec {
        FilterSpec::RateLimit(rl) => {
            Arc::new(RateLimitFilter::new(rl, route, index, &shared.rate_limits)?)
        }
        FilterSpec::ApiKey(k) => Arc::new(ApiKeyFilter::new(k, base_dir)?),
        FilterSpec::Cors(c) => Arc::new(CorsFilter::new(c)?),
        FilterSpec::AllowCallers(names) => Arc::new(AllowCallersFilter::new(names)?),
        FilterSpec::Headers(h) => Arc::new(HeadersFilter::new(h)?),
        FilterSpec::BodyLimit(limit) => Arc::new(BodyLimitFilter::new(*limit)),
        FilterSpec::Fault(f) => Arc::new(FaultFilter::new(f)?),
        // Compiled into the route's retry policy by `compile_route`.
        FilterSpec::Retry(_) => Arc::new(RetryMarker),
        // Compiled by `compile_route`, which has the providers and the BFF.
        FilterSpec::Jwt(_) | FilterSpec::Bff(_) => {
            return Err(vec![meshgate_filters::SpecError::new(
                "",
                "internal: compiled by compile_route",
            )])
        }
    })
}
