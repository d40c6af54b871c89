#!/usr/bin/env bash
# meshgate benchmark: meshgate side by side with nginx, HAProxy and bare Pingora.
#
#   bench/run.sh            full run (3 rounds, ~20 minutes on 2 cores), writes bench/results/
#   bench/run.sh --quick    one short round, for iterating (results get a -quick suffix)
#   bench/run.sh --help     every option of the driver (bench/bench.py)
#   bench/run.sh --targets nginx,meshgate-plain,meshgate-jwt   a subset (direct always runs)
#
# On a fresh Debian machine, run as root: it installs cmake and a C compiler (to build
# Pingora), nginx, haproxy, wrk, openssl and redis-server with apt-get (running
# `apt-get update` once, only when a package is missing) and oha (the open-loop latency
# generator) with `cargo install oha`, builds meshgate, bench/bare-pingora and the dev
# OpenID Provider (backends/identity, for the bff targets) in release mode, raises the
# open-file limit and hands over to bench/bench.py, which starts every process on free
# loopback ports, measures, and stops everything it started.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

say() { printf '[run.sh] %s\n' "$*"; }

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)                  # Pingora builds zlib-ng with it
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)            # RS256 key and token for jwt targets
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # global rate limit and BFF session store
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing: ${missing[*]}; run as root to install them, or install them yourself"
        exit 1
    fi
    say "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install a Rust toolchain (rustup) first"
    exit 1
fi
if ! command -v oha >/dev/null 2>&1; then
    say "installing oha from crates.io (open-loop latency generator)"
    cargo install oha --locked
fi

say "building meshgate, bare-pingora and identity (release)"
# identity: the dev OpenID Provider the bff targets log in at (backends/identity).
cargo build --release -p meshgate -p bare-pingora -p identity

# 10,000 idle connections need more than the usual 1024 descriptors per process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "open-file limit: $(ulimit -n)"

exec python3 "$here/bench.py" --command "bench/run.sh${*:+ $*}" "$@"
