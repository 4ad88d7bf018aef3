#!/usr/bin/env bash
# Installs everything the test suite needs into .venv (and web/node_modules), then runs it all.
# With DISCOUNT_TEST_DATABASE_URL unset, the tests start an embedded PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The dev tools (dev-stack, dev-token, the helpers the tests and benchmarks share) are a distribution of
# their own (dev/pyproject.toml), which `pip install .` leaves out: editable, as they read deploy/ and web/.
.venv/bin/python -m pip install --quiet -e ./dev
for setup in scripts/setup.d/*.sh; do
  [ -e "$setup" ] && bash "$setup"
done
exec .venv/bin/python -m pytest "$@"
