#!/usr/bin/env bash
# The web page type-checks against the committed stubs in web/src/gen (20-contract.sh checks that
# they match protos/).
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "== the page type-checks"
(cd web && npm run --silent typecheck)
echo "web page OK"
