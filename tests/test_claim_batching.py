"""Group commit (claim_batcher.py, migrations/0004): concurrent claims of one brand share a
transaction, and every claim still gets exactly the answer it would have got alone."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc

from discount.v1 import discount_service_pb2 as pb
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql, sql


async def test_a_burst_of_mixed_claims_is_batched_and_stays_exactly_once(server: ServerHandle) -> None:
    create_brand(server.database_url, "burst")
    generate_codes_sql(server.database_url, "burst", 150)
    # 160 distinct users (10 more than there are codes), and 8 of them also call 5 more times at once.
    users = [f"u{i}" for i in range(160)] + [f"u{i}" for i in range(8) for _ in range(5)]
    channel, stub = server.aio_stub()
    async with channel:

        async def claim(user: str) -> tuple[str, pb.ClaimCodeResponse | grpc.StatusCode]:
            try:
                reply = await stub.ClaimCode(claim_request("burst", user), metadata=server.metadata(), timeout=60)
                return user, reply
            except grpc.aio.AioRpcError as exc:
                return user, exc.code()

        results = await asyncio.gather(*(claim(u) for u in users))

    by_user: dict[str, list[pb.ClaimCodeResponse | grpc.StatusCode]] = defaultdict(list)
    for user, result in results:
        by_user[user].append(result)
    winners = {u: [r for r in rs if isinstance(r, pb.ClaimCodeResponse)] for u, rs in by_user.items()}
    losers = [r for rs in by_user.values() for r in rs if not isinstance(r, pb.ClaimCodeResponse)]
    # Exactly 150 users hold a code; everyone else was told the brand ran out.
    holders = {u for u, rs in winners.items() if rs}
    assert len(holders) == 150
    assert set(losers) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for user in holders:
        replies = winners[user]
        assert len({r.claim.code for r in replies}) == 1, user  # one code per user, however often asked
        assert sum(r.newly_claimed for r in replies) == 1, user  # and only one call claimed it
        assert len(replies) == len(by_user[user]), user  # a holder is never told the brand is exhausted
    codes = {winners[u][0].claim.code for u in holders}
    assert len(codes) == 150
    # The database agrees: 150 claims, gapless sequences 1..150, every code flipped once.
    rows = sql(server.database_url, "SELECT sequence, user_id, code FROM claims ORDER BY sequence")
    assert [r[0] for r in rows] == list(range(1, 151))
    assert {r[1]: r[2] for r in rows} == {u: winners[u][0].claim.code for u in holders}
    assert sql(server.database_url, "SELECT count(*) FROM codes WHERE claimed") == [(150,)]
    # Batches happened: claims of one transaction share its start time (now()).
    distinct_times = sql(server.database_url, "SELECT count(DISTINCT claimed_at) FROM claims")[0][0]
    assert distinct_times < 150
