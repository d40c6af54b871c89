//! The `meshgate` binary: parses the command line and hands over to [`meshgate::cli`].

use clap::Parser;

/// mimalloc instead of the system allocator: a proxied request makes dozens of small,
/// short-lived allocations (headers, `Bytes`, futures), and glibc's malloc/free were about
/// a tenth of the request path's time in profiles (`bench/results/`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    meshgate::cli::main(meshgate::cli::Cli::parse())
}
