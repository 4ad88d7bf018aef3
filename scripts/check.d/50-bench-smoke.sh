#!/usr/bin/env bash
# The benchmark harness, in its few-seconds-a-phase smoke version (2.5-3 minutes): proves
# `python -m bench` works end to end (private PostgreSQL 15, real servers, load generator, watchers,
# webhooks, redemptions, expired codes, a bad-key flood, baselines, the table, JSON + PNG). It checks
# that the harness runs and the service stays correct under load, not the targets. The relay phase
# takes too long for it (about 22 s) and runs with `python -m bench --smoke --only relay` (NATS at
# 127.0.0.1:4222, scripts/setup.d/30-nats.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$(mktemp -d)"
.venv/bin/python -m bench --smoke --out "$OUT"
ls "$OUT"/bench-smoke-*.json "$OUT"/bench-smoke-*.png >/dev/null
# Every phase's rows reached the one table, the last ones' included.
grep -q "expired codes vs none" "$OUT"/bench-smoke-*.md
grep -q "during .* bad-key calls/s vs no flood" "$OUT"/bench-smoke-*.md
# The cost of one watch message without the service, small: it runs and prints its ratio.
.venv/bin/python -m bench.stream_cost --streams 50 --connections 5 --rate 200 --seconds 1 --group 10 \
  | grep -q "isolated / grouped"
echo "bench smoke: OK"
