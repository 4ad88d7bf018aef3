"""A brand's feed stays readable whatever its claims weigh: WatchClaims responses are cut by bytes
as well as by count, so none exceeds the server's message limit (DISCOUNT_MAX_MESSAGE_BYTES) with
any max_claims_per_response.

The largest valid claim (a 128-character user_id of 4-byte characters, a 254-byte email) encodes to
under 1 KiB, so 1,000 of them reach 1 MiB only just not; the server here runs with a 256 KiB limit,
which a count-only cut overflows at once and on every retry from the same cursor."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_service import codes, validation
from discount_service.encoding import EncodedClaims, cut_runs
from discount_service.models import Claim
from tests.support import create_brand, generate_codes_sql, in_process_server

CLAIMS = 1100
MESSAGE_LIMIT = 256 * 1024
# The longest user_id and the most bytes an email may have (validation.user_id and .email accept them).
LONG_EMAIL = "漢" * 64 + "@" + "例" * 19 + ".com"


def long_user_id(i: int) -> str:
    return f"{i:04d}" + "\U0001d518" * (validation.MAX_USER_ID - 4)  # MATHEMATICAL FRAKTUR CAPITAL U


async def read_all(stub: object, metadata: object, per_response: int) -> tuple[list[pb.Claim], list[int]]:
    """Every claim of the feed from the start, and the size of each response that carried them."""
    call = stub.WatchClaims(  # type: ignore[attr-defined]
        pb.WatchClaimsRequest(brand_id="heavy", max_claims_per_response=per_response), metadata=metadata
    )
    claims: list[pb.Claim] = []
    sizes: list[int] = []

    async def read() -> None:
        async for response in call:
            sizes.append(response.ByteSize())
            claims.extend(response.claims or [response.claim])
            if len(claims) >= CLAIMS:
                return

    try:
        await asyncio.wait_for(read(), 60)
    finally:
        call.cancel()
    return claims, sizes


async def test_a_feed_of_heavy_claims_reads_whole_with_any_claims_per_response(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert validation.user_id(long_user_id(0)) == long_user_id(0)
    assert validation.email(LONG_EMAIL) == LONG_EMAIL
    create_brand(database_url, "heavy")
    generate_codes_sql(database_url, "heavy", CLAIMS + 10)
    caplog.set_level(logging.INFO, logger="discount_service")
    async with in_process_server(database_url, max_message_bytes=MESSAGE_LIMIT) as (_, server):
        channel = grpc.aio.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 1 << 24)])
        stub = pb_grpc.DiscountServiceStub(channel)  # type: ignore[no-untyped-call]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(CLAIMS):
            queue.put_nowait(i)
        acknowledged: dict[str, str] = {}

        async def shopper() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                request = pb.ClaimCodeRequest(brand_id="heavy", user_id=long_user_id(i), email=LONG_EMAIL)
                reply = await stub.ClaimCode(request, metadata=server.metadata(), timeout=60)
                acknowledged[reply.claim.user_id] = reply.claim.code

        try:
            await asyncio.gather(*(shopper() for _ in range(32)))
            assert len(acknowledged) == CLAIMS

            results = {n: await read_all(stub, server.metadata(), n) for n in (1000, 0, 1)}
        finally:
            await channel.close(None)

    for per_response, (claims, sizes) in results.items():
        assert [c.sequence for c in claims] == list(range(1, CLAIMS + 1)), per_response  # all, in order, once
        assert {c.user_id: c.code for c in claims} == acknowledged, per_response
        assert all(c.email == LONG_EMAIL for c in claims)
        assert max(sizes) <= MESSAGE_LIMIT, (per_response, max(sizes))
    heavy_claims, heavy_sizes = results[1000]
    # The first 1,000 claims alone weigh more than a message may: count alone would have cut one too big.
    assert sum(c.ByteSize() for c in heavy_claims[:1000]) > MESSAGE_LIMIT
    assert len(heavy_sizes) < CLAIMS // 100  # still hundreds of claims per response, not one each
    assert len(results[1][1]) == len(results[0][1]) == CLAIMS  # one claim per response
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def test_the_largest_valid_claim_fits_the_smallest_message_limit() -> None:
    """DISCOUNT_MAX_MESSAGE_BYTES is at least 1 KiB, so every valid claim fits a response alone."""
    latest = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    claim = Claim(
        sequence=2**63 - 1,
        brand_id=validation.new_brand_id("b" * validation.MAX_BRAND_ID),
        code="X" * (codes.MAX_PREFIX + codes.MAX_LENGTH),
        user_id=validation.user_id(long_user_id(0)),
        email=validation.email(LONG_EMAIL),
        claimed_at=latest,
        expires_at=latest,
    )
    encoded = EncodedClaims()
    (alone,) = encoded.responses([claim], 1, 1024)
    (batched,) = encoded.responses([claim], 1000, 1024)
    assert len(alone) < 1024 and len(batched) < 1024


def test_cut_runs_respects_count_bytes_envelope_and_separators() -> None:
    assert cut_runs([], max_items=10, max_bytes=100) == []
    assert cut_runs([40, 40, 40], max_items=10, max_bytes=100) == [(0, 2), (2, 3)]
    assert cut_runs([10] * 5, max_items=2, max_bytes=1000) == [(0, 2), (2, 4), (4, 5)]
    # A JSON array: 2 bytes of brackets and a comma between items.
    assert cut_runs([49, 49], max_items=10, max_bytes=100, envelope=2, separator=1) == [(0, 1), (1, 2)]
    assert cut_runs([48, 48], max_items=10, max_bytes=99, envelope=2, separator=1) == [(0, 2)]
    # An item too big for any message gets a run of its own.
    assert cut_runs([10, 500, 10], max_items=10, max_bytes=100) == [(0, 1), (1, 2), (2, 3)]
