//! Configuration: YAML text → [`ConfigSpec`] with every error located by YAML path and line.
//!
//! Loading happens in three passes so a user sees all problems at once, not one per run:
//! 1. [`yaml::parse`] builds a JSON-like tree plus a path → line index (bounded against
//!    alias bombs, `${VAR}` resolved);
//! 2. each section — and each list or map entry inside it — is deserialized on its own
//!    with `deny_unknown_fields`, so one bad route does not hide the next one's error;
//! 3. [`validate`] checks cross-references, names and values that types cannot express.
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
    let spec = deserialize_sections(&doc.value, &mut errors);
    let spec = match spec {
        Some(spec) if errors.is_empty() => spec,
        _ => return Err(locate_all(&doc.index, errors)),
    };
    validate::validate(&spec, base_dir, &mut errors);
    if errors.is_empty() {
        Ok(LoadedConfig {
            spec,
            index: doc.index,
        })
    } else {
        Err(locate_all(&doc.index, errors))
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

fn deserialize_sections(root: &Value, errors: &mut Vec<ConfigError>) -> Option<ConfigSpec> {
    let Some(map) = root.as_object() else {
        errors.push(ConfigError::new("", "the config must be a YAML mapping"));
        return None;
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
    let required = |name: &str, errors: &mut Vec<ConfigError>| {
        let v = map.get(name);
        if v.is_none() {
            errors.push(ConfigError::new(
                "",
                format!("missing required key `{name}`"),
            ));
        }
        v
    };
    let mode = required("mode", errors).and_then(|v| section(v, "mode", errors));
    let service = required("service", errors).and_then(|v| section(v, "service", errors));
    let trusted_proxies = opt_section(map.get("trusted_proxies"), "trusted_proxies", errors);
    let admin = opt_section(map.get("admin"), "admin", errors);
    let runtime = opt_section(map.get("runtime"), "runtime", errors);
    let listeners = required("listeners", errors).and_then(|v| list(v, "listeners", errors));

    let mut clusters = Some(std::collections::BTreeMap::new());
    match map.get("clusters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (name, v) in entries {
                let c = section(v, &child_key("clusters", name), errors);
                match (c, clusters.as_mut()) {
                    (Some(c), Some(all)) => {
                        all.insert(name.clone(), c);
                    }
                    _ => clusters = None,
                }
            }
        }
        Some(_) => {
            errors.push(ConfigError::new(
                "clusters",
                "expected a mapping of cluster names",
            ));
            clusters = None;
        }
    }

    let routes = match map.get("routes") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => {
            let mut out = Some(Vec::with_capacity(items.len()));
            for (i, item) in items.iter().enumerate() {
                let r = route(item, &child_index("routes", i), errors);
                match (r, out.as_mut()) {
                    (Some(r), Some(all)) => all.push(r),
                    _ => out = None,
                }
            }
            out
        }
        Some(_) => {
            errors.push(ConfigError::new("routes", "expected a list of routes"));
            None
        }
    };

    Some(ConfigSpec {
        mode: mode?,
        service: service?,
        trusted_proxies: trusted_proxies?.unwrap_or_default(),
        listeners: listeners?,
        admin: admin?,
        runtime: runtime?.unwrap_or_default(),
        clusters: clusters?,
        routes: routes?,
    })
}

/// An optional section: `Some(None)` when absent or null, `None` when it failed.
fn opt_section<T: DeserializeOwned>(
    value: Option<&Value>,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Option<T>> {
    match value {
        None | Some(Value::Null) => Some(None),
        Some(v) => section(v, base, errors).map(Some),
    }
}

fn list<T: DeserializeOwned>(
    value: &Value,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<T>> {
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::new(base, "expected a list"));
        return None;
    };
    let mut out = Some(Vec::with_capacity(items.len()));
    for (i, item) in items.iter().enumerate() {
        let v = section(item, &child_index(base, i), errors);
        match (v, out.as_mut()) {
            (Some(v), Some(all)) => all.push(v),
            _ => out = None,
        }
    }
    out
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
        Some(v) => list(&v, &child_key(base, "filters"), errors),
    };
    let mut route = route?;
    route.filters = filters?;
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

/// The spec as JSON for `/config`, with secret values replaced by `"[redacted]"` and
/// passwords removed from URLs (`redis://:pw@host` → `redis://:[redacted]@host`).
pub fn redacted(spec: &ConfigSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
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
