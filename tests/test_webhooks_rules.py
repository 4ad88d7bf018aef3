"""The delivery rules a brand's engineer relies on, one by one, through a real server and receiver:
the retry schedule and the retry period, Retry-After as an HTTP date, redirects not followed, and
the request going to the address that was checked with the url's host in `Host`."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from discount.v1 import webhook_service_pb2 as wpb
from tests.support import BIN, ServerHandle, create_brand, create_key, generate_codes_sql, in_process_server
from tests.webhook_support import FAST, Api, Receiver, owner_and_shop, wait_until

pytestmark = pytest.mark.timeout(90)
BASE = 0.05  # FAST's DISCOUNT_WEBHOOK_RETRY_BASE_SECONDS


async def _state(api: Api, webhook_id: str, state: int) -> wpb.Webhook | None:
    hook = await api.get(webhook_id)
    return hook if hook.state == state else None


async def _attempts(receiver: Receiver, path: str, count: int) -> bool:
    return len(receiver.at(path)) >= count


async def test_retries_back_off_then_the_retry_period_disables(database_url: str, receiver: Receiver) -> None:
    create_brand(database_url, "wh-period")
    generate_codes_sql(database_url, "wh-period", 5)
    async with in_process_server(database_url, **FAST, webhook_retry_period_seconds=1.5) as (_, server):
        owner = Api(server.address, create_key(database_url, "brand", "wh-period"))
        shop = Api(server.address, create_key(database_url, "service"))
        try:
            receiver.script("/down", *[(500, {}, 0.0)] * 100)
            created = await owner.create("wh-period", receiver.url("/down"))
            await shop.claim("wh-period", "u1")
            hook = await wait_until(
                lambda: _state(owner, created.webhook.webhook_id, wpb.Webhook.STATE_DISABLED),
                what="DISABLED after the retry period",
            )
            assert hook.last_error == "HTTP 500" and not hook.HasField("next_attempt_at")
            got = receiver.at("/down")
            assert {r.headers["webhook-id"] for r in got} == {got[0].headers["webhook-id"]}
            gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
            for n, gap in enumerate(gaps, start=1):
                low = BASE * 2 ** (n - 1)
                assert low * 0.95 <= gap <= 1.5 * low + 0.2, f"retry {n} waited {gap:.3f}s: {gaps}"
            failing_for = got[-1].at - got[0].at
            assert failing_for >= 1.5 and len(got) >= 5, gaps
            count = len(got)
            await shop.claim("wh-period", "u2")
            await asyncio.sleep(0.5)
            assert len(receiver.at("/down")) == count, "a disabled webhook gets nothing"
        finally:
            await owner.close()
            await shop.close()


async def test_retry_after_dates_and_redirects(hooked: ServerHandle, receiver: Receiver) -> None:
    async with owner_and_shop(hooked, "wh-ra") as (owner, shop):
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
        receiver.script("/ra", (302, {"Location": receiver.url("/elsewhere")}, 0.0), (503, {"Retry-After": when}, 0.0))
        created = await owner.create("wh-ra", receiver.url("/ra"))
        await shop.claim("wh-ra", "u1")
        await wait_until(lambda: _attempts(receiver, "/ra", 3), timeout=15, what="three attempts")
        got = receiver.at("/ra")
        assert receiver.at("/elsewhere") == [], "redirects are not followed"
        assert got[2].at - got[1].at >= 1.9, "Retry-After (an HTTP date) is a minimum wait"

        # Each attempt is recorded once its answer is in, just after the receiver saw the request.
        async def three_recorded() -> Any:
            page = await owner.deliveries(created.webhook.webhook_id)
            return list(reversed(page.deliveries)) if len(page.deliveries) >= 3 else None

        attempts = await wait_until(three_recorded, what="three attempts recorded")
        assert [(a.http_status, a.error) for a in attempts[:2]] == [(302, "HTTP 302"), (503, "HTTP 503")]
        assert attempts[2].http_status == 200


async def test_the_request_goes_to_the_checked_address_with_the_urls_host(
    hooked: ServerHandle, receiver: Receiver
) -> None:
    async with owner_and_shop(hooked, "wh-host") as (owner, shop):
        url = f"http://localhost:{receiver.port}/named"
        created = await owner.create("wh-host", url)
        await shop.claim("wh-host", "u1")
        (got,) = await receiver.wait_for("/named", 1)
        assert got.headers["Host"] == f"localhost:{receiver.port}"
        got.verify(created.secret)


async def test_nothing_is_sent_after_delete(hooked: ServerHandle, receiver: Receiver) -> None:
    async with owner_and_shop(hooked, "wh-del") as (owner, shop):
        created = await owner.create("wh-del", receiver.url("/del"))
        await shop.claim("wh-del", "u1")
        await receiver.wait_for("/del", 1)
        await owner.call("DeleteWebhook", wpb.DeleteWebhookRequest(webhook_id=created.webhook.webhook_id))
        await shop.claim("wh-del", "u2")
        await asyncio.sleep(1.0)
        assert [s for r in receiver.at("/del") for s in r.sequences] == [1]
        assert (await owner.call("ListWebhooks", wpb.ListWebhooksRequest(brand_id="wh-del"))).webhooks == []


async def test_only_the_last_attempts_are_kept(database_url: str) -> None:
    """10,000 per webhook in the server (KEEP_ATTEMPTS); the statement that records an attempt prunes
    the older ones, shown here with a smaller number through the store."""
    from discount_service.store import AttemptOutcome, Store
    from discount_service.webhook_delivery import KEEP_ATTEMPTS

    assert KEEP_ATTEMPTS == 10_000
    create_brand(database_url, "wh-keep")
    async with in_process_server(database_url, **FAST) as (_, server):
        owner = Api(server.address, create_key(database_url, "brand", "wh-keep"))
        store = Store(database_url, min_size=1, max_size=2)
        await store.open()
        try:
            webhook_id = (await owner.create("wh-keep", "http://127.0.0.1:9/never")).webhook.webhook_id
            brand_key = await store.brand_key("wh-keep")
            assert brand_key is not None
            assert await store.begin_webhook_delivery(
                brand_key, webhook_id, delivery_id="msg_keep", first_sequence=1, last_sequence=1,
                delivered_sequence=0, config_version=0,
            )  # fmt: skip
            for attempt in range(1, 6):
                outcome = AttemptOutcome(
                    brand_key=brand_key, webhook_id=webhook_id, config_version=0, delivery_id="msg_keep",
                    first_sequence=1, last_sequence=1, attempt=attempt, attempted_at=datetime.now(UTC),
                    http_status=500, error="HTTP 500", duration_seconds=0.01, succeeded=False, gone=False,
                    retry_in_seconds=60.0,
                )  # fmt: skip
                assert await store.record_webhook_attempt(outcome, retry_period_seconds=3600, keep=3) == (
                    "failing",
                    attempt,
                )
            page = await owner.deliveries(webhook_id)
            assert [d.attempt for d in page.deliveries] == [5, 4, 3], "the newest three, newest first"
        finally:
            await store.close()
            await owner.close()


async def test_health_and_reflection_know_the_webhook_service(database_url: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with in_process_server(database_url, **FAST) as (_, server):
        api = Api(server.address, server.admin_key)
        try:
            health = health_pb2_grpc.HealthStub(api.channel)
            request = health_pb2.HealthCheckRequest(service="discount.v1.WebhookService")
            reply = await wait_until(lambda: _serving(health, request), what="WebhookService SERVING")
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            listed = await asyncio.to_thread(
                subprocess.run,
                [str(BIN / "grpcurl"), "-plaintext", server.address, "list"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "discount.v1.WebhookService" in listed.stdout.split(), "reflection lists it"
        finally:
            await api.close()


async def _serving(health: object, request: object) -> object:
    import grpc

    try:
        reply = await health.Check(request, timeout=2)  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError:
        return None
    return reply if reply.status == 1 else None
