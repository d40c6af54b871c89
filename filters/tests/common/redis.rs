//! A real `redis-server` (standalone, or a 3-master cluster) on free loopback ports for
//! the Redis integration tests of this crate; every process is killed on drop.

// Each test binary uses only part of the harness.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a fixed loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub child: Option<Child>,
}

impl RedisServer {
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ];
        args.extend_from_slice(extra);
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        let server = Self {
            port,
            child: Some(child),
        };
        server.wait_ready();
        server
    }

    pub fn start() -> Self {
        Self::start_on(free_port(false))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Polls PING until PONG, with a deadline.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not ready after 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` (e.g. `STOP`, `CONT`) to the server process: a stopped Redis keeps its
    /// connections open but never answers, the case only a deadline can bound.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the OS says is free (Redis binds it right after, with SO_REUSEADDR). With
/// `cluster_bus`, port + 10000 — the cluster bus — must be free too.
pub fn free_port(cluster_bus: bool) -> u16 {
    for _ in 0..100 {
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

/// `redis-cli -p PORT ARGS…` output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); apt-get install -y redis-server"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Raw `redis-cli` stdout (values may be binary).
pub fn redis_cli_raw(port: u16, args: &[&str]) -> Vec<u8> {
    Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); apt-get install -y redis-server"))
        .stdout
}

/// Three cluster-enabled masters sharing the 16384 slots; removed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    pub dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("meshgate-redis-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let dir_arg = dir.to_string_lossy().into_owned();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port(true);
            let conf = format!("nodes-{port}.conf");
            nodes.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    &dir_arg,
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(nodes[0].port, &args);
        let cluster = Self { nodes, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|n| redis_cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster not ok after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
