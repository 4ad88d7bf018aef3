"""The feed of a process watching many brands: one watcher per brand for 1,000 brands, each gets
exactly its brand's claims, and an idle server's database work does not grow with the number of
watched brands (feed.py polls every watched brand's head in one statement).

Transactions are counted exactly, by a TCP proxy between the server and PostgreSQL that reads the
backend's replies: every ReadyForQuery that says "idle" ends a transaction (pg_stat_database
would count them too, but it receives an idle backend's counts up to seconds late on PostgreSQL 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from typing import Any

import grpc

from discount.v1 import discount_service_pb2 as pb
from tests.db_proxy import DatabaseProxy, proxied
from tests.support import in_process_server, sql

BRANDS = 1000
CLAIMS = 3000
IDLE_WINDOW_SECONDS = 10.0


async def idle_rate(proxy: DatabaseProxy) -> float:
    """Transactions per second the server ends while nothing happens, over IDLE_WINDOW_SECONDS."""
    before, started = proxy.transactions, time.monotonic()
    await asyncio.sleep(IDLE_WINDOW_SECONDS)
    return (proxy.transactions - before) / (time.monotonic() - started)


def create_brands(url: str, count: int, codes: int) -> list[str]:
    """`count` brands with `codes` free codes each, in one statement."""
    sql(
        url,
        """
        WITH b AS (
            INSERT INTO brands (brand_id, name)
            SELECT 'many-' || lpad(g::text, 4, '0'), 'Many' FROM generate_series(1, %(count)s) g
            RETURNING brand_key
        ), h AS (
            INSERT INTO brand_feed_heads (brand_key, total_codes) SELECT brand_key, %(codes)s FROM b
        ), batch AS (
            INSERT INTO code_batches (batch_id, brand_key, generated, code_length, prefix)
            SELECT gen_random_uuid(), brand_key, %(codes)s, 12, 'M-' FROM b
            RETURNING batch_key, brand_key
        )
        INSERT INTO codes (brand_key, batch_key, code)
        SELECT batch.brand_key, batch.batch_key, 'M-' || batch.brand_key || '-' || g
        FROM batch, generate_series(1, %(codes)s) g
        """,
        {"count": count, "codes": codes},
    )
    return [f"many-{i:04d}" for i in range(1, count + 1)]


async def test_a_thousand_watched_brands_each_get_their_claims_and_idle_polling_does_not_grow(
    database_url: str,
) -> None:
    brands = create_brands(database_url, BRANDS, 20)
    rng = random.Random(7)
    async with proxied(database_url) as (proxy, proxied_url), in_process_server(proxied_url) as (_, server):
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(20)]
        received: dict[str, list[pb.Claim]] = defaultdict(list)
        streams: list[grpc.aio.UnaryStreamCall[Any, Any]] = []

        async def watch(k: int, brand: str, opened: asyncio.Future[None]) -> None:
            call = channels[k % len(channels)].unary_stream(
                "/discount.v1.DiscountService/WatchClaims",
                request_serializer=pb.WatchClaimsRequest.SerializeToString,
                response_deserializer=pb.WatchClaimsResponse.FromString,
            )(pb.WatchClaimsRequest(brand_id=brand), metadata=server.metadata())
            streams.append(call)
            await call.initial_metadata()
            opened.set_result(None)
            with contextlib.suppress(asyncio.CancelledError):
                async for response in call:
                    received[brand].append(response.claim)

        tasks: list[asyncio.Task[None]] = []

        async def open_watchers(which: list[str]) -> None:
            loop = asyncio.get_running_loop()
            opened = [loop.create_future() for _ in which]
            tasks.extend(
                asyncio.ensure_future(watch(len(tasks) + k, brand, done))
                for k, (brand, done) in enumerate(zip(which, opened, strict=True))
            )
            await asyncio.wait_for(asyncio.gather(*opened), 60)
            await asyncio.sleep(2.0)  # the feed reads where each new brand's feed stands

        try:
            await asyncio.sleep(2.0)
            rates = {0: await idle_rate(proxy)}
            await open_watchers(brands[:10])
            rates[10] = await idle_rate(proxy)
            await open_watchers(brands[10:])
            rates[BRANDS] = await idle_rate(proxy)

            print(f"idle transactions/s by watched brands: {rates}")
            # A poll of every watched brand's head, once a second, and a keepalive of the LISTEN
            # connection every 5 s while nothing is heard: not one query per watched brand.
            assert rates[BRANDS] <= 2.0, rates
            assert rates[BRANDS] <= rates[10] + 0.5, rates

            acked: dict[str, dict[str, str]] = defaultdict(dict)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(CLAIMS):
                queue.put_nowait(i)
            stub = channels[0].unary_unary(
                "/discount.v1.DiscountService/ClaimCode",
                request_serializer=pb.ClaimCodeRequest.SerializeToString,
                response_deserializer=pb.ClaimCodeResponse.FromString,
            )

            async def shopper() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    brand = rng.choice(brands)
                    user = f"shopper-{i}"
                    request = pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=f"{user}@example.com")
                    reply = await stub(request, metadata=server.metadata(), timeout=60)
                    acked[brand][user] = reply.claim.code

            await asyncio.gather(*(shopper() for _ in range(32)))
            deadline = time.monotonic() + 60
            while any(len(received[b]) < len(acked[b]) for b in brands) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # anything beyond its brand's claims would show now
        finally:
            for stream in streams:
                stream.cancel()
            for channel in channels:
                await channel.close(None)
            await asyncio.gather(*tasks, return_exceptions=True)

    assert sum(len(users) for users in acked.values()) == CLAIMS
    for brand in brands:
        claims = received[brand]
        assert [c.sequence for c in claims] == list(range(1, len(acked[brand]) + 1)), brand  # gapless, in order
        assert all(c.brand_id == brand for c in claims), brand  # only its own brand's claims
        assert {c.user_id: c.code for c in claims} == acked[brand], brand


async def test_claims_nobody_notified_of_reach_their_watchers_through_the_poll(database_url: str) -> None:
    """Claims committed without a NOTIFY (here straight in the database, as a lost notification
    would leave them) reach every watcher of their brand by the feed's one poll of all heads."""
    brands = create_brands(database_url, 50, 5)
    async with in_process_server(database_url, feed_poll_seconds=0.5) as (_, server):
        channel, stub = server.aio_stub()
        received: dict[str, list[pb.Claim]] = defaultdict(list)

        async def watch(brand: str) -> None:
            async for response in stub.WatchClaims(pb.WatchClaimsRequest(brand_id=brand), metadata=server.metadata()):
                received[brand].append(response.claim)

        async with channel:
            tasks = [asyncio.ensure_future(watch(brand)) for brand in brands]
            await asyncio.sleep(2.0)
            quiet = brands[::5]
            for brand in quiet:
                sql(
                    database_url,
                    "SELECT * FROM discount_claim_many(ARRAY[%s], ARRAY['quiet-user'], ARRAY['quiet@example.com'],"
                    " ARRAY[0::bigint])",
                    (brand,),
                )
            started = time.monotonic()
            while any(not received[b] for b in quiet) and time.monotonic() - started < 10:
                await asyncio.sleep(0.05)
            seen_after = time.monotonic() - started
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert {b: [(c.sequence, c.user_id) for c in received[b]] for b in quiet} == {b: [(1, "quiet-user")] for b in quiet}
    assert not any(received[b] for b in brands if b not in quiet)
    assert seen_after < 2.0, seen_after  # within a poll interval or two, not lost
