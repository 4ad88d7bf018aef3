"""Every grpcurl command of the README, run as written with the real grpcurl binary against a real
server (only the address is swapped for the test server's; the keys come from $ADMIN_KEY,
$BRAND_KEY and $SERVICE_KEY as in the README's quick start)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from typing import Any

from discount_client import AsyncDiscountClient
from tests.readme_support import README_ADDRESS, code_blocks, readme_section, shell_commands, words
from tests.support import BIN, ServerHandle, create_brand, create_key, sql


def readme_grpcurl_commands() -> list[str]:
    section = readme_section("Calling it by hand (grpcurl)")
    commands = [c for block in code_blocks(section, "sh") for c in shell_commands(block)]
    assert commands and all(c.startswith("grpcurl ") for c in commands), commands
    return commands


def kind(command: str) -> str:
    args = words(command)
    if "list" in args:
        return "list"
    if "describe" in args:
        return f"describe {args[-1]}"
    return args[-1].rsplit("/", 1)[-1]


def request_json(command: str) -> dict[str, Any]:
    args = words(command)
    return dict(json.loads(args[args.index("-d") + 1]))


async def run(command: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}: {err.decode()}"
    return out.decode()


async def test_every_readme_grpcurl_command_works_against_a_real_server(server: ServerHandle) -> None:
    assert (BIN / "grpcurl").exists()
    create_brand(server.database_url, "acme")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ADMIN_KEY": server.admin_key,
        "BRAND_KEY": create_key(server.database_url, "brand", "acme"),
        "SERVICE_KEY": create_key(server.database_url, "service"),
    }
    commands = {kind(c): c.replace(README_ADDRESS, server.address) for c in readme_grpcurl_commands()}
    assert set(commands) == {
        "list",
        "describe discount.v1.DiscountService",
        "describe discount.v1.ClaimCodeRequest",
        "GenerateCodes",
        "ClaimCode",
        "GetBrandStats",
        "WatchClaims",
    }

    services = (await run(commands["list"], env)).split()
    assert services == [
        "discount.v1.AdminService",
        "discount.v1.DiscountService",
        "discount.v1.WebhookService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]

    described = await run(commands["describe discount.v1.DiscountService"], env)
    for rpc in ("GenerateCodes", "ClaimCode", "GetBrandStats"):
        assert f"rpc {rpc} ( .discount.v1.{rpc}Request ) returns ( .discount.v1.{rpc}Response );" in described
    assert (
        "rpc WatchClaims ( .discount.v1.WatchClaimsRequest ) returns ( stream .discount.v1.WatchClaimsResponse );"
        in (described)
    )
    message = await run(commands["describe discount.v1.ClaimCodeRequest"], env)
    for field in ("string brand_id = 1;", "string user_id = 2;", "string email = 3;"):
        assert field in message

    generate = request_json(commands["GenerateCodes"])
    generated = json.loads(await run(commands["GenerateCodes"], env))
    assert generated["brand_id"] == generate["brand_id"] == "acme"
    assert generated["generated"] == generate["count"]
    assert generated["available"] == str(generate["count"])  # uint64: a string in JSON
    again = json.loads(await run(commands["GenerateCodes"], env))  # same request_id: nothing new
    assert again["batch_id"] == generated["batch_id"]

    claim_request = request_json(commands["ClaimCode"])
    claimed = json.loads(await run(commands["ClaimCode"], env))
    claim = claimed["claim"]
    assert claimed["newly_claimed"] is True
    assert claim["sequence"] == "1"
    assert (claim["brand_id"], claim["user_id"], claim["email"]) == (
        claim_request["brand_id"],
        claim_request["user_id"],
        claim_request["email"],
    )
    assert claim["code"].startswith(generate["prefix"])
    assert claim["expires_at"] == generate["expires_at"]
    rows = sql(server.database_url, "SELECT code, user_id, claimed_at FROM claims")
    assert rows == [(claim["code"], claim_request["user_id"], rows[0][2])]
    assert datetime.fromisoformat(claim["claimed_at"]) == rows[0][2].astimezone(UTC)

    stats = json.loads(await run(commands["GetBrandStats"], env))
    total = generate["count"]
    assert stats == {"brand_id": "acme", "total": str(total), "available": str(total - 1), "claimed": "1"}

    # The stream replays the claim above, then shows a new one live.
    watch = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        commands["WatchClaims"],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert watch.stdout is not None
    decoder = json.JSONDecoder()
    buffer = ""

    async def next_object() -> dict[str, Any]:
        nonlocal buffer
        while True:
            text = buffer.lstrip()
            if text:
                try:
                    value, end = decoder.raw_decode(text)
                    buffer = text[end:]
                    return dict(value)
                except json.JSONDecodeError:
                    pass
            chunk = await asyncio.wait_for(watch.stdout.read(4096), 20)  # type: ignore[union-attr]
            assert chunk, f"grpcurl ended: {buffer}"
            buffer += chunk.decode()

    try:
        assert await next_object() == {"claim": claim}
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            live = await client.claim_code("acme", "user-43", "user43@example.com")
        streamed = (await next_object())["claim"]
        assert (streamed["sequence"], streamed["code"], streamed["user_id"]) == ("2", live.claim.code, "user-43")
    finally:
        os.killpg(watch.pid, signal.SIGTERM)
        await watch.wait()
