//! Process lifecycle: signals, draining on SIGTERM, and the exit once in-flight work is done.
//!
//! SIGQUIT, which Pingora uses to hand listening sockets to a new process, is treated like
//! SIGTERM: meshgate has no command that would receive them, and a socket handed to
//! whatever listens on Pingora's default upgrade path would be a hazard.
//!
//! Pingora's graceful shutdown stops the listeners and then always sleeps the full grace
//! period before stopping its runtimes. We keep its listener handling but exit as soon as
//! no request is in flight, so a rolling restart takes as long as the slowest request,
//! not `grace_period` every time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::metrics::METRICS;

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once SIGTERM was received: `/readyz` fails so load balancers stop sending traffic.
pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Watches SIGTERM and SIGQUIT (graceful: drain, then exit) and SIGINT (fast) for Pingora.
pub struct Signals {
    /// Upper bound on draining.
    pub grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(grace_period = ?self.grace_period, "SIGTERM: draining in-flight requests");
                DRAINING.store(true, Ordering::Relaxed);
                spawn_exit_when_idle(self.grace_period);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                tracing::info!(grace_period = ?self.grace_period, "SIGQUIT: draining in-flight requests (no socket hand-over)");
                DRAINING.store(true, Ordering::Relaxed);
                spawn_exit_when_idle(self.grace_period);
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Exits the process once no request has been in flight for a short settle time (so a
/// request accepted just before the listeners closed is still counted), or lets Pingora's
/// own grace period end it.
fn spawn_exit_when_idle(grace: Duration) {
    std::thread::spawn(move || {
        let deadline = Instant::now() + grace;
        let settle = Duration::from_millis(200);
        let mut idle_since: Option<Instant> = None;
        while Instant::now() < deadline {
            if METRICS.active_requests.get() <= 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settle {
                    tracing::info!("drained: no request in flight; exiting");
                    crate::access_log::flush();
                    std::process::exit(0);
                }
            } else {
                idle_since = None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
