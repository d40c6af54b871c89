#!/usr/bin/env bash
# Runs every meshgate test: unit tests, end-to-end tests with real processes on loopback,
# the benchmark harness's tests, formatting and lints. Installs missing system packages first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
# Node and the third-party OpenID Provider (npm `oidc-provider`) for the BFF interop test,
# and playwright-core (driving Debian's chromium) for the browser test of the shop.
tests/oidc-provider/setup.sh
[[ -f tests/browser/node_modules/playwright-core/package.json ]] ||
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

# End-to-end tests start the real binaries (meshgate, the identity provider and the shop
# backends `meshgate up` runs), so build them first.
cargo build -p meshgate -p identity -p catalog -p inventory -p payments -p orders

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# Doc tests are not run by nextest.
cargo test --workspace --doc
# The benchmark harness: config generation, parsing, statistics and the report.
python3 -m unittest bench/test_bench.py

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
