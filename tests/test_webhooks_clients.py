"""WebhookService through both Python clients and the `discount webhook` commands, against a real
server and a real receiver."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import pytest

import discount_client
from discount_client import AsyncDiscountClient, DiscountClient, WebhookState
from tests.readme_support import code_blocks, readme_section
from tests.support import BIN, ServerHandle, create_brand, create_key, generate_codes_sql
from tests.webhook_support import Api, Receiver, wait_until

pytestmark = pytest.mark.timeout(90)


async def test_the_async_client(hooked: ServerHandle, receiver: Receiver) -> None:
    create_brand(hooked.database_url, "wh-aio")
    generate_codes_sql(hooked.database_url, "wh-aio", 10)
    shop = Api(hooked.address, create_key(hooked.database_url, "service"))
    async with AsyncDiscountClient(hooked.address, create_key(hooked.database_url, "brand", "wh-aio")) as client:
        created = await client.create_webhook("wh-aio", receiver.url("/aio"), after_sequence=0)
        assert created.secret.startswith("whsec_") and created.secret not in repr(created)
        hook = created.webhook
        assert hook.state is WebhookState.ACTIVE and hook.brand_id == "wh-aio" and hook.next_attempt_at is None
        await shop.claim("wh-aio", "u1")
        (got,) = await receiver.wait_for("/aio", 1)
        got.verify(created.secret)
        assert [w.webhook_id for w in await client.list_webhooks("wh-aio")] == [hook.webhook_id]

        # The attempt is recorded once the endpoint's answer is in, just after the receiver saw it.
        async def recorded() -> Any:
            page = await client.list_webhook_deliveries(hook.webhook_id)
            return page if page.deliveries else None

        page = await wait_until(recorded, what="the attempt recorded")
        assert [d.delivery_id for d in page.deliveries] == [got.headers["webhook-id"]]
        assert page.deliveries[0].http_status == 200 and page.next_page_token == ""
        replayed = await client.replay_webhook(hook.webhook_id, 0)
        assert replayed.delivered_sequence == 0
        rotated = await client.rotate_webhook_secret(hook.webhook_id)
        assert rotated.secret != created.secret
        await wait_until(lambda: _delivered(client, hook.webhook_id, 1), what="the replayed claim")
        await client.delete_webhook(hook.webhook_id)
        with pytest.raises(discount_client.NotFound) as caught:
            await client.get_webhook(hook.webhook_id)
        assert caught.value.reason == "WEBHOOK_NOT_FOUND"
        with pytest.raises(discount_client.InvalidArgument) as bad:
            await client.create_webhook("wh-aio", "ftp://example.com")
        assert bad.value.field == "url"
    await shop.close()


async def _delivered(client: AsyncDiscountClient, webhook_id: str, sequence: int) -> bool:
    return (await client.get_webhook(webhook_id)).delivered_sequence == sequence


async def test_the_sync_client(hooked: ServerHandle, receiver: Receiver) -> None:
    create_brand(hooked.database_url, "wh-sync")
    key = create_key(hooked.database_url, "brand", "wh-sync")

    def use() -> None:
        with DiscountClient(hooked.address, key) as client:
            created = client.create_webhook("wh-sync", receiver.url("/sync"), max_claims_per_delivery=3)
            assert created.webhook.max_claims_per_delivery == 3 and created.webhook.delivered_sequence == 0
            assert client.get_webhook(created.webhook.webhook_id) == created.webhook
            assert client.list_webhooks("wh-sync") == [created.webhook]
            assert client.list_webhook_deliveries(created.webhook.webhook_id).deliveries == ()
            client.delete_webhook(created.webhook.webhook_id)
            assert client.list_webhooks("wh-sync") == []
            with pytest.raises(discount_client.PermissionDenied):
                client.list_webhooks("someone-else")

    await asyncio.to_thread(use)


def discount(server: ServerHandle, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISCOUNT_ADDRESS": server.address, "DISCOUNT_API_KEY": key}
    return subprocess.run(
        [str(BIN / "discount"), "webhook", *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_the_cli(hooked: ServerHandle, receiver: Receiver) -> None:
    create_brand(hooked.database_url, "wh-cli")
    generate_codes_sql(hooked.database_url, "wh-cli", 10)
    key = create_key(hooked.database_url, "brand", "wh-cli")
    shop = Api(hooked.address, create_key(hooked.database_url, "service"))
    run = asyncio.to_thread
    created = await run(discount, hooked, key, "create", "wh-cli", receiver.url("/cli"), "--after-sequence", "0")
    assert created.returncode == 0, created.stderr
    webhook_id = created.stdout.split()[0]
    assert webhook_id.startswith("wh_") and "signing secret (shown once" in created.stdout
    secret = created.stdout.rsplit(" ", 1)[-1].strip()
    await shop.claim("wh-cli", "u1")
    (got,) = await receiver.wait_for("/cli", 1)
    got.verify(secret)
    listed = await run(discount, hooked, key, "list", "wh-cli", "--json")
    assert json.loads(listed.stdout)["webhook_id"] == webhook_id
    deliveries = await run(discount, hooked, key, "deliveries", webhook_id)
    assert got.headers["webhook-id"] in deliveries.stdout and "HTTP 200" in deliveries.stdout
    rotated = await run(discount, hooked, key, "rotate", webhook_id, "--json")
    assert json.loads(rotated.stdout.splitlines()[0])["secret"].startswith("whsec_")
    replayed = await run(discount, hooked, key, "replay", webhook_id, "--json")
    assert json.loads(replayed.stdout)["delivered_sequence"] == 0
    deleted = await run(discount, hooked, key, "delete", webhook_id)
    assert deleted.returncode == 0 and webhook_id in deleted.stdout
    missing = await run(discount, hooked, key, "get", webhook_id)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    refused = await run(discount, hooked, key, "create", "wh-cli", "ftp://example.com/x")
    assert refused.returncode == 1 and "https://" in refused.stderr
    await shop.close()


async def test_the_readme_receiver_applies_each_claim_once(hooked: ServerHandle, receiver: Receiver) -> None:
    (example,) = code_blocks(readme_section("Webhooks"), "python")
    create_brand(hooked.database_url, "wh-readme")
    generate_codes_sql(hooked.database_url, "wh-readme", 20)
    shop = Api(hooked.address, create_key(hooked.database_url, "service"))
    owner = Api(hooked.address, create_key(hooked.database_url, "brand", "wh-readme"))
    try:
        created = await owner.create("wh-readme", receiver.url("/readme"), max_claims_per_delivery=3)
        for i in range(8):
            await shop.claim("wh-readme", f"u{i}")
        got = await receiver.wait_for("/readme", 8)
        applied: list[str] = []
        scope: dict[str, object] = {"SECRET": created.secret, "apply": lambda claim: applied.append(claim["sequence"])}
        exec(compile(example, "README.md", "exec"), scope)
        receive = scope["receive"]
        assert callable(receive)
        for request in [*got, got[0], got[-1]]:  # every delivery, then two repeats
            assert receive(request.body, request.headers) == 200
        assert applied == [str(s) for s in range(1, 9)], "each claim applied once, in order"
        forged = {**got[0].headers, "webhook-signature": "v1,AAAA"}
        assert receive(got[0].body, forged) == 400
    finally:
        await shop.close()
        await owner.close()
