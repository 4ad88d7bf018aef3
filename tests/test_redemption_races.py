"""RedeemCode races through a real server, and through two replicas over one database: a code stands
redeemed on exactly one order, and one order's concurrent retries redeem it once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.citus import CitusDatabases
from discount_service.store import QUERIES
from tests.grpc_errors import refusal
from tests.support import (
    ServerHandle,
    claim_request,
    create_brand,
    create_key,
    generate_codes_sql,
    in_process_server,
    sql,
)
from tests.test_citus import brands_on_every_node, worker_port_of

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


@pytest.mark.parametrize("statement", ["redeem", "cancel_redemption"])
def test_on_citus_a_redemption_is_one_call_pushed_down_to_the_brands_worker(
    citus_databases: CitusDatabases, statement: str
) -> None:
    """Both statements are routed whole to the worker holding the brand (one task, the function call
    itself), and Citus pushes the call down when it runs as the store runs it: one statement, outside
    any transaction block."""
    url = citus_databases.create()
    notices: list[str] = []
    try:
        for brand in brands_on_every_node(url, 1, 10):
            key = int(sql(url, "SELECT brand_key FROM brands WHERE brand_id = %s", (brand,))[0][0])
            code = sql(url, "SELECT code FROM codes WHERE brand_key = %s LIMIT 1", (key,))[0][0]
            params = {"brand_key": key, "code": code, "user_id": "u", "order_id": "o-1"}
            plan = [row[0] for row in sql(url, "EXPLAIN (VERBOSE) " + QUERIES[statement], params)]
            assert [line.strip() for line in plan if "Task Count" in line] == ["Task Count: 1"], plan
            assert any(f"Node: host=127.0.0.1 port={worker_port_of(url, brand)} " in line for line in plan), plan
            notices.clear()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                conn.execute("SET client_min_messages TO debug1")
                rows = conn.execute(QUERIES[statement], params).fetchall()  # type: ignore[arg-type]
            assert rows[0][0] == ("not_held" if statement == "redeem" else "redemption_not_found")
            assert "pushing down the function call" in notices
    finally:
        citus_databases.drop(url)
