//! `catalog` binary: opens the database, then serves the product catalog until
//! Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use catalog::{app, AppState, DEFAULT_LISTEN, SCHEMA, SERVICE};
use shop_common::{parse_args, ServiceArgs};

#[derive(clap::Parser)]
#[command(name = "catalog", about = "Demo shop product catalog")]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let cli: Cli = parse_args(DEFAULT_LISTEN);
    shop_common::run(async move {
        let args = cli.service;
        let db = shop_common::db::open(&args.data_dir, SERVICE, SCHEMA).await?;
        let auth = args.auth()?;
        shop_common::serve(app(AppState { db, auth }), args.listen).await
    })
}
