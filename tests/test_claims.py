"""ClaimCode through a real server: exactly-once under races, idempotent repeats, expiry."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql, sql

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)


async def test_claim_gives_a_code_and_records_who_got_it(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    async with channel:
        await stub.GenerateCodes(pb.GenerateCodesRequest(brand_id="acme", count=10), metadata=server.metadata())
        reply = await stub.ClaimCode(claim_request("acme", "alice", "alice@example.com"), metadata=server.metadata())
    assert reply.newly_claimed is True
    assert reply.claim.brand_id == "acme"
    assert reply.claim.user_id == "alice"
    assert reply.claim.email == "alice@example.com"
    assert reply.claim.sequence == 1
    assert len(reply.claim.code) == 12
    assert reply.claim.claimed_at.seconds > 0
    assert not reply.claim.HasField("expires_at")
    rows = sql(server.database_url, "SELECT code, user_id, email, claimed_at IS NOT NULL FROM claims")
    assert rows == [(reply.claim.code, "alice", "alice@example.com", True)]
    claimed = sql(server.database_url, "SELECT claimed FROM codes WHERE code = %s", (reply.claim.code,))
    assert claimed == [(True,)]


async def test_800_way_race_for_500_codes_gives_exactly_500(server: ServerHandle) -> None:
    create_brand(server.database_url, "race")
    generate_codes_sql(server.database_url, "race", 500)
    channel, stub = server.aio_stub()
    async with channel:

        async def claim(i: int) -> pb.ClaimCodeResponse | grpc.StatusCode:
            try:
                return await stub.ClaimCode(claim_request("race", f"user-{i}"), metadata=server.metadata(), timeout=60)
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        results = await asyncio.gather(*(claim(i) for i in range(800)))
    won = [r for r in results if isinstance(r, pb.ClaimCodeResponse)]
    lost = [r for r in results if not isinstance(r, pb.ClaimCodeResponse)]
    assert len(won) == 500
    assert lost == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 300
    assert len({r.claim.code for r in won}) == 500
    assert len({r.claim.user_id for r in won}) == 500
    assert all(r.newly_claimed for r in won)
    assert sorted(r.claim.sequence for r in won) == list(range(1, 501))
    # The database agrees: 500 claims, 500 distinct codes, every code marked claimed once.
    assert sql(server.database_url, "SELECT count(*), count(DISTINCT code), count(DISTINCT user_id) FROM claims") == [
        (500, 500, 500)
    ]
    assert sql(server.database_url, "SELECT count(*) FROM codes WHERE NOT claimed") == [(0,)]


async def test_40_concurrent_claims_by_one_user_return_one_code(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 100)
    channel, stub = server.aio_stub()
    async with channel:
        replies = await asyncio.gather(
            *(stub.ClaimCode(claim_request("acme", "bob"), metadata=server.metadata()) for _ in range(40))
        )
        again = await stub.ClaimCode(claim_request("acme", "bob"), metadata=server.metadata())
    assert len({r.claim.code for r in replies}) == 1
    assert sum(r.newly_claimed for r in replies) == 1
    assert again.newly_claimed is False
    assert again.claim.code == replies[0].claim.code
    assert again.claim.sequence == replies[0].claim.sequence
    assert sql(server.database_url, "SELECT count(*) FROM claims WHERE user_id = 'bob'") == [(1,)]


async def test_a_user_gets_one_code_per_brand_but_one_in_each_brand(server: ServerHandle) -> None:
    for brand in ("acme", "globex"):
        create_brand(server.database_url, brand)
        generate_codes_sql(server.database_url, brand, 5)
    channel, stub = server.aio_stub()
    async with channel:
        a = await stub.ClaimCode(claim_request("acme", "carol"), metadata=server.metadata())
        g = await stub.ClaimCode(claim_request("globex", "carol"), metadata=server.metadata())
    assert a.newly_claimed and g.newly_claimed
    assert a.claim.code != g.claim.code
    assert a.claim.sequence == g.claim.sequence == 1  # sequences are per brand


async def test_expired_codes_are_never_handed_out(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 20, expires_sql="now() - interval '1 minute'")
    channel, stub = server.aio_stub()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ClaimCode(claim_request("acme", "dave"), metadata=server.metadata())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        future = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="acme", count=3, expires_at={"seconds": 4102444800}),
            metadata=server.metadata(),
        )
        assert future.generated == 3
        reply = await stub.ClaimCode(claim_request("acme", "dave"), metadata=server.metadata())
        stats = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
    assert reply.claim.expires_at.seconds == 4102444800
    assert (stats.total, stats.available, stats.claimed, stats.expired) == (23, 2, 1, 20)


async def test_unknown_brand_is_not_found_and_empty_brand_is_exhausted(server: ServerHandle) -> None:
    create_brand(server.database_url, "empty")
    channel, stub = server.aio_stub()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ClaimCode(claim_request("nope", "erin"), metadata=server.metadata())
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.ClaimCode(claim_request("empty", "erin"), metadata=server.metadata())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert empty.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no codes left" in (empty.value.details() or "")
