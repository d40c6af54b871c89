//! The `meshgate` binary: parses the command line and hands over to [`meshgate::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    meshgate::cli::main(meshgate::cli::Cli::parse())
}
