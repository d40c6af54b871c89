//! The command line: `run`, `validate`, `explain`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ConfigError;

/// meshgate — edge gateway and sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start one proxy (edge or sidecar) from a YAML file.
    Run {
        /// Config file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Check config files; print every error with its YAML path and line; exit 1 on any.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show which route a request takes, which filters run and which cluster serves it.
    Explain {
        /// Config file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// Absolute URL or path, e.g. http://shop.local/api/orders.
        url: String,
        /// Extra request header, 'name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn print_errors(file: &Path, errors: &[ConfigError]) {
    for e in errors {
        eprintln!("{}: {e}", file.display());
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => {
            crate::logging::init();
            let result = crate::server::run(&config);
            crate::access_log::flush();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(errors) => {
                    print_errors(&config, &errors);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { files } => {
            let mut failed = false;
            for file in &files {
                match crate::server::compile_file(file) {
                    Ok((rt, _)) => println!(
                        "{}: ok ({} listeners, {} clusters, {} routes)",
                        file.display(),
                        rt.spec.listeners.len(),
                        rt.clusters.len(),
                        rt.router.routes().len()
                    ),
                    Err(errors) => {
                        failed = true;
                        print_errors(file, &errors);
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => {
            let rt = match crate::server::compile_file(&config) {
                Ok((rt, _)) => rt,
                Err(errors) => {
                    print_errors(&config, &errors);
                    return ExitCode::FAILURE;
                }
            };
            match crate::explain::explain(&rt, &method, &url, &headers) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
