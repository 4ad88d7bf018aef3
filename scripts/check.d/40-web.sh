#!/usr/bin/env bash
# The web page: TypeScript stubs in web/src/gen match protos/, and the page type-checks.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUF="${BUF:-.venv/bin/buf}"

echo "== web/src/gen is up to date"
"$BUF" generate --template web/buf.gen.yaml
if ! git diff --exit-code --stat -- web/src/gen ||
  [ -n "$(git ls-files --others --exclude-standard -- web/src/gen)" ]; then
  echo "buf generate changed web/src/gen (above): run scripts/generate.sh and commit the result"
  exit 1
fi

echo "== the page type-checks"
(cd web && npm run --silent typecheck)
echo "web page OK"
