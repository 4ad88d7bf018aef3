"""What webhooks cost while nothing happens, and what they report: 1,000 brands with one webhook
each, all up to date, add at most 2 transactions/s to an idle server (counted exactly by a proxy
between the server and PostgreSQL); the metrics count attempts by result, retries, and the lag."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from discount.v1 import webhook_service_pb2 as wpb
from tests.db_proxy import proxied
from tests.support import create_brand, create_key, generate_codes_sql, in_process_server
from tests.test_feed_many_brands import create_brands, idle_rate
from tests.webhook_support import FAST, Api, Receiver, wait_until

pytestmark = pytest.mark.timeout(240)

WEBHOOKS = 1000


async def test_a_thousand_idle_webhooks_add_at_most_2_transactions_per_second(
    database_url: str, receiver: Receiver
) -> None:
    brands = create_brands(database_url, WEBHOOKS, 2)
    async with (
        proxied(database_url) as (proxy, proxied_url),
        in_process_server(proxied_url, **FAST) as (server, handle),
    ):
        admin, shop = Api(handle.address, handle.admin_key), Api(handle.address, create_key(database_url, "service"))
        try:
            await asyncio.sleep(2.0)
            without = await idle_rate(proxy)
            for brand in brands:
                await admin.create(brand, receiver.url(f"/{brand}"))
            await wait_until(lambda: _held(server, WEBHOOKS), timeout=30, what="every webhook taken")
            # Each webhook is up to date; one claim shows they are live, then nothing happens.
            await shop.claim(brands[0], "one")
            await receiver.wait_for(f"/{brands[0]}", 1)
            await asyncio.sleep(3.0)
            with_webhooks = await idle_rate(proxy)
            print(f"idle transactions/s: {without:.2f} without webhooks, {with_webhooks:.2f} with {WEBHOOKS}")
            assert with_webhooks <= without + 2.0, (without, with_webhooks)
        finally:
            await admin.close()
            await shop.close()


async def _held(server: object, count: int) -> bool:
    return len(server.webhooks.held) == count  # type: ignore[attr-defined]


async def test_metrics_count_attempts_retries_and_lag(database_url: str, receiver: Receiver) -> None:
    create_brand(database_url, "wh-metrics")
    generate_codes_sql(database_url, "wh-metrics", 10)
    async with in_process_server(database_url, **FAST, metrics_listen="127.0.0.1:0") as (server, handle):
        owner = Api(handle.address, create_key(database_url, "brand", "wh-metrics"))
        shop = Api(handle.address, create_key(database_url, "service"))
        try:
            receiver.script("/m", (500, {}, 0.0), (503, {}, 0.0))
            created = await owner.create("wh-metrics", receiver.url("/m"))
            await shop.claim("wh-metrics", "u1")
            await wait_until(
                lambda: _delivered(owner, created.webhook.webhook_id, 1), what="the claim after two failures"
            )
            text = await asyncio.to_thread(_scrape, server.metrics.port)
            assert _value(text, 'discount_webhook_deliveries_total{result="failure"}') == 2
            assert _value(text, 'discount_webhook_deliveries_total{result="success"}') == 1
            assert _value(text, "discount_webhook_retries_total") == 2
            lag = f'discount_webhook_lag_seconds{{brand_id="wh-metrics",webhook_id="{created.webhook.webhook_id}"}}'
            assert _value(text, lag) == 0.0, "up to date"
        finally:
            await owner.close()
            await shop.close()


async def _delivered(api: Api, webhook_id: str, sequence: int) -> bool:
    hook = await api.call("GetWebhook", wpb.GetWebhookRequest(webhook_id=webhook_id))
    return bool(hook.webhook.delivered_sequence == sequence)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _value(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.M)
    assert found, f"{sample} not in the metrics"
    return float(found.group(1))
