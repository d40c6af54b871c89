//! Diagnostic logs: JSON lines on stderr, filtered by `MESHGATE_LOG` (an `EnvFilter`
//! directive such as `info` or `info,pingora_proxy=debug`; default `info`). The access log
//! has its own writer on stdout (see [`crate::access_log`]).

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber once; later calls are ignored.
pub fn init() {
    let setting = std::env::var("MESHGATE_LOG").unwrap_or_default();
    let directive = if setting.trim().is_empty() {
        "info"
    } else {
        setting.as_str()
    };
    let diag_filter = EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let diagnostics = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .with_filter(diag_filter);
    let _ = tracing_subscriber::registry().with(diagnostics).try_init();
    // Pingora logs through the `log` crate, bridged into tracing. The bridge admits every
    // level by default, so each of Pingora's per-request debug!/trace! calls would build a
    // record only for the filter to drop it. Cap `log` at the most verbose level the
    // filter can want.
    log::set_max_level(log_ceiling(&setting));
}

/// The most verbose level a `MESHGATE_LOG` setting can ask for (info when unset).
fn log_ceiling(setting: &str) -> log::LevelFilter {
    let s = setting.to_ascii_lowercase();
    if s.contains("trace") {
        log::LevelFilter::Trace
    } else if s.contains("debug") {
        log::LevelFilter::Debug
    } else if s.contains("info") || s.trim().is_empty() {
        log::LevelFilter::Info
    } else if s.contains("warn") {
        log::LevelFilter::Warn
    } else if s.contains("error") {
        log::LevelFilter::Error
    } else {
        log::LevelFilter::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ceiling_follows_the_most_verbose_directive() {
        assert_eq!(log_ceiling(""), log::LevelFilter::Info);
        assert_eq!(log_ceiling("warn"), log::LevelFilter::Warn);
        assert_eq!(
            log_ceiling("info,pingora_proxy=debug"),
            log::LevelFilter::Debug
        );
        assert_eq!(log_ceiling("TRACE"), log::LevelFilter::Trace);
    }
}
