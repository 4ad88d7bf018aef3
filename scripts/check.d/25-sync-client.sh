#!/usr/bin/env bash
# The committed synchronous client is what scripts/generate_sync_client.py writes from aio.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

committed=clients/discount_client/client.py
expected="$(mktemp)"
trap 'rm -f "$expected" "$expected.diff"' EXIT
"$PYTHON" scripts/generate_sync_client.py --output "$expected"
if ! diff -u --label "$committed (committed)" --label "$committed (generated from aio.py)" \
  "$committed" "$expected" >"$expected.diff"; then
  head -60 "$expected.diff"
  echo "$committed differs from what scripts/generate_sync_client.py makes of aio.py (above)." >&2
  echo "client.py is generated: make the change in aio.py, run scripts/generate.sh and commit both." >&2
  exit 1
fi
echo "sync client matches aio.py"
