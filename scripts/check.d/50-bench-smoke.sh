#!/usr/bin/env bash
# The benchmark harness, in its few-seconds smoke version: proves `python -m bench` works end to
# end (private PostgreSQL 15, real servers, load generator, watchers, baselines, JSON + PNG).
# It checks that the harness runs and the service stays correct under load, not the targets.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$(mktemp -d)"
.venv/bin/python -m bench --smoke --out "$OUT"
ls "$OUT"/bench-smoke-*.json "$OUT"/bench-smoke-*.png >/dev/null
# The cost of one watch message without the service, small: it runs and prints its ratio.
.venv/bin/python -m bench.stream_cost --streams 50 --connections 5 --rate 200 --seconds 1 --group 10 \
  | grep -q "isolated / grouped"
echo "bench smoke: OK"
