"""The Dockerfile, without building it: its default base, its HEALTHCHECK command against a real
server, and what .dockerignore keeps out of the build context.

hadolint lints the file (scripts/check.d/30-hadolint.sh); scripts/image-check.sh builds the image
with podman and checks the running container (user, health, claims, SIGTERM, embedded database)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, ServerHandle, free_port

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def healthcheck_command() -> list[str]:
    match = re.search(r"^HEALTHCHECK [^\n]*?(?:\\\n\s*)?CMD (\[[^\n]*\])$", DOCKERFILE, flags=re.MULTILINE)
    assert match, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    command: list[str] = json.loads(match.group(1))
    return command


def run_healthcheck(listen: str) -> int:
    command = healthcheck_command()
    assert command[0] == "python"
    env = {**os.environ, "DISCOUNT_LISTEN": listen}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_every_stage_is_built_on_the_base_argument_whose_default_is_the_official_slim_image() -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", DOCKERFILE, flags=re.MULTILINE)
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert len(stages) >= 2 and all(image == "${BASE_IMAGE}" for image in stages), stages


async def test_the_healthcheck_command_reports_a_serving_server_healthy(server: ServerHandle) -> None:
    port = server.address.rsplit(":", 1)[1]
    assert await asyncio.to_thread(run_healthcheck, f"0.0.0.0:{port}") == 0
    assert await asyncio.to_thread(run_healthcheck, f"0.0.0.0:{free_port()}") != 0  # nothing listening


def test_dockerignore_keeps_the_build_context_small_and_dev_tooling_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "tests", "bench", "node_modules", "test-output", "server/discount_dev"):
        assert path in ignored
    assert not any(Path(ROOT, p).is_dir() and p in ignored for p in ("server", "clients"))
