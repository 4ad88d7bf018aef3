#!/usr/bin/env bash
# Regenerates every stub from protos/. CI runs it and fails if the committed files change.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
# The Python stubs come from the grpcio-tools pinned in the `test` extra (its version shapes the output).
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Generated next to the target and moved into place by rename, so a process importing the stubs
# meanwhile never finds them missing or half-written.
py_out="$(mktemp -d clients/.generate.XXXXXX)"
trap 'rm -rf "$py_out"' EXIT
"$PYTHON" -m grpc_tools.protoc \
  -I protos \
  --python_out="$py_out" \
  --pyi_out="$py_out" \
  --grpc_python_out="$py_out" \
  protos/discount/v1/discount_service.proto \
  protos/discount/v1/admin_service.proto \
  protos/discount/v1/webhook_service.proto
for stale in clients/discount/v1/*_pb2*.py clients/discount/v1/*_pb2*.pyi; do
  [ -e "$py_out/discount/v1/$(basename "$stale")" ] || rm -f "$stale"
done
mv -f "$py_out"/discount/v1/*_pb2* clients/discount/v1/

# The synchronous client (clients/discount_client/client.py) is written from the asyncio one, aio.py.
"$PYTHON" scripts/generate_sync_client.py

# TypeScript stubs for the web page (web/src/gen), from the local protoc-gen-es in web/node_modules
# (scripts/setup.d/40-browser.sh installs it). buf's remote plugins need a network we do not have.
BUF="$(buf_bin)"
[ -x web/node_modules/.bin/protoc-gen-es ] || (cd web && npm ci --no-audit --no-fund --loglevel=error)
"$BUF" generate --template web/buf.gen.yaml
