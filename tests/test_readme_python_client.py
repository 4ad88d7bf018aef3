"""The README's Python client snippet, run as a new service would: this repository built as a wheel,
installed into a fresh virtualenv (not the editable checkout), calling a real server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from discount_client import DiscountClient
from tests.readme_support import README_ADDRESS, code_blocks, readme_section
from tests.support import ROOT, ServerHandle, create_brand, create_key, generate_codes_sql, sql


def readme_snippet() -> str:
    blocks = code_blocks(readme_section("Python client"), "python")
    assert len(blocks) == 1, blocks
    return blocks[0]


def install_repo_into_fresh_venv(tmp: Path) -> Path:
    """`pip install <this repo>` into a new virtualenv; returns its python. Dependencies come from the
    test virtualenv (no network), the package itself only from the built wheel."""
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, text=True, timeout=300)  # noqa: E731
    # Build from a copy of what the package is made of, so a stale build/ in the checkout cannot leak in.
    source = tmp / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*")
    for name in ("server", "clients"):
        shutil.copytree(ROOT / name, source / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source))
    (wheel,) = wheels.glob("discount_service-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "discount_client/__init__.py",
        "discount_client/py.typed",
        "discount/v1/discount_service_pb2.py",
        "discount/v1/discount_service_pb2.pyi",
        "discount/v1/discount_service_pb2_grpc.py",
    ):
        assert expected in names, f"{expected} missing from {wheel.name}"
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # The test environment's site-packages, appended after the new one, supplies grpcio & co. A path
    # added by a .pth file does not run that directory's own .pth files, so the editable install of
    # this checkout stays out of the way.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    return python


async def test_readme_snippet_claims_a_code_with_the_installed_package(server: ServerHandle, tmp_path: Path) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 3)
    python = await asyncio.to_thread(install_repo_into_fresh_venv, tmp_path)
    script = tmp_path / "snippet.py"
    script.write_text(readme_snippet().replace(README_ADDRESS, server.address))
    env = {"SERVICE_KEY": create_key(server.database_url, "service"), "PATH": "/usr/bin:/bin"}

    async def snippet() -> str:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            "-c",
            "import discount_client, runpy; print(discount_client.__file__); runpy.run_path('snippet.py')",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    first = (await snippet()).splitlines()
    second = (await snippet()).splitlines()
    assert first[0].startswith(str(tmp_path / "venv")), f"not the installed package: {first[0]}"
    code = sql(server.database_url, "SELECT code FROM claims WHERE user_id = 'user-42'")[0][0]
    assert first[1:] == [f"{code} (new)"]
    assert second[1:] == [f"{code} (already held)"]

    # The last code goes to someone else; then user-43 (the snippet with another user) finds none.
    service = DiscountClient(server.address, env["SERVICE_KEY"])
    await asyncio.to_thread(service.claim_code, "acme", "user-1", "one@example.com")
    await asyncio.to_thread(service.claim_code, "acme", "user-2", "two@example.com")
    service.close()
    script.write_text(script.read_text().replace('"user-42"', '"user-43"'))
    assert (await snippet()).splitlines()[1:] == ["acme has no codes left"]
