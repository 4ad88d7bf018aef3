"""GenerateCodes through a real server: exact counts, the code format, idempotent retries."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount_service import codes
from tests.support import ServerHandle, create_brand, create_key, sql

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)

UNAMBIGUOUS = re.compile(r"[A-HJKMNP-Z2-9]+")


async def test_generates_exact_count_of_unique_well_formed_codes(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    brand_key = create_key(server.database_url, "brand", "acme")
    channel, stub = server.aio_stub()
    async with channel:
        reply = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="acme", count=20_000, prefix="XMAS-", code_length=10),
            metadata=server.metadata(brand_key),
        )
        default = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="acme", count=100), metadata=server.metadata(brand_key)
        )
    assert (reply.brand_id, reply.generated, reply.available) == ("acme", 20_000, 20_000)
    assert reply.batch_id and reply.batch_id != default.batch_id
    assert default.available == 20_100
    rows = sql(server.database_url, "SELECT code FROM codes")
    all_codes = [r[0] for r in rows]
    assert len(all_codes) == len(set(all_codes)) == 20_100
    xmas = [c for c in all_codes if c.startswith("XMAS-")]
    assert len(xmas) == 20_000
    assert all(len(c) == 15 and UNAMBIGUOUS.fullmatch(c[5:]) for c in xmas)
    plain = [c for c in all_codes if not c.startswith("XMAS-")]
    assert all(len(c) == 12 and UNAMBIGUOUS.fullmatch(c) for c in plain)


def test_characters_are_uniform_over_the_alphabet() -> None:
    sample = codes.random_characters(310_000)
    counts = {ch: sample.count(ch) for ch in codes.ALPHABET}
    assert set(sample) == set(codes.ALPHABET)
    assert not set("01OIL") & set(sample)
    # 10,000 expected per character; a biased mapping (e.g. b % 31 on all 256 bytes) is off by ~3%.
    assert all(9_500 < n < 10_500 for n in counts.values()), counts


async def test_retry_with_same_request_id_returns_first_result_and_creates_nothing(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    request = pb.GenerateCodesRequest(brand_id="acme", count=1000, request_id="campaign-42")
    async with channel:
        first = await stub.GenerateCodes(request, metadata=server.metadata())
        second = await stub.GenerateCodes(request, metadata=server.metadata())
        # Concurrent retries (a client timed out and retried while the first was running).
        racing = await asyncio.gather(
            *(
                stub.GenerateCodes(
                    pb.GenerateCodesRequest(brand_id="acme", count=5000, request_id="campaign-43"),
                    metadata=server.metadata(),
                )
                for _ in range(5)
            )
        )
        stats = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
    assert second.batch_id == first.batch_id and second.generated == 1000
    assert len({r.batch_id for r in racing}) == 1
    assert stats.total == 6000
    assert sql(server.database_url, "SELECT count(*) FROM codes") == [(6000,)]
    assert sql(server.database_url, "SELECT count(*) FROM code_batches") == [(2,)]


async def test_collisions_take_the_exact_path_and_still_create_exactly_count(server: ServerHandle) -> None:
    """Length 6 with the largest allowed count: a few collisions are expected (about 3.6)."""
    create_brand(server.database_url, "tiny")
    channel, stub = server.aio_stub()
    async with channel:
        first = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="tiny", count=88_000, code_length=6), metadata=server.metadata()
        )
        second = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="tiny", count=88_000, code_length=6), metadata=server.metadata()
        )
    assert first.generated == second.generated == 88_000
    assert second.available == 176_000
    assert sql(server.database_url, "SELECT count(*), count(DISTINCT code) FROM codes") == [(176_000, 176_000)]


async def test_code_space_too_small_is_refused_with_a_hint(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateCodes(
                pb.GenerateCodesRequest(brand_id="acme", count=1_000_000, code_length=6), metadata=server.metadata()
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "code space too small" in (err.value.details() or "")
    assert "code_length >= 7" in (err.value.details() or "")


async def test_generating_a_million_codes_in_one_call(server: ServerHandle) -> None:
    create_brand(server.database_url, "big")
    channel, stub = server.aio_stub()
    started = time.perf_counter()
    async with channel:
        reply = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="big", count=1_000_000), metadata=server.metadata(), timeout=120
        )
    elapsed = time.perf_counter() - started
    print(f"generated 1,000,000 codes in {elapsed:.1f}s")
    assert reply.generated == 1_000_000 and reply.available == 1_000_000
    assert sql(server.database_url, "SELECT count(*), count(DISTINCT code) FROM codes") == [(1_000_000, 1_000_000)]
