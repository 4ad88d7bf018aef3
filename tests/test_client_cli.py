"""The client commands of `discount` (generate, claim, stats, watch) run as real processes
against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from typing import Any

import pytest

from tests.support import (
    BIN,
    ServerHandle,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
    in_process_server,
    sql,
)


def client_env(address: str, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOUNT_")}
    env["DISCOUNT_ADDRESS"] = address
    if key is not None:
        env["DISCOUNT_API_KEY"] = key
    return env


async def discount(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "discount"), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def total_codes(url: str, brand: str) -> int:
    rows = sql(url, "SELECT count(*) FROM codes JOIN brands USING (brand_key) WHERE brands.brand_id = %s", (brand,))
    return int(rows[0][0])


async def test_generate_1m_with_progress_interrupted_and_rerun_never_doubles(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    env = client_env(server.address, create_key(server.database_url, "brand", "acme"))
    command = ["generate", "acme", "1000000", "--request-id", "run-1"]

    # Interrupt the first run (Ctrl-C) once the progress bar has passed 200k.
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "discount"), *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None and proc.stdout is not None
    progress = b""
    while not re.search(rb"\b[2-9]\d\dk/1\.00M", progress):
        chunk = await asyncio.wait_for(proc.stderr.read(256), 60)
        assert chunk, f"generate ended before 200k: {progress.decode()}"
        progress += chunk
    proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.gather(proc.stderr.read(), proc.wait())
    interrupted_err = (progress + rest).decode()
    assert proc.returncode == 130
    assert "interrupted after" in interrupted_err and "re-run with --request-id run-1" in interrupted_err
    assert "Traceback" not in interrupted_err
    partial = total_codes(server.database_url, "acme")
    assert 200_000 <= partial < 1_000_000 and partial % 100_000 == 0

    code, out, err = await discount(*command, env=env)
    assert code == 0, err
    assert "100%" in err and "1.00M/1.00M" in err  # the tqdm bar on stderr
    assert out.strip() == "generated 1,000,000 codes for acme in 10 chunk(s) (request id run-1); 1,000,000 available"
    assert total_codes(server.database_url, "acme") == 1_000_000

    code, out, _ = await discount(*command, env=env)
    assert code == 0
    code, stats_out, _ = await discount("stats", "acme", "--json", env=env)
    assert json.loads(stats_out) == {
        "brand_id": "acme",
        "total": 1_000_000,
        "available": 1_000_000,
        "claimed": 0,
        "expired": 0,
        "redeemed": 0,
    }
    batches = sql(server.database_url, "SELECT request_id, generated FROM code_batches ORDER BY request_id")
    assert batches == [(f"run-1-{i}", 100_000) for i in range(10)]


async def test_generate_without_request_id_prints_one_that_makes_a_rerun_safe(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    env = client_env(server.address, server.admin_key)
    args = ["generate", "acme", "25000", "--chunk-size", "10000", "--prefix", "AC-", "--expires", "2099-01-01T00:00Z"]
    code, out, err = await discount(*args, env=env)
    assert code == 0, err
    match = re.search(r"re-run with --request-id (\S+)", err)
    assert match, err
    request_id = match.group(1)
    uuid.UUID(request_id)
    assert out.strip() == f"generated 25,000 codes for acme in 3 chunk(s) (request id {request_id}); 25,000 available"
    code, _, _ = await discount(*args, "--request-id", request_id, env=env)
    assert code == 0
    assert total_codes(server.database_url, "acme") == 25_000
    rows = sql(
        server.database_url,
        "SELECT count(*), min(code), bool_and(expires_at = '2099-01-01T00:00Z') FROM codes",
    )
    assert rows[0][0] == 25_000 and rows[0][1].startswith("AC-") and rows[0][2] is True
    assert sql(server.database_url, "SELECT generated FROM code_batches ORDER BY request_id") == [
        (10_000,),
        (10_000,),
        (5_000,),
    ]


async def test_claim_and_stats_print_what_the_server_says(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    service = client_env(server.address, create_key(server.database_url, "service"))
    brand = client_env(server.address, create_key(server.database_url, "brand", "acme"))

    code, out, err = await discount("claim", "acme", "alice", "alice@example.com", env=service)
    assert code == 0, err
    held = sql(server.database_url, "SELECT code FROM claims WHERE user_id = 'alice'")[0][0]
    assert out == f"{held}  (claimed by alice <alice@example.com>, sequence 1)\n"
    code, out, _ = await discount("claim", "acme", "alice", "alice@example.com", "--json", env=service)
    assert code == 0
    claim = json.loads(out)
    assert claim["code"] == held and claim["sequence"] == 1 and claim["newly_claimed"] is False
    assert claim["user_id"] == "alice" and claim["email"] == "alice@example.com" and claim["expires_at"] is None

    code, out, err = await discount("stats", "acme", env=brand)
    assert code == 0, err
    assert out.splitlines() == [
        "brand      acme",
        "total      10",
        "available  9",
        "claimed    1",
        "expired    0",
        "redeemed   0",
    ]


async def test_watch_prints_claims_live_and_keeps_going_across_a_server_restart(database_url: str) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 100)
    key = create_key(database_url, "admin")
    address = f"127.0.0.1:{free_port()}"
    env = client_env(address, key)

    async def claim(user: str) -> None:
        code, _, err = await discount("claim", "acme", user, f"{user}@example.com", env=env)
        assert code == 0, err

    async def next_line(stream: Any) -> str:
        line = await asyncio.wait_for(stream.readline(), 20)
        assert line, "watch ended"
        return str(line.decode())

    async with in_process_server(database_url, listen=address):
        await claim("u1")
        plain = await asyncio.create_subprocess_exec(
            str(BIN / "discount"),
            "watch",
            "acme",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        as_json = await asyncio.create_subprocess_exec(
            str(BIN / "discount"),
            *["watch", "acme", "--after", "1", "--json"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        first = await next_line(plain.stdout)
        await claim("u2")
        plain_lines = [first, await next_line(plain.stdout)]
        json_lines = [await next_line(as_json.stdout)]
    # The server is gone; claims go on once a new one listens on the same address.
    async with in_process_server(database_url, listen=address):
        await claim("u3")
        plain_lines.append(await next_line(plain.stdout))
        json_lines.append(await next_line(as_json.stdout))
        for proc in (plain, as_json):
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 10)
    assert plain.stderr is not None
    plain_err = (await plain.stderr.read()).decode()
    assert "reconnecting" in plain_err and "after sequence 2" in plain_err
    assert "Traceback" not in plain_err

    claims = sql(database_url, "SELECT sequence, claimed_at, code, user_id, email FROM claims ORDER BY sequence")
    expected = ["\t".join([str(s), at.isoformat().replace("+00:00", "Z"), c, u, e]) + "\n" for s, at, c, u, e in claims]
    assert plain_lines == expected
    parsed = [json.loads(line) for line in json_lines]
    assert [(p["sequence"], p["user_id"], p["code"]) for p in parsed] == [(s, u, c) for s, _, c, u, _ in claims[1:]]
    assert all(p["brand_id"] == "acme" and p["expires_at"] is None for p in parsed)


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (
            ["claim", "nope", "alice", "a@example.com"],
            "admin",
            "ClaimCode failed: NOT_FOUND: brand 'nope' does not exist",
        ),
        (["claim", "empty", "alice", "a@example.com"], "admin", "ClaimCode failed: RESOURCE_EXHAUSTED:"),
        (["stats", "acme"], "service", "GetBrandStats failed: PERMISSION_DENIED:"),
        (["stats", "acme"], "dk_bogus", "GetBrandStats failed: UNAUTHENTICATED:"),
        (["stats", "acme"], None, "DISCOUNT_API_KEY is not set"),
        (["generate", "acme", "0"], "admin", "N must be at least 1"),
        (["generate", "acme", "10", "--length", "3"], "admin", "GenerateCodes failed: INVALID_ARGUMENT: code_length"),
        (["generate", "acme", "10", "--expires", "soon"], "admin", "--expires 'soon' is not an ISO 8601 time"),
        (["generate", "acme", "10", "--expires", "2001-01-01"], "admin", "expires_at must be in the future"),
        (["watch", "nope"], "admin", "WatchClaims failed: NOT_FOUND:"),
        (["watch", "acme"], "dk_bogus", "WatchClaims failed: UNAUTHENTICATED:"),
    ],
)
async def test_errors_are_one_line_and_a_nonzero_exit(
    server: ServerHandle, args: list[str], key: str | None, expected: str
) -> None:
    create_brand(server.database_url, "acme")
    create_brand(server.database_url, "empty")
    keys = {"admin": server.admin_key, "service": create_key(server.database_url, "service")}
    code, out, err = await discount(*args, env=client_env(server.address, keys.get(key or "", key)))
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("discount: "), err
    assert expected in err, err


async def test_an_unreachable_server_is_one_line_and_a_nonzero_exit() -> None:
    address = f"127.0.0.1:{free_port()}"
    code, out, err = await discount("stats", "acme", env=client_env(address, "k"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"discount: cannot reach the discount service at {address} (DISCOUNT_ADDRESS):"), err
