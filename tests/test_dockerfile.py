"""The Dockerfile: lint-clean, non-root, and its HEALTHCHECK command works against a real server.

`docker build` cannot run on this machine (no engine, no registry), so the image itself is not
built here; the parts that can be checked without it are."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import BIN, ROOT, ServerHandle, free_port

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


def test_hadolint_is_clean() -> None:
    result = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_non_root_slim_and_exposes_the_grpc_port() -> None:
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert len(stages) >= 2 and all("slim" in image for image in stages)
    user = re.findall(r"^USER (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^EXPOSE 50051$", DOCKERFILE, flags=re.MULTILINE)
    assert "DISCOUNT_LISTEN=0.0.0.0:50051" in DOCKERFILE
    assert "pip install --no-cache-dir ." in DOCKERFILE  # the project itself, as the README installs it


async def test_the_healthcheck_command_reports_a_serving_server_healthy(server: ServerHandle) -> None:
    port = server.address.rsplit(":", 1)[1]
    assert await asyncio.to_thread(run_healthcheck, f"0.0.0.0:{port}") == 0
    assert await asyncio.to_thread(run_healthcheck, f"0.0.0.0:{free_port()}") != 0  # nothing listening


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "tests", "node_modules", "test-output"):
        assert path in ignored
    assert not any(Path(ROOT, p).is_dir() and p in ignored for p in ("server", "clients"))
