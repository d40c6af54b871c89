#!/usr/bin/env bash
# Runs every meshgate test: unit tests, end-to-end tests with real processes on loopback,
# formatting and lints. Installs missing system packages first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
# Node and the third-party OpenID Provider (npm `oidc-provider`) for the BFF interop test.
tests/oidc-provider/setup.sh

# End-to-end tests start the real binary, so build it first.
cargo build -p meshgate -p identity

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# Doc tests are not run by nextest.
cargo test --workspace --doc

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
