"""Webhooks across replicas: one delivery in flight per webhook whatever the number of servers, and
a server killed with SIGKILL mid-delivery loses nothing: another takes the webhook over within 15 s
and sends the interrupted delivery again with the same webhook-id and claims."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from discount.v1 import webhook_service_pb2 as wpb
from tests.support import (
    create_brand,
    create_key,
    generate_codes_sql,
    in_process_server,
    start_server_process,
    stop_process,
)
from tests.webhook_support import FAST, FAST_ENV, Api, Received, Receiver, wait_until

pytestmark = pytest.mark.timeout(120)


def check_deliveries(got: list[Received], last: int) -> list[list[Received]]:
    """What a receiver that drops repeats by webhook-id sees: every claim 1..last once, in order.
    Returns the requests grouped by delivery, in the order the deliveries first arrived."""
    deliveries: dict[str, list[Received]] = {}
    for request in got:
        deliveries.setdefault(request.headers["webhook-id"], []).append(request)
    for attempts in deliveries.values():
        assert {a.body for a in attempts} == {attempts[0].body}, "a delivery's claims never change"
    sequences = [s for attempts in deliveries.values() for s in attempts[0].sequences]
    assert sequences == list(range(1, last + 1)), "every claim once, in order, once repeats are dropped by id"
    return list(deliveries.values())


async def claim_steadily(api: Api, brand_id: str, prefix: str, stop: asyncio.Event, made: list[int]) -> None:
    n = 0
    while not stop.is_set():
        with contextlib.suppress(Exception):
            made.append(await api.claim(brand_id, f"{prefix}-{n}"))
            n += 1
        await asyncio.sleep(0.02)


async def test_two_replicas_never_deliver_one_webhook_concurrently(database_url: str, receiver: Receiver) -> None:
    create_brand(database_url, "wh-two")
    generate_codes_sql(database_url, "wh-two", 500)
    brand_key, service_key = create_key(database_url, "brand", "wh-two"), create_key(database_url, "service")
    receiver.slow["/two"] = 0.05
    async with (
        in_process_server(database_url, **FAST) as (first, a),
        in_process_server(database_url, **FAST) as (second, b),
    ):
        owner, shop_a, shop_b = Api(a.address, brand_key), Api(a.address, service_key), Api(b.address, service_key)
        try:
            created = await owner.create("wh-two", receiver.url("/two"), max_claims_per_delivery=2)
            webhook_id = created.webhook.webhook_id
            for i in range(20):
                await asyncio.gather(shop_a.claim("wh-two", f"a{i}"), shop_b.claim("wh-two", f"b{i}"))
            await receiver.wait_for("/two", 40)
            assert receiver.most_in_flight["/two"] == 1, "two deliveries of one webhook were in flight at once"
            check_deliveries(receiver.at("/two"), 40)
            for request in receiver.at("/two"):
                request.verify(created.secret)
            holders = [s for s in (first, second) if webhook_id in s.webhooks.held]
            assert len(holders) == 1, "exactly one replica delivers the webhook"

            # The holder stops; the other replica takes the webhook over.
            survivor, survivor_api = (second, shop_b) if holders[0] is first else (first, shop_a)
            await holders[0].stop(grace=1.0)
            stopped = time.monotonic()
            await survivor_api.claim("wh-two", "after-stop")
            await receiver.wait_for("/two", 41, timeout=15)
            assert time.monotonic() - stopped < 15
            assert webhook_id in survivor.webhooks.held
            check_deliveries(receiver.at("/two"), 41)
        finally:
            for api in (owner, shop_a, shop_b):
                await api.close()


async def test_kill_9_mid_delivery_loses_nothing(database_url: str, receiver: Receiver, tmp_path: Path) -> None:
    create_brand(database_url, "wh-k9")
    generate_codes_sql(database_url, "wh-k9", 5000)
    brand_key, service_key = create_key(database_url, "brand", "wh-k9"), create_key(database_url, "service")
    log = tmp_path / "servers.log"
    receiver.slow["/k9"] = 0.3  # every delivery takes a while: the kill lands in the middle of one
    a = await asyncio.to_thread(start_server_process, database_url, log_path=log, extra_env=FAST_ENV)
    owner = Api(a.address, brand_key)
    created = await owner.create("wh-k9", receiver.url("/k9"), after_sequence=0, max_claims_per_delivery=5)
    webhook_id = created.webhook.webhook_id
    await owner.close()
    shop_a = Api(a.address, service_key)
    await shop_a.claim("wh-k9", "first")
    await receiver.wait_for("/k9", 1)  # server A, the only one running, holds the webhook
    await shop_a.close()
    b = await asyncio.to_thread(start_server_process, database_url, log_path=log, extra_env=FAST_ENV)
    shop_b, watcher = Api(b.address, service_key), Api(b.address, brand_key)
    stop, made = asyncio.Event(), []
    load = asyncio.create_task(claim_steadily(shop_b, "wh-k9", "load", stop, made))
    try:
        await wait_until(
            lambda: _answered(len(made) >= 20 and receiver.in_flight["/k9"] > 0), what="a delivery in flight"
        )
        in_flight = receiver.at("/k9")[-1]
        assert await asyncio.to_thread(stop_process, a, signal.SIGKILL) == -signal.SIGKILL
        killed = time.monotonic()
        # B takes over: its first request repeats the delivery A was making, same id and claims.
        retried = await wait_until(
            lambda: _answered([r for r in receiver.at("/k9") if r.at > in_flight.at]), timeout=20, what="a takeover"
        )
        took_over = time.monotonic() - killed
        assert took_over < 15, f"took {took_over:.1f}s to take the webhook over"
        assert retried[0].headers["webhook-id"] == in_flight.headers["webhook-id"]
        assert retried[0].body == in_flight.body
        await asyncio.sleep(1.0)
        stop.set()
        await load
        last = max(made)
        await receiver.wait_for("/k9", last, timeout=30)
        deliveries = check_deliveries(receiver.at("/k9"), last)
        for request in receiver.at("/k9"):
            request.verify(created.secret)
        hook = await wait_until(lambda: _at(watcher, webhook_id, last), what="delivered_sequence up to date")
        assert hook.state == wpb.Webhook.STATE_ACTIVE
        print(f"kill -9: {last} claims, {len(deliveries)} deliveries, taken over after {took_over:.2f}s")
    finally:
        stop.set()
        await load
        await shop_b.close()
        await watcher.close()
        if a.process is not None and a.process.poll() is None:
            await asyncio.to_thread(stop_process, a, signal.SIGKILL)
        assert await asyncio.to_thread(stop_process, b) == 0, b.log_text()


async def _answered(value: object) -> object:
    return value


async def _at(api: Api, webhook_id: str, sequence: int) -> wpb.Webhook | None:
    hook = await api.get(webhook_id)
    return hook if hook.delivered_sequence == sequence else None
