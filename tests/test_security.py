"""API keys: hashed at rest, never logged, revocation takes effect within
DISCOUNT_KEY_CACHE_SECONDS, and guessing keys gets nowhere."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import BIN, claim_request, create_brand, generate_codes_sql, sql, start_server_process, stop_process

KEY_CACHE_SECONDS = 3.0


def discount(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The `discount` admin command, as an operator runs it (with the servers' configuration)."""
    env = {**os.environ, "DISCOUNT_DATABASE_URL": url, "DISCOUNT_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS)}
    return subprocess.run(
        [str(BIN / "discount"), *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )


def everything_in_the_database(url: str) -> str:
    """Every row of every table, as text (bytea as hex), like a dump of the database."""
    tables = sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    parts = []
    for (table,) in tables:
        rows = sql(url, f'SELECT row_to_json(t)::text FROM "{table}" t')
        parts.extend(row[0] for row in rows)
    return "\n".join(parts)


def key_material(key: str) -> list[str]:
    """The key, its secret part, and both in the encodings a leak could use."""
    secret = key.split("_", 2)[2]
    return [key, secret, key.encode().hex(), secret.encode().hex(), secret[:16]]


async def test_keys_are_hashed_at_rest_and_never_logged(database_url: str, tmp_path: Path) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    created = await asyncio.to_thread(discount, database_url, "key", "create", "--role", "service")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("dsk_") and len(key.split("_", 2)[2]) >= 43  # 256 random bits
    # The log of a server at DEBUG that served, refused, and saw the key revoked.
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        extra_env={"DISCOUNT_LOG_LEVEL": "DEBUG", "DISCOUNT_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS)},
    )
    near_miss = key[:-1] + ("A" if key[-1] != "A" else "B")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DiscountServiceStub(channel)
            reply = stub.ClaimCode(claim_request("acme", "ann"), metadata=(("x-api-key", key),), timeout=5)
            assert reply.claim.user_id == "ann"
            for bad in (near_miss, key + "x", key.upper()):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ClaimCode(claim_request("acme", "eve"), metadata=(("x-api-key", bad),), timeout=5)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
                assert bad not in refused.value.details()  # type: ignore[attr-defined]
            key_id = key.split("_")[1]
            await asyncio.to_thread(discount, database_url, "key", "revoke", key_id)
            listing = (await asyncio.to_thread(discount, database_url, "key", "list")).stdout
            assert key_id in listing
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0

    stored = sql(database_url, "SELECT key_hash FROM api_keys WHERE key_id = %s", (key.split("_")[1],))
    assert stored == [(hashlib.sha256(key.encode()).digest(),)]
    dump = everything_in_the_database(database_url)
    log = server.log_text()
    assert "revoked" in listing and "DEBUG" in log  # the log is the verbose one
    for leak in key_material(key) + key_material(near_miss):
        assert leak not in dump, "key material stored in the database"
        assert leak not in log, "key material in the server log"
        assert leak not in listing and leak not in listing.upper()


async def test_a_revoked_key_stops_working_within_the_key_cache_time(database_url: str, tmp_path: Path) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 100)
    created = await asyncio.to_thread(discount, database_url, "key", "create", "--role", "service")
    key = created.stdout.strip().splitlines()[-1]
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        extra_env={"DISCOUNT_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS)},
    )
    try:
        channel, stub = server.aio_stub()
        async with channel:
            n = 0

            async def claim() -> grpc.StatusCode:
                nonlocal n
                n += 1
                try:
                    await stub.ClaimCode(claim_request("acme", f"u{n}"), metadata=(("x-api-key", key),), timeout=5)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    return exc.code()

            assert await claim() is grpc.StatusCode.OK  # the key is now cached as valid
            cached_at = time.monotonic()
            revoke = await asyncio.to_thread(discount, database_url, "key", "revoke", key.split("_")[1])
            revoked_at = time.monotonic()
            worked_after_revoke = 0
            assert f"within {KEY_CACHE_SECONDS:g}s" in revoke.stdout
            while (status := await claim()) is grpc.StatusCode.OK:
                # Still cached: allowed only until DISCOUNT_KEY_CACHE_SECONDS after it was cached.
                assert time.monotonic() - cached_at < KEY_CACHE_SECONDS + 0.5, "revoked key still works"
                worked_after_revoke += 1
                await asyncio.sleep(0.05)
            stopped_after = time.monotonic() - revoked_at
            assert status is grpc.StatusCode.UNAUTHENTICATED
            for _ in range(5):  # and it stays refused
                assert await claim() is grpc.StatusCode.UNAUTHENTICATED
        claims = sql(database_url, "SELECT count(*) FROM claims")[0][0]
        print(
            f"revoked key refused {stopped_after:.2f}s after the revoke ({worked_after_revoke} calls in between, "
            f"DISCOUNT_KEY_CACHE_SECONDS={KEY_CACHE_SECONDS:g})"
        )
        assert claims >= 1
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0


async def test_guessing_keys_gets_nowhere(database_url: str, tmp_path: Path) -> None:
    """A thousand guesses, many of them near misses of a real key (same prefix and key id, one
    character off), are all UNAUTHENTICATED, and none changes anything."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    key = (await asyncio.to_thread(discount, database_url, "key", "create", "--role", "admin")).stdout.split()[-1]
    server = await asyncio.to_thread(start_server_process, database_url, log_path=tmp_path / "server.log")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    guesses = [f"dsk_{key.split('_')[1]}_{secrets.token_urlsafe(32)}" for _ in range(500)]
    for i in range(500):
        position = len(key) - 1 - (i % 43)
        swapped = alphabet[(alphabet.index(key[position]) + 1 + i // 43) % len(alphabet)]
        guesses.append(key[:position] + swapped + key[position + 1 :])
    assert key not in guesses
    try:
        channel = grpc.aio.insecure_channel(server.address)
        stub = pb_grpc.DiscountServiceStub(channel)
        semaphore = asyncio.Semaphore(16)

        async def guess(candidate: str) -> grpc.StatusCode:
            async with semaphore:
                try:
                    await stub.GetBrandStats(
                        pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", candidate),), timeout=10
                    )
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    return exc.code()

        async with channel:
            results = await asyncio.gather(*(guess(g) for g in guesses))
            # Past the failed-authentication throttle's burst, the guesses are refused RATE_LIMITED
            # without a lookup.
            assert set(results) == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
            await asyncio.sleep(1.0)  # the throttle's retry delay: the host may try again
            assert await guess(key) is grpc.StatusCode.OK  # the real key still works: no lock-out
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0
