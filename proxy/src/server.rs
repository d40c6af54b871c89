//! `meshgate run`: turns a config file into running Pingora services — one proxy service per
//! listener, the admin service, health checking and hot reload — and runs them until a
//! signal ends the process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{self, ConfigError};
use crate::conn::MeshApp;
use crate::lifecycle::Signals;
use crate::listener::ProxyListener;
use crate::metrics::METRICS;
use crate::proxy::{ListenerInfo, MeshProxy};
use crate::reload::{ReloadService, Reloader};
use crate::runtime::SharedState;
use crate::runtime::{health, Runtime};

/// Loads, validates and compiles a file into generation 1, with located errors, together
/// with the process state built from its `stores` section.
pub fn compile_file(path: &Path) -> Result<(Runtime, Arc<SharedState>), Vec<ConfigError>> {
    let loaded = config::load_file(path)?;
    let shared = SharedState::new(&loaded.spec.stores)
        .map_err(|m| loaded.locate(vec![ConfigError::new("stores.rate_limits", m)]))?;
    let spec = Arc::new(loaded.spec.clone());
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rt = Runtime::compile(spec, 1, &shared, base).map_err(|errs| loaded.locate(errs))?;
    rt.templates = loaded.interpolated;
    Ok((rt, Arc::new(shared)))
}

/// Loads each OpenID Provider's keys before the first request needs them, and retries
/// providers that have none yet (a provider that starts after the proxy).
struct ProviderPrefetch(Arc<SharedState>);

#[async_trait]
impl BackgroundService for ProviderPrefetch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            for (name, p) in self.0.providers() {
                if !p.has_keys() {
                    if let Err(e) = p.prefetch().await {
                        tracing::warn!(provider = %name, error = %e, "cannot load the provider's signing keys yet; jwt routes answer 401 until they load");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Re-reads listener certificates when their files change; a poll every two seconds is
/// plenty for leaves that live hours and works wherever the files come from (a volume,
/// a secret mount, `meshgate certs init`).
///
/// Cluster client certificates are part of the compiled runtime, so a change to them
/// triggers a config reload (which re-reads them and swaps the runtime atomically).
struct CertWatch {
    listeners: Vec<Arc<crate::tls::ReloadingResolver>>,
    runtime: Arc<ArcSwap<Runtime>>,
    reloader: Arc<Reloader>,
}

/// Modification time and size of every file a cluster's `tls` names.
fn cluster_cert_stamps(rt: &Runtime, base: &Path) -> Vec<Option<(std::time::SystemTime, u64)>> {
    rt.spec
        .clusters
        .values()
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| [&t.ca, &t.cert, &t.key])
        .map(|f| {
            std::fs::metadata(base.join(f))
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[async_trait]
impl BackgroundService for CertWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let base = self.reloader.base_dir();
        let start = self.runtime.load_full();
        let mut seen = (start.generation, cluster_cert_stamps(&start, &base));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
            for r in &self.listeners {
                let r = r.clone();
                // File reads and certificate parsing are blocking work.
                let _ = tokio::task::spawn_blocking(move || r.check()).await;
            }
            let rt = self.runtime.load_full();
            let now = cluster_cert_stamps(&rt, &base);
            // A new generation (the config changed) starts a new baseline; only a change
            // under the same generation means the files themselves moved.
            if seen.0 == rt.generation && seen.1 != now && !now.is_empty() {
                let reloader = self.reloader.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    reloader.reload(crate::reload::Trigger::Certificates)
                })
                .await;
                seen = (
                    self.runtime.load().generation,
                    cluster_cert_stamps(&self.runtime.load(), &base),
                );
            } else {
                seen = (rt.generation, now);
            }
        }
    }
}

struct HealthService(Arc<ArcSwap<Runtime>>);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        health::run(self.0.clone(), shutdown).await;
    }
}

/// Binds every proxy listener's socket and checks the admin address is free, so a taken
/// address fails `meshgate run` at once with its YAML path (Pingora would retry in the
/// background and then panic, or run on without that listener).
fn bind_listeners(
    spec: &crate::config::ConfigSpec,
) -> Result<Vec<crate::listener::BoundSocket>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut sockets = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        match crate::listener::bind(&l.address) {
            Ok(s) => sockets.push(s),
            Err(m) => errors.push(ConfigError::new(format!("listeners[{i}].address"), m)),
        }
    }
    if let Some(a) = &spec.admin {
        if let Err(e) = std::net::TcpListener::bind(&a.address) {
            errors.push(ConfigError::new(
                "admin.address",
                format!("cannot listen on {}: {e}", a.address),
            ));
        }
    }
    if errors.is_empty() {
        Ok(sockets)
    } else {
        Err(errors)
    }
}

/// Starts serving `path` and blocks until the process is told to stop. Returns an error
/// only for problems found before serving starts.
pub fn run(path: &Path) -> Result<(), Vec<ConfigError>> {
    let (rt, registry) = compile_file(path)?;
    let spec = rt.spec.clone();
    let base = path.parent().unwrap_or(Path::new("."));
    let runtime = Arc::new(ArcSwap::from_pointee(rt));
    METRICS.config_generation.set(1);
    crate::access_log::set_enabled(spec.runtime.access_log);

    let sockets = bind_listeners(&spec)?;
    let conf = ServerConf {
        threads: spec.runtime.threads,
        work_stealing: spec.runtime.work_stealing,
        grace_period_seconds: Some(spec.runtime.grace_period.get().as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora's `max_retries` bounds attempts; whether an attempt is retried is decided
        // per error in `fail_to_connect` / `error_while_proxy` (see docs/phases.md).
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut resolvers = Vec::new();
    for (l, socket) in spec.listeners.iter().zip(sockets) {
        let tls = l.tls.is_some();
        let mut proxy = pingora::proxy::http_proxy(
            &conf,
            MeshProxy::new(
                runtime.clone(),
                ListenerInfo {
                    name: l.name.as_str().into(),
                    tls,
                },
            ),
        );
        if l.h2c {
            let mut opts = HttpServerOptions::default();
            opts.h2c = true;
            proxy.server_options = Some(opts);
        }
        let settings = match &l.tls {
            Some(t) => {
                let (settings, resolver) = crate::tls::settings(t, l.mtls.as_ref(), base)
                    .map_err(|m| vec![ConfigError::new(format!("listeners.{}.tls", l.name), m)])?;
                resolvers.push(resolver);
                Some(settings)
            }
            None => None,
        };
        addrs.push(socket.addr);
        // meshgate's own accept loop (listener.rs): an idle connection holds no Pingora
        // task, and `MeshApp` parks it between requests (conn.rs).
        server.add_service(ProxyListener::new(
            format!("listener {}", l.name),
            socket,
            settings,
            MeshApp::new(proxy, runtime.clone()),
            spec.runtime.header_read_timeout.get(),
        ));
    }

    if let Some(admin) = &spec.admin {
        let mut svc = Service::new(
            "admin".to_string(),
            HttpServer::new_app(AdminApp::new(runtime.clone(), registry.clone(), addrs)),
        );
        svc.add_tcp(&admin.address);
        server.add_service(svc);
    }
    server.add_service(background_service(
        "health checks",
        HealthService(runtime.clone()),
    ));
    server.add_service(background_service(
        "provider keys",
        ProviderPrefetch(registry.clone()),
    ));
    let reloader = Arc::new(Reloader::new(path.to_path_buf(), runtime.clone(), registry));
    server.add_service(background_service(
        "certificate files",
        CertWatch {
            listeners: resolvers,
            runtime: runtime.clone(),
            reloader: reloader.clone(),
        },
    ));
    server.add_service(background_service("config reload", ReloadService(reloader)));

    tracing::info!(
        config = %path.display(),
        listeners = ?spec.listeners.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        admin = spec.admin.as_ref().map(|a| a.address.as_str()),
        "meshgate starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            grace_period: spec.runtime.grace_period.get(),
        }),
    });
    Ok(())
}
