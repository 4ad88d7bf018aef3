"""`discount generate` refuses, before any call, a total over its ceiling or more than the code space
at --length can hold (saying what would work), and its memory does not grow with N. The real CLI as a
subprocess against a real server: a refused run must not have sent anything."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from discount_dev.processes import rss_bytes
from tests.support import BIN, ServerHandle, create_brand, sql
from tests.test_client_cli import client_env, discount

REFUSED = {
    "a trillion": (
        ["1000000000000"],
        "N must be at most 100,000,000 codes per command, got 1,000,000,000,000: generate more in several runs "
        "of at most 100,000,000, each with its own --request-id",
    ),
    "a quadrillion": (
        ["1000000000000000"],
        "N must be at most 100,000,000 codes per command, got 1,000,000,000,000,000: generate more in several "
        "runs of at most 100,000,000, each with its own --request-id",
    ),
    "1M of length 6": (
        ["1000000", "--length", "6"],
        "1,000,000 codes of length 6 would fill more than 0.01% of the 887,503,681 possible codes: use --length 7 "
        "or more, or at most 88,750 codes of length 6",
    ),
    "the ceiling at length 8": (
        ["100000000", "--length", "8"],
        "100,000,000 codes of length 8 would fill more than 0.01% of the 852,891,037,441 possible codes: use "
        "--length 9 or more, or at most 85,289,103 codes of length 8",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_total_that_cannot_be_made_is_refused_before_any_call(server: ServerHandle, case: str) -> None:
    create_brand(server.database_url, "acme")
    args, message = REFUSED[case]
    started = time.monotonic()
    code, out, err = await discount(
        "generate", "acme", *args, env=client_env(server.address, server.admin_key), timeout=30
    )
    assert (code, out, err) == (1, "", f"discount: {message}\n")
    assert time.monotonic() - started < 10  # at once: the CLI's start-up, nothing more
    assert sql(server.database_url, "SELECT count(*) FROM code_batches") == [(0,)]
    assert sql(server.database_url, "SELECT count(*) FROM codes") == [(0,)]


async def test_the_largest_total_of_the_smallest_length_is_allowed(server: ServerHandle) -> None:
    """The CLI's rule is the server's: the most it allows at a length goes through."""
    create_brand(server.database_url, "acme")
    env = client_env(server.address, server.admin_key)
    code, out, err = await discount("generate", "acme", "88750", "--length", "6", "--request-id", "edge", env=env)
    assert code == 0, err
    assert out == "generated 88,750 codes for acme in 1 chunk(s) (request id edge); 88,750 available\n"


async def test_memory_does_not_grow_with_the_number_of_chunks(server: ServerHandle) -> None:
    """The ceiling in one-code chunks: 100,000,000 GenerateCodes calls to make. The chunks are made
    one at a time, so the CLI is as small as for one chunk (a list of them would be ~800 MB)."""
    create_brand(server.database_url, "acme")
    env = client_env(server.address, server.admin_key)
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "discount"),
        "generate",
        "acme",
        "100000000",
        "--chunk-size",
        "1",
        "--request-id",
        "tiny-chunks",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while sql(server.database_url, "SELECT count(*) FROM code_batches")[0][0] < 50:
            assert proc.returncode is None, "generate ended early"
            assert time.monotonic() < deadline, "generate made fewer than 50 calls in 60 s"
            await asyncio.sleep(0.1)
        rss = rss_bytes(proc.pid)
        assert rss < 150 * 2**20, f"the CLI uses {rss / 2**20:.0f} MB with 100,000,000 chunks to go"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert "of 100,000,000 codes; re-run with --request-id tiny-chunks" in err.decode()
    batches = sql(server.database_url, "SELECT count(*), min(generated), max(generated) FROM code_batches")
    assert batches[0][0] >= 50 and batches[0][1:] == (1, 1)
