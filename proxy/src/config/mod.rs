//! Configuration: YAML text → [`ConfigSpec`] with every error located by YAML path and line.
//!
//! Loading happens in three passes so a user sees all problems at once, not one per run:
//! 1. [`yaml::parse`] builds a JSON-like tree plus a path → line index (bounded against
//!    alias bombs, `${VAR}` resolved);
//! 2. each section — and each list or map entry inside it — is deserialized on its own
//!    with `deny_unknown_fields`, so one bad route does not hide the next one's error;
//! 3. `validate` checks cross-references, names and values that types cannot express.
//!
//! The runtime compile step (see [`crate::runtime`]) adds the errors only it can find (TLS
//! files, filter internals); all of them come back as [`ConfigError`]s located the same way.

pub mod error;
pub mod spec;
mod validate;
pub use validate::parse_cidr;
pub mod yaml;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::{ConfigError, Location};
pub use spec::ConfigSpec;
use yaml::{child_index, child_key, LineIndex};

/// A parsed and validated config file, with what is needed to locate later errors.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The typed config.
    pub spec: ConfigSpec,
    /// Path → position index of the source file.
    pub index: LineIndex,
    /// Scalars that used `${...}`: their paths and template text (for `/config`).
    pub interpolated: Vec<(String, String)>,
}

impl LoadedConfig {
    /// Fills in positions of errors found after loading (e.g. by the runtime compiler).
    pub fn locate(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        locate_all(&self.index, errors)
    }
}

/// Reads and loads a file; I/O problems are reported as a single error.
pub fn load_file(path: &Path) -> Result<LoadedConfig, Vec<ConfigError>> {
    // A config larger than this is a mistake (or an attack on the parser), not a config.
    const MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(vec![ConfigError::new(
            "",
            format!("{} is larger than {MAX_CONFIG_BYTES} bytes", path.display()),
        )]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, &|name| std::env::var(name).ok())
}

/// Loads config text. Relative file paths inside it (certificates) are resolved against
/// `base_dir`. `env` resolves `${NAME}`.
pub fn load_str(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, Vec<ConfigError>> {
    let doc = yaml::parse(text, env)?;
    let mut errors = Vec::new();
    // Sections that failed to parse are left out (with their errors recorded) and the rest
    // is still validated, so one run reports type errors and cross-reference errors alike.
    let (spec, partial) = deserialize_sections(&doc.value, &mut errors);
    validate::validate(&spec, &partial, base_dir, &mut errors);
    if errors.is_empty() {
        Ok(LoadedConfig {
            spec,
            index: doc.index,
            interpolated: doc.interpolated,
        })
    } else {
        Err(locate_all(&doc.index, errors))
    }
}

/// What could not be parsed, so validation does not report follow-on errors about it.
#[derive(Debug, Default)]
pub(crate) struct Partial {
    /// Clusters whose definition failed to parse (references to them are not "unknown").
    pub failed_clusters: std::collections::HashSet<String>,
    /// Providers whose definition failed to parse.
    pub failed_providers: std::collections::HashSet<String>,
    /// Some top-level section failed entirely (`clusters`, `listeners`, `service`, …).
    pub failed_sections: std::collections::HashSet<&'static str>,
    /// Position in the file of each parsed listener (entries that failed are skipped).
    pub listener_index: Vec<usize>,
    /// Position in the file of each parsed route.
    pub route_index: Vec<usize>,
}

impl Partial {
    /// The file position of parsed listener `i`, for error paths.
    pub fn listener(&self, i: usize) -> usize {
        self.listener_index.get(i).copied().unwrap_or(i)
    }

    /// The file position of parsed route `i`, for error paths.
    pub fn route(&self, i: usize) -> usize {
        self.route_index.get(i).copied().unwrap_or(i)
    }
}

fn locate_all(index: &LineIndex, errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors
        .into_iter()
        .map(|e| {
            if e.location.is_some() {
                e
            } else {
                let loc = index.locate(&e.path);
                e.at(loc)
            }
        })
        .collect()
}

/// Deserializes `value` as `T`, turning a serde error into a [`ConfigError`] whose path is
/// `base` + the path serde was at.
fn section<T: DeserializeOwned>(
    value: &Value,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let mut path = base.to_string();
            for seg in e.path().iter() {
                path = match seg {
                    serde_path_to_error::Segment::Seq { index } => child_index(&path, *index),
                    serde_path_to_error::Segment::Map { key } => child_key(&path, key),
                    serde_path_to_error::Segment::Enum { variant } => child_key(&path, variant),
                    serde_path_to_error::Segment::Unknown => path,
                };
            }
            errors.push(ConfigError::new(path, e.into_inner().to_string()));
            None
        }
    }
}

fn deserialize_sections(root: &Value, errors: &mut Vec<ConfigError>) -> (ConfigSpec, Partial) {
    let mut partial = Partial::default();
    let empty = serde_json::Map::new();
    let map = match root.as_object() {
        Some(m) => m,
        None => {
            errors.push(ConfigError::new("", "the config must be a YAML mapping"));
            partial
                .failed_sections
                .extend(spec::TOP_LEVEL_KEYS.iter().copied());
            &empty
        }
    };
    for key in map.keys() {
        if !spec::TOP_LEVEL_KEYS.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                child_key("", key),
                format!(
                    "unknown key `{key}`, expected one of {}",
                    spec::TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
    }
    let mut take = |name: &'static str, required: bool, errors: &mut Vec<ConfigError>| {
        let v = map.get(name).filter(|v| !v.is_null());
        if v.is_none() && required && root.is_object() {
            errors.push(ConfigError::new(
                "",
                format!("missing required key `{name}`"),
            ));
            partial.failed_sections.insert(name);
        }
        v
    };
    let mode = take("mode", true, errors).and_then(|v| section(v, "mode", errors));
    let service = take("service", true, errors).and_then(|v| section(v, "service", errors));
    let trusted_proxies =
        take("trusted_proxies", false, errors).map(|v| section(v, "trusted_proxies", errors));
    let admin = take("admin", false, errors).map(|v| section(v, "admin", errors));
    let runtime = take("runtime", false, errors).map(|v| section(v, "runtime", errors));
    let stores = take("stores", false, errors).map(|v| section(v, "stores", errors));
    let providers_value = take("providers", false, errors);
    let bff = take("bff", false, errors).map(|v| section(v, "bff", errors));
    let listeners = take("listeners", true, errors).map(|v| list(v, "listeners", errors));
    let clusters_value = take("clusters", false, errors);
    let routes_value = take("routes", false, errors);

    let mut failed = |name: &'static str, ok: bool| {
        if !ok {
            partial.failed_sections.insert(name);
        }
    };
    failed("mode", mode.is_some());
    failed("service", service.is_some());
    failed("trusted_proxies", !matches!(trusted_proxies, Some(None)));
    failed("admin", !matches!(admin, Some(None)));
    failed("runtime", !matches!(runtime, Some(None)));
    failed("stores", !matches!(stores, Some(None)));
    failed("bff", !matches!(bff, Some(None)));
    failed("listeners", !matches!(listeners, Some((_, _, true))));

    let mut clusters = std::collections::BTreeMap::new();
    match clusters_value {
        None => {}
        Some(Value::Object(entries)) => {
            for (name, v) in entries {
                match section(v, &child_key("clusters", name), errors) {
                    Some(c) => {
                        clusters.insert(name.clone(), c);
                    }
                    None => {
                        partial.failed_clusters.insert(name.clone());
                    }
                }
            }
        }
        Some(_) => {
            errors.push(ConfigError::new(
                "clusters",
                "expected a mapping of cluster names",
            ));
            partial.failed_sections.insert("clusters");
        }
    }

    let mut providers = std::collections::BTreeMap::new();
    match providers_value {
        None => {}
        Some(Value::Object(entries)) => {
            for (name, v) in entries {
                match section(v, &child_key("providers", name), errors) {
                    Some(p) => {
                        providers.insert(name.clone(), p);
                    }
                    None => {
                        partial.failed_providers.insert(name.clone());
                    }
                }
            }
        }
        Some(_) => {
            errors.push(ConfigError::new(
                "providers",
                "expected a mapping of provider names",
            ));
            partial.failed_sections.insert("providers");
        }
    }

    let mut routes = Vec::new();
    match routes_value {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match route(item, &child_index("routes", i), errors) {
                    Some(r) => {
                        routes.push(r);
                        partial.route_index.push(i);
                    }
                    None => {
                        partial.failed_sections.insert("routes");
                    }
                }
            }
        }
        Some(_) => {
            errors.push(ConfigError::new("routes", "expected a list of routes"));
            partial.failed_sections.insert("routes");
        }
    }

    let spec = ConfigSpec {
        mode: mode.unwrap_or(spec::Mode::Edge),
        service: service.unwrap_or_default(),
        trusted_proxies: trusted_proxies.flatten().unwrap_or_default(),
        listeners: match listeners {
            Some((l, idx, _)) => {
                partial.listener_index = idx;
                l
            }
            None => Vec::new(),
        },
        admin: admin.flatten(),
        runtime: runtime.flatten().unwrap_or_default(),
        stores: stores.flatten().unwrap_or_default(),
        providers,
        bff: bff.flatten(),
        clusters,
        routes,
    };
    (spec, partial)
}

/// Each element on its own: returns the elements that parsed, their positions in the
/// list, and whether any failed.
fn list<T: DeserializeOwned>(
    value: &Value,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> (Vec<T>, Vec<usize>, bool) {
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::new(base, "expected a list"));
        return (Vec::new(), Vec::new(), true);
    };
    let mut out = Vec::with_capacity(items.len());
    let mut index = Vec::with_capacity(items.len());
    let mut failed = false;
    for (i, item) in items.iter().enumerate() {
        match section(item, &child_index(base, i), errors) {
            Some(v) => {
                out.push(v);
                index.push(i);
            }
            None => failed = true,
        }
    }
    (out, index, failed)
}

/// A route is deserialized without its filters, then each filter on its own, so a typo in
/// one filter does not hide errors in the next.
fn route(value: &Value, base: &str, errors: &mut Vec<ConfigError>) -> Option<spec::RouteSpec> {
    let Some(obj) = value.as_object() else {
        errors.push(ConfigError::new(base, "expected a route mapping"));
        return None;
    };
    let mut without_filters = obj.clone();
    let filters = without_filters.remove("filters");
    let route: Option<spec::RouteSpec> = section(&Value::Object(without_filters), base, errors);
    let filters = match filters {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(v) => match list(&v, &child_key(base, "filters"), errors) {
            (f, _, false) => Some(f),
            // The config is already rejected by the filter's own error; the route is still
            // validated for its target and match, but without filters that would be
            // misnumbered.
            (_, _, true) => None,
        },
    };
    let mut route = route?;
    route.filters = filters.unwrap_or_default();
    Some(route)
}

#[cfg(test)]
mod tests;

/// Keys whose values are secrets wherever they appear in a config.
const SECRET_KEYS: &[&str] = &[
    "client_secret",
    "session_key",
    "password",
    "secret",
    "token",
];

/// The spec as JSON for `/config`: values that came from `${...}` are shown as their
/// template (environment values may be secrets), secret-named keys read `"[redacted]"`, and
/// passwords are removed from URLs (`redis://:pw@host` → `redis://:[redacted]@host`).
pub fn redacted(spec: &ConfigSpec, interpolated: &[(String, String)]) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    yaml::restore_templates(&mut v, interpolated);
    redact(&mut v);
    v
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) && !child.is_null() {
                    *child = Value::from("[redacted]");
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(clean) = redact_url_password(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

fn redact_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    if host.contains('/') && host.find('/') < rest.find('@') {
        return None;
    }
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:[redacted]@{host}"))
}
