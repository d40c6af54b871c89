//! The command line: `run`, `validate`, `explain`, `certs`, `up`.

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
    /// Start the whole demo mesh on loopback (dev IdP, backends, a sidecar per backend,
    /// the edge and the web app) and print its URLs. Ctrl-C stops it.
    Up {
        /// The mesh topology file.
        #[arg(short = 'c', long = "config", default_value = "config/mesh.yaml")]
        config: PathBuf,
        /// Where certificates, secrets, data and logs live (default: the file's `state_dir`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Prepare the state directory and validate every proxy config with the
        /// environment the mesh would get, then exit without starting anything.
        #[arg(long)]
        check: bool,
    },
    /// Mesh certificates: a dev CA and one certificate per service identity.
    Certs {
        /// What to do with certificates.
        #[command(subcommand)]
        command: CertsCommand,
    },
}

/// `meshgate certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create (or refresh) a mesh CA and one short-lived leaf per service, with
    /// the URI SAN spiffe://TRUST-DOMAIN/SERVICE. A valid CA and valid leaves
    /// are kept, so re-running adds services without invalidating others.
    Init {
        /// Directory for the files (created 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Service names, comma-separated (1-63 characters of a-z, 0-9, '-').
        #[arg(long, required = true, value_delimiter = ',')]
        services: Vec<String>,
        /// SPIFFE trust domain.
        #[arg(long, default_value = crate::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Lifetime of each service certificate, e.g. 24h.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        leaf_validity: std::time::Duration,
        /// Lifetime of a newly created CA, e.g. 365d.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ca_validity: std::time::Duration,
        /// Re-issue every service certificate even if still valid (and replace
        /// an unusable CA).
        #[arg(long)]
        force: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn certs_main(command: CertsCommand) -> ExitCode {
    match command {
        CertsCommand::Init {
            dir,
            services,
            trust_domain,
            leaf_validity,
            ca_validity,
            force,
        } => {
            let result = crate::certs::parse_services(&services).and_then(|services| {
                crate::certs::init(&crate::certs::InitOptions {
                    dir,
                    services,
                    trust_domain,
                    leaf_validity,
                    ca_validity,
                    force,
                })
            });
            match result {
                Ok(report) => {
                    for line in report {
                        println!("{line}");
                    }
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

fn print_errors(file: &Path, errors: &[ConfigError]) {
    for e in errors {
        eprintln!("{}: {e}", file.display());
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Certs { command } => certs_main(command),
        Command::Up {
            config,
            state_dir,
            check,
        } => crate::up::main(crate::up::UpOptions {
            config,
            state_dir,
            check,
        }),
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
                if crate::up::mesh::is_topology(file) {
                    match crate::up::mesh::load(file) {
                        Ok(mesh) => println!(
                            "{}: ok (mesh topology: {} services; `meshgate up --check` \
                             validates the proxy configs it starts)",
                            file.display(),
                            mesh.services.len()
                        ),
                        Err(errors) => {
                            failed = true;
                            for e in errors {
                                eprintln!("{e}");
                            }
                        }
                    }
                    continue;
                }
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
