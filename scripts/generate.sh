#!/usr/bin/env bash
# Regenerates every stub from protos/. CI runs it and fails if the committed files change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

rm -f clients/discount/v1/discount_service_pb2*.py clients/discount/v1/discount_service_pb2*.pyi
"$PYTHON" -m grpc_tools.protoc \
  -I protos \
  --python_out=clients \
  --pyi_out=clients \
  --grpc_python_out=clients \
  protos/discount/v1/discount_service.proto
