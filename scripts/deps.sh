#!/usr/bin/env bash
# Installs the system packages meshgate needs to build and test, when they are missing.
# Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The benchmark harness's tests sign a JWT with the openssl command line.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Redis for global rate-limit tests (standalone and cluster).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Node for the third-party OpenID Provider (BFF interop) and Playwright; Debian's chromium
# is the browser of the end-to-end shop test (Playwright never downloads one).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[[ -x /usr/bin/chromium ]] || need+=(chromium)

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
      echo "missing packages: ${need[*]} (run as root or install them)" >&2; exit 1
    fi
  else SUDO=""; fi
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found; tests will run with cargo test" >&2
fi
