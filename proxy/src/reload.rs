//! Hot reload: on SIGHUP or a change of the config file, load, validate and compile the
//! file, then swap the new [`Runtime`] in atomically. An invalid file is rejected whole —
//! logged with every error, counted in `meshgate_config_reloads_total{result="failure"}` —
//! and the running config keeps serving.
//!
//! Listeners, the admin address and thread counts belong to sockets and threads created at
//! start; a change to them is reported as needing a restart and the rest is applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, ConfigError, ConfigSpec};
use crate::metrics::METRICS;
use crate::runtime::Runtime;
use crate::runtime::SharedState;

/// Why a reload happened (logged).
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file changed on disk.
    FileChange,
    /// A certificate or key file that a cluster's `tls` names changed on disk.
    Certificates,
}

/// Owns the path and the swap; one reload at a time.
pub struct Reloader {
    path: PathBuf,
    runtime: Arc<ArcSwap<Runtime>>,
    registry: Arc<SharedState>,
    /// Serializes reloads and remembers the last file content applied.
    last: Mutex<Vec<u8>>,
}

impl Reloader {
    /// A reloader for `path`, whose current content is already serving as `runtime`.
    pub fn new(path: PathBuf, runtime: Arc<ArcSwap<Runtime>>, registry: Arc<SharedState>) -> Self {
        let last = std::fs::read(&path).unwrap_or_default();
        Self {
            path,
            runtime,
            registry,
            last: Mutex::new(last),
        }
    }

    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> std::path::PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }

    /// Reloads now. File-change triggers skip files whose content did not change (editors
    /// and `touch` produce events without edits); SIGHUP always reloads.
    pub fn reload(&self, trigger: Trigger) -> Result<Option<u64>, Vec<ConfigError>> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = std::fs::read(&self.path).map_err(|e| {
            vec![ConfigError::new(
                "",
                format!("cannot read {}: {e}", self.path.display()),
            )]
        });
        let bytes = match bytes {
            Ok(b) => b,
            Err(errs) => return Err(fail(&self.path, errs)),
        };
        if matches!(trigger, Trigger::FileChange) && bytes == *last {
            return Ok(None);
        }
        let loaded = match config::load_file(&self.path) {
            Ok(l) => l,
            Err(errs) => return Err(fail(&self.path, errs)),
        };
        let current = self.runtime.load_full();
        let generation = current.generation + 1;
        let spec = Arc::new(loaded.spec);
        let base = self.path.parent().unwrap_or(Path::new("."));
        let rt = match Runtime::compile(spec.clone(), generation, &self.registry, base) {
            Ok(mut rt) => {
                rt.templates = loaded.interpolated.clone();
                rt
            }
            Err(errs) => {
                let errs = loaded_locate(&loaded.index, errs);
                return Err(fail(&self.path, errs));
            }
        };
        warn_restart_only_changes(&current.spec, &spec);
        if serde_json::to_string(&spec.stores).unwrap_or_default()
            != self.registry.stores_fingerprint
        {
            tracing::warn!("`stores` changes need a restart; the stores from start-up stay in use");
        }
        crate::access_log::set_enabled(spec.runtime.access_log);
        self.runtime.store(Arc::new(rt));
        *last = bytes;
        METRICS.reloads.with_label_values(&["success"]).inc();
        METRICS
            .config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        tracing::info!(?trigger, generation, path = %self.path.display(), "config reloaded");
        Ok(Some(generation))
    }
}

fn loaded_locate(index: &config::yaml::LineIndex, errs: Vec<ConfigError>) -> Vec<ConfigError> {
    errs.into_iter()
        .map(|e| {
            let loc = index.locate(&e.path);
            e.at(loc)
        })
        .collect()
}

fn fail(path: &Path, errs: Vec<ConfigError>) -> Vec<ConfigError> {
    METRICS.reloads.with_label_values(&["failure"]).inc();
    for e in &errs {
        tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the running config");
    }
    errs
}

fn warn_restart_only_changes(old: &ConfigSpec, new: &ConfigSpec) {
    let listeners = |s: &ConfigSpec| serde_json::to_string(&s.listeners).unwrap_or_default();
    let admin = |s: &ConfigSpec| serde_json::to_string(&s.admin).unwrap_or_default();
    if listeners(old) != listeners(new) {
        tracing::warn!("listener changes need a restart; they are ignored until then");
    }
    if admin(old) != admin(new) {
        tracing::warn!("admin address changes need a restart; ignored until then");
    }
    if old.runtime.threads != new.runtime.threads
        || old.runtime.work_stealing != new.runtime.work_stealing
        || old.runtime.grace_period != new.runtime.grace_period
    {
        tracing::warn!(
            "runtime.threads, runtime.work_stealing and runtime.grace_period changes need a restart"
        );
    }
}

/// Background service driving the [`Reloader`] from SIGHUP and file events.
pub struct ReloadService(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reloader = self.0.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Trigger>();

        let file_name = reloader.path.file_name().map(|n| n.to_os_string());
        let watch_dir = reloader
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let file_tx = tx.clone();
        // Watch the directory, not the file: editors and config management replace files by
        // rename, which a watch on the old inode would miss.
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
                if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                    let _ = file_tx.send(Trigger::FileChange);
                }
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => match w.watch(&watch_dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config directory; reload with SIGHUP");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP");
                None
            }
        };

        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGHUP handler");
                None
            }
        };
        loop {
            let trigger = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return },
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => Trigger::Signal,
                _ = shutdown.changed() => return,
            };
            // A save is often several events (truncate, write, rename); let them settle
            // and reload once.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut trigger = trigger;
            while let Ok(t) = rx.try_recv() {
                if matches!(t, Trigger::Signal) {
                    trigger = t;
                }
            }
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload(trigger)).await;
        }
    }
}
