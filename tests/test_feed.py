"""WatchClaims: replay, live delivery, exactly-once resume, and replicas sharing one feed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import psycopg
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql, in_process_server, sql

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)


async def _collect(stream: grpc.aio.UnaryStreamCall, until: int, timeout: float = 60) -> list[pb.Claim]:
    claims: list[pb.Claim] = []

    async def read() -> None:
        async for reply in stream:
            claims.append(reply.claim)
            if len(claims) >= until:
                return

    await asyncio.wait_for(read(), timeout)
    return claims


async def _until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Polls `condition` until it holds; fails naming `what` if it does not within `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"no {what} within {timeout:g}s"
        await asyncio.sleep(0.05)


# A claim in the database, still running (queued behind another's feed head), and a poll of the
# feed heads that started after it: by then a watcher that could move past a missing sequence would.
_CLAIM_WAITING_AND_POLLED_SINCE = """
SELECT EXISTS (
    SELECT FROM pg_stat_activity AS claim, pg_stat_activity AS poll
    WHERE claim.datname = current_database() AND poll.datname = current_database()
      AND claim.pid <> pg_backend_pid() AND poll.pid <> pg_backend_pid()
      AND claim.state = 'active' AND claim.query LIKE '%discount_claim%'
      AND poll.query LIKE '%brand_feed_heads%' AND poll.query_start > claim.query_start
)
"""


async def test_watcher_sees_1500_concurrent_claims_exactly_once_then_resumes_from_the_middle(
    server: ServerHandle,
) -> None:
    create_brand(server.database_url, "flash")
    generate_codes_sql(server.database_url, "flash", 1600)
    channel, stub = server.aio_stub()
    async with channel:
        live = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="flash"), metadata=server.metadata())
        watching = asyncio.create_task(_collect(live, 1500))
        await live.initial_metadata()  # the stream is open (the server sends headers then) before the sale starts
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(1500):
            queue.put_nowait(i)
        acknowledged: dict[str, str] = {}

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                reply = await stub.ClaimCode(claim_request("flash", f"shopper-{i}"), metadata=server.metadata())
                acknowledged[reply.claim.user_id] = reply.claim.code

        await asyncio.gather(*(worker() for _ in range(32)))
        seen = await watching
        live.cancel()

        assert [c.sequence for c in seen] == list(range(1, 1501))
        assert {c.user_id: c.code for c in seen} == acknowledged
        assert all(c.brand_id == "flash" and c.email.endswith("@example.com") for c in seen)

        # A watcher that saw up to 750 reconnects and gets exactly the rest, then stays open.
        resumed = stub.WatchClaims(
            pb.WatchClaimsRequest(brand_id="flash", after_sequence=750), metadata=server.metadata()
        )
        rest = await _collect(resumed, 750)
        assert [c.sequence for c in rest] == list(range(751, 1501))
        assert [(c.user_id, c.code) for c in rest] == [(c.user_id, c.code) for c in seen[750:]]
        # ...and the same stream carries the next claim live.
        more = asyncio.create_task(_collect(resumed, 1, timeout=10))
        extra = await stub.ClaimCode(claim_request("flash", "late-shopper"), metadata=server.metadata())
        (live_claim,) = await more
        assert (live_claim.sequence, live_claim.code) == (1501, extra.claim.code)
        resumed.cancel()


async def test_replay_from_zero_returns_history_oldest_first(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    channel, stub = server.aio_stub()
    async with channel:
        codes = []
        for i in range(5):
            reply = await stub.ClaimCode(claim_request("acme", f"u{i}"), metadata=server.metadata())
            codes.append(reply.claim.code)
        stream = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme", after_sequence=0), metadata=server.metadata())
        history = await _collect(stream, 5)
        stream.cancel()
    assert [c.code for c in history] == codes
    assert [c.user_id for c in history] == [f"u{i}" for i in range(5)]
    assert [c.sequence for c in history] == [1, 2, 3, 4, 5]


async def test_out_of_order_commits_never_skip_an_event(server: ServerHandle) -> None:
    """A claim that started first but commits last must still be seen (docs/design.md#trap-outbox-order).

    A transaction holds the brand's feed head (as a slow claim would, between taking its sequence
    and committing); a second claim queues behind it. The watcher must see both, in order, with
    no gap, and never skip past the first."""
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    channel, stub = server.aio_stub()
    async with channel:
        stream = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme"), metadata=server.metadata())
        watching = asyncio.create_task(_collect(stream, 2, timeout=30))
        async with await psycopg.AsyncConnection.connect(server.database_url) as slow:
            # The slow claim: takes sequence 1 and a code, then stalls before commit.
            await slow.execute(
                "SELECT * FROM discount_claim_many(ARRAY['acme'], ARRAY['slow-user'], ARRAY['slow@example.com'],"
                " ARRAY[0::bigint])"
            )
            fast = asyncio.ensure_future(stub.ClaimCode(claim_request("acme", "fast-user"), metadata=server.metadata()))

            async def claim_waiting_and_polled_since() -> bool:
                rows = await asyncio.to_thread(sql, server.database_url, _CLAIM_WAITING_AND_POLLED_SINCE)
                return bool(rows[0][0])

            await _until(
                claim_waiting_and_polled_since, "second claim waiting in the database and a feed poll after it"
            )
            assert not fast.done(), "the second claim must wait for the first's sequence to commit"
            assert not watching.done()
            await slow.commit()
        fast_reply = await fast
        seen = await watching
        stream.cancel()
    assert [(c.sequence, c.user_id) for c in seen] == [(1, "slow-user"), (2, "fast-user")]
    assert fast_reply.claim.sequence == 2


@contextlib.asynccontextmanager
async def two_replicas(
    server: ServerHandle,
) -> AsyncIterator[tuple[pb_grpc.DiscountServiceStub, pb_grpc.DiscountServiceStub]]:
    """Stubs to `server` (replica A) and to a second server over the same database (replica B)."""
    async with in_process_server(server.database_url) as (_, replica_b):
        chan_a, stub_a = server.aio_stub()
        chan_b, stub_b = replica_b.aio_stub()
        async with chan_a, chan_b:
            yield stub_a, stub_b


async def test_two_replicas_share_one_truth(server: ServerHandle) -> None:
    """A watcher on replica A sees claims made through replica B, and both hand out from one pool."""
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 100)
    async with two_replicas(server) as (stub_a, stub_b):
        stream = stub_a.WatchClaims(pb.WatchClaimsRequest(brand_id="acme"), metadata=server.metadata())
        watching = asyncio.create_task(_collect(stream, 40, timeout=30))
        await stream.initial_metadata()
        replies = await asyncio.gather(
            *(
                (stub_a if i % 2 else stub_b).ClaimCode(claim_request("acme", f"u{i}"), metadata=server.metadata())
                for i in range(40)
            )
        )
        # The same user through the other replica gets the same code.
        again = await stub_a.ClaimCode(claim_request("acme", "u0"), metadata=server.metadata())
        seen = await watching
        stream.cancel()
        stats_a = await stub_a.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
        stats_b = await stub_b.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
    assert again.claim.code == replies[0].claim.code and not again.newly_claimed
    assert [c.sequence for c in seen] == list(range(1, 41))
    assert {c.user_id: c.code for c in seen} == {r.claim.user_id: r.claim.code for r in replies}
    assert len({r.claim.code for r in replies}) == 40
    assert stats_a == stats_b
    assert (stats_a.claimed, stats_a.available) == (40, 60)


async def test_claims_through_two_replicas_at_once_reach_every_watcher_once_in_order(server: ServerHandle) -> None:
    """Replica A hands its own claims to its watchers in memory and reads replica B's from the
    database; with both streaming at once the two paths interleave, and a watcher (one claim per
    message, or runs) must still see every sequence once, in order, with what was acknowledged."""
    create_brand(server.database_url, "sale")
    generate_codes_sql(server.database_url, "sale", 700)
    async with two_replicas(server) as (stub_a, stub_b):
        single = stub_a.WatchClaims(pb.WatchClaimsRequest(brand_id="sale"), metadata=server.metadata())
        runs = stub_a.WatchClaims(
            pb.WatchClaimsRequest(brand_id="sale", max_claims_per_response=50), metadata=server.metadata()
        )
        watching_single = asyncio.create_task(_collect(single, 600))
        run_claims: list[pb.Claim] = []

        async def read_runs() -> None:
            async for response in runs:
                run_claims.extend(response.claims)
                if len(run_claims) >= 600:
                    return

        watching_runs = asyncio.create_task(asyncio.wait_for(read_runs(), 60))
        await asyncio.gather(single.initial_metadata(), runs.initial_metadata())
        users = iter(range(600))
        acknowledged: dict[str, str] = {}

        async def shopper(stub: Any) -> None:
            for i in users:
                reply = await stub.ClaimCode(claim_request("sale", f"s{i}"), metadata=server.metadata())
                acknowledged[reply.claim.user_id] = reply.claim.code

        await asyncio.gather(*(shopper(stub_a if k % 2 else stub_b) for k in range(24)))
        seen_single = await watching_single
        await watching_runs
        single.cancel()
        runs.cancel()
    assert len(acknowledged) == 600
    for seen in (seen_single, run_claims):
        assert [c.sequence for c in seen] == list(range(1, 601))
        assert {c.user_id: c.code for c in seen} == acknowledged


async def test_one_listen_connection_serves_many_watchers(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    create_brand(server.database_url, "globex")
    channel, stub = server.aio_stub()
    async with channel:
        streams = [
            stub.WatchClaims(pb.WatchClaimsRequest(brand_id=b), metadata=server.metadata())
            for b in ("acme", "globex")
            for _ in range(25)
        ]
        await asyncio.gather(*(s.initial_metadata() for s in streams))  # all 50 are open
        count_listeners = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'discount-service-listen'"
            " AND datname = current_database()"
        )

        async def listening() -> bool:
            return (await asyncio.to_thread(sql, server.database_url, count_listeners))[0][0] > 0

        await _until(listening, "LISTEN connection")
        assert sql(server.database_url, count_listeners) == [(1,)]
        for s in streams:
            s.cancel()


async def test_watch_errors(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    async with channel:
        for request, expected in [
            (pb.WatchClaimsRequest(brand_id="nope"), grpc.StatusCode.NOT_FOUND),
            (pb.WatchClaimsRequest(brand_id=""), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.WatchClaimsRequest(brand_id="x" * 65), grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.WatchClaims(request, metadata=server.metadata()):
                    pass
            assert err.value.code() == expected


async def test_batched_watch_delivers_every_claim_once_in_runs(server: ServerHandle) -> None:
    """max_claims_per_response > 1: runs of claims in `claims`; the default stays one per `claim`."""
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 400)
    channel, stub = server.aio_stub()
    async with channel:
        for i in range(150):  # history, so the first responses carry full runs
            await stub.ClaimCode(claim_request("acme", f"early-{i}"), metadata=server.metadata())
        batched = stub.WatchClaims(
            pb.WatchClaimsRequest(brand_id="acme", max_claims_per_response=64), metadata=server.metadata()
        )
        responses: list[pb.WatchClaimsResponse] = []

        async def read(until: int) -> None:
            async for response in batched:
                responses.append(response)
                if sum(len(r.claims) for r in responses) >= until:
                    return

        reading = asyncio.create_task(read(300))
        await asyncio.gather(
            *(stub.ClaimCode(claim_request("acme", f"late-{i}"), metadata=server.metadata()) for i in range(150))
        )
        await asyncio.wait_for(reading, 30)
        batched.cancel()
        single = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme"), metadata=server.metadata())
        first = await single.read()
        single.cancel()
    flat = [c for r in responses for c in r.claims]
    assert [c.sequence for c in flat] == list(range(1, 301))
    assert all(not r.HasField("claim") and 1 <= len(r.claims) <= 64 for r in responses)
    assert len(responses) < 300  # the history really came in runs
    recorded = dict(sql(server.database_url, "SELECT user_id, code FROM claims"))
    assert {c.user_id: c.code for c in flat} == recorded
    assert first.claim.sequence == 1 and len(first.claims) == 0
