"""Every way to get WebhookService wrong gets a clear status: bad urls and fields are
INVALID_ARGUMENT with reason INVALID_FIELD naming the field, another brand's key or a service key is
PERMISSION_DENIED, an unknown brand or webhook is NOT_FOUND; and the secret stays out of the logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from discount.v1 import webhook_service_pb2 as wpb
from tests.support import ServerHandle, create_brand, create_key, in_process_server
from tests.webhook_support import FAST, WEBHOOK_KEY, Api

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def strict(database_url: str) -> AsyncIterator[ServerHandle]:
    """A server with the defaults: https only, public addresses only."""
    async with in_process_server(database_url, webhook_secret_key=WEBHOOK_KEY) as (_, handle):
        yield handle


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://example.com/hook", "https://"),
        ("ftp://example.com/hook", "https://"),
        ("https://user:secret@example.com/hook", "user name or password"),
        ("https://user@example.com/hook", "user name or password"),
        ("https://example.com/" + "a" * 2048, "2,048"),
        ("https://127.0.0.1/hook", "public"),
        ("https://10.1.2.3/hook", "public"),
        ("https://192.168.0.10:8443/hook", "public"),
        ("https://169.254.169.254/latest/meta-data", "public"),
        ("https://[::1]/hook", "public"),
        ("https://[::ffff:127.0.0.1]/hook", "public"),
        ("https://224.0.0.1/hook", "public"),
        ("https://localhost/hook", "public"),
        ("https://0.0.0.0/hook", "public"),
        ("https:///hook", "host"),
        ("https://example.com:99999/hook", "valid URL"),
        ("https://exa mple.com/hook", "spaces"),
        ("", "required"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
    ],
)
async def test_urls_that_may_not_be_used(strict: ServerHandle, url: str, says: str) -> None:
    create_brand(strict.database_url, "wh-bad")
    api = Api(strict.address, create_key(strict.database_url, "brand", "wh-bad"))
    try:
        failure = await api.fails("CreateWebhook", wpb.CreateWebhookRequest(brand_id="wh-bad", url=url))
        assert (failure.code, failure.reason, failure.field) == (INVALID, "INVALID_FIELD", "url"), failure
        assert says in failure.message
    finally:
        await api.close()


async def test_the_development_switch_allows_http_and_loopback(database_url: str) -> None:
    async with in_process_server(database_url, **FAST) as (_, server):
        create_brand(database_url, "wh-dev")
        api = Api(server.address, create_key(database_url, "brand", "wh-dev"))
        try:
            created = await api.create("wh-dev", "http://127.0.0.1:9/hook")
            assert created.webhook.url == "http://127.0.0.1:9/hook"
            failure = await api.fails(
                "CreateWebhook", wpb.CreateWebhookRequest(brand_id="wh-dev", url="http://u:p@127.0.0.1/hook")
            )
            assert (failure.code, failure.field) == (INVALID, "url"), "user info is refused even in development"
        finally:
            await api.close()


async def test_serve_warns_when_the_development_switch_is_on(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="discount_service.webhook_delivery"):
        async with in_process_server(database_url, **FAST):
            pass
    assert any("DISCOUNT_WEBHOOK_ALLOW_INSECURE is on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="discount_service.webhook_delivery"):
        async with in_process_server(database_url, webhook_secret_key=WEBHOOK_KEY):
            pass
    assert not any("ALLOW_INSECURE" in r.getMessage() for r in caplog.records)


async def test_fields_and_limits(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with in_process_server(database_url, **FAST) as (_, server):
        create_brand(database_url, "wh-lim")
        api = Api(server.address, create_key(database_url, "brand", "wh-lim"))
        admin = Api(server.address, server.admin_key)
        url = "http://127.0.0.1:9/hook"
        try:
            for bad in (1001, 5000):
                failure = await api.fails(
                    "CreateWebhook",
                    wpb.CreateWebhookRequest(brand_id="wh-lim", url=url, max_claims_per_delivery=bad),
                )
                assert (failure.code, failure.reason, failure.field) == (
                    INVALID,
                    "INVALID_FIELD",
                    "max_claims_per_delivery",
                )
            failure = await api.fails(
                "CreateWebhook", wpb.CreateWebhookRequest(brand_id="wh-lim", url=url, after_sequence=5)
            )
            assert (failure.code, failure.field) == (INVALID, "after_sequence"), "beyond the brand's last claim"
            secrets = []
            for i in range(10):
                created = await api.create("wh-lim", f"{url}/{i}")
                assert created.webhook.max_claims_per_delivery == 100, "0 means 100"
                secrets.append(created.secret)
            failure = await api.fails("CreateWebhook", wpb.CreateWebhookRequest(brand_id="wh-lim", url=url))
            assert (failure.code, failure.reason, failure.field) == (INVALID, "INVALID_FIELD", "brand_id")
            assert "10 webhooks" in failure.message
            listed = (await api.call("ListWebhooks", wpb.ListWebhooksRequest(brand_id="wh-lim"))).webhooks
            assert [w.url for w in listed] == [f"{url}/{i}" for i in range(10)], "oldest first"
            hook = listed[0].webhook_id
            await api.call("DeleteWebhook", wpb.DeleteWebhookRequest(webhook_id=hook))
            await api.create("wh-lim", url)  # a deleted one frees its place

            failure = await admin.fails("CreateWebhook", wpb.CreateWebhookRequest(brand_id="no-such-brand", url=url))
            assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "BRAND_NOT_FOUND")
            for request in (wpb.GetWebhookRequest(webhook_id=hook), wpb.DeleteWebhookRequest(webhook_id=hook)):
                failure = await api.fails(type(request).__name__.removesuffix("Request"), request)
                assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "WEBHOOK_NOT_FOUND")
            failure = await api.fails("GetWebhook", wpb.GetWebhookRequest(webhook_id="not-an-id"))
            assert (failure.code, failure.field) == (INVALID, "webhook_id")
            failure = await api.fails("GetWebhook", wpb.GetWebhookRequest())
            assert (failure.code, failure.field) == (INVALID, "webhook_id")
            live = listed[1].webhook_id
            failure = await api.fails("ReplayWebhook", wpb.ReplayWebhookRequest(webhook_id=live, after_sequence=7))
            assert (failure.code, failure.field) == (INVALID, "after_sequence")
            failure = await api.fails(
                "ListWebhookDeliveries", wpb.ListWebhookDeliveriesRequest(webhook_id=live, page_size=1001)
            )
            assert (failure.code, failure.field) == (INVALID, "page_size")
            failure = await api.fails(
                "ListWebhookDeliveries", wpb.ListWebhookDeliveriesRequest(webhook_id=live, page_token="forged")
            )
            assert (failure.code, failure.field) == (INVALID, "page_token")
            rotated = await api.call("RotateWebhookSecret", wpb.RotateWebhookSecretRequest(webhook_id=live))
            secrets.append(rotated.secret)
        finally:
            await api.close()
            await admin.close()
    logged = caplog.text
    assert all(secret not in logged and secret.removeprefix("whsec_") not in logged for secret in secrets)


async def test_only_the_brand_or_an_admin(database_url: str) -> None:
    async with in_process_server(database_url, **FAST) as (_, server):
        for brand_id in ("wh-mine", "wh-other"):
            create_brand(database_url, brand_id)
        mine = Api(server.address, create_key(database_url, "brand", "wh-mine"))
        other = Api(server.address, create_key(database_url, "brand", "wh-other"))
        service = Api(server.address, create_key(database_url, "service"))
        admin = Api(server.address, server.admin_key)
        try:
            hook = (await mine.create("wh-mine", "http://127.0.0.1:9/hook")).webhook.webhook_id
            requests = [
                ("CreateWebhook", wpb.CreateWebhookRequest(brand_id="wh-mine", url="http://127.0.0.1:9/x")),
                ("GetWebhook", wpb.GetWebhookRequest(webhook_id=hook)),
                ("ListWebhooks", wpb.ListWebhooksRequest(brand_id="wh-mine")),
                ("ReplayWebhook", wpb.ReplayWebhookRequest(webhook_id=hook)),
                ("RotateWebhookSecret", wpb.RotateWebhookSecretRequest(webhook_id=hook)),
                ("ListWebhookDeliveries", wpb.ListWebhookDeliveriesRequest(webhook_id=hook)),
                ("DeleteWebhook", wpb.DeleteWebhookRequest(webhook_id=hook)),
            ]
            for method, request in requests:
                for stranger in (other, service):
                    failure = await stranger.fails(method, request)
                    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), (
                        method,
                        failure,
                    )
            unknown_brand = Api(server.address, "dsk_nope_nope")
            failure = await unknown_brand.fails("GetWebhook", wpb.GetWebhookRequest(webhook_id=hook))
            assert failure.code is grpc.StatusCode.UNAUTHENTICATED
            await unknown_brand.close()
            for method, request in requests:  # the admin may do everything, the delete last
                await admin.call(method, request)
            assert (await mine.call("ListWebhooks", wpb.ListWebhooksRequest(brand_id="wh-mine"))).webhooks[0].url
        finally:
            for api in (mine, other, service, admin):
                await api.close()
