"""RedeemCode races through a real server, and through two replicas over one database: a code stands
redeemed on exactly one order, and one order's concurrent retries redeem it once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import (
    ServerHandle,
    claim_request,
    create_brand,
    create_key,
    generate_codes_sql,
    in_process_server,
    sql,
)
from tests.test_redemption import refusal

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)

RACERS = 48


@contextlib.asynccontextmanager
async def stubs(server: ServerHandle, replicas: int) -> AsyncIterator[list[pb_grpc.DiscountServiceStub]]:
    """One stub per server: the test's server, and with 2 replicas a second server on its database."""
    async with contextlib.AsyncExitStack() as stack:
        handles = [server]
        if replicas == 2:
            _, replica = await stack.enter_async_context(in_process_server(server.database_url))
            handles.append(replica)
        found = []
        for handle in handles:
            channel, stub = handle.aio_stub()
            await stack.enter_async_context(channel)
            found.append(stub)
        yield found


async def claimed_code(server: ServerHandle, servers: list[pb_grpc.DiscountServiceStub], key: str) -> str:
    """alice's code, claimed through every server (the same code each time): each has then seen the key
    in use before the race, as a shop's servers have."""
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    codes = set()
    for stub in servers:
        reply = await stub.ClaimCode(claim_request("acme", "alice"), metadata=server.metadata(key))
        codes.add(str(reply.claim.code))
    (code,) = codes
    return code


async def redeemed(server: ServerHandle) -> int:
    channel, stub = server.aio_stub()
    async with channel:
        stats = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
    return int(stats.redeemed)


async def redeem_all(
    server: ServerHandle, servers: list[pb_grpc.DiscountServiceStub], key: str, code: str, orders: list[str]
) -> list[pb.RedeemCodeResponse | str]:
    """Every order's RedeemCode at once, spread over the servers; a refusal as its reason."""
    start = asyncio.Event()

    async def redeem(i: int, order: str) -> pb.RedeemCodeResponse | str:
        request = pb.RedeemCodeRequest(brand_id="acme", code=code, user_id="alice", order_id=order)
        await start.wait()
        try:
            return await servers[i % len(servers)].RedeemCode(request, metadata=server.metadata(key), timeout=60)
        except grpc.aio.AioRpcError as exc:
            return refusal(exc).reason

    tasks = [asyncio.create_task(redeem(i, order)) for i, order in enumerate(orders)]
    await asyncio.sleep(0.05)
    start.set()
    return await asyncio.gather(*tasks)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_48_orders_racing_for_one_code_give_one_redemption(server: ServerHandle, replicas: int) -> None:
    key = create_key(server.database_url, "service")
    async with stubs(server, replicas) as servers:
        code = await claimed_code(server, servers, key)
        results = await redeem_all(server, servers, key, code, [f"order-{i}" for i in range(RACERS)])
    won = [r for r in results if isinstance(r, pb.RedeemCodeResponse)]
    lost = [r for r in results if not isinstance(r, pb.RedeemCodeResponse)]
    assert len(won) == 1 and won[0].newly_redeemed
    assert lost == ["CODE_ALREADY_REDEEMED"] * (RACERS - 1)
    rows = sql(server.database_url, "SELECT order_id, cancelled_at FROM redemptions WHERE code = %s", (code,))
    assert rows == [(won[0].redemption.order_id, None)]
    assert await redeemed(server) == 1


@pytest.mark.parametrize("replicas", [1, 2])
async def test_48_retries_of_one_order_redeem_once(server: ServerHandle, replicas: int) -> None:
    key = create_key(server.database_url, "service")
    async with stubs(server, replicas) as servers:
        code = await claimed_code(server, servers, key)
        results = await redeem_all(server, servers, key, code, ["order-1"] * RACERS)
    assert all(isinstance(r, pb.RedeemCodeResponse) for r in results), results
    replies = [r for r in results if isinstance(r, pb.RedeemCodeResponse)]
    assert sum(r.newly_redeemed for r in replies) == 1
    assert len({r.redemption.SerializeToString() for r in replies}) == 1
    assert sql(server.database_url, "SELECT count(*) FROM redemptions") == [(1,)]
    assert await redeemed(server) == 1


@pytest.mark.parametrize("replicas", [1, 2])
async def test_cancel_racing_new_orders_leaves_at_most_one_standing(server: ServerHandle, replicas: int) -> None:
    """A cancellation racing 24 new orders: whichever order wins, never two standing redemptions."""
    key = create_key(server.database_url, "service")
    async with stubs(server, replicas) as servers:
        code = await claimed_code(server, servers, key)
        first = await servers[0].RedeemCode(
            pb.RedeemCodeRequest(brand_id="acme", code=code, user_id="alice", order_id="order-0"),
            metadata=server.metadata(key),
        )
        assert first.newly_redeemed
        cancel = servers[-1].CancelRedemption(
            pb.CancelRedemptionRequest(brand_id="acme", code=code, order_id="order-0"), metadata=server.metadata(key)
        )
        results, cancelled = await asyncio.gather(
            redeem_all(server, servers, key, code, [f"order-{i}" for i in range(1, 25)]), cancel
        )
    assert cancelled.redemption.HasField("cancelled_at")
    won = [r for r in results if isinstance(r, pb.RedeemCodeResponse)]
    assert len(won) <= 1
    assert all(r == "CODE_ALREADY_REDEEMED" for r in results if not isinstance(r, pb.RedeemCodeResponse))
    standing = sql(server.database_url, "SELECT order_id FROM redemptions WHERE cancelled_at IS NULL")
    assert standing == [(r.redemption.order_id,) for r in won]
    assert await redeemed(server) == len(won)
