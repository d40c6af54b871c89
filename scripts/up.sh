#!/usr/bin/env bash
# The demo: builds meshgate, the dev OpenID Provider and the four shop backends (release),
# then starts the whole mesh on loopback with `meshgate up` and prints the shop's URL.
# Arguments go to `meshgate up`, e.g. `scripts/up.sh --state-dir /tmp/shop`.
# Ctrl-C stops everything. Installs missing system packages first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p meshgate -p identity -p catalog -p inventory -p payments -p orders
exec target/release/meshgate up "$@"
