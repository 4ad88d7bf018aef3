"""Floods and overload through a real server.

- Bad keys: an unknown key costs one database round trip, however often and however concurrently
  it is sent (counted by a proxy between the server and PostgreSQL); a host whose authentications
  keep failing is refused RESOURCE_EXHAUSTED/RATE_LIMITED with a RetryInfo, while calls with a
  valid key from the same host (on loopback every client is 127.0.0.1) are never refused, and a
  burst larger than gRPC core's default queue cancels none of them.
- Overload: past DISCOUNT_MAX_INFLIGHT_CALLS calls in flight or DISCOUNT_MAX_OPEN_STREAMS open
  streams, a new call is refused at once with RESOURCE_EXHAUSTED/OVERLOADED and a RetryInfo, and
  counted in the metrics.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
import psycopg
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount_service.auth import FAILED_AUTH_BURST
from tests.browser.support import JWT_SECRET, token
from tests.db_proxy import proxied
from tests.grpc_errors import refusal_with_retry_delay
from tests.support import ServerHandle, claim_request, create_brand, create_key, generate_codes_sql, in_process_server

FLOOD = 2000


def _bad_key() -> str:
    return f"dsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


async def test_an_unknown_key_costs_one_database_round_trip(database_url: str) -> None:
    create_brand(database_url, "acme")
    async with proxied(database_url) as (proxy, proxied_url), in_process_server(proxied_url) as (_, server):
        channel, stub = server.aio_stub()
        async with channel:
            await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
            unknown = (("x-api-key", _bad_key()),)

            async def stats() -> grpc.StatusCode:
                try:
                    await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=unknown)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            # Fewer failures than the throttle's burst: what is measured here is the cache, not the throttle.
            before = proxy.transactions
            concurrent = await asyncio.gather(*(stats() for _ in range(10)))
            after_concurrent = proxy.transactions
            repeated = [await stats() for _ in range(FAILED_AUTH_BURST - 11)]
            after_repeated = proxy.transactions
    assert set(concurrent) == set(repeated) == {grpc.StatusCode.UNAUTHENTICATED}
    # Ten calls at once with one unknown key share one query; the same key again costs none.
    # (An idle server's health check may add one transaction a second; these calls take less.)
    assert after_concurrent - before <= 1, after_concurrent - before
    assert after_repeated - after_concurrent == 0


async def test_a_flood_of_bad_keys_is_rate_limited_but_valid_keys_from_the_same_host_never_are(
    server: ServerHandle,
) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 200)
    service_key = create_key(server.database_url, "service")
    channel, stub = server.aio_stub()
    async with channel:
        # The valid key is known to the server before the flood starts.
        await stub.ClaimCode(claim_request("acme", "warm-up"), metadata=server.metadata(service_key))

        async def bad() -> tuple[grpc.StatusCode, str, float | None]:
            try:
                await stub.GetBrandStats(
                    pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", _bad_key()),)
                )
            except grpc.aio.AioRpcError as exc:
                return refusal_with_retry_delay(exc)
            raise AssertionError("a bad key was accepted")

        async def good(i: int) -> str:
            reply = await stub.ClaimCode(claim_request("acme", f"user-{i}"), metadata=server.metadata(service_key))
            return reply.claim.code

        # More at once than gRPC core queues by default (1,000) before it drops calls at random.
        flood = [bad() for _ in range(FLOOD)]
        legitimate = [good(i) for i in range(60)]
        results = await asyncio.gather(*flood, *legitimate)
        refusals, codes = results[:FLOOD], results[FLOOD:]

        # Later, the host has earned one more try: a bad key is told UNAUTHENTICATED again.
        await asyncio.sleep(max(delay or 0 for _, _, delay in refusals) + 0.05)
        after_wait = await bad()

    assert all(isinstance(code, str) and code for code in codes), "every valid call succeeds"
    kinds: dict[tuple[grpc.StatusCode, str], int] = {}
    for code, reason, _ in refusals:
        kinds[(code, reason)] = kinds.get((code, reason), 0) + 1
    unauthenticated = kinds.pop((grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"), 0)
    limited = kinds.pop((grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"), 0)
    assert kinds == {}, kinds
    # The burst is answered UNAUTHENTICATED (plus what refilled while the flood ran); the rest is refused cheaply.
    assert FAILED_AUTH_BURST <= unauthenticated < FAILED_AUTH_BURST + 20, unauthenticated
    assert limited == FLOOD - unauthenticated
    delays = [delay for _, reason, delay in refusals if reason == "RATE_LIMITED"]
    assert all(delay is not None and 0 < delay <= 1.0 for delay in delays)
    assert after_wait[:2] == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_a_burst_of_calls_with_a_valid_key_not_seen_yet_all_succeed(server: ServerHandle) -> None:
    """They share one lookup, so they cost the database one query and the throttle nothing. The
    lookup is held back (an operator's lock on api_keys) until every call has arrived."""
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 300)
    new_key = create_key(server.database_url, "service")
    channel, stub = server.aio_stub()
    async with channel, await psycopg.AsyncConnection.connect(server.database_url) as holder:
        await holder.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        burst = [
            asyncio.ensure_future(
                stub.ClaimCode(claim_request("acme", f"burst-{i}"), metadata=server.metadata(new_key), timeout=30)
            )
            for i in range(300)
        ]
        await asyncio.sleep(1.0)
        await holder.rollback()
        replies = await asyncio.gather(*burst)
    assert len({reply.claim.code for reply in replies}) == 300


async def test_a_throttled_host_still_signs_in_shoppers_and_new_valid_keys(database_url: str) -> None:
    """A shopper's token is verified without the database, so the throttle never refuses a valid one;
    a valid key the server has not seen yet waits at most for the host's next token."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    async with in_process_server(database_url, jwt_secret=JWT_SECRET) as (_, server):
        new_key = create_key(database_url, "service")
        channel, stub = server.aio_stub()
        async with channel:

            async def bad() -> str:
                try:
                    await stub.GetBrandStats(
                        pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", _bad_key()),)
                    )
                except grpc.aio.AioRpcError as exc:
                    return refusal_with_retry_delay(exc)[1]
                raise AssertionError("a bad key was accepted")

            assert "RATE_LIMITED" in await asyncio.gather(*(bad() for _ in range(50)))
            shopper = (("authorization", f"Bearer {token('shopper', 'shopper@example.com')}"),)
            reply = await stub.ClaimCode(claim_request("acme", "shopper", "shopper@example.com"), metadata=shopper)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ClaimCode(claim_request("acme", "someone"), metadata=(("x-api-key", new_key),))
            code, reason, delay = refusal_with_retry_delay(refused.value)
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert delay is not None
            await asyncio.sleep(delay)
            late = await stub.ClaimCode(claim_request("acme", "someone"), metadata=(("x-api-key", new_key),))
    assert reply.claim.user_id == "shopper"
    assert late.claim.user_id == "someone"


@pytest.mark.timeout(120)
async def test_calls_and_streams_past_the_limits_are_refused_at_once_and_counted(database_url: str) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    limits = {"max_inflight_calls": 2, "max_open_streams": 3, "metrics_listen": "127.0.0.1:0"}
    async with in_process_server(database_url, **limits) as (discount_server, server):
        channel, stub = server.aio_stub()
        async with channel:
            watch = pb.WatchClaimsRequest(brand_id="acme")
            streams = [stub.WatchClaims(watch, metadata=server.metadata()) for _ in range(3)]
            for stream in streams:
                await stream.initial_metadata()  # open: its handler runs

            started = time.monotonic()
            extra = stub.WatchClaims(watch, metadata=server.metadata())
            with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
                async for _ in extra:
                    pass
            stream_seconds = time.monotonic() - started
            for stream in streams:
                stream.cancel()

            # Two large generations hold both places for unary calls; a third call finds none.
            big = [
                stub.GenerateCodes(
                    pb.GenerateCodesRequest(brand_id="acme", count=400_000, code_length=16),
                    metadata=server.metadata(),
                    timeout=60,
                )
                for _ in range(2)
            ]
            generating = [asyncio.ensure_future(call) for call in big]
            while discount_server.metrics.capacity.calls < 2:
                assert not any(g.done() for g in generating), [g.result() for g in generating if g.done()]
                await asyncio.sleep(0.005)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused_call:
                await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
            call_seconds = time.monotonic() - started
            await asyncio.gather(*generating)
            # Room again once they are done.
            stats = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
        samples = list(discount_server.metrics.samples())

    for refused, seconds in ((refused_stream.value, stream_seconds), (refused_call.value, call_seconds)):
        code, reason, delay = refusal_with_retry_delay(refused)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
        assert delay is not None and 0 < delay <= 1.0
        assert seconds < 0.5, f"refused after {seconds:.2f}s"
    assert stats.total == 800_010
    counted = {labels["reason"]: value for name, labels, value in samples if name == "discount_calls_refused_total"}
    assert counted == {"OVERLOADED": 2.0, "RATE_LIMITED": 0.0}


@pytest.mark.timeout(120)
async def test_two_thousand_streams_opened_at_once_all_open(database_url: str) -> None:
    """gRPC core drops calls at random once more than 1,000 wait for a handler (CANCELLED, seen by
    no log or metric); the server gives its limits room instead, so a burst of streams all open."""
    create_brand(database_url, "acme")
    async with in_process_server(database_url, metrics_listen="127.0.0.1:0") as (discount_server, server):
        channel, stub = server.aio_stub()
        async with channel:
            watch = pb.WatchClaimsRequest(brand_id="acme")
            streams = [stub.WatchClaims(watch, metadata=server.metadata(), timeout=60) for _ in range(2000)]
            await asyncio.gather(*(stream.initial_metadata() for stream in streams))
            await asyncio.sleep(1.0)
            ended = [(await stream.code()).name for stream in streams if stream.done()]
            open_streams = discount_server.metrics.capacity.streams
            for stream in streams:
                stream.cancel()
    assert ended == []
    assert open_streams == 2000
