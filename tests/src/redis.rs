//! Redis for end-to-end tests: Debian's `redis-server` on free loopback ports, one standalone
//! server ([`Redis`]) or a cluster of masters ([`RedisCluster`]), started and waited for with a
//! deadline-polled `PING`, stoppable, freezable and restartable on the same port (so a proxy
//! that was configured with its URL sees it return), and removed on drop.
//!
//! Needs `redis-server` and `redis-cli` (`apt-get install -y redis-server`; `scripts/deps.sh`
//! installs them). Persistence is off and every server works in its own temp directory, so
//! nothing is left behind.
//!
//! The calls block (starting a server takes a few milliseconds); from an async test with
//! other work in flight, wrap them in `tokio::task::block_in_place`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::wait::POLL_INTERVAL;

/// How long a server may take to answer `PING` after it was started.
pub const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to report `cluster_state:ok` after creation.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Redis::stop`] waits for a clean exit before killing.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One `redis-server` process on a loopback port. Killed on drop.
pub struct Redis {
    port: u16,
    /// Arguments after the common ones (cluster mode and its files).
    extra: Vec<String>,
    dir: PathBuf,
    /// Keeps the directory alive for a standalone server; a cluster node shares its
    /// cluster's directory and leaves this empty.
    _own_dir: Option<TempDir>,
    child: Option<Child>,
    frozen: bool,
}

impl Redis {
    /// Starts a standalone server on a free port and waits until it answers `PING`.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("meshgate-redis-")
            .tempdir()
            .expect("create temp dir for redis-server");
        let path = dir.path().to_path_buf();
        Redis::start_in(free_port(false), Vec::new(), path, Some(dir))
    }

    fn start_in(port: u16, extra: Vec<String>, dir: PathBuf, own_dir: Option<TempDir>) -> Redis {
        let mut redis = Redis {
            port,
            extra,
            dir,
            _own_dir: own_dir,
            child: None,
            frozen: false,
        };
        redis.spawn_and_wait();
        redis
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    fn spawn_and_wait(&mut self) {
        let port = self.port.to_string();
        let log = self.log_path().to_string_lossy().into_owned();
        let dir = self.dir.to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir,
                "--logfile",
                &log,
            ])
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        self.child = Some(child);
        self.frozen = false;
        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "redis-server on port {} exited with {status} before answering PING\n--- log ---\n{}",
                    self.port,
                    self.log()
                );
            }
            if ping(self.port, Duration::from_millis(500)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {REDIS_READY_TIMEOUT:?}\n--- log ---\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the process is alive (it may be frozen).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Whether the server answers `PING` within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        ping(self.port, timeout)
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .map(Pid::from_raw)
    }

    /// Stops the server cleanly (SIGTERM; SIGKILL if it has not exited within 5 s) and waits
    /// for the process, so the port is closed when this returns.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = i32::try_from(child.id()).ok().map(Pid::from_raw) {
            if self.frozen {
                let _ = kill(pid, Signal::SIGCONT);
            }
            let _ = kill(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.wait();
        self.frozen = false;
    }

    /// Kills the server (SIGKILL: connections are reset, nothing is flushed) and waits for
    /// the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.frozen = false;
    }

    /// Freezes the server (SIGSTOP): connections stay open and connects still complete in
    /// the kernel, but nothing is answered — a hung Redis rather than a dead one.
    pub fn freeze(&mut self) {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP redis-server: {e}"));
            self.frozen = true;
        }
    }

    /// Undoes [`Redis::freeze`].
    pub fn thaw(&mut self) {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGCONT).unwrap_or_else(|e| panic!("SIGCONT redis-server: {e}"));
            self.frozen = false;
        }
    }

    /// Starts the server again on the same port with the same arguments (after
    /// [`Redis::stop`] or [`Redis::kill`]; a running server is stopped first) and waits until
    /// it answers `PING`. The data set starts empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// `redis-cli -p PORT ARGS…`, stdout as text. Blocks while the server is frozen.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Number of keys (`DBSIZE`); 0 when the answer is not a number.
    pub fn dbsize(&self) -> u64 {
        self.cli(&["dbsize"]).trim().parse().unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped (frozen) process.
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            eprintln!(
                "--- last {} lines of redis-server log (port {}) ---\n{}",
                tail.len(),
                self.port,
                tail.join("\n")
            );
        }
    }
}

/// A Redis Cluster of masters without replicas, every slot assigned, on free loopback ports
/// (each node's cluster-bus port, port + 10000, free too). Killed and removed on drop.
pub struct RedisCluster {
    nodes: Vec<Redis>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts `masters` (at least 3, Redis Cluster's minimum) cluster-enabled servers, joins
    /// them with `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters");
        let dir = tempfile::Builder::new()
            .prefix("meshgate-redis-cluster-")
            .tempdir()
            .expect("create temp dir for the cluster");
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let port = free_port(true);
            let extra = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".to_owned(),
                "2000".to_owned(),
            ];
            nodes.push(Redis::start_in(port, extra, dir.path().to_path_buf(), None));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let created = redis_cli(nodes[0].port, &args);
        let cluster = RedisCluster { nodes, dir };
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let ok = cluster.nodes.iter().all(|n| {
                let info = n.cli(&["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            });
            if ok {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "Redis Cluster not ok after {CLUSTER_READY_TIMEOUT:?}\n--- redis-cli --cluster create ---\n{created}"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// `DBSIZE` of every node, in node order.
    pub fn dbsizes(&self) -> Vec<u64> {
        self.nodes.iter().map(Redis::dbsize).collect()
    }

    /// The directory holding the nodes' config files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Nodes first: the directory they write into goes with `self.dir` afterwards.
        self.nodes.clear();
    }
}

/// A loopback port that was free a moment ago; with `cluster_bus`, port + 10000 too.
/// redis-server binds with SO_REUSEADDR, so the probe socket's TIME_WAIT does not matter.
pub fn free_port(cluster_bus: bool) -> u16 {
    for _ in 0..200 {
        let Ok(port) = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
        else {
            continue;
        };
        if !cluster_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// One `PING` over a fresh connection: true on `+PONG`.
fn ping(port: u16, timeout: Duration) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), timeout)
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// `redis-cli -p PORT ARGS…`, stdout as text.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); apt-get install -y redis-server"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
