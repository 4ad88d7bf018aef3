"""Webhooks as a brand's engineer sees them: a real server, a real HTTP receiver on 127.0.0.1, and
every request verified with the `standardwebhooks` package, as the README's receiver does."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from discount.v1 import webhook_service_pb2 as wpb
from tests.support import ServerHandle, create_brand, create_key, generate_codes_sql, in_process_server, sql
from tests.webhook_support import FAST, Api, Receiver, wait_until

pytestmark = pytest.mark.timeout(90)


def brand(url: str, brand_id: str, codes: int = 500) -> tuple[str, str]:
    """A brand with codes; (its brand key, a service key)."""
    create_brand(url, brand_id)
    generate_codes_sql(url, brand_id, codes)
    return create_key(url, "brand", brand_id), create_key(url, "service")


@pytest.mark.both_engines
async def test_every_claim_arrives_once_in_order_signed(hooked: ServerHandle, receiver: Receiver) -> None:
    brand_key, service_key = brand(hooked.database_url, "wh-all")
    owner, shop = Api(hooked.address, brand_key), Api(hooked.address, service_key)
    try:
        for i in range(20):  # claims made before the webhook exists: after_sequence=0 sends them too
            await shop.claim("wh-all", f"early-{i}")
        created = await owner.create("wh-all", receiver.url("/all"), after_sequence=0, max_claims_per_delivery=7)
        hook = created.webhook
        assert hook.webhook_id.startswith("wh_") and hook.brand_id == "wh-all"
        assert hook.state == wpb.Webhook.STATE_ACTIVE and hook.delivered_sequence == 0
        assert hook.max_claims_per_delivery == 7 and hook.url == receiver.url("/all")
        assert created.secret.startswith("whsec_")
        await asyncio.gather(*(shop.claim("wh-all", f"late-{i}") for i in range(80)))
        got = await receiver.wait_for("/all", 100)
        sequences: list[int] = []
        ids = set()
        for request in got:
            payload = request.verify(created.secret)
            assert request.headers["Content-Type"] == "application/json"
            assert payload["type"] == "claims.created" and payload["brand_id"] == "wh-all"
            assert 1 <= len(payload["claims"]) <= 7
            for claim in payload["claims"]:
                assert isinstance(claim["sequence"], str)  # protobuf's JSON mapping of a uint64
                assert claim["brand_id"] == "wh-all" and claim["code"] and claim["user_id"] and claim["claimed_at"]
            sequences += request.sequences
            ids.add(request.headers["webhook-id"])
        assert sequences == list(range(1, 101)), "every claim once, in sequence order"
        assert len(ids) == len(got), "each delivery has its own webhook-id"
        database = dict(sql(hooked.database_url, "SELECT c.sequence, c.code FROM claims c"))
        assert {int(c["sequence"]): c["code"] for r in got for c in r.payload["claims"]} == database

        done = await wait_until(
            lambda: _delivered(owner, hook.webhook_id, 100), what="delivered_sequence 100 in GetWebhook"
        )
        assert done.state == wpb.Webhook.STATE_ACTIVE and done.last_error == "" and not done.HasField("next_attempt_at")
        page = await owner.deliveries(hook.webhook_id, page_size=5)
        assert len(page.deliveries) == 5 and page.next_page_token
        newest = page.deliveries[0]
        assert newest.last_sequence == 100 and newest.http_status == 200 and newest.attempt == 1 and newest.error == ""
        assert newest.delivery_id == got[-1].headers["webhook-id"]
        assert newest.duration.ToTimedelta().total_seconds() > 0
        everything = list(page.deliveries)
        while page.next_page_token:
            page = await owner.deliveries(hook.webhook_id, page_size=5, page_token=page.next_page_token)
            everything += page.deliveries
        assert [d.delivery_id for d in reversed(everything)] == [r.headers["webhook-id"] for r in got]
        assert [(d.first_sequence, d.last_sequence) for d in reversed(everything)] == [
            (r.sequences[0], r.sequences[-1]) for r in got
        ]
    finally:
        await owner.close()
        await shop.close()


async def _delivered(api: Api, webhook_id: str, sequence: int) -> wpb.Webhook | None:
    hook = await api.get(webhook_id)
    return hook if hook.delivered_sequence == sequence else None


async def test_failures_are_retried_with_the_same_id_and_claims(hooked: ServerHandle, receiver: Receiver) -> None:
    brand_key, service_key = brand(hooked.database_url, "wh-retry")
    owner, shop = Api(hooked.address, brand_key), Api(hooked.address, service_key)
    try:
        await shop.claim("wh-retry", "before")  # before the webhook, with after_sequence unset: not sent
        receiver.script("/r", (500, {}, 0.0), (503, {}, 0.0), (500, {"Retry-After": "4"}, 0.0))
        created = await owner.create("wh-retry", receiver.url("/r"))
        assert created.webhook.delivered_sequence == 1
        await shop.claim("wh-retry", "u1")
        await receiver.wait_for("/r", 2)
        # Once the third attempt (answered with Retry-After: 4) is recorded, the webhook is FAILING and
        # waits at least 4 s.
        await wait_until(lambda: _recorded(owner, created.webhook.webhook_id, 3), what="three attempts recorded")
        failing = await owner.get(created.webhook.webhook_id)
        assert failing.state == wpb.Webhook.STATE_FAILING
        assert "500" in failing.last_error and failing.HasField("next_attempt_at")
        assert failing.next_attempt_at.ToSeconds() - time.time() > 1.5
        assert failing.delivered_sequence == 1
        for i in range(2, 5):  # claims made meanwhile wait for the failing delivery
            await shop.claim("wh-retry", f"u{i}")
        await wait_until(
            lambda: _delivered(owner, created.webhook.webhook_id, 5), timeout=15, what="delivered_sequence 5"
        )
        got = receiver.at("/r")
        first = got[:4]
        assert {r.headers["webhook-id"] for r in first} == {first[0].headers["webhook-id"]}
        assert {r.body for r in first} == {first[0].body}, "the same claims on every attempt"
        assert first[0].sequences == [2]
        for request in got:
            request.verify(created.secret)
        assert first[1].at - first[0].at >= 0.05 and first[3].at - first[2].at >= 4.0
        assert [s for r in got[3:] for s in r.sequences] == [2, 3, 4, 5]
        hook = await owner.get(created.webhook.webhook_id)
        assert hook.state == wpb.Webhook.STATE_ACTIVE and hook.last_error == ""
        attempts = list(reversed((await owner.deliveries(created.webhook.webhook_id)).deliveries))
        assert [(a.attempt, a.http_status) for a in attempts[:4]] == [(1, 500), (2, 503), (3, 500), (4, 200)]
        assert {a.delivery_id for a in attempts[:4]} == {first[0].headers["webhook-id"]}
        assert attempts[0].error == "HTTP 500" and attempts[3].error == ""
    finally:
        await owner.close()
        await shop.close()


async def _recorded(api: Api, webhook_id: str, attempts: int) -> bool:
    return len((await api.deliveries(webhook_id)).deliveries) >= attempts


@pytest.mark.both_engines
async def test_410_disables_and_replay_from_0_sends_everything_again(hooked: ServerHandle, receiver: Receiver) -> None:
    brand_key, service_key = brand(hooked.database_url, "wh-gone")
    owner, shop = Api(hooked.address, brand_key), Api(hooked.address, service_key)
    try:
        created = await owner.create("wh-gone", receiver.url("/g"), after_sequence=0)
        webhook_id = created.webhook.webhook_id
        for i in range(1, 6):
            await shop.claim("wh-gone", f"u{i}")
        await wait_until(lambda: _delivered(owner, webhook_id, 5), what="the first five claims")
        receiver.script("/g", (410, {}, 0.0))
        await shop.claim("wh-gone", "u6")
        disabled = await wait_until(
            lambda: _is(owner, webhook_id, wpb.Webhook.STATE_DISABLED), what="DISABLED after 410"
        )
        assert "410" in disabled.last_error and disabled.delivered_sequence == 5
        assert not disabled.HasField("next_attempt_at")
        count = len(receiver.at("/g"))
        await shop.claim("wh-gone", "u7")
        await asyncio.sleep(1.5)
        assert len(receiver.at("/g")) == count, "nothing is sent to a disabled webhook"

        replayed = (await owner.call("ReplayWebhook", wpb.ReplayWebhookRequest(webhook_id=webhook_id))).webhook
        assert replayed.state == wpb.Webhook.STATE_ACTIVE and replayed.delivered_sequence == 0
        assert replayed.last_error == ""
        await receiver.wait_for("/g", 7)
        again = receiver.at("/g")[count:]
        assert [s for r in again for s in r.sequences] == list(range(1, 8)), "every claim again, in order"
        assert not {r.headers["webhook-id"] for r in again} & {
            r.headers["webhook-id"] for r in receiver.at("/g")[:count]
        }
        for request in again:
            request.verify(created.secret)
        await wait_until(lambda: _delivered(owner, webhook_id, 7), what="delivered_sequence 7 after the replay")
    finally:
        await owner.close()
        await shop.close()


async def _is(api: Api, webhook_id: str, state: int) -> wpb.Webhook | None:
    hook = await api.get(webhook_id)
    return hook if hook.state == state else None


@pytest.mark.both_engines
async def test_rotation_signs_with_the_old_and_the_new_secret(hooked: ServerHandle, receiver: Receiver) -> None:
    brand_key, service_key = brand(hooked.database_url, "wh-rot")
    owner, shop = Api(hooked.address, brand_key), Api(hooked.address, service_key)
    try:
        created = await owner.create("wh-rot", receiver.url("/rot"))
        await shop.claim("wh-rot", "u1")
        (before,) = await receiver.wait_for("/rot", 1)
        before.verify(created.secret)
        assert len(before.headers["webhook-signature"].split(" ")) == 1
        rotated = await owner.call(
            "RotateWebhookSecret", wpb.RotateWebhookSecretRequest(webhook_id=created.webhook.webhook_id)
        )
        assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
        assert rotated.webhook.webhook_id == created.webhook.webhook_id
        await shop.claim("wh-rot", "u2")
        after = (await receiver.wait_for("/rot", 2))[-1]
        assert len(after.headers["webhook-signature"].split(" ")) == 2
        assert after.verify(rotated.secret)["claims"][0]["sequence"] == "2"
        assert after.verify(created.secret)["claims"][0]["sequence"] == "2"
        # The secrets are nowhere in the database: what is stored is a ciphertext.
        stored = sql(hooked.database_url, "SELECT secret, previous_secret FROM webhooks")
        dump = b"".join(bytes(v) for row in stored for v in row)
        for secret in (created.secret, rotated.secret):
            raw = base64.b64decode(secret.removeprefix("whsec_"))
            assert raw not in dump and secret.encode() not in dump
    finally:
        await owner.close()
        await shop.close()


async def test_a_hanging_endpoint_does_not_delay_another_brand(database_url: str, receiver: Receiver) -> None:
    async with in_process_server(database_url, **FAST, webhook_timeout_seconds=3.0) as (_, server):
        stuck_key, service_key = brand(database_url, "wh-stuck")
        fine_key, _ = brand(database_url, "wh-fine")
        stuck, fine, shop = (
            Api(server.address, stuck_key),
            Api(server.address, fine_key),
            Api(server.address, service_key),
        )
        try:
            receiver.hang.add("/stuck")
            hung = await stuck.create("wh-stuck", receiver.url("/stuck"))
            await fine.create("wh-fine", receiver.url("/fine"), max_claims_per_delivery=1)
            await shop.claim("wh-stuck", "s1")
            await receiver.wait_for("/stuck", 1)  # its first attempt now hangs
            lags = []
            for i in range(1, 11):
                made = time.time()
                await shop.claim("wh-fine", f"f{i}")
                got = await receiver.wait_for("/fine", i, timeout=5)
                lags.append(next(r.at for r in got if i in r.sequences) - made)
                await asyncio.sleep(0.1)
            assert max(lags) < 1.0, f"claim -> receipt at the healthy endpoint: {lags}"
            hook = await wait_until(
                lambda: _is(stuck, hung.webhook.webhook_id, wpb.Webhook.STATE_FAILING), what="the hung one FAILING"
            )
            assert "no answer within 3s" in hook.last_error
            attempt = (await stuck.deliveries(hung.webhook.webhook_id)).deliveries[0]
            assert attempt.http_status == 0 and 2.9 <= attempt.duration.ToTimedelta().total_seconds() < 4
        finally:
            for api in (stuck, fine, shop):
                await api.close()
