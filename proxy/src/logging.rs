//! Structured logs: the access log (one JSON line per request) on stdout, diagnostics as
//! JSON lines on stderr. `MESHGATE_LOG` sets the diagnostic level filter (default `info`).

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber once; later calls are ignored.
pub fn init() {
    let diag_filter =
        EnvFilter::try_from_env("MESHGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let access = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stdout)
        .with_filter(filter_fn(|m| m.target() == "access"));
    let diagnostics = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(|m| m.target() != "access"))
        .with_filter(diag_filter);
    let _ = tracing_subscriber::registry()
        .with(access)
        .with(diagnostics)
        .try_init();
}
