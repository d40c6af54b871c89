//! Process plumbing every backend binary shares: the command-line arguments,
//! JSON logs, the `/healthz` route, the access log, and serving until SIGTERM.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::SqlitePool;

use crate::auth::{Auth, AuthConfig};
use crate::db::DbError;
use crate::AppError;

/// Largest request body any backend accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// Arguments every backend takes; flatten into the binary's own `clap::Parser`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Directory for the service's SQLite database, created if missing.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Issuer of accepted access tokens; its discovery document names the JWKS.
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    pub issuer: String,
    /// Audience that accepted access tokens must contain.
    #[arg(long, default_value = "shop-api")]
    pub audience: String,
    /// JWKS URL to use instead of the one found by discovery.
    #[arg(long)]
    pub jwks_uri: Option<String>,
}

impl ServiceArgs {
    /// The token verifier these arguments describe (no network access yet).
    pub fn auth(&self) -> Result<Auth, StartError> {
        let mut config = AuthConfig::new(&self.issuer, &self.audience);
        config.jwks_uri = self.jwks_uri.clone();
        Auth::new(config).map_err(|e| StartError::Config(format!("HTTP client: {e}")))
    }
}

/// Parses the command line of a binary whose parser flattens [`ServiceArgs`],
/// with `default_listen` as the `--listen` default (shown in `--help`). Exits
/// with clap's message on bad arguments.
pub fn parse_args<C: clap::Parser>(default_listen: &'static str) -> C {
    let matches = C::command()
        .mut_arg("listen", |arg| {
            arg.required(false).default_value(default_listen)
        })
        .get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Why a backend could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Sets up JSON logs on stderr (filter from `RUST_LOG`, default `info`), runs
/// `main` on a two-worker runtime and turns its result into the exit code.
pub fn run<F>(main: F) -> ExitCode
where
    F: Future<Output = Result<(), StartError>>,
{
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `listen`, prints exactly `listening on http://ADDR` (the bound address)
/// on stdout, and serves `router` until SIGTERM or Ctrl-C, then lets in-flight
/// requests finish.
pub async fn serve(router: Router, listen: SocketAddr) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(%addr, "listening");
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(StartError::Serve)?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Wraps a service's API router with what every backend has: `GET /healthz`
/// (200 `ok` when the database answers, 503 otherwise; no token needed), a JSON
/// 404 for unknown paths, the body size limit, and one access-log line per request.
pub fn service_router(api: Router, db: SqlitePool) -> Router {
    api.route("/healthz", get(move || healthz(db.clone())))
        .fallback(|| async { AppError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(access_log))
}

async fn healthz(db: SqlitePool) -> Response {
    match sqlx::query("SELECT 1").execute(&db).await {
        Ok(_) => "ok".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    // Sidecar health checks every few seconds would drown everything else.
    if path == "/healthz" {
        tracing::debug!(%method, %path, status, millis, "request");
    } else {
        tracing::info!(%method, %path, status, millis, "request");
    }
    response
}
