//! Running the real `meshgate` binary: `run` as a managed process, and the
//! one-shot CLI commands (`validate`, `explain`).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::wait::POLL_INTERVAL;

/// How long `meshgate run` may take to answer `/readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a one-shot CLI command may run before the harness kills it.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the binary under test: `$MESHGATE_BIN`, else `meshgate` next to
/// the test executable's `deps/` directory (`target/debug/meshgate`).
pub fn meshgate_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MESHGATE_BIN") {
        return PathBuf::from(bin);
    }
    sibling_bin(
        "meshgate",
        "cargo build -p meshgate` first (or set MESHGATE_BIN)",
    )
}

/// The workspace binary `name` built next to the test executable (`target/debug/NAME`);
/// panics naming `how` to build it when it is missing.
pub fn sibling_bin(name: &str, how: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a parent directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{name} binary not found at {}: run `{how}",
        bin.display()
    );
    bin
}

/// Prints the last `n` lines of a child's output under a header naming it: called from
/// `Drop` while a test panics (the runner shows a failing test's output only).
pub fn print_tail(what: &str, logs: &str, n: usize) {
    let lines: Vec<&str> = logs.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    eprintln!(
        "--- last {} lines of {what} ---\n{}",
        tail.len(),
        tail.join("\n")
    );
}

/// A `meshgate run -c FILE` process. Killed on drop.
pub struct Meshgate {
    child: Child,
    exit: Option<ExitStatus>,
    dir: TempDir,
    config_path: PathBuf,
    admin: SocketAddr,
    http: reqwest::Client,
}

/// What the harness could not do when starting the proxy.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub logs: String,
    /// The process lost the race for one of its ports.
    pub bind_failed: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- meshgate output ---\n{}",
            self.message, self.logs
        )
    }
}

impl Meshgate {
    /// Writes `yaml` to a temp file, starts `meshgate run -c FILE` and waits
    /// (polling, 15 s deadline) until `GET /readyz` on the admin address
    /// answers 200. Panics with the process output if it does not.
    pub async fn start(yaml: &str) -> Meshgate {
        Self::start_with_env(yaml, &[]).await
    }

    /// [`Meshgate::start`] with extra environment variables.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Meshgate {
        match Self::try_start(yaml, env).await {
            Ok(m) => m,
            Err(e) => panic!("meshgate did not become ready: {e}"),
        }
    }

    /// Like [`Meshgate::start_with_env`] but returns the failure; retries
    /// once when the process exits because a port was taken.
    pub async fn try_start(yaml: &str, env: &[(&str, &str)]) -> Result<Meshgate, StartError> {
        match Self::start_once(yaml, env).await {
            Err(e) if e.bind_failed => Self::start_once(yaml, env).await,
            other => other,
        }
    }

    async fn start_once(yaml: &str, env: &[(&str, &str)]) -> Result<Meshgate, StartError> {
        let mut m = Self::spawn(yaml, env);
        let url = format!("http://{}/readyz", m.admin);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = m.try_exit() {
                let logs = m.logs();
                let lower = logs.to_lowercase();
                return Err(StartError {
                    message: format!("meshgate exited with {status} before it was ready"),
                    bind_failed: lower.contains("address already in use")
                        || lower.contains("address in use")
                        || lower.contains("os error 98"),
                    logs,
                });
            }
            let ready = m
                .http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ready {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(StartError {
                    message: format!("GET {url} did not answer 200 within {READY_TIMEOUT:?}"),
                    logs: m.logs(),
                    bind_failed: false,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts the process without waiting for readiness (for tests of
    /// startup failures).
    pub fn spawn(yaml: &str, env: &[(&str, &str)]) -> Meshgate {
        let admin = admin_address(yaml);
        let dir = tempfile::Builder::new()
            .prefix("meshgate-test-")
            .tempdir()
            .expect("create temp dir");
        let config_path = dir.path().join("meshgate.yaml");
        std::fs::write(&config_path, yaml).expect("write config file");
        let stdout = File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        let stderr = File::create(dir.path().join("stderr.log")).expect("create stderr.log");
        let mut cmd = Command::new(meshgate_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", meshgate_bin().display()));
        Meshgate {
            child,
            exit: None,
            dir,
            config_path,
            admin,
            http: plain_client(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process's temp directory (config, logs, anything a test adds).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file atomically (write a sibling, then rename), so
    /// a file watcher never sees a half-written file.
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".meshgate.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write temp config");
        std::fs::rename(&tmp, &self.config_path).expect("rename temp config into place");
    }

    /// Everything the process wrote so far: stdout, then stderr.
    pub fn logs(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The access-log lines: JSON lines on stdout that carry `request_id`.
    /// Fields nested under `fields` (tracing's JSON layout) are lifted to the
    /// top level so tests can read `line["status"]` either way.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(flatten_fields)
            .filter(|v| v.get("request_id").is_some())
            .collect()
    }

    /// `GET` on the admin listener: `(status, body)`.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{}", self.admin, path);
        match self
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(e) => panic!("GET {url}: {e}\n--- meshgate output ---\n{}", self.logs()),
        }
    }

    /// Value of one Prometheus sample on `/metrics`, e.g.
    /// `metric("meshgate_config_reloads_total", &[("result", "failure")])`;
    /// sums every series of that name whose labels include the given ones.
    /// `None` when no such series exists.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        metric_value(&text, name, labels)
    }

    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        kill(Pid::from_raw(pid), signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
    }

    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    pub fn sighup(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Polls until the process exits; `None` if it is still running after
    /// `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Meshgate {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what the proxy said (the test runner prints
        // captured output of failed tests only).
        if std::thread::panicking() {
            let what = format!(
                "meshgate output (pid {}, {})",
                self.child.id(),
                self.config_path.display()
            );
            print_tail(&what, &self.logs(), 60);
        }
    }
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build admin client")
}

/// `admin.address` of a config, which the harness needs to poll `/readyz`.
fn admin_address(yaml: &str) -> SocketAddr {
    let docs = yaml_rust2::YamlLoader::load_from_str(yaml)
        .unwrap_or_else(|e| panic!("test config is not YAML: {e}\n{yaml}"));
    let addr = docs
        .first()
        .and_then(|doc| doc["admin"]["address"].as_str())
        .unwrap_or_else(|| panic!("test config needs admin.address for the harness:\n{yaml}"));
    addr.parse()
        .unwrap_or_else(|e| panic!("admin.address {addr:?} is not ip:port: {e}"))
}

fn flatten_fields(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(serde_json::Value::Object(fields)) = v.get("fields").cloned() {
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in fields {
                obj.entry(k).or_insert(val);
            }
        }
    }
    v
}

/// Sums the samples of `name` whose label set includes `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((l, v)) = inner.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let matches = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair.trim() == format!("{k}=\"{v}\""))
        });
        if !matches {
            continue;
        }
        if let Some(Ok(x)) = value.split_whitespace().next().map(str::parse::<f64>) {
            *found.get_or_insert(0.0) += x;
        }
    }
    found
}

/// Runs `meshgate ARGS...` to completion (killed after [`CMD_TIMEOUT`]).
pub fn meshgate_cmd(args: &[&str]) -> Output {
    meshgate_cmd_env(args, &[], CMD_TIMEOUT)
}

/// Runs `meshgate ARGS...` with environment changes (`Some` sets, `None`
/// removes) and a deadline after which the process is killed and the test
/// fails.
pub fn meshgate_cmd_env(args: &[&str], env: &[(&str, Option<&str>)], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir for command output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(meshgate_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"));
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().expect("spawn meshgate");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for meshgate") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`meshgate {}` still running after {timeout:?}; killed.\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// A directory of config files for CLI tests.
pub struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::Builder::new()
                .prefix("meshgate-cfg-")
                .tempdir()
                .expect("create temp dir"),
        }
    }

    /// Writes `name` with `content`; returns its full path as a string.
    pub fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write config file");
        path.to_string_lossy().into_owned()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for ConfigDir {
    fn default() -> Self {
        Self::new()
    }
}
