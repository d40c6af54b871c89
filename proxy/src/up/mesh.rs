//! The topology file of `meshgate up` (`config/mesh.yaml`): which processes make the demo
//! mesh, on which loopback ports, with which config files.
//!
//! It is read like a proxy config ([`crate::config::yaml`]: `${VAR}` expansion, bounded
//! aliases, line numbers), deserialized with `deny_unknown_fields`, then checked as a whole
//! so one run reports every problem: names, duplicate ports, missing files and
//! placeholders. Relative paths are resolved against the file's directory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_filters::units::HumanDuration;
use serde::Deserialize;

use crate::config::yaml::{self, child_index, child_key};
use crate::config::ConfigError;

/// Names `meshgate up` gives its own processes; a service cannot take them.
const RESERVED_NAMES: [&str; 3] = ["edge", "identity", "web"];

/// The placeholder in a service's `args` for its sidecar's outbound URL.
pub const OUTBOUND_PLACEHOLDER: &str = "{outbound}";

/// `mesh.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSpec {
    /// Certificates, secrets, data, pid files and logs; relative to the file.
    pub state_dir: PathBuf,
    /// How long every process may take to become healthy.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: HumanDuration,
    /// Extra environment for every process.
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    /// The dev OpenID Provider.
    pub identity: IdentitySpec,
    /// The shop's services, each with a sidecar.
    pub services: Vec<ServiceSpec>,
    /// The single-page app.
    pub web: WebSpec,
    /// The edge proxy.
    pub edge: EdgeSpec,
}

/// An environment value: YAML gives numbers and booleans their own types, which are
/// accepted and passed on as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string.
    Text(String),
    /// A number, passed as written.
    Number(serde_json::Number),
    /// `true` or `false`.
    Bool(bool),
}

impl Scalar {
    /// The value as the environment sees it.
    pub fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Number(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// `identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Binary name, found next to `meshgate`.
    #[serde(default = "default_identity_binary")]
    pub binary: String,
    /// Loopback port; the issuer is `http://127.0.0.1:<port>`.
    pub port: u16,
    /// Users YAML.
    pub users: PathBuf,
    /// Clients YAML; when absent, `meshgate up` writes one for the edge's URL.
    #[serde(default)]
    pub clients: Option<PathBuf>,
    /// `aud` of access tokens, passed to every service.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Logins printed when the mesh is ready.
    #[serde(default)]
    pub demo_logins: Vec<String>,
    /// Extra arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `services[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name: certificate identity, log and data directory name.
    pub name: String,
    /// Binary name, found next to `meshgate`; defaults to the service name.
    #[serde(default)]
    pub binary: Option<String>,
    /// The app's loopback port.
    pub port: u16,
    /// Its sidecar.
    pub sidecar: SidecarSpec,
    /// Extra arguments; `{outbound}` is the sidecar's outbound URL.
    #[serde(default)]
    pub args: Vec<String>,
}

impl ServiceSpec {
    /// The binary to run.
    pub fn binary(&self) -> &str {
        self.binary.as_deref().unwrap_or(&self.name)
    }
}

/// `services[].sidecar`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSpec {
    /// The sidecar's `meshgate run` config.
    pub config: PathBuf,
    /// Inbound (mTLS) listener port.
    pub inbound: u16,
    /// Admin port (`/readyz` tells `meshgate up` it is ready).
    pub admin: u16,
    /// Outbound listener port, for services that call others.
    #[serde(default)]
    pub outbound: Option<u16>,
}

/// `web`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSpec {
    /// Directory of static files.
    pub dir: PathBuf,
    /// Loopback port of the static file server.
    pub port: u16,
}

/// `edge`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// The edge's `meshgate run` config.
    pub config: PathBuf,
    /// Public port: the shop is `http://127.0.0.1:<port>`.
    pub port: u16,
    /// Admin port.
    pub admin: u16,
}

fn default_startup_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_identity_binary() -> String {
    "identity".to_string()
}
fn default_audience() -> String {
    "shop-api".to_string()
}

impl MeshSpec {
    /// Every port of the mesh with what it is for, in start order.
    pub fn ports(&self) -> Vec<(u16, String)> {
        let mut out = vec![(self.identity.port, "identity".to_string())];
        for s in &self.services {
            out.push((s.port, format!("{} app", s.name)));
        }
        for s in &self.services {
            out.push((s.sidecar.inbound, format!("{} sidecar inbound", s.name)));
            out.push((s.sidecar.admin, format!("{} sidecar admin", s.name)));
            if let Some(p) = s.sidecar.outbound {
                out.push((p, format!("{} sidecar outbound", s.name)));
            }
        }
        out.push((self.web.port, "web (static files)".to_string()));
        out.push((self.edge.port, "edge".to_string()));
        out.push((self.edge.admin, "edge admin".to_string()));
        out
    }

    /// `http://127.0.0.1:<identity.port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.identity.port)
    }

    /// `http://127.0.0.1:<edge.port>`.
    pub fn shop_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.edge.port)
    }
}

/// Whether `path` looks like a mesh topology rather than a proxy config: a YAML mapping
/// with top-level `services` and `edge` keys and no `listeners`. Used by `meshgate
/// validate` to check each kind of file the right way.
pub fn is_topology(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let top = |key: &str| text.lines().any(|l| l.starts_with(key));
    top("services:") && top("edge:") && !top("listeners:")
}

/// Reads, checks and resolves `path`. Errors are one line each: `FILE: line L:C: PATH: MESSAGE`.
pub fn load(path: &Path) -> Result<MeshSpec, Vec<String>> {
    let show = |errors: Vec<ConfigError>| -> Vec<String> {
        errors
            .into_iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect()
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "cannot read {}: {e} (run from the repository root, or pass --config FILE)",
            path.display()
        )]
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, &|name| std::env::var(name).ok()).map_err(show)
}

/// Loads mesh text; relative paths are resolved against `base`, `env` resolves `${NAME}`.
pub fn load_str(
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MeshSpec, Vec<ConfigError>> {
    let doc = yaml::parse(text, env)?;
    let locate = |errors: Vec<ConfigError>| -> Vec<ConfigError> {
        errors
            .into_iter()
            .map(|e| {
                let loc = doc.index.locate(&e.path);
                e.at(loc)
            })
            .collect()
    };
    let mut spec: MeshSpec = match serde_path_to_error::deserialize(&doc.value) {
        Ok(spec) => spec,
        Err(e) => {
            let mut path = String::new();
            for seg in e.path().iter() {
                path = match seg {
                    serde_path_to_error::Segment::Seq { index } => child_index(&path, *index),
                    serde_path_to_error::Segment::Map { key } => child_key(&path, key),
                    serde_path_to_error::Segment::Enum { variant } => child_key(&path, variant),
                    serde_path_to_error::Segment::Unknown => path,
                };
            }
            return Err(locate(vec![ConfigError::new(
                path,
                e.into_inner().to_string(),
            )]));
        }
    };
    resolve_paths(&mut spec, base);
    let errors = check(&spec);
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(locate(errors))
    }
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    let joined = base.join(p);
    // Canonical paths read better in messages; a path that does not exist yet (the state
    // directory on first run) stays as joined, made absolute.
    joined
        .canonicalize()
        .or_else(|_| std::path::absolute(&joined))
        .unwrap_or(joined)
}

fn resolve_paths(spec: &mut MeshSpec, base: &Path) {
    spec.state_dir = absolute(base, &spec.state_dir);
    spec.identity.users = absolute(base, &spec.identity.users);
    if let Some(c) = &spec.identity.clients {
        spec.identity.clients = Some(absolute(base, c));
    }
    for s in &mut spec.services {
        s.sidecar.config = absolute(base, &s.sidecar.config);
    }
    spec.web.dir = absolute(base, &spec.web.dir);
    spec.edge.config = absolute(base, &spec.edge.config);
}

/// Whether `name` may be an environment variable name.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` may be a binary name (no path: binaries are found next to `meshgate`).
fn is_binary_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

fn check(spec: &MeshSpec) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, msg: String| errors.push(ConfigError::new(path, msg));

    if spec.startup_timeout.get().is_zero() {
        err("startup_timeout".into(), "must be greater than 0".into());
    }
    for key in spec.env.keys() {
        let path = child_key("env", key);
        if !is_env_name(key) {
            err(
                path,
                "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)".into(),
            );
        } else if key.starts_with("MESHGATE_") || key == "OIDC_CLIENT_SECRET" {
            err(
                path,
                "is set by `meshgate up` itself (from the ports and the state directory)".into(),
            );
        }
    }

    if !is_binary_name(&spec.identity.binary) {
        err(
            "identity.binary".into(),
            "must be a file name (binaries are found next to meshgate)".into(),
        );
    }
    if !spec.identity.users.is_file() {
        err(
            "identity.users".into(),
            format!("{} is not a file", spec.identity.users.display()),
        );
    }
    if let Some(c) = &spec.identity.clients {
        if !c.is_file() {
            err(
                "identity.clients".into(),
                format!("{} is not a file", c.display()),
            );
        }
    }
    if spec.identity.audience.trim().is_empty() {
        err("identity.audience".into(), "must not be empty".into());
    }

    if spec.services.is_empty() {
        err("services".into(), "at least one service is needed".into());
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, s) in spec.services.iter().enumerate() {
        let path = child_index("services", i);
        if let Err(e) = crate::certs::validate_service(&s.name) {
            err(child_key(&path, "name"), e.to_string());
        } else if RESERVED_NAMES.contains(&s.name.as_str()) {
            err(
                child_key(&path, "name"),
                format!(
                    "{:?} is the name of a process `meshgate up` starts itself",
                    s.name
                ),
            );
        } else if let Some(first) = names.insert(&s.name, i) {
            err(
                child_key(&path, "name"),
                format!("duplicate service {:?} (also services[{first}])", s.name),
            );
        }
        if !is_binary_name(s.binary()) {
            err(
                child_key(&path, "binary"),
                "must be a file name (binaries are found next to meshgate)".into(),
            );
        }
        if !s.sidecar.config.is_file() {
            err(
                child_key(&child_key(&path, "sidecar"), "config"),
                format!("{} is not a file", s.sidecar.config.display()),
            );
        }
        for (j, a) in s.args.iter().enumerate() {
            if a.contains(OUTBOUND_PLACEHOLDER) && s.sidecar.outbound.is_none() {
                err(
                    child_index(&child_key(&path, "args"), j),
                    format!("uses {OUTBOUND_PLACEHOLDER} but the sidecar has no `outbound` port"),
                );
            }
        }
    }
    if !spec.web.dir.is_dir() {
        err(
            "web.dir".into(),
            format!("{} is not a directory", spec.web.dir.display()),
        );
    }
    if !spec.edge.config.is_file() {
        err(
            "edge.config".into(),
            format!("{} is not a file", spec.edge.config.display()),
        );
    }

    let mut seen: HashMap<u16, String> = HashMap::new();
    for (port, what) in spec.ports() {
        if port == 0 {
            err(
                port_path(spec, &what),
                "port 0 is not allowed: the other processes need to know every port".into(),
            );
        } else if let Some(first) = seen.get(&port) {
            err(
                port_path(spec, &what),
                format!("port {port} is used twice: {first} and {what}"),
            );
        } else {
            seen.insert(port, what);
        }
    }
    errors
}

/// The YAML path of the port described as `what` by [`MeshSpec::ports`].
fn port_path(spec: &MeshSpec, what: &str) -> String {
    match what {
        "identity" => return "identity.port".into(),
        "edge" => return "edge.port".into(),
        "edge admin" => return "edge.admin".into(),
        "web (static files)" => return "web.port".into(),
        _ => {}
    }
    for (i, s) in spec.services.iter().enumerate() {
        let base = child_index("services", i);
        let sidecar = child_key(&base, "sidecar");
        if what == format!("{} app", s.name) {
            return child_key(&base, "port");
        }
        for key in ["inbound", "admin", "outbound"] {
            if what == format!("{} sidecar {key}", s.name) {
                return child_key(&sidecar, key);
            }
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_shipped_mesh_file_loads() {
        let spec = load(&repo().join("config/mesh.yaml")).expect("config/mesh.yaml is valid");
        let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["catalog", "inventory", "payments", "orders"]);
        assert_eq!(spec.edge.port, 3000);
        assert_eq!(spec.identity.port, 3001);
        assert!(
            spec.state_dir.ends_with(".meshgate"),
            "{:?}",
            spec.state_dir
        );
        assert!(spec.edge.config.is_absolute());
    }

    fn minimal(extra: &str) -> String {
        let r = repo();
        format!(
            "state_dir: /tmp/x\n\
             identity: {{ port: 1, users: {users} }}\n\
             services:\n  - {{ name: a, port: 2, sidecar: {{ config: {cfg}, inbound: 3, admin: 4 }} }}\n\
             web: {{ dir: {web}, port: 5 }}\n\
             edge: {{ config: {cfg}, port: 6, admin: 7 }}\n{extra}",
            users = r.join("backends/identity/demo/users.yaml").display(),
            cfg = r.join("config/shop-edge.yaml").display(),
            web = r.join("web").display(),
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match load_str(text, Path::new("/"), &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_minimal_file_is_valid() {
        assert_eq!(errors(&minimal("")), Vec::<String>::new());
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let e = errors(&minimal("colour: blue\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("unknown field `colour`"), "{e:?}");
        assert!(e[0].starts_with("line 7:"), "{e:?}");
    }

    #[test]
    fn duplicate_ports_and_bad_names_are_all_reported() {
        let text = minimal("")
            .replace("inbound: 3", "inbound: 6")
            .replace("name: a", "name: edge");
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|l| l.contains("services[0].name") && l.contains("starts itself")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.contains("edge.port") && l.contains("port 6 is used twice")),
            "{e:?}"
        );
    }

    #[test]
    fn the_outbound_placeholder_needs_an_outbound_port() {
        let text = minimal("").replace("admin: 4 }", "admin: 4 }, args: [\"{outbound}\"]");
        let e = errors(&text);
        assert!(e.iter().any(|l| l.contains("services[0].args[0]")), "{e:?}");
    }

    #[test]
    fn reserved_environment_names_are_refused() {
        let e = errors(&minimal(
            "env: { MESHGATE_STATE: /x, RUST_LOG: debug, N: 1 }\n",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("env.MESHGATE_STATE"), "{e:?}");
    }
}
