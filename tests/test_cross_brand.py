"""Group commit across brands (claim_batcher.py, migrations/0007): claims of many brands share a
transaction, and every claim still gets exactly the answer it would have got alone.

Transactions are counted from the rows themselves, as in test_claim_batching.py: claims rows grouped
by `xmin` are exactly the transactions that committed them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict

import grpc
import psycopg
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount_service.claim_batcher import MAX_TRANSACTIONS, ClaimBatcher
from tests.support import (
    WAITING_ON_LOCKS,
    ServerHandle,
    claim_request,
    create_brand,
    generate_codes_sql,
    in_process_server,
    sql,
)

BRANDS = 40
CODES_PER_BRAND = 30


def _setup(url: str, brands: list[str], codes: int) -> None:
    for brand in brands:
        create_brand(url, brand)
        generate_codes_sql(url, brand, codes)


async def test_concurrent_claims_across_brands_through_two_replicas_stay_exactly_once(server: ServerHandle) -> None:
    """Claims for random brands from two servers at once (their transactions each hold several
    brands, in whatever order the calls came): no code to two users, no user with two codes of a
    brand, every brand's sequences gapless, what each caller was told is what the database holds,
    and transactions did carry claims of several brands."""
    url = server.database_url
    brands = [f"brand-{i:02d}" for i in range(BRANDS)]
    _setup(url, brands, CODES_PER_BRAND)
    rng = random.Random(12)
    # 25 users per brand (5 codes to spare), and every 10th user also calls a second time at once.
    users = [(brand, f"user-{brand}-{u}") for brand in brands for u in range(25)]
    calls = users + users[::10]
    rng.shuffle(calls)
    async with in_process_server(url) as (_, replica):
        (chan_a, stub_a), (chan_b, stub_b) = server.aio_stub(), replica.aio_stub()
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for call in calls:
            queue.put_nowait(call)
        replies: dict[tuple[str, str], list[pb.ClaimCodeResponse]] = defaultdict(list)

        async def worker(k: int) -> None:
            stub = stub_a if k % 2 else stub_b
            while not queue.empty():
                brand, user = queue.get_nowait()
                reply = await stub.ClaimCode(claim_request(brand, user), metadata=server.metadata(), timeout=60)
                replies[(brand, user)].append(reply)

        async with chan_a, chan_b:
            await asyncio.gather(*(worker(k) for k in range(48)))

    assert set(replies) == set(users)
    for (brand, user), got in replies.items():
        assert {r.claim.code for r in got} == {got[0].claim.code}, (brand, user)  # one code per user
        assert sum(r.newly_claimed for r in got) == 1, (brand, user)  # claimed once, however often asked
        assert all(r.claim.brand_id == brand and r.claim.user_id == user for r in got)
    rows = sql(
        url,
        "SELECT b.brand_id, c.sequence, c.user_id, c.code FROM claims c JOIN brands b USING (brand_key)"
        " ORDER BY b.brand_id, c.sequence",
    )
    by_brand: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for brand, sequence, user, code in rows:
        by_brand[brand].append((sequence, user, code))
    for brand in brands:
        assert [s for s, _, _ in by_brand[brand]] == list(range(1, 26)), brand  # gapless, in order
        assert len({code for _, _, code in by_brand[brand]}) == 25, brand  # no code twice
        assert len({user for _, user, _ in by_brand[brand]}) == 25, brand  # no user twice
    assert {(b, u): c for b, rows_ in by_brand.items() for _, u, c in rows_} == {
        key: got[0].claim.code for key, got in replies.items()
    }
    assert sql(url, "SELECT count(*) FROM codes WHERE claimed") == [(BRANDS * 25,)]
    assert sql(
        url,
        "SELECT count(*) FROM claims c JOIN codes co USING (brand_key, code) WHERE NOT co.claimed OR co.xmin <> c.xmin",
    ) == [(0,)]  # every claim flipped its own code, in its own transaction
    # Group commit across brands happened: transactions that committed claims of several brands,
    # each holding a gapless run of each of its brands' sequences.
    transactions = sql(
        url,
        "SELECT count(DISTINCT brand_key), bool_and(run_ok) FROM ("
        "  SELECT xmin::text AS x, brand_key, max(sequence) - min(sequence) + 1 = count(*) AS run_ok"
        "  FROM claims GROUP BY 1, 2) per_brand GROUP BY x",
    )
    assert all(runs_ok for _, runs_ok in transactions)
    assert sum(1 for brands_in_transaction, _ in transactions if brands_in_transaction > 1) > 0
    # Fewer transactions than claims. How many fewer depends on how the claims arrive (here two servers
    # and 48 callers share the test's event loop); test_a_claim_that_fails_in_a_cross_brand_batch...
    # shows a batch forming for certain.
    assert len(transactions) < len(users)


def _in_distinct_lanes(candidates: list[str], count: int) -> list[str]:
    """`count` brand ids whose claims go in distinct lanes of the batcher."""
    chosen: list[str] = []
    lanes: set[int] = set()
    for brand in candidates:
        lane = ClaimBatcher.lane_of(brand)
        if lane not in lanes:
            chosen.append(brand)
            lanes.add(lane)
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough lanes")


async def test_a_claim_that_fails_in_a_cross_brand_batch_fails_alone(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A transaction of claims of several brands that fails as a whole (the database refuses one
    of its items) is retried claim by claim: that one claim fails, the others are claimed, once."""
    caplog.set_level(logging.INFO, logger="discount_service.claim_batcher")
    url = server.database_url
    held = _in_distinct_lanes([f"held-{i}" for i in range(100)], MAX_TRANSACTIONS)
    brands = [
        b
        for b in (f"b{i:02d}" for i in range(60))
        if ClaimBatcher.lane_of(b) not in {ClaimBatcher.lane_of(h) for h in held}
    ][:12]
    _setup(url, [*held, *brands], 5)
    # The database refuses this one user's claim (a value it cannot store, as it would say).
    sql(
        url,
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.user_id = 'poison' THEN
                RAISE EXCEPTION 'refused' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON claims FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """,
    )
    channel, stub = server.aio_stub()
    async with channel, await psycopg.AsyncConnection.connect(url) as holder:
        # Hold the feed heads of MAX_TRANSACTIONS brands of distinct lanes, and claim for each: every
        # transaction the server may run is in flight and waiting, so the claims that arrive now
        # wait in the server, and then go together in one transaction.
        await holder.execute(
            "SELECT 1 FROM brand_feed_heads WHERE brand_key IN (SELECT brand_key FROM brands WHERE brand_id = ANY(%s))"
            " FOR UPDATE",
            (held,),
        )
        firsts = []
        for i, brand in enumerate(held):
            firsts.append(
                asyncio.ensure_future(stub.ClaimCode(claim_request(brand, "first"), metadata=server.metadata()))
            )
            while sql(url, WAITING_ON_LOCKS) != [(i + 1,)]:
                await asyncio.sleep(0.01)

        async def claim(brand: str, user: str) -> pb.ClaimCodeResponse | grpc.StatusCode:
            try:
                reply: pb.ClaimCodeResponse = await stub.ClaimCode(
                    claim_request(brand, user), metadata=server.metadata(), timeout=60
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return reply

        calls = [(brand, f"user-{brand}") for brand in brands]
        calls.insert(5, (brands[5], "poison"))
        pending = asyncio.gather(*(claim(brand, user) for brand, user in calls))
        # A round trip on the same channel, then time for the in-process server to take every claim.
        await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id=held[0]), metadata=server.metadata())
        await asyncio.sleep(1.0)
        assert not pending.done() and not any(f.done() for f in firsts)
        await holder.commit()
        results = await pending
        assert all(first.newly_claimed for first in await asyncio.gather(*firsts))

    assert f"claim batch of {len(calls)} failed (InvalidArgument); claiming one by one" in caplog.messages
    outcome = dict(zip(calls, results, strict=True))
    assert outcome.pop((brands[5], "poison")) == grpc.StatusCode.INVALID_ARGUMENT
    assert all(isinstance(r, pb.ClaimCodeResponse) and r.newly_claimed for r in outcome.values()), outcome
    rows = sql(url, "SELECT b.brand_id, c.user_id, c.sequence FROM claims c JOIN brands b USING (brand_key)")
    assert sorted(rows) == sorted([(h, "first", 1) for h in held] + [(brand, user, 1) for brand, user in outcome])
    assert sql(url, "SELECT count(*) FROM codes WHERE claimed") == [(len(outcome) + len(held),)]
