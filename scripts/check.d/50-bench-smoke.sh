#!/usr/bin/env bash
# The benchmark harness, in its few-seconds smoke version: proves `python -m bench` works end to
# end (private PostgreSQL 15, real servers, load generator, watchers, baselines, JSON + PNG).
# It checks that the harness runs and the service stays correct under load, not the targets.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$(mktemp -d)"
.venv/bin/python -m bench --smoke --out "$OUT"
ls "$OUT"/bench-smoke-*.json "$OUT"/bench-smoke-*.png >/dev/null
echo "bench smoke: OK"
