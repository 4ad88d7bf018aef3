#!/usr/bin/env bash
# Formatting, lint and types.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
