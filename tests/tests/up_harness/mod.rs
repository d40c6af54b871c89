//! `meshgate up` as a child process for end-to-end tests: a mesh file with fresh loopback
//! ports that points at the repository's real configs (config/shop-edge.yaml,
//! config/sidecars/*.yaml, web/), a temporary state directory, and the whole process
//! group killed on drop. Shared by `up.rs` and `browser_shop.rs`.

#![allow(dead_code)] // each test binary uses part of it

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use meshgate_tests::browser::Browser;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::meshgate_bin;
use meshgate_tests::wait;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How long `meshgate up` may take to print that the shop is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `meshgate up` may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// What `meshgate up` prints on stdout once everything is healthy.
pub const READY_LINE: &str = "the demo shop is ready";

/// The services of the demo mesh, as in config/mesh.yaml.
pub const SERVICES: [&str; 4] = ["catalog", "inventory", "payments", "orders"];

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The cargo target directory holding the binaries under test (`target/`).
pub fn target_dir() -> PathBuf {
    let bin = meshgate_bin();
    bin.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target directory")
}

/// The ports of one service.
#[derive(Debug, Clone, Copy)]
pub struct ServicePorts {
    pub app: u16,
    pub inbound: u16,
    pub admin: u16,
    pub outbound: Option<u16>,
}

/// Every port of one mesh.
#[derive(Debug, Clone)]
pub struct MeshPorts {
    pub identity: u16,
    pub web: u16,
    pub edge: u16,
    pub edge_admin: u16,
    pub services: Vec<(&'static str, ServicePorts)>,
}

impl MeshPorts {
    fn fresh() -> MeshPorts {
        MeshPorts {
            identity: free_port(),
            web: free_port(),
            edge: free_port(),
            edge_admin: free_port(),
            services: SERVICES
                .iter()
                .map(|&name| {
                    (
                        name,
                        ServicePorts {
                            app: free_port(),
                            inbound: free_port(),
                            admin: free_port(),
                            outbound: (name == "orders").then(free_port),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The ports of service `name`.
    pub fn service(&self, name: &str) -> ServicePorts {
        self.services
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no service {name}"))
    }
}

/// A `meshgate up` run (or several, one after the other, on the same state directory).
pub struct UpMesh {
    dir: tempfile::TempDir,
    pub ports: MeshPorts,
    child: Option<Child>,
    runs: u32,
    /// How long the last start took until the ready line.
    pub last_start: Duration,
}

impl UpMesh {
    /// A mesh file with fresh ports and an empty state directory; nothing started yet.
    pub fn new() -> UpMesh {
        let dir = tempfile::Builder::new()
            .prefix("meshgate-up-")
            .tempdir()
            .expect("temp dir");
        let mesh = UpMesh {
            dir,
            ports: MeshPorts::fresh(),
            child: None,
            runs: 0,
            last_start: Duration::ZERO,
        };
        mesh.write_mesh_file();
        mesh
    }

    /// Writes `mesh.yaml` for the current ports.
    fn write_mesh_file(&self) {
        let ports = &self.ports;
        let r = repo();
        let q = |p: &Path| format!("\"{}\"", p.display());
        let mut services = String::new();
        for (name, p) in &ports.services {
            let outbound = p
                .outbound
                .map(|o| format!(", outbound: {o}"))
                .unwrap_or_default();
            let args = if p.outbound.is_some() {
                ", args: [\"--outbound\", \"{outbound}\"]"
            } else {
                ""
            };
            services.push_str(&format!(
                "  - {{ name: {name}, port: {app}, sidecar: {{ config: {cfg}, inbound: {inb}, admin: {adm}{outbound} }}{args} }}\n",
                app = p.app,
                cfg = q(&r.join(format!("config/sidecars/{name}.yaml"))),
                inb = p.inbound,
                adm = p.admin,
            ));
        }
        let yaml = format!(
            "# Written by tests/tests/up_harness: config/mesh.yaml with fresh ports.\n\
             state_dir: {state}\n\
             startup_timeout: 90s\n\
             env: {{ RUST_LOG: info }}\n\
             identity: {{ port: {idp}, users: {users}, demo_logins: [\"alice / alice\"] }}\n\
             services:\n{services}\
             web: {{ dir: {web}, port: {webp} }}\n\
             edge: {{ config: {edge}, port: {ep}, admin: {ea} }}\n",
            state = q(&self.dir.path().join("state")),
            idp = ports.identity,
            users = q(&r.join("backends/identity/demo/users.yaml")),
            web = q(&r.join("web")),
            webp = ports.web,
            edge = q(&r.join("config/shop-edge.yaml")),
            ep = ports.edge,
            ea = ports.edge_admin,
        );
        std::fs::write(self.mesh_file(), yaml).expect("write mesh.yaml");
    }

    /// The mesh file.
    pub fn mesh_file(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `http://127.0.0.1:<edge>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.edge)
    }

    /// `http://127.0.0.1:<identity>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.identity)
    }

    fn out_path(&self, run: u32, stream: &str) -> PathBuf {
        self.dir.path().join(format!("up-{run}.{stream}"))
    }

    /// stdout of the current (or last) run.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.out_path(self.runs, "out")).unwrap_or_default()
    }

    /// stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.out_path(self.runs, "err")).unwrap_or_default()
    }

    /// A child's log file in the state directory.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// The pid of child `name` (`catalog`, `orders-sidecar`, `edge`, …) while it runs.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.state().join("run").join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of `meshgate up`.
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("meshgate up is running");
        i32::try_from(child.id()).expect("pid")
    }

    /// Starts `meshgate up` with extra arguments, without waiting.
    pub fn spawn(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "meshgate up is already running");
        self.runs += 1;
        let mut cmd = Command::new(meshgate_bin());
        cmd.arg("up")
            .arg("--config")
            .arg(self.mesh_file())
            .args(extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(self.out_path(self.runs, "out")).expect("stdout file"))
            .stderr(File::create(self.out_path(self.runs, "err")).expect("stderr file"))
            // Its own process group, so that drop can kill up and every child at once.
            .process_group(0);
        // The harness must not leak the developer's secrets into the mesh.
        cmd.env_remove("OIDC_CLIENT_SECRET")
            .env_remove("MESHGATE_SESSION_KEY");
        self.child = Some(cmd.spawn().expect("spawn meshgate up"));
    }

    /// Starts `meshgate up` and waits (deadline [`READY_TIMEOUT`]) for the ready line.
    ///
    /// Free ports are picked before `meshgate up` binds them, so another test may take
    /// one in between; `up` then refuses to start and names the port. Only on the first
    /// run (nothing depends on the ports yet), fresh ports are picked and it starts again.
    pub async fn start(&mut self) {
        let first = self.runs == 0;
        for attempt in 0.. {
            let begun = Instant::now();
            self.spawn(&[]);
            let ready = wait::until(READY_TIMEOUT, || {
                let seen = if self.stdout().contains(READY_LINE) {
                    Some(true)
                } else {
                    self.try_exit().map(|_| false)
                };
                async move { seen }
            })
            .await;
            match ready {
                Some(true) => {
                    self.last_start = begun.elapsed();
                    return;
                }
                Some(false)
                    if first && attempt < 2 && self.stderr().contains("of the mesh's ports") =>
                {
                    self.child = None;
                    self.ports = MeshPorts::fresh();
                    self.write_mesh_file();
                }
                Some(false) => panic!(
                    "meshgate up exited before the shop was ready:\n{}",
                    self.report()
                ),
                None => panic!(
                    "meshgate up did not print {READY_LINE:?} within {READY_TIMEOUT:?}:\n{}",
                    self.report()
                ),
            }
        }
    }

    /// The exit status, once `meshgate up` has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("wait for meshgate up")?;
        Some(status)
    }

    /// Waits for `meshgate up` to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait::until(timeout, || {
            let exited = self.try_exit();
            async move { exited }
        })
        .await;
        let status = status.unwrap_or_else(|| {
            panic!(
                "meshgate up still running after {timeout:?}:\n{}",
                self.report()
            )
        });
        self.child = None;
        status
    }

    /// Sends SIGTERM to `meshgate up` and waits for it to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).expect("SIGTERM meshgate up");
        self.wait_exit(STOP_TIMEOUT).await
    }

    /// What a failing test shows: both streams of `meshgate up` and the end of each log.
    pub fn report(&self) -> String {
        let mut out = format!(
            "--- meshgate up stdout ---\n{}\n--- meshgate up stderr ---\n{}",
            self.stdout(),
            self.stderr()
        );
        let logs = self.state().join("logs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!(
                "\n--- {} (last {} lines) ---\n{}",
                f.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Default for UpMesh {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UpMesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// One GET without cookies: `(status, content-type, body)`.
pub async fn get(url: &str) -> (u16, String, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ct, r.text().await.unwrap_or_default())
}

/// Whether `GET http://127.0.0.1:<port><path>` answers 200.
pub async fn healthy(port: u16, path: &str) -> bool {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Logs `user` in through the edge and the provider's form, as a browser would:
/// /auth/login → the provider's /authorize (form) → /auth/callback → the session cookie.
pub async fn login(mesh: &UpMesh, b: &mut Browser, user: &str, password: &str) {
    let start = b.get(&mesh.url("/auth/login?return_to=%2F"), &[]).await;
    assert!(
        (300..400).contains(&start.status),
        "/auth/login answered {} {}",
        start.status,
        start.body
    );
    let authorize = start.location();
    assert!(
        authorize.starts_with(&format!("{}/authorize?", mesh.issuer())),
        "/auth/login redirects to the provider, not to {authorize}"
    );
    let callback = meshgate_tests::identity::login(&authorize, user, password).await;
    assert!(
        callback.starts_with(&mesh.url("/auth/callback?")),
        "the provider sends the browser back to the edge, not to {callback}"
    );
    let done = b.get(&callback, &[]).await;
    assert!(
        (300..400).contains(&done.status),
        "/auth/callback answered {} {}",
        done.status,
        done.body
    );
    assert!(
        b.cookie("__Host-meshgate").is_some(),
        "no session cookie after the callback: {:?}",
        b.set_cookies
    );
}
