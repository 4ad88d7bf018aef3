"""AdminService as operators meet it, through real servers and the real `discount` command: a key
revoked over RPC refused at once here and within the cache time on another server, secrets never in
the server's log, `discount brand|key` on the same calls with the same errors as the RPCs, and the
commands of docs/admin.md as written."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from discount_client import AsyncDiscountClient, DiscountError, InvalidArgument, Unauthenticated
from tests.admin_support import counts, discount_cli, grpcurl, key_id, key_material
from tests.readme_support import README_ADDRESS, code_blocks, readme_section
from tests.support import (
    BIN,
    ServerHandle,
    create_brand,
    generate_codes_sql,
    in_process_server,
    sql,
    start_server_process,
    stop_process,
)


async def test_a_key_revoked_over_rpc_is_refused_at_once_here_and_within_the_cache_time_elsewhere(
    database_url: str,
) -> None:
    """Server A revokes; A's key cache is long (60 s) but drops the key at once. Server B, on the
    same database with DISCOUNT_KEY_CACHE_SECONDS=1, had the key cached and refuses it within 1 s."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 1000)
    async with (
        in_process_server(database_url, key_cache_seconds=60.0) as (_, a),
        in_process_server(database_url, key_cache_seconds=1.0) as (_, b),
    ):
        async with AsyncDiscountClient(a.address, a.admin_key) as admin:
            service_key = (await admin.create_api_key("service")).secret
        users = iter(range(10**6))

        async def claim(address: str) -> str:
            n = next(users)
            try:
                async with AsyncDiscountClient(address, service_key, retry=None) as client:
                    await client.claim_code("acme", f"u{n}", f"u{n}@example.com")
                return "OK"
            except DiscountError as exc:
                return exc.code

        assert await claim(a.address) == "OK" and await claim(b.address) == "OK"  # cached on both
        cached_on_b = asyncio.get_running_loop().time()
        async with AsyncDiscountClient(a.address, a.admin_key) as admin:
            revoked = await admin.revoke_api_key(key_id(service_key))
        assert revoked.revoked_at is not None
        assert await claim(a.address) == "UNAUTHENTICATED"  # at once, despite A's 60 s cache
        while (status := await claim(b.address)) == "OK":
            assert asyncio.get_running_loop().time() - cached_on_b < 1.0 + 0.5, "B kept a revoked key"
            await asyncio.sleep(0.05)
        assert status == "UNAUTHENTICATED"
        for address in (a.address, b.address, a.address):
            assert await claim(address) == "UNAUTHENTICATED"

        # An admin that revokes its own key is refused on its next call.
        async with AsyncDiscountClient(a.address, a.admin_key) as admin:
            await admin.revoke_api_key(key_id(a.admin_key))
            with pytest.raises(Unauthenticated):
                await admin.list_brands()


# -- secrets never logged, CLI alongside -----------------------------------------------------


async def test_secrets_never_reach_the_server_log_and_the_cli_sees_the_same_keys(
    database_url: str, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        extra_env={"DISCOUNT_LOG_LEVEL": "DEBUG", "DISCOUNT_KEY_CACHE_SECONDS": "1"},
    )
    secrets_made: list[str] = []
    try:
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            await client.create_brand("acme", "Acme")
            for role in ("admin", "service", "brand"):
                made = await client.create_api_key(role, "acme" if role == "brand" else None)
                secrets_made.append(made.secret)
            with pytest.raises(InvalidArgument):
                await client.create_api_key("service", "acme")
            listed = [k async for k in client.iter_api_keys(page_size=1)]
            await client.revoke_api_key(key_id(secrets_made[1]))
        code, reply = await grpcurl(server.address, "CreateApiKey", {"role": "ROLE_SERVICE"}, key=server.admin_key)
        assert code == 0
        secrets_made.append(reply["secret"])
        # A revoked, an unknown and a new key sent as credentials.
        for key in (secrets_made[1], secrets_made[3] + "x", secrets_made[2]):
            await grpcurl(server.address, "ListBrands", {}, key=key)
        assert len(listed) == 4

        # The CLI works on the same keys and brands, directly on the database.
        brands = (await asyncio.to_thread(discount_cli, database_url, "brand", "list")).stdout
        assert "acme" in brands and "Acme" in brands
        keys = (await asyncio.to_thread(discount_cli, database_url, "key", "list")).stdout
        for secret in secrets_made:
            assert key_id(secret) in keys
        revoked = (await asyncio.to_thread(discount_cli, database_url, "key", "revoke", key_id(secrets_made[3]))).stdout
        assert f"revoked key {key_id(secrets_made[3])}" in revoked
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            (key,) = [k for k in (await client.list_api_keys()).keys if k.key_id == key_id(secrets_made[3])]
            assert key.revoked_at is not None
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0

    log = server.log_text()
    assert "DEBUG" in log and "CreateApiKey OK" in log  # the verbose log, with the calls in it
    assert f"revoked key={key_id(secrets_made[1])}" in log
    for secret in secrets_made + [server.admin_key]:
        for leak in key_material(secret):
            assert leak not in log, "key material in the server log"


# -- the commands of the operator: the same calls, the same errors ---------------------------

# (command, the RPC and body it stands for, the option `discount` names before the message)
SAME_ERRORS = {
    "existing brand": (("brand", "create", "acme"), "CreateBrand", {"brand_id": "acme"}, ""),
    "bad brand_id": (("brand", "create", "no spaces"), "CreateBrand", {"brand_id": "no spaces"}, ""),
    "bad name": (
        ("brand", "create", "globex", "--name", "Globex\nInc."),
        "CreateBrand",
        {"brand_id": "globex", "display_name": "Globex\nInc."},
        "--name",
    ),
    "brand key without brand": (
        ("key", "create", "--role", "brand"),
        "CreateApiKey",
        {"role": "ROLE_BRAND"},
        "--brand",
    ),
    "brand key of no brand": (
        ("key", "create", "--role", "brand", "--brand", "nope"),
        "CreateApiKey",
        {"role": "ROLE_BRAND", "brand_id": "nope"},
        "",
    ),
    "service key with a brand": (
        ("key", "create", "--role", "service", "--brand", "acme"),
        "CreateApiKey",
        {"role": "ROLE_SERVICE", "brand_id": "acme"},
        "--brand",
    ),
    "unknown key": (("key", "revoke", "000000000000"), "RevokeApiKey", {"key_id": "000000000000"}, ""),
    "bad key_id": (("key", "revoke", "k" * 65), "RevokeApiKey", {"key_id": "k" * 65}, ""),
}


@pytest.mark.parametrize("case", sorted(SAME_ERRORS))
async def test_the_commands_refuse_what_the_rpcs_refuse_with_the_same_message(server: ServerHandle, case: str) -> None:
    """`discount brand|key` run AdminService's own calls as the local operator: one line on stderr,
    `discount: ` and the RPC's message (after the option that holds the field it names), exit 1, and
    nothing stored."""
    command, rpc, body, option = SAME_ERRORS[case]
    create_brand(server.database_url, "acme")
    before = counts(server.database_url)
    code, error = await grpcurl(server.address, rpc, body, key=server.admin_key)
    assert code != 0, error
    result = await asyncio.to_thread(discount_cli, server.database_url, *command, check=False)
    said = f"{option}: {error['message']}" if option else error["message"]
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"discount: {said}\n")
    assert counts(server.database_url) == before


# -- the README ------------------------------------------------------------------------------


def readme_onboarding() -> tuple[str, str]:
    section = readme_section("Onboarding over RPC (AdminService)")
    (commands,) = code_blocks(section, "sh")
    (python,) = code_blocks(section, "python")
    return commands, python


async def test_the_readme_onboarding_commands_work_as_written(server: ServerHandle, tmp_path: Path) -> None:
    """The shell block runs as one script, as a reader pastes it: KEY_ID comes from CreateApiKey's reply."""
    commands, python = readme_onboarding()
    calls = re.findall(r"AdminService/(\w+)", commands)
    assert calls == ["CreateBrand", "CreateApiKey", "ListBrands", "ListApiKeys", "RevokeApiKey"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ADMIN_KEY": server.admin_key}
    env.pop("KEY_ID", None)

    create_brand(server.database_url, "acme")
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", "set -euo pipefail\n" + commands.replace(README_ADDRESS, server.address), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    printed: list[dict[str, Any]] = []
    decoder, text = json.JSONDecoder(), out.decode().strip()
    while text:
        value, end = decoder.raw_decode(text)
        printed.append(value)
        text = text[end:].strip()
    results = dict(zip(calls, printed, strict=True))
    assert results["CreateBrand"]["brand"]["display_name"] == "Globex Corp."
    secret = results["CreateApiKey"]["secret"]
    key_id = results["CreateApiKey"]["key"]["key_id"]
    assert results["CreateApiKey"]["key"]["brand_id"] == "globex"
    assert [b["brand_id"] for b in results["ListBrands"]["brands"]] == ["acme", "globex"]
    assert [k["key_id"] for k in results["ListApiKeys"]["keys"]] == [key_id]
    assert results["RevokeApiKey"]["key"]["key_id"] == key_id
    assert results["RevokeApiKey"]["key"]["revoked_at"]
    async with AsyncDiscountClient(server.address, secret) as brand:
        with pytest.raises(Unauthenticated):
            await brand.get_brand_stats("globex")

    script = tmp_path / "onboarding.py"
    script.write_text(python.replace(README_ADDRESS, server.address))
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "python"), str(script), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("brand key: dsk_")
    assert lines[1:4] == ["acme acme", "globex Globex Corp.", "initech Initech"]
    (key_line,) = lines[4:]
    assert key_line.endswith(" brand None")
    assert sql(
        server.database_url,
        "SELECT count(revoked_at) FROM api_keys k JOIN brands b USING (brand_key) WHERE b.brand_id = 'initech'",
    ) == [(1,)]
