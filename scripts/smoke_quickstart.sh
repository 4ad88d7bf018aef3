#!/usr/bin/env bash
# CI: runs README quick-start command 1 with no database configured (embedded PostgreSQL),
# waits until the server reports SERVING over grpc.health.v1, lists its services, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
unset DISCOUNT_DATABASE_URL
export DISCOUNT_DATA_DIR="$(mktemp -d)"
export DISCOUNT_LISTEN="127.0.0.1:${SMOKE_PORT:-50151}"
LOG="$(mktemp)"
setsid bash -c 'python3 -m venv .venv && .venv/bin/pip install --quiet -e . && exec .venv/bin/discount serve' >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM -- -$PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if .venv/bin/grpcurl -plaintext "$DISCOUNT_LISTEN" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
    .venv/bin/grpcurl -plaintext "$DISCOUNT_LISTEN" list
    kill -TERM -- -"$PID"
    wait "$PID" || { echo "server did not exit cleanly"; cat "$LOG"; exit 1; }
    trap - EXIT
    echo "quick start smoke test: OK"
    exit 0
  fi
  sleep 1
done
echo "server never became SERVING:"; cat "$LOG"; exit 1
