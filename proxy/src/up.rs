//! `meshgate up`: the whole demo shop mesh on one machine — the dev OpenID Provider, each
//! backend with its sidecar, the static web app and the edge — from one topology file
//! (`config/mesh.yaml`, see [`mesh`]).
//!
//! What it does, in order:
//!
//! 1. reads the topology and finds every binary next to the running `meshgate`;
//! 2. checks that every port is free, naming whatever holds a busy one;
//! 3. prepares the state directory (see below): mesh certificates through the code of
//!    `meshgate certs init` (valid ones are kept), the BFF session key and the OIDC client
//!    secret (generated once, 0600), data and log directories, the provider's clients file;
//! 4. starts the provider, then the apps, sidecars and edge (`meshgate run -c`, this very
//!    executable), and serves `web/` itself ([`web`]); waits until every process answers
//!    its health check, with a deadline; a process that exits or stays unhealthy fails the
//!    start with the end of its log;
//! 5. prints the shop's URL, the demo logins and where the logs are, then supervises
//!    ([`process`]): a child that dies is restarted with capped exponential backoff, and
//!    `<state>/down/<name>` holds one down (an outage on purpose);
//! 6. on Ctrl-C or SIGTERM stops the edge first, then sidecars, apps and the provider
//!    (SIGTERM, then SIGKILL after a grace period), and exits 0.
//!
//! The proxy configs are ordinary checked-in files: they read ports and paths from
//! environment variables that this module sets from the topology (`child_env`), with
//! the topology's defaults after `:-`, so they also work with plain `meshgate run`.
//!
//! State directory layout:
//!
//! ```text
//! certs/      ca.crt ca.key, <svc>.crt <svc>.key for edge and every service
//! secrets/    session-key (BFF), oidc-client-secret          (0600)
//! identity/   clients.yaml (generated for the edge's URL)
//! data/       <svc>/ and identity/: SQLite files, signing keys
//! logs/       <name>.log (the previous run's as <name>.log.1)
//! run/        <name>.pid while the child runs
//! down/       <name>: while it exists, that child is kept stopped
//! ```

pub mod mesh;
pub mod process;
pub mod web;

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use mesh::MeshSpec;
use process::{ChildSpec, Control, Event};

/// How often the mesh certificates are refreshed while running (leaves live 24 h and are
/// re-issued when a third of that is left; the proxies pick up new files by themselves).
const CERT_REFRESH: Duration = Duration::from_secs(3600);
/// How often startup health checks are repeated.
const HEALTH_POLL: Duration = Duration::from_millis(100);
/// Lines of a child's log shown when it fails.
const LOG_TAIL_LINES: usize = 25;
/// Scopes the generated `web` client may ask for.
const CLIENT_SCOPES: &str =
    "[openid, profile, email, offline_access, \"orders:read\", \"orders:write\", \"catalog:write\"]";

/// `meshgate up` options.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The topology file.
    pub config: PathBuf,
    /// Overrides the topology's `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Prepare the state directory and validate every config, then exit.
    pub check: bool,
}

/// Why `meshgate up` stopped. The message is meant for the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpError(pub String);

impl fmt::Display for UpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpError {}

fn err(msg: impl Into<String>) -> UpError {
    UpError(msg.into())
}

/// Runs `meshgate up` and returns the process exit code.
pub fn main(opts: UpOptions) -> ExitCode {
    match run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshgate up: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &UpOptions) -> Result<ExitCode, UpError> {
    let mut mesh = mesh::load(&opts.config).map_err(|lines| err(lines.join("\n")))?;
    if let Some(dir) = &opts.state_dir {
        mesh.state_dir = std::path::absolute(dir)
            .map_err(|e| err(format!("--state-dir {}: {e}", dir.display())))?;
    }
    let bins = Binaries::locate(&mesh)?;
    if opts.check {
        let state = prepare_state(&mesh, false)?;
        return check_configs(&opts.config, &mesh, &state, &bins);
    }
    let web_listener = check_ports(&mesh)?;
    let state = prepare_state(&mesh, true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(up(&mesh, &state, &bins, web_listener))?;
    Ok(ExitCode::SUCCESS)
}

/// Paths of the executables, all next to the running `meshgate`.
#[derive(Debug, Clone)]
struct Binaries {
    meshgate: PathBuf,
    dir: PathBuf,
}

impl Binaries {
    fn locate(mesh: &MeshSpec) -> Result<Binaries, UpError> {
        let meshgate = std::env::current_exe()
            .map_err(|e| err(format!("cannot find the meshgate executable: {e}")))?;
        let dir = meshgate
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| err("the meshgate executable has no directory"))?;
        let bins = Binaries { meshgate, dir };
        let mut wanted = vec![mesh.identity.binary.as_str()];
        wanted.extend(mesh.services.iter().map(|s| s.binary()));
        let missing: Vec<&str> = wanted
            .into_iter()
            .filter(|b| !bins.path(b).is_file())
            .collect();
        if !missing.is_empty() {
            let release = if bins.dir.ends_with("release") {
                " --release"
            } else {
                ""
            };
            let packages: Vec<String> = missing.iter().map(|b| format!("-p {b}")).collect();
            return Err(err(format!(
                "missing {} next to {}: build {} with `cargo build{release} {}` \
                 (scripts/up.sh builds everything and starts the mesh)",
                missing.join(", "),
                bins.meshgate.display(),
                if missing.len() == 1 { "it" } else { "them" },
                packages.join(" ")
            )));
        }
        Ok(bins)
    }

    fn path(&self, binary: &str) -> PathBuf {
        self.dir.join(binary)
    }
}

/// Binds every port of the mesh once, so a busy one is reported before anything starts.
/// Returns the web server's listener, which stays bound.
fn check_ports(mesh: &MeshSpec) -> Result<TcpListener, UpError> {
    let mut busy = Vec::new();
    let mut web = None;
    for (port, what) in mesh.ports() {
        match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
            Ok(l) if port == mesh.web.port => web = Some(l),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let owner = port_owner(port)
                    .unwrap_or_else(|| "another process (not visible to this user)".into());
                busy.push(format!("  port {port} ({what}) is in use by {owner}"));
            }
            Err(e) => busy.push(format!("  port {port} ({what}): {e}")),
        }
    }
    if !busy.is_empty() {
        return Err(err(format!(
            "cannot start: {} of the mesh's ports {} busy\n{}\n\
             Is another `meshgate up` running? Stop it (Ctrl-C), or change the ports in the mesh file.",
            busy.len(),
            if busy.len() == 1 { "is" } else { "are" },
            busy.join("\n"),
        )));
    }
    web.ok_or_else(|| err("the web port was not bound"))
}

/// Who listens on `port`: `pid N: command line`, read from `/proc` (Linux). `None` when
/// it cannot be told.
fn port_owner(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            // 0A is TCP_LISTEN.
            if p == Some(port) && *state == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| Path::new(i) == target) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let mut cmd = String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                if cmd.len() > 160 {
                    let cut = (0..=160)
                        .rev()
                        .find(|&i| cmd.is_char_boundary(i))
                        .unwrap_or(0);
                    cmd.truncate(cut);
                    cmd.push('…');
                }
                return Some(format!("pid {pid}: {cmd}"));
            }
        }
    }
    None
}

/// The prepared state directory.
#[derive(Debug, Clone)]
struct State {
    dir: PathBuf,
    session_key: String,
    client_secret: String,
    clients_file: PathBuf,
}

impl State {
    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }
    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(format!("{name}.pid"))
    }
    fn down_file(&self, name: &str) -> PathBuf {
        self.dir.join("down").join(name)
    }
    fn data(&self, name: &str) -> PathBuf {
        self.dir.join("data").join(name)
    }
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), UpError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))
}

/// Creates what is missing in the state directory. `new_run` also starts fresh logs and
/// pid files; `--check` leaves them to a mesh that may be running.
fn prepare_state(mesh: &MeshSpec, new_run: bool) -> Result<State, UpError> {
    let dir = &mesh.state_dir;
    mkdir(dir, 0o700)?;
    let dir = dir
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", dir.display())))?;
    for sub in ["secrets", "identity", "data", "logs", "run", "down"] {
        mkdir(&dir.join(sub), 0o700)?;
    }
    for s in &mesh.services {
        mkdir(&dir.join("data").join(&s.name), 0o700)?;
    }
    mkdir(&dir.join("data").join("identity"), 0o700)?;
    refresh_certs(mesh, &dir.join("certs"))?;

    let session_key = secret_file(&dir.join("secrets").join("session-key"), || {
        random_bytes(32).map(|b| base64(&b))
    })?;
    if let Err(e) = meshgate_filters::bff::crypto::SessionKey::from_base64(&session_key) {
        return Err(err(format!(
            "{}: {e}; delete the file to generate a new key (every session then ends)",
            dir.join("secrets/session-key").display()
        )));
    }
    let client_secret = match std::env::var("OIDC_CLIENT_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => secret_file(&dir.join("secrets").join("oidc-client-secret"), || {
            random_bytes(32).map(|b| hex(&b))
        })?,
    };
    let clients_file = match &mesh.identity.clients {
        Some(f) => f.clone(),
        None => {
            let f = dir.join("identity").join("clients.yaml");
            write_clients_file(&f, mesh)?;
            f
        }
    };

    if new_run {
        start_fresh_logs(&dir);
    }
    Ok(State {
        dir,
        session_key,
        client_secret,
        clients_file,
    })
}

/// Fresh logs and pid files per run; the previous run's log stays as `<name>.log.1`.
fn start_fresh_logs(dir: &Path) {
    for entry in std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "log") {
            let mut old = p.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&p, old);
        }
    }
    for entry in std::fs::read_dir(dir.join("run"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
}

fn cert_services(mesh: &MeshSpec) -> Vec<String> {
    let mut services = vec!["edge".to_string()];
    services.extend(mesh.services.iter().map(|s| s.name.clone()));
    services
}

/// Creates or refreshes the mesh CA and certificates; returns how many files were written.
fn refresh_certs(mesh: &MeshSpec, dir: &Path) -> Result<usize, UpError> {
    let report = crate::certs::init(&crate::certs::InitOptions {
        dir: dir.to_path_buf(),
        services: cert_services(mesh),
        trust_domain: crate::certs::DEFAULT_TRUST_DOMAIN.to_string(),
        leaf_validity: crate::certs::DEFAULT_LEAF_VALIDITY,
        ca_validity: crate::certs::DEFAULT_CA_VALIDITY,
        force: false,
    })
    .map_err(|e| err(format!("mesh certificates in {}: {e}", dir.display())))?;
    Ok(report
        .iter()
        .filter(|r| r.action == crate::certs::Action::Wrote)
        .count())
}

/// Reads a secret file, or creates it (0600) with `make` when missing.
fn secret_file(
    path: &Path,
    make: impl FnOnce() -> std::io::Result<String>,
) -> Result<String, UpError> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim().to_string();
            if s.is_empty() {
                return Err(err(format!(
                    "{} is empty; delete it to generate a new one",
                    path.display()
                )));
            }
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make().map_err(|e| err(format!("cannot make a secret: {e}")))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
            f.write_all(format!("{value}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
            Ok(value)
        }
        Err(e) => Err(err(format!("cannot read {}: {e}", path.display()))),
    }
}

fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Standard base64 with padding. Written out because this crate has no base64 dependency
/// and the session key is the only thing encoded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The provider's `web` client, registered for the edge's URL (both `127.0.0.1` and
/// `localhost`). The secret stays in the environment (`${OIDC_CLIENT_SECRET}`).
fn write_clients_file(path: &Path, mesh: &MeshSpec) -> Result<(), UpError> {
    let port = mesh.edge.port;
    let text = format!(
        "# Written by `meshgate up` for the edge at http://127.0.0.1:{port}; rewritten on every start.\n\
         clients:\n\
         \x20 - client_id: web\n\
         \x20   client_secret: ${{OIDC_CLIENT_SECRET}}\n\
         \x20   redirect_uris:\n\
         \x20     - http://127.0.0.1:{port}/auth/callback\n\
         \x20     - http://localhost:{port}/auth/callback\n\
         \x20   post_logout_redirect_uris:\n\
         \x20     - http://127.0.0.1:{port}/\n\
         \x20     - http://localhost:{port}/\n\
         \x20   backchannel_logout_uri: http://127.0.0.1:{port}/auth/backchannel-logout\n\
         \x20   audience: {aud}\n\
         \x20   scopes: {CLIENT_SCOPES}\n\
         \x20   signing_alg: RS256\n",
        aud = mesh.identity.audience,
    );
    std::fs::write(path, text).map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// The environment every child gets: the topology's `env`, the ports and the paths the
/// proxy configs refer to. Secrets are added per child in [`plan`].
fn child_env(mesh: &MeshSpec, state: &State) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = mesh
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.text()))
        .collect();
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    set("MESHGATE_STATE", state.dir.display().to_string());
    set("MESHGATE_ISSUER", mesh.issuer());
    set("MESHGATE_IDENTITY_PORT", mesh.identity.port.to_string());
    set("MESHGATE_EDGE_PORT", mesh.edge.port.to_string());
    set("MESHGATE_EDGE_ADMIN_PORT", mesh.edge.admin.to_string());
    set("MESHGATE_WEB_PORT", mesh.web.port.to_string());
    for s in &mesh.services {
        let p = format!("MESHGATE_{}", s.name.to_ascii_uppercase().replace('-', "_"));
        set(&format!("{p}_PORT"), s.port.to_string());
        set(&format!("{p}_INBOUND_PORT"), s.sidecar.inbound.to_string());
        set(&format!("{p}_ADMIN_PORT"), s.sidecar.admin.to_string());
        if let Some(o) = s.sidecar.outbound {
            set(&format!("{p}_OUTBOUND_PORT"), o.to_string());
        }
    }
    env
}

const SESSION_KEY_VAR: &str = "MESHGATE_SESSION_KEY";
const CLIENT_SECRET_VAR: &str = "OIDC_CLIENT_SECRET";

/// The processes to start, in tiers: each tier is started after the previous one and
/// stopped before it.
fn plan(mesh: &MeshSpec, state: &State, bins: &Binaries) -> Vec<Vec<Arc<ChildSpec>>> {
    let env = child_env(mesh, state);
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let child = |name: String,
                 program: PathBuf,
                 args: Vec<OsString>,
                 secrets: &[(&str, &str)],
                 health: (SocketAddr, &str)| {
        let mut env = env.clone();
        env.extend(secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env_remove = [SESSION_KEY_VAR, CLIENT_SECRET_VAR]
            .iter()
            .filter(|k| !secrets.iter().any(|(s, _)| s == *k))
            .map(|k| k.to_string())
            .collect();
        Arc::new(ChildSpec {
            log: state.log(&name),
            pid_file: state.pid_file(&name),
            down_file: state.down_file(&name),
            name,
            program,
            args,
            env,
            env_remove,
            health: (health.0, health.1.to_string()),
        })
    };
    let os = |s: &str| OsString::from(s);
    let run_proxy = |config: &Path| vec![os("run"), os("-c"), config.as_os_str().to_owned()];

    let mut identity_args = vec![
        os("--listen"),
        os(&format!("127.0.0.1:{}", mesh.identity.port)),
        os("--issuer"),
        os(&mesh.issuer()),
        os("--data-dir"),
        state.data("identity").into_os_string(),
        os("--users"),
        mesh.identity.users.clone().into_os_string(),
        os("--clients"),
        state.clients_file.clone().into_os_string(),
    ];
    identity_args.extend(mesh.identity.args.iter().map(|a| os(a)));
    let identity = child(
        "identity".into(),
        bins.path(&mesh.identity.binary),
        identity_args,
        &[(CLIENT_SECRET_VAR, &state.client_secret)],
        (loopback(mesh.identity.port), "/healthz"),
    );

    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for s in &mesh.services {
        let outbound = s
            .sidecar
            .outbound
            .map(|p| format!("http://127.0.0.1:{p}"))
            .unwrap_or_default();
        let mut args = vec![
            os("--listen"),
            os(&format!("127.0.0.1:{}", s.port)),
            os("--data-dir"),
            state.data(&s.name).into_os_string(),
            os("--issuer"),
            os(&mesh.issuer()),
            os("--audience"),
            os(&mesh.identity.audience),
        ];
        args.extend(
            s.args
                .iter()
                .map(|a| os(&a.replace(mesh::OUTBOUND_PLACEHOLDER, &outbound))),
        );
        apps.push(child(
            s.name.clone(),
            bins.path(s.binary()),
            args,
            &[],
            (loopback(s.port), "/healthz"),
        ));
        sidecars.push(child(
            format!("{}-sidecar", s.name),
            bins.meshgate.clone(),
            run_proxy(&s.sidecar.config),
            &[],
            (loopback(s.sidecar.admin), "/readyz"),
        ));
    }
    let edge = child(
        "edge".into(),
        bins.meshgate.clone(),
        run_proxy(&mesh.edge.config),
        &[
            (SESSION_KEY_VAR, &state.session_key),
            (CLIENT_SECRET_VAR, &state.client_secret),
        ],
        (loopback(mesh.edge.admin), "/readyz"),
    );
    vec![vec![identity], apps, sidecars, vec![edge]]
}

/// `--check`: validates every proxy config with the environment the mesh would get.
fn check_configs(
    file: &Path,
    mesh: &MeshSpec,
    state: &State,
    bins: &Binaries,
) -> Result<ExitCode, UpError> {
    println!(
        "{}: ok ({} services, state in {})",
        file.display(),
        mesh.services.len(),
        state.dir.display()
    );
    let mut cmd = std::process::Command::new(&bins.meshgate);
    cmd.arg("validate").arg(&mesh.edge.config);
    for s in &mesh.services {
        cmd.arg(&s.sidecar.config);
    }
    for (k, v) in child_env(mesh, state) {
        cmd.env(k, v);
    }
    cmd.env(SESSION_KEY_VAR, &state.session_key)
        .env(CLIENT_SECRET_VAR, &state.client_secret);
    let status = cmd
        .status()
        .map_err(|e| err(format!("cannot run {}: {e}", bins.meshgate.display())))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The running mesh: one supervisor task per child, grouped by tier.
struct Running {
    tiers: Vec<(watch::Sender<bool>, Vec<JoinHandle<()>>)>,
    control: Control,
}

impl Running {
    /// Stops the tiers in reverse start order: nothing is left without what it calls
    /// while traffic can still reach it.
    async fn stop(self) {
        self.control.shutting_down.store(true, Ordering::SeqCst);
        for (stop, handles) in self.tiers.into_iter().rev() {
            let _ = stop.send(true);
            for h in handles {
                let _ = h.await;
            }
        }
    }
}

async fn up(
    mesh: &MeshSpec,
    state: &State,
    bins: &Binaries,
    web_listener: TcpListener,
) -> Result<(), UpError> {
    let begun = Instant::now();
    // Installed first, so a Ctrl-C during startup still stops every child cleanly.
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| err(format!("cannot watch SIGINT: {e}")))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| err(format!("cannot watch SIGTERM: {e}")))?;

    web_listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("web listener: {e}")))?;
    let listener = tokio::net::TcpListener::from_std(web_listener)
        .map_err(|e| err(format!("web listener: {e}")))?;
    let web_root = mesh
        .web
        .dir
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", mesh.web.dir.display())))?;
    let web = tokio::spawn(web::serve(listener, web_root));

    eprintln!("meshgate up: state in {}", state.dir.display());
    let tiers = plan(mesh, state, bins);
    let control = Control {
        ready: Arc::new(AtomicBool::new(false)),
        shutting_down: Arc::new(AtomicBool::new(false)),
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut running = Running {
        tiers: Vec::new(),
        control: control.clone(),
    };
    let deadline = begun + mesh.startup_timeout.get();
    let mut started: Vec<Arc<ChildSpec>> = Vec::new();
    // `Ok(true)`: everything is healthy; `Ok(false)`: a signal asked to stop first.
    let mut outcome = Ok(true);
    for tier in &tiers {
        let (stop_tx, stop_rx) = watch::channel(false);
        let handles = tier
            .iter()
            .map(|c| {
                tokio::spawn(process::supervise(
                    c.clone(),
                    stop_rx.clone(),
                    control.clone(),
                    events_tx.clone(),
                ))
            })
            .collect();
        running.tiers.push((stop_tx, handles));
        started.extend(tier.iter().cloned());
        // Each tier must be healthy before the next starts: the provider before the
        // services that fetch its keys, the apps before the sidecars that probe them.
        let wait = wait_healthy(tier, &started, deadline, &mut events);
        outcome = tokio::select! {
            r = wait => r.map(|()| true),
            _ = sigint.recv() => Ok(false),
            _ = sigterm.recv() => Ok(false),
        };
        if !matches!(outcome, Ok(true)) {
            break;
        }
    }
    if !matches!(outcome, Ok(true)) {
        eprintln!("meshgate up: stopping what was started");
        running.stop().await;
        web.abort();
        return outcome.map(drop);
    }
    control.ready.store(true, Ordering::SeqCst);
    print_banner(mesh, state, begun.elapsed());

    let mut refresh = tokio::time::interval(CERT_REFRESH);
    refresh.tick().await;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = refresh.tick() => match refresh_certs(mesh, &state.certs()) {
                Ok(0) => {}
                Ok(n) => eprintln!("meshgate up: refreshed {n} certificate files"),
                Err(e) => eprintln!("meshgate up: {e}"),
            },
            Some(Event::FailedDuringStartup { .. }) = events.recv() => {}
        }
    }
    eprintln!("meshgate up: stopping");
    running.stop().await;
    web.abort();
    eprintln!("meshgate up: stopped");
    Ok(())
}

/// Polls every child of `tier` until all answer their health check. A child that exits
/// first, or the deadline, ends the wait with an error quoting the child's log.
async fn wait_healthy(
    tier: &[Arc<ChildSpec>],
    started: &[Arc<ChildSpec>],
    deadline: Instant,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<(), UpError> {
    let mut pending: Vec<(Arc<ChildSpec>, String)> = tier
        .iter()
        .filter(|c| !c.down_file.exists())
        .map(|c| (c.clone(), "not probed yet".to_string()))
        .collect();
    loop {
        if let Ok(Event::FailedDuringStartup { name, reason }) = events.try_recv() {
            let log = started
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.log.clone())
                .unwrap_or_default();
            return Err(err(format!(
                "{name} {reason} before it was healthy; last lines of {}:\n{}",
                log.display(),
                process::indent(&process::log_tail(&log, LOG_TAIL_LINES))
            )));
        }
        let mut still = Vec::new();
        for (c, _) in pending {
            match process::probe(c.health.0, &c.health.1).await {
                Ok(()) => {}
                Err(e) => still.push((c, e)),
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut msg = String::from("not healthy in time:");
            for (c, why) in &pending {
                msg.push_str(&format!(
                    "\n  {} (GET {}: {why}); last lines of {}:\n{}",
                    c.name,
                    c.health_url(),
                    c.log.display(),
                    process::indent(&process::log_tail(&c.log, LOG_TAIL_LINES))
                ));
            }
            return Err(err(msg));
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

fn print_banner(mesh: &MeshSpec, state: &State, took: Duration) {
    let mut out = String::new();
    let secs = took.as_secs_f64();
    out.push_str(&format!(
        "meshgate up: the demo shop is ready ({secs:.1}s)\n\n"
    ));
    out.push_str(&format!("  Shop        {}\n", mesh.shop_url()));
    if !mesh.identity.demo_logins.is_empty() {
        out.push_str(&format!(
            "  Log in as   {}\n",
            mesh.identity.demo_logins.join(", ")
        ));
    }
    out.push_str(&format!("  Identity    {}\n", mesh.issuer()));
    let mut metrics = vec![format!("edge :{}", mesh.edge.admin)];
    metrics.extend(
        mesh.services
            .iter()
            .map(|s| format!("{} :{}", s.name, s.sidecar.admin)),
    );
    out.push_str(&format!(
        "  Metrics     http://127.0.0.1:PORT/metrics — {}\n",
        metrics.join(", ")
    ));
    out.push_str(&format!(
        "  Logs        {}/<name>.log\n",
        state.dir.join("logs").display()
    ));
    let example = mesh
        .services
        .iter()
        .find(|s| s.name == "payments")
        .or(mesh.services.first())
        .map(|s| s.name.as_str())
        .unwrap_or("payments");
    out.push_str(&format!(
        "  Outage      touch {} to stop {example}; rm it to bring it back\n",
        state.down_file(example).display()
    ));
    out.push_str("\nPress Ctrl-C to stop.\n");
    print!("{out}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_that_stays_unhealthy_is_named_with_its_log() {
        let dir = std::env::temp_dir().join(format!("meshgate-up-wait-{}", std::process::id()));
        mkdir(&dir, 0o700).expect("dir");
        let log = dir.join("catalog.log");
        std::fs::write(&log, "starting\nstill thinking\n").expect("log");
        // A port that was free a moment ago: nobody answers there.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = Arc::new(ChildSpec {
            name: "catalog".into(),
            program: PathBuf::from("/bin/false"),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            health: (SocketAddr::from(([127, 0, 0, 1], port)), "/healthz".into()),
            log: log.clone(),
            pid_file: dir.join("catalog.pid"),
            down_file: dir.join("down-catalog"),
        });
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let tier = vec![child];
        let e = wait_healthy(
            &tier,
            &tier,
            Instant::now() + Duration::from_millis(300),
            &mut rx,
        )
        .await
        .expect_err("never healthy");
        assert!(e.0.starts_with("not healthy in time:"), "{e}");
        assert!(
            e.0.contains(&format!("catalog (GET http://127.0.0.1:{port}/healthz:")),
            "{e}"
        );
        assert!(e.0.contains("    still thinking"), "{e}");

        // A child that exits during startup ends the wait at once, with its log.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _ = tx.send(Event::FailedDuringStartup {
            name: "catalog".into(),
            reason: "exited (exit status: 1)".into(),
        });
        let e = wait_healthy(
            &tier,
            &tier,
            Instant::now() + Duration::from_secs(60),
            &mut rx,
        )
        .await
        .expect_err("exited");
        assert!(
            e.0.starts_with("catalog exited (exit status: 1) before it was healthy"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[test]
    fn generated_session_keys_are_accepted_by_the_bff() {
        let key = base64(&random_bytes(32).expect("urandom"));
        assert!(meshgate_filters::bff::crypto::SessionKey::from_base64(&key).is_ok());
    }

    #[test]
    fn secret_files_are_created_once_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("meshgate-up-secret-{}", std::process::id()));
        mkdir(&dir, 0o700).expect("dir");
        let f = dir.join("s");
        let _ = std::fs::remove_file(&f);
        let a = secret_file(&f, || Ok("one".into())).expect("created");
        let b = secret_file(&f, || Ok("two".into())).expect("read");
        assert_eq!((a.as_str(), b.as_str()), ("one", "one"));
        let mode = std::fs::metadata(&f).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_owner_of_a_busy_port_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let owner = port_owner(port).expect("found in /proc");
        assert!(
            owner.starts_with(&format!("pid {}:", std::process::id())),
            "{owner}"
        );
    }

    #[test]
    fn child_env_names_every_port() {
        let mesh =
            mesh::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/mesh.yaml"))
                .expect("mesh");
        let state = State {
            dir: PathBuf::from("/state"),
            session_key: String::new(),
            client_secret: String::new(),
            clients_file: PathBuf::new(),
        };
        let env = child_env(&mesh, &state);
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing"))
        };
        assert_eq!(get("MESHGATE_STATE"), "/state");
        assert_eq!(get("MESHGATE_ISSUER"), "http://127.0.0.1:3001");
        assert_eq!(get("MESHGATE_ORDERS_OUTBOUND_PORT"), "15001");
        assert_eq!(get("MESHGATE_CATALOG_PORT"), "4101");
        assert_eq!(get("MESHGATE_PAYMENTS_INBOUND_PORT"), "15103");
        assert_eq!(get("MESHGATE_EDGE_ADMIN_PORT"), "9901");
        assert!(
            !env.iter().any(|(k, _)| k == SESSION_KEY_VAR),
            "secrets are per child"
        );
    }

    /// Every default after `:-` in the proxy configs is the port mesh.yaml sets, so the
    /// files mean the same thing with `meshgate run` as under `meshgate up`.
    #[test]
    fn config_defaults_agree_with_mesh_yaml() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mesh = mesh::load(&root.join("config/mesh.yaml")).expect("mesh");
        let state = State {
            dir: PathBuf::from("/state"),
            session_key: String::new(),
            client_secret: String::new(),
            clients_file: PathBuf::new(),
        };
        let env = child_env(&mesh, &state);
        let mut files = vec![mesh.edge.config.clone()];
        files.extend(mesh.services.iter().map(|s| s.sidecar.config.clone()));
        for f in files {
            let text = std::fs::read_to_string(&f).expect("config");
            for part in text.split("${").skip(1) {
                let Some((reference, _)) = part.split_once('}') else {
                    continue;
                };
                let Some((name, default)) = reference.split_once(":-") else {
                    continue;
                };
                if name == "MESHGATE_STATE" {
                    continue;
                }
                let set = env
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| {
                        panic!("{}: ${{{name}}} is not set by meshgate up", f.display())
                    });
                assert_eq!(set, default, "{}: default of ${{{name}}}", f.display());
            }
        }
    }
}
