"""What a new user of `discount` and a maintainer of the repository run into first, each checked the way
they meet it: the real `discount` command in a subprocess, the real wheels, the real setup script."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from discount_client import AsyncDiscountClient, InvalidArgument
from tests.support import (
    BIN,
    ROOT,
    ServerHandle,
    claim_request,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
)

DIRECTLY = (
    "Acts on the database directly (DISCOUNT_DATABASE_URL, or the embedded PostgreSQL in DISCOUNT_DATA_DIR), "
    "not through the server, so it works with the server stopped."
)


def fresh_env(**settings: str) -> dict[str, str]:
    """This environment without any DISCOUNT_ setting, plus `settings`: a new user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOUNT_")}
    return {**env, "COLUMNS": "200", **settings}


def discount(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "discount"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def words(text: str) -> str:
    """argparse wraps help at the terminal's width: the same words, one space apart."""
    return " ".join(text.split())


# -- the repository: bench stands on its own, the service's wheel has no dev tools -------------------------


def test_the_benchmarks_never_import_the_tests() -> None:
    imported: dict[str, list[str]] = {}
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found = [n for n in names if n == "tests" or n.startswith("tests.")]
            if found:
                imported.setdefault(path.name, []).extend(found)
    assert imported == {}, "what bench and the tests share belongs in server/discount_dev"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The service's and the dev tools' wheels, built from a copy of what the Dockerfile copies (plus dev/)."""
    work = tmp_path_factory.mktemp("wheels")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("server", "clients", "dev"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    built = work / "dist"
    for project in (source, source / "dev"):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
             "--wheel-dir", str(built), str(project)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    yield {wheel.name.split("-")[0]: wheel for wheel in built.glob("*.whl")}


def top_level_packages(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}


def test_pip_install_of_the_service_brings_no_dev_tools(wheels: dict[str, Path]) -> None:
    assert set(wheels) == {"discount_service", "discount_dev"}
    assert top_level_packages(wheels["discount_service"]) == {"discount", "discount_client", "discount_service"}
    assert top_level_packages(wheels["discount_dev"]) == {"discount_dev"}


def test_dev_commands_without_the_dev_tools_say_how_to_install_them(wheels: dict[str, Path], tmp_path: Path) -> None:
    """The service's wheel alone, with the service's dependencies from this virtualenv, but not its
    .pth files (python -S), through which the checkout's packages (discount_dev too) are installed."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
         str(wheels["discount_service"])],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = fresh_env(PYTHONPATH=f"{site}{os.pathsep}{sysconfig.get_paths()['purelib']}")

    def installed_discount(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-S", "-m", "discount_service.cli", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    code = "import discount_service, importlib.util as u; print(discount_service.__file__, u.find_spec('discount_dev'))"
    probe = [sys.executable, "-S", "-c", code]
    where = subprocess.run(probe, env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "discount_service" / "__init__.py"), "None"]

    for command, arguments in (("dev-stack", ["--grpc-port", "1"]), ("dev-token", ["alice"])):
        result = installed_discount(command, *arguments)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"discount: {command} is one of the development tools, which are not installed here; from a checkout "
            "of the repository, install them with `pip install -e ./dev` (./scripts/test.sh does) and run it again\n"
        )
    listing = words(installed_discount("--help").stdout)
    assert "dev-stack (not installed: pip install -e ./dev)" in listing
    assert "dev-token (not installed: pip install -e ./dev)" in listing


# -- serve ----------------------------------------------------------------------------------------------------


async def test_a_second_serve_on_a_taken_port_says_so_in_one_line_before_starting_anything(
    server: ServerHandle, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"  # no DISCOUNT_DATABASE_URL: a serve that got going would start PostgreSQL here
    taken = server.address
    by_env = fresh_env(DISCOUNT_LISTEN=taken, DISCOUNT_DATA_DIR=str(data_dir))
    by_option = fresh_env(DISCOUNT_DATA_DIR=str(data_dir))
    for args, env in ((("serve",), by_env), (("serve", "--listen", taken), by_option)):
        result = await asyncio.to_thread(discount, *args, env=env, timeout=60)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == (
            f"discount: {taken} is already in use (another discount serve?); "
            "use --listen HOST:PORT or DISCOUNT_LISTEN\n"
        )
        assert not data_dir.exists() or not any(data_dir.iterdir()), "nothing may start before the port is known free"


def test_a_server_whose_database_does_not_answer_says_what_to_check(tmp_path: Path) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/discount"
    env = fresh_env(DISCOUNT_DATABASE_URL=nowhere, DISCOUNT_LISTEN=f"127.0.0.1:{free_port()}")
    for args in (("serve",), ("brand", "list")):
        result = discount(*args, env=env)
        assert result.returncode == 1
        last = result.stderr.splitlines()[-1]
        assert re.fullmatch(
            r"discount: cannot reach the database \(.+\); "
            r"check DISCOUNT_DATABASE_URL and that PostgreSQL is running there",
            last,
        ), result.stderr
        assert "retry" not in result.stderr and "Traceback" not in result.stderr


def test_dev_token_refuses_a_secret_that_serve_refuses_with_the_same_words(database_url: str) -> None:
    short = "only-20-bytes-secret"
    token = discount("dev-token", "alice", env=fresh_env(DISCOUNT_JWT_SECRET=short))
    served = discount(
        "serve",
        env=fresh_env(
            DISCOUNT_JWT_SECRET=short, DISCOUNT_DATABASE_URL=database_url, DISCOUNT_LISTEN=f"127.0.0.1:{free_port()}"
        ),
    )
    assert (token.returncode, token.stdout) == (1, "")
    assert token.stderr == "discount: DISCOUNT_JWT_SECRET must be at least 32 bytes\n"
    assert served.returncode == 1 and served.stderr.splitlines()[-1] + "\n" == token.stderr


# -- brands and keys ------------------------------------------------------------------------------------------


def test_a_key_list_cut_short_by_its_reader_ends_quietly(database_url: str) -> None:
    for _ in range(3):
        create_key(database_url, "service")
    # What `discount key list | head -3` leaves behind once head has its lines: a pipe nobody reads.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [str(BIN / "discount"), "key", "list"],
            env=fresh_env(DISCOUNT_DATABASE_URL=database_url),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


async def test_a_watch_cut_short_by_its_reader_ends_quietly_too(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 1)
    channel, stub = server.aio_stub()
    async with channel:
        await stub.ClaimCode(claim_request("acme", "alice"), metadata=server.metadata())
    key = create_key(server.database_url, "brand", "acme")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        watch = await asyncio.create_subprocess_exec(
            str(BIN / "discount"), "watch", "acme",
            env=fresh_env(DISCOUNT_ADDRESS=server.address, DISCOUNT_API_KEY=key),
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, stderr = await asyncio.wait_for(watch.communicate(), 60)
    assert (watch.returncode, stderr.decode()) == (141, "")


def test_a_captured_key_leaves_a_note_that_makes_sense_on_its_own(database_url: str) -> None:
    create_brand(database_url, "acme")
    result = discount(
        "key", "create", "--role", "brand", "--brand", "acme", env=fresh_env(DISCOUNT_DATABASE_URL=database_url)
    )
    assert result.returncode == 0
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and re.fullmatch(r"dsk_[0-9a-f]+_\S+", key)
    key_id = key.split("_")[1]
    assert result.stderr == (
        f"created brand key {key_id} for brand acme; the key was written to standard output and is not shown again\n"
    )


def test_creating_a_brand_that_exists_names_it(database_url: str) -> None:
    env = fresh_env(DISCOUNT_DATABASE_URL=database_url)
    assert discount("brand", "create", "acme", env=env).stdout == "created brand acme (acme)\n"
    again = discount("brand", "create", "acme", "--name", "Acme again", env=env)
    assert (again.returncode, again.stdout, again.stderr) == (1, "", "discount: brand 'acme' already exists\n")


def test_brand_and_key_help_says_what_each_argument_is_and_that_no_server_is_needed() -> None:
    env = fresh_env()
    for command in (["brand"], ["brand", "create"], ["brand", "list"], ["key"], ["key", "create"], ["key", "revoke"],
                    ["key", "list"]):  # fmt: skip
        result = discount(*command, "--help", env=env)
        assert result.returncode == 0 and DIRECTLY in words(result.stdout), (command, result.stdout)
    brand_create = words(discount("brand", "create", "--help", env=env).stdout)
    assert "BRAND_ID the brand's id, used in every call (e.g. acme)" in brand_create
    assert "--name NAME the brand's display name (default: BRAND_ID)" in brand_create
    key_revoke = words(discount("key", "revoke", "--help", env=env).stdout)
    assert "KEY_ID the key's id, as `discount key list` shows it" in key_revoke
    listing = words(discount("--help", env=env).stdout)
    assert "brand manage brands (on the database directly)" in listing
    assert "key manage API keys (on the database directly)" in listing


def test_dev_stack_help_shows_its_ports() -> None:
    help_text = words(discount("dev-stack", "--help", env=fresh_env()).stdout)
    for option, what, port in (
        ("--grpc-port", "gRPC port of `discount serve`", 50051),
        ("--envoy-port", "Envoy's gRPC-Web port", 8081),
        ("--web-port", "port serving the page", 8080),
        ("--admin-port", "Envoy's admin port, on 127.0.0.1", 9901),
    ):
        assert f"{option} PORT {what} (default: {port})" in help_text


# -- the Python client ----------------------------------------------------------------------------------------


async def test_generate_codes_with_a_negative_number_names_only_the_field_that_is_wrong() -> None:
    # Refused by the client before any call: nothing needs to listen at the address.
    async with AsyncDiscountClient(f"127.0.0.1:{free_port()}", "dsk_unused") as client:
        for arguments, field in (({"count": -1}, "count"), ({"count": 5, "code_length": -1}, "code_length")):
            with pytest.raises(InvalidArgument) as refused:
                await client.generate_codes("acme", **arguments)
            message = f"{field} must be a non-negative 32-bit integer, got -1"
            assert (str(refused.value), refused.value.field) == (message, field)


# -- the Citus setup script -----------------------------------------------------------------------------------


def test_the_citus_setup_checks_the_tarball_it_is_given(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "setup.d" / "50-citus.sh"
    empty, forged = tmp_path / "empty", tmp_path / "forged"
    empty.mkdir()
    forged.mkdir()
    (forged / "citus-13.2.2.tar.gz").write_bytes(b"not the release")
    forged_sha256 = hashlib.sha256(b"not the release").hexdigest()

    def check(source: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DISCOUNT_CITUS_SOURCE": str(source)}
        return subprocess.run(["bash", str(script), "--check-source"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    missing = check(empty)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.splitlines()[0] == f"DISCOUNT_CITUS_SOURCE={empty} has no citus-13.2.2.tar.gz (from {ROOT})."
    wrong = check(forged)
    assert (wrong.returncode, wrong.stdout) == (1, "")
    assert wrong.stderr.splitlines() == [
        f"{forged}/citus-13.2.2.tar.gz is not the v13.2.2 release of citusdata/citus:",
        f"  its sha256 is {forged_sha256}, expected dd2453caec20a830e5e63f1def5c5a98cb6f57ae510407cdcd800916fcdab430.",
    ]
