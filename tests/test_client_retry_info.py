"""The Python clients and the server's google.rpc.RetryInfo, through a real server: a refusal that
says when to ask again (UNAVAILABLE/DATABASE_UNAVAILABLE, RESOURCE_EXHAUSTED/RATE_LIMITED and
RESOURCE_EXHAUSTED/OVERLOADED) is sent again after at least that delay, within the call's deadline,
and the exception raised at the end carries the delay in `retry_after`."""

from __future__ import annotations

import asyncio
import secrets
import time

import psycopg
import pytest

from discount_client import (
    AsyncDiscountClient,
    DiscountClient,
    Overloaded,
    RateLimited,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from tests.db_proxy import proxied
from tests.support import create_brand, create_key, generate_codes_sql, in_process_server

# The server's delays: limits.RETRY_AFTER_SECONDS for OVERLOADED, the breaker's probe interval for
# DATABASE_UNAVAILABLE.
OVERLOADED_DELAY = 0.25
DATABASE_DELAY = 0.5


@pytest.mark.timeout(120)
async def test_overloaded_is_sent_again_after_its_delay_until_there_is_room(database_url: str) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    unseen_key = create_key(database_url, "admin")
    async with in_process_server(database_url, max_inflight_calls=1, metrics_listen="127.0.0.1:0") as (
        discount_server,
        server,
    ):
        capacity = discount_server.metrics.capacity
        async with await psycopg.AsyncConnection.connect(database_url) as lock:
            # The one place for a call is held by a call whose key lookup waits for this lock.
            await lock.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            async with AsyncDiscountClient(server.address, unseen_key, deadline=30) as holder_client:
                holder = asyncio.ensure_future(holder_client.get_brand_stats("acme"))
                while capacity.calls < 1:
                    assert not holder.done()
                    await asyncio.sleep(0.005)

                async with AsyncDiscountClient(server.address, server.admin_key, retry=None) as no_retry:
                    with pytest.raises(Overloaded) as refused:
                        await no_retry.get_brand_stats("acme")
                assert (refused.value.code, refused.value.reason) == ("RESOURCE_EXHAUSTED", "OVERLOADED")
                assert refused.value.retry_after == pytest.approx(OVERLOADED_DELAY)

                # A deadline shorter than the delay: raised at once, not after a wait that cannot help.
                async with AsyncDiscountClient(server.address, server.admin_key, deadline=0.2) as hurried:
                    started = time.monotonic()
                    with pytest.raises(Overloaded) as refused:
                        await hurried.get_brand_stats("acme")
                    assert time.monotonic() - started < 0.2
                assert refused.value.retry_after == pytest.approx(OVERLOADED_DELAY)

                async with AsyncDiscountClient(server.address, server.admin_key, deadline=30) as patient:
                    before = capacity.refused["OVERLOADED"]
                    call = asyncio.ensure_future(patient.get_brand_stats("acme"))
                    await asyncio.sleep(0.6)
                    assert not call.done()
                    attempts_while_full = capacity.refused["OVERLOADED"] - before
                    await lock.commit()
                    stats = await asyncio.wait_for(call, 20)
                    assert (await holder).total == 10
    assert stats.brand_id == "acme" and stats.total == 10
    # Sent again while the server was full, but never sooner than the delay after a refusal.
    assert 2 <= attempts_while_full <= 1 + int(0.6 / OVERLOADED_DELAY)


def unknown_key() -> str:
    """A well-formed key the server has never seen: checking it takes a database lookup, which the
    failed-authentication throttle rations per host."""
    return f"dsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


@pytest.mark.timeout(120)
async def test_rate_limited_is_raised_with_its_delay_and_sent_again_after_it(database_url: str) -> None:
    create_brand(database_url, "acme")
    async with in_process_server(database_url, metrics_listen="127.0.0.1:0") as (discount_server, server):
        refused: RateLimited | None = None
        for _ in range(100):
            async with AsyncDiscountClient(server.address, unknown_key(), retry=None) as client:
                try:
                    await client.get_brand_stats("acme")
                except Unauthenticated:
                    continue
                except RateLimited as exc:
                    refused = exc
                    break
        assert refused is not None, "100 calls with unknown keys were never RATE_LIMITED"
        assert (refused.code, refused.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
        assert refused.retry_after is not None and 0 < refused.retry_after <= 1.0

        def unknown_keys_with_retries(calls: int) -> list[str]:
            """Each call is refused while the host's bucket is empty, waits the delay, and is then
            checked (and found wrong) instead of ending in RATE_LIMITED."""
            outcomes = []
            for _ in range(calls):
                with DiscountClient(server.address, unknown_key(), deadline=10) as client:
                    try:
                        client.get_brand_stats("acme")
                    except (Unauthenticated, RateLimited) as exc:
                        outcomes.append(exc.reason)
            return outcomes

        capacity = discount_server.metrics.capacity
        before = capacity.refused["RATE_LIMITED"]
        outcomes = await asyncio.to_thread(unknown_keys_with_retries, 10)
        refused_meanwhile = capacity.refused["RATE_LIMITED"] - before
    assert outcomes == ["UNAUTHENTICATED"] * 10
    # The first call at least found the bucket the flood emptied, and was sent again after the delay.
    assert refused_meanwhile >= 1


@pytest.mark.timeout(120)
async def test_database_unavailable_is_sent_again_after_its_delay_until_the_database_is_back(
    database_url: str,
) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    # gRPC's own retries of UNAVAILABLE are made short, so only the client's waits of the RetryInfo
    # delay can carry a call across the outage.
    brief_grpc_retries = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.01)
    async with (
        proxied(database_url) as (proxy, proxied_url),
        in_process_server(proxied_url, db_timeout_seconds=1.0) as (_, server),
    ):
        async with AsyncDiscountClient(server.address, server.admin_key, retry=None) as no_retry:
            await no_retry.get_brand_stats("acme")
            await proxy.cut()
            with pytest.raises(Unavailable) as refused:
                await no_retry.claim_code("acme", "alice", "alice@example.com")
        assert (refused.value.code, refused.value.reason) == ("UNAVAILABLE", "DATABASE_UNAVAILABLE")
        assert refused.value.retry_after == pytest.approx(DATABASE_DELAY)

        async with AsyncDiscountClient(server.address, server.admin_key, retry=brief_grpc_retries) as client:
            started = time.monotonic()
            call = asyncio.ensure_future(client.claim_code("acme", "bob", "bob@example.com"))
            await asyncio.sleep(0.8)
            assert not call.done()
            await proxy.restore()
            result = await asyncio.wait_for(call, 20)
            seconds = time.monotonic() - started
    assert result.newly_claimed and result.claim.user_id == "bob"
    assert seconds >= 0.8
