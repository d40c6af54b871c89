#!/usr/bin/env bash
# Makes the test OpenID Provider (server.mjs, panva/oidc-provider) runnable: installs Node.js
# and npm (through scripts/deps.sh) when they are missing, then `npm ci` here when node_modules is missing
# or was installed from a different package-lock.json. Safe to run repeatedly; does nothing
# when everything is in place.
set -euo pipefail
cd "$(dirname "$0")"

# Node.js and npm come with the repository's system packages.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  ../../scripts/deps.sh
fi

# oidc-provider 9 needs Node.js >= 20.19 (it runs there with an "unsupported runtime"
# warning; upstream tests on 22 LTS and later). Debian 12's own nodejs is 18: too old.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "Node.js $(node --version) is too old for oidc-provider 9: need >= 20.19" \
    "(Debian 12 ships 18; install 20.19+ or 22 LTS, e.g. the NodeSource packages)" >&2
  exit 1
fi

# The stamp records which package-lock.json node_modules was installed from; the test
# harness (tests/src/oidc_provider.rs) checks the same stamp.
stamp=node_modules/.meshgate-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" || ! -f node_modules/oidc-provider/package.json ]]; then
  echo "tests/oidc-provider: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi
