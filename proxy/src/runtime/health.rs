//! Active health checks: probe each endpoint of clusters that configure `health_check`,
//! and take endpoints out of (or back into) load balancing after consecutive results.
//!
//! Probes are a bare HTTP/1.1 `GET` written by hand: a full HTTP client would add a large
//! dependency for one request line and one status line, and we want exact control over
//! timeouts and connection reuse (none: every probe is a fresh connection, like Envoy's).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Runtime;
use crate::metrics::METRICS;

/// How often the scheduler looks for due probes. Probes themselves follow each cluster's
/// `interval`; this only bounds how late one can start.
const TICK: Duration = Duration::from_millis(25);

/// Runs until `shutdown` turns true, probing endpoints of the current runtime.
pub async fn run(runtime: Arc<ArcSwap<Runtime>>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut due: HashMap<(String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
        let rt = runtime.load_full();
        let now = Instant::now();
        let mut live = Vec::new();
        for cluster in rt.clusters.values() {
            let Some(hc) = cluster.health_check.clone() else {
                continue;
            };
            for ep in &cluster.endpoints {
                let key = (cluster.name.to_string(), ep.name.clone());
                live.push(key.clone());
                let next = due.entry(key).or_insert_with(|| {
                    // Publish the series as soon as the endpoint is checked, not at its
                    // first state change, so dashboards see healthy endpoints too.
                    METRICS
                        .endpoint_healthy
                        .with_label_values(&[&*cluster.name, ep.name.as_str()])
                        .set(i64::from(ep.state.is_healthy()));
                    now
                });
                if *next > now {
                    continue;
                }
                *next = now + hc.interval.get();
                let state = ep.state.clone();
                let addr = ep.addr;
                let host = ep.name.clone();
                let cluster_name = cluster.name.clone();
                let path = hc.path.clone();
                let hc = hc.clone();
                tokio::spawn(async move {
                    let ok = probe(addr, &host, &path, hc.timeout.get()).await;
                    METRICS
                        .health_checks
                        .with_label_values(&[
                            &*cluster_name,
                            if ok { "success" } else { "failure" },
                        ])
                        .inc();
                    if let Some(now_healthy) =
                        state.record_probe(ok, hc.unhealthy_after, hc.healthy_after)
                    {
                        METRICS
                            .endpoint_healthy
                            .with_label_values(&[&*cluster_name, host.as_str()])
                            .set(i64::from(now_healthy));
                        if now_healthy {
                            tracing::info!(cluster = %cluster_name, endpoint = %host, "endpoint healthy again");
                        } else {
                            tracing::warn!(cluster = %cluster_name, endpoint = %host, "endpoint failed health checks; removed from load balancing");
                        }
                    }
                });
            }
        }
        due.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                let _ = METRICS.endpoint_healthy.remove_label_values(&[&k.0, &k.1]);
            }
            keep
        });
    }
}

/// One probe: true when the endpoint answers `GET path` with a 2xx status within `timeout`.
pub async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_inner(addr, host, path))
        .await
        .unwrap_or(false)
}

async fn probe_inner(addr: SocketAddr, host: &str, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshgate-health\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The status line fits in the first few bytes; read until we have it.
    let mut buf = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => filled += n,
        }
    }
    parse_status(&buf[..filled]).is_some_and(|s| (200..300).contains(&s))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"garbage garbage"), None);
    }

    #[tokio::test]
    async fn probe_of_closed_port_fails_fast() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        assert!(!probe(addr, "x", "/healthz", Duration::from_millis(500)).await);
    }
}
