#!/usr/bin/env bash
# Builds meshgate (release) and runs it with a config file (default: config/edge.yaml).
# Installs missing system packages first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p meshgate
exec target/release/meshgate run -c "${1:-config/edge.yaml}"
