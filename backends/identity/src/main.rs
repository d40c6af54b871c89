//! `identity` binary: parses the command line, loads users, clients and keys,
//! and serves the provider until Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use clap::{Parser, Subcommand};
use identity::{app, AppState, Clients, KeyStore, Settings, Users};
use rand::RngCore;

#[derive(Parser)]
#[command(
    name = "identity",
    about = "Dev OpenID Provider for the meshgate demo shop",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Read a password from stdin and print its argon2id PHC hash for the users file.
    HashPassword,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// Issuer URL; defaults to http://<bound address>.
    #[arg(long)]
    issuer: Option<String>,
    /// Directory for persisted signing keys (created with mode 0700).
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// Users YAML file.
    #[arg(long, required = true)]
    users: Option<PathBuf>,
    /// Clients YAML file.
    #[arg(long, required = true)]
    clients: Option<PathBuf>,
    /// Access and ID token lifetime.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    access_token_ttl: Duration,
    /// Refresh token lifetime (each rotation starts a new one).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    refresh_token_ttl: Duration,
    /// Add a new current RS256 and ES256 key before serving; older keys stay published.
    #[arg(long)]
    rotate_keys: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => hash_password(),
        None => serve(cli.serve),
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let hash = SaltString::encode_b64(&salt).and_then(|salt| {
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    });
    match hash {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
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
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServeArgs) -> Result<(), String> {
    let (Some(data_dir), Some(users), Some(clients)) = (args.data_dir, args.users, args.clients)
    else {
        return Err("--data-dir, --users and --clients are required".into());
    };
    let users = Users::load(&users).map_err(|e| e.to_string())?;
    let clients = Clients::load(&clients).map_err(|e| e.to_string())?;
    let rotate = args.rotate_keys;
    // RSA key generation takes a moment; keep it off the async workers.
    let keys = tokio::task::spawn_blocking(move || KeyStore::load_or_create(&data_dir, rotate))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let issuer = args.issuer.unwrap_or_else(|| format!("http://{addr}"));
    let mut settings = Settings::new(issuer);
    settings.access_token_ttl = args.access_token_ttl;
    settings.refresh_token_ttl = args.refresh_token_ttl;
    let state = AppState::new(settings, users, clients, keys).map_err(|e| e.to_string())?;

    let sweeper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    });

    tracing::info!(issuer = %state.settings.issuer, "identity provider ready");
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
