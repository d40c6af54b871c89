//! `orders` binary: opens the database, then serves orders until Ctrl-C or
//! SIGTERM, calling the other services through the sidecar at `--outbound`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use orders::{app, AppState, Peers, DEFAULT_LISTEN, SCHEMA, SERVICE};
use shop_common::{parse_args, ServiceArgs, StartError};

#[derive(clap::Parser)]
#[command(name = "orders", about = "Demo shop orders")]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    /// Base URL of the sidecar's outbound listener; each call sets `Host` to
    /// catalog, inventory or payments.
    #[arg(long, default_value = orders::DEFAULT_OUTBOUND)]
    outbound: String,
    /// Timeout of each call to another service (e.g. 5s, 800ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    call_timeout: Duration,
}

fn main() -> ExitCode {
    let cli: Cli = parse_args(DEFAULT_LISTEN);
    shop_common::run(async move {
        let args = cli.service;
        if !(cli.outbound.starts_with("http://") || cli.outbound.starts_with("https://")) {
            return Err(StartError::Config(format!(
                "--outbound must be an http(s) URL, not {:?}",
                cli.outbound
            )));
        }
        let peers = Peers::new(&cli.outbound, cli.call_timeout)
            .map_err(|e| StartError::Config(format!("HTTP client: {e}")))?;
        let db = shop_common::db::open(&args.data_dir, SERVICE, SCHEMA).await?;
        let auth = args.auth()?;
        shop_common::serve(app(AppState { db, auth, peers }), args.listen).await
    })
}
