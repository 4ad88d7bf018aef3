#!/usr/bin/env bash
# The proto contract: buf lint, buf breaking against the previous commit, and generated stubs up to date.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
BUF="$(buf_bin)"

echo "== buf lint"
"$BUF" lint

echo "== buf breaking against the previous commit"
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then
    git fetch --quiet --deepen=1 origin || { echo "shallow clone: cannot fetch HEAD~1 for buf breaking"; exit 1; }
  fi
fi
if ! previous="$(git rev-parse --verify --quiet HEAD~1)"; then
  echo "note: HEAD has no parent commit; nothing to compare with, buf breaking skipped"
elif [ -z "$(git ls-tree -r --name-only "$previous" -- protos | grep '\.proto$' || true)" ]; then
  echo "note: the previous commit ${previous:0:12} has no .proto files; buf breaking skipped"
else
  # A copy of the previous commit's contract, so the check works the same in any clone.
  against="$(mktemp -d)"
  trap 'rm -rf "$against"' EXIT
  git archive "$previous" -- protos $(git ls-tree --name-only "$previous" -- buf.yaml) | tar -x -C "$against"
  [ -e "$against/buf.yaml" ] || cp buf.yaml "$against/buf.yaml"
  "$BUF" breaking --against "$against"
  echo "no breaking change against ${previous:0:12}"
fi

echo "== generated stubs (Python and web/src/gen) are up to date"
./scripts/generate.sh
generated=(clients/discount/v1 web/src/gen)
if ! git diff --exit-code --stat -- "${generated[@]}" ||
  [ -n "$(git ls-files --others --exclude-standard -- "${generated[@]}")" ]; then
  echo "scripts/generate.sh changed the committed stubs (above): run it and commit the result"
  git diff -- "${generated[@]}" | head -50
  git ls-files --others --exclude-standard -- "${generated[@]}"
  exit 1
fi
echo "stubs match protos/"
