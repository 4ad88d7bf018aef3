"""Group commit (claim_batcher.py, migrations/0004): concurrent claims of one brand share a
transaction, and every claim still gets exactly the answer it would have got alone.

Transactions are counted from the rows themselves: `xmin` names the transaction that wrote a row
version, so claims rows grouped by `xmin` are exactly the transactions that committed them, with
no other traffic mixed in (pg_stat_database's xact_commit would count every statement of the test
and of the server, and only after the stats are flushed).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

import grpc
import psycopg

from discount.v1 import discount_service_pb2 as pb
from discount_service.claim_batcher import MAX_BATCH
from tests.support import WAITING_ON_LOCKS, ServerHandle, claim_request, create_brand, generate_codes_sql, sql


@dataclass(frozen=True)
class Transaction:
    """One committed claim transaction, as the database recorded it."""

    claims: int
    first_sequence: int
    last_sequence: int
    claimed_at_values: int  # distinct claimed_at (now() is the transaction's start time)
    codes_flipped_with_the_claim: int  # claims whose code row was marked claimed by the same transaction


def claim_transactions(database_url: str) -> list[Transaction]:
    """The transactions that wrote claims rows, in feed order."""
    rows = sql(
        database_url,
        """
        SELECT count(*), min(c.sequence), max(c.sequence), count(DISTINCT c.claimed_at),
               count(*) FILTER (WHERE co.xmin = c.xmin)
        FROM claims c JOIN codes co USING (brand_key, code)
        GROUP BY c.xmin::text::bigint
        ORDER BY min(c.sequence)
        """,
    )
    return [Transaction(*row) for row in rows]


def assert_each_transaction_is_one_batch(transactions: list[Transaction]) -> None:
    """Every transaction holds at most MAX_BATCH claims, a gapless run of sequences right after the
    previous transaction's, one start time, and it flipped its own claims' codes."""
    next_sequence = 1
    for t in transactions:
        assert 1 <= t.claims <= MAX_BATCH, t
        assert (t.first_sequence, t.last_sequence) == (next_sequence, next_sequence + t.claims - 1), t
        assert t.claimed_at_values == 1, t
        assert t.codes_flipped_with_the_claim == t.claims, t
        next_sequence = t.last_sequence + 1


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
    # Batches happened: each transaction is one batch, and on average a transaction carried at least
    # two claims (a burst like this one commits in a handful).
    transactions = claim_transactions(server.database_url)
    assert sum(t.claims for t in transactions) == 150
    assert_each_transaction_is_one_batch(transactions)
    assert len(transactions) <= 150 // 2, [t.claims for t in transactions]


async def test_claims_that_wait_for_their_brand_go_together_in_full_batches(server: ServerHandle) -> None:
    """While a brand's claim transaction runs, its other claims wait in the server and then go
    together: a claim that finds the brand idle goes alone at once, and 2 x MAX_BATCH claims
    arriving behind it commit in exactly two more transactions."""
    url = server.database_url
    create_brand(url, "hot")
    generate_codes_sql(url, "hot", 3 * MAX_BATCH)
    waiting = [f"w{i}" for i in range(2 * MAX_BATCH)]
    channel, stub = server.aio_stub()
    async with channel, await psycopg.AsyncConnection.connect(url) as holder:
        # Hold the brand's feed-head row, which every claim transaction locks before it commits.
        await holder.execute(
            "SELECT 1 FROM brand_feed_heads WHERE brand_key = (SELECT brand_key FROM brands WHERE brand_id = %s)"
            " FOR UPDATE",
            ("hot",),
        )

        def claim(user: str) -> asyncio.Future[pb.ClaimCodeResponse]:
            return asyncio.ensure_future(
                stub.ClaimCode(claim_request("hot", user), metadata=server.metadata(), timeout=60)
            )

        first = claim("first")
        while sql(url, WAITING_ON_LOCKS) != [(1,)]:
            await asyncio.sleep(0.01)
        rest = [claim(user) for user in waiting]
        # A round trip on the same channel, then time for the in-process server to take every
        # waiting claim (they arrive within a fraction of a second; no claim can finish meanwhile).
        await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="hot"), metadata=server.metadata(), timeout=60)
        await asyncio.sleep(2.0)
        assert not first.done() and not any(f.done() for f in rest)
        # One transaction of the brand at a time: the others wait in the server, not in the database.
        assert sql(url, WAITING_ON_LOCKS) == [(1,)]
        await holder.commit()
        replies = [await first, *await asyncio.gather(*rest)]

    assert [r.claim.user_id for r in replies] == ["first", *waiting]
    assert all(r.newly_claimed for r in replies)
    assert len({r.claim.code for r in replies}) == len(replies) == 2 * MAX_BATCH + 1
    rows = sql(url, "SELECT sequence, user_id, code FROM claims ORDER BY sequence")
    assert [r[0] for r in rows] == list(range(1, 2 * MAX_BATCH + 2))
    assert {r[1]: r[2] for r in rows} == {r.claim.user_id: r.claim.code for r in replies}
    assert sql(url, "SELECT count(*) FROM codes WHERE claimed") == [(2 * MAX_BATCH + 1,)]
    transactions = claim_transactions(url)
    assert_each_transaction_is_one_batch(transactions)
    assert [t.claims for t in transactions] == [1, MAX_BATCH, MAX_BATCH]
    assert rows[0][1] == "first"
