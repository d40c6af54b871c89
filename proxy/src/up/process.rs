//! One supervised child process of `meshgate up`: start it with its output in a log file,
//! restart it with capped exponential backoff when it dies, hold it down while its down
//! file exists, and stop it with SIGTERM, then SIGKILL after a grace period.
//!
//! Children stay in `meshgate up`'s process group on purpose: whatever kills the group
//! (a terminal's Ctrl-C, a test harness cleaning up) also reaches them, so no orphan keeps
//! a port. Ctrl-C therefore reaches a child at the same moment as `meshgate up`; a child
//! that exits while a shutdown is starting is not reported as a crash.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// First wait before a restart.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait before a restart.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A child that ran this long before dying starts again from [`BACKOFF_START`].
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the down file is looked for.
const DOWN_POLL: Duration = Duration::from_millis(250);
/// How long a child's exit waits to see whether a shutdown is under way (Ctrl-C reaches
/// the child and `meshgate up` at once), so that it is not reported as a crash.
const SHUTDOWN_SETTLE: Duration = Duration::from_millis(200);

/// What to run and how to tell it is healthy.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Name in messages and file names (`catalog`, `catalog-sidecar`, `edge`, …).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment added to `meshgate up`'s own.
    pub env: Vec<(String, String)>,
    /// Variables removed from the inherited environment (secrets meant for others).
    pub env_remove: Vec<String>,
    /// `GET http://<addr><path>` answers 200 when the child is healthy.
    pub health: (SocketAddr, String),
    /// stdout and stderr go here (appended).
    pub log: PathBuf,
    /// Holds the child's pid while it runs.
    pub pid_file: PathBuf,
    /// While this file exists the child is kept stopped.
    pub down_file: PathBuf,
}

impl ChildSpec {
    /// `http://ADDR/PATH`, for messages.
    pub fn health_url(&self) -> String {
        format!("http://{}{}", self.health.0, self.health.1)
    }
}

/// What a supervisor tells the launcher.
#[derive(Debug)]
pub enum Event {
    /// The child exited (or could not start) before the mesh was ready; it is not restarted.
    FailedDuringStartup {
        /// The child's name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Shared switches of the launcher.
#[derive(Debug, Clone)]
pub struct Control {
    /// Set once the whole mesh was healthy: from then on a dying child is restarted.
    pub ready: Arc<AtomicBool>,
    /// Set as soon as `meshgate up` begins to stop.
    pub shutting_down: Arc<AtomicBool>,
}

/// Runs `spec` until `stop` turns true; see the module comment.
pub async fn supervise(
    spec: Arc<ChildSpec>,
    mut stop: watch::Receiver<bool>,
    control: Control,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut backoff = BACKOFF_START;
    let mut restarts = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        if spec.down_file.exists() {
            eprintln!(
                "meshgate up: {} is held down by {}; remove the file to start it",
                spec.name,
                spec.down_file.display()
            );
            tokio::select! {
                _ = wait_gone(&spec.down_file) => {}
                _ = stopped(&mut stop) => return,
            }
            eprintln!("meshgate up: starting {} again", spec.name);
            backoff = BACKOFF_START;
        }

        let mut child = match spawn(&spec, restarts) {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", spec.program.display());
                if !control.ready.load(Ordering::SeqCst) {
                    let _ = events.send(Event::FailedDuringStartup {
                        name: spec.name.clone(),
                        reason,
                    });
                    return;
                }
                eprintln!(
                    "meshgate up: {}: {reason}; retrying in {}",
                    spec.name,
                    humantime::format_duration(backoff)
                );
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
                continue;
            }
        };
        let started = Instant::now();
        if restarts > 0 {
            tokio::spawn(report_healthy_again(spec.clone(), control.clone()));
        }

        let status = tokio::select! {
            status = child.wait() => status,
            _ = stopped(&mut stop) => {
                terminate(&spec.name, &mut child).await;
                let _ = std::fs::remove_file(&spec.pid_file);
                return;
            }
            _ = wait_exists(&spec.down_file) => {
                eprintln!(
                    "meshgate up: stopping {}: {} exists",
                    spec.name,
                    spec.down_file.display()
                );
                terminate(&spec.name, &mut child).await;
                let _ = std::fs::remove_file(&spec.pid_file);
                continue;
            }
        };
        let _ = std::fs::remove_file(&spec.pid_file);
        let how = match &status {
            Ok(s) => s.to_string(),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        if !control.ready.load(Ordering::SeqCst) {
            if !control.shutting_down.load(Ordering::SeqCst) {
                let _ = events.send(Event::FailedDuringStartup {
                    name: spec.name.clone(),
                    reason: format!("exited ({how})"),
                });
            }
            return;
        }
        // Ctrl-C reaches the child and this process together; let the shutdown win.
        if sleep_or_stop(SHUTDOWN_SETTLE, &mut stop).await
            || control.shutting_down.load(Ordering::SeqCst)
        {
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_START;
        }
        eprintln!(
            "meshgate up: {} exited ({how}); restarting in {} (log: {})\n{}",
            spec.name,
            humantime::format_duration(backoff),
            spec.log.display(),
            indent(&log_tail(&spec.log, 10))
        );
        if sleep_or_stop(backoff, &mut stop).await {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
        restarts += 1;
    }
}

/// Sleeps for `d`; true when `stop` turned true meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped(stop) => return true,
    }
    *stop.borrow()
}

/// Resolves once `stop` is true (or its sender is gone). The value's guard is dropped
/// here, so callers can hold this across awaits.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn wait_exists(path: &Path) {
    while !path.exists() {
        tokio::time::sleep(DOWN_POLL).await;
    }
}

async fn wait_gone(path: &Path) {
    while path.exists() {
        tokio::time::sleep(DOWN_POLL).await;
    }
}

async fn report_healthy_again(spec: Arc<ChildSpec>, control: Control) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !control.shutting_down.load(Ordering::SeqCst) {
        if probe(spec.health.0, &spec.health.1).await.is_ok() {
            eprintln!("meshgate up: {} is healthy again", spec.name);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(spec: &ChildSpec, restarts: u32) -> std::io::Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let args: Vec<String> = spec
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    writeln!(
        log,
        "--- meshgate up: {} {}: {} {}",
        if restarts == 0 {
            "starting"
        } else {
            "restarting"
        },
        spec.name,
        spec.program.display(),
        args.join(" ")
    )?;
    let mut log_marker = log.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // If `meshgate up` itself fails, no child outlives it.
        .kill_on_drop(true);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(&spec.pid_file, format!("{pid}\n"));
        let _ = writeln!(log_marker, "--- meshgate up: {} is pid {pid}", spec.name);
    }
    Ok(child)
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
pub async fn terminate(name: &str, child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Some(pid) = child.id() {
        // The child is not reaped yet, so its pid cannot have been reused.
        sigterm(pid).await;
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "meshgate up: {name} did not stop within {}; killing it",
            humantime::format_duration(STOP_GRACE)
        );
        let _ = child.kill().await;
    }
}

/// Sends SIGTERM through kill(1): the crate forbids `unsafe` and has no signal-sending
/// dependency, and this runs a handful of times per session.
async fn sigterm(pid: u32) {
    let sent = Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !matches!(sent, Ok(s) if s.success()) {
        eprintln!(
            "meshgate up: could not send SIGTERM to pid {pid}; it is killed after the grace period"
        );
    }
}

/// One `GET` on a loopback HTTP endpoint; `Ok` when it answers 200 within a second.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<(), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshgate-up\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 128];
        let mut n = 0;
        while n < buf.len() && !buf[..n].contains(&b'\n') {
            let k = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
            if k == 0 {
                break;
            }
            n += k;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        let status = line.lines().next().unwrap_or_default().trim().to_string();
        if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
            Ok(())
        } else if status.is_empty() {
            Err("no answer".to_string())
        } else {
            Err(format!("answered {status:?}"))
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), exchange).await {
        Ok(result) => result,
        Err(_) => Err("no answer within 1s".to_string()),
    }
}

/// The last `n` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Indents every line by four spaces, for log excerpts under a message.
pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_and_indent() {
        let dir = std::env::temp_dir().join(format!("meshgate-up-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("x.log");
        std::fs::write(&f, "a\nb\nc\n").expect("write");
        assert_eq!(log_tail(&f, 2), "b\nc");
        assert_eq!(log_tail(&dir.join("missing"), 2), "");
        assert_eq!(indent("a\nb"), "    a\n    b");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn probe_reads_the_status_line() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert_eq!(probe(addr, "/healthz").await, Ok(()));
        let e = probe(addr, "/healthz").await.expect_err("503");
        assert!(e.contains("503"), "{e}");
        server.await.expect("server");
        assert!(
            probe(addr, "/healthz").await.is_err(),
            "nobody listens any more"
        );
    }
}
