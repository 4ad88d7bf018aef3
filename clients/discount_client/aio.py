"""`AsyncDiscountClient`: the asyncio client (grpc.aio), and the source of the synchronous one:
scripts/generate_sync_client.py writes client.py from this module (see its docstring for what it
maps and how to add a method)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from discount.v1 import admin_service_pb2 as admin_pb
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import webhook_service_pb2 as webhook_pb

from . import _admin, _common, _redemptions, _webhooks
from ._admin import ApiKey, ApiKeyPage, Brand, BrandPage, NewApiKey, Role
from ._common import BrandStats, Claim, ClaimResult, GenerateResult, RetryPolicy, WatchBackoff
from ._connectivity import AsyncChannelReadiness
from ._redemptions import RedeemResult, Redemption
from ._webhooks import NewWebhookSecret, Webhook, WebhookDeliveryPage
from .errors import DiscountError, from_rpc_error, status_code

log = logging.getLogger("discount_client")

# Called before each watch reconnect with the error that ended the stream, the delay before the
# next attempt and the last sequence delivered.
OnDisconnect = Callable[[DiscountError, float, int], None]


class AsyncDiscountClient:
    """A typed asyncio client of `discount.v1.DiscountService` and, with an admin key, of
    `discount.v1.AdminService` (brands and API keys).

    >>> async with AsyncDiscountClient("127.0.0.1:50051", api_key) as client:
    ...     result = await client.claim_code("acme", "user-42", "user42@example.com")
    ...     print(result.claim.code)
    ...     async for claim in client.watch_claims("acme"):
    ...         print(claim.sequence, claim.code)

    - Every call sends `api_key` as `x-api-key`; every unary call has a deadline
      (`deadline` seconds unless the call passes `timeout`).
    - UNAVAILABLE is retried by gRPC itself with exponential backoff (`retry`, a service-config
      retry policy; `retry=None` turns it off). A refusal that says when to ask again (the
      database unreachable, RATE_LIMITED, OVERLOADED) is sent again after that delay, within the
      deadline; the exception raised at the end has it in `retry_after`. Every call is
      idempotent: GenerateCodes without a `request_id` gets a fresh one here, so a retried attempt
      cannot create a second batch.
    - Failures raise the exceptions of `discount_client.errors`, carrying the server's message.
    - `credentials` (e.g. `grpc.ssl_channel_credentials()`) switches to TLS.

    Asyncio only: create it inside the event loop that uses it. `DiscountClient` is the same
    client for synchronous code: same arguments, same behaviour.
    """

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        deadline: float = _common.DEFAULT_DEADLINE_SECONDS,
        retry: RetryPolicy | None = RetryPolicy(),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if deadline <= 0:
            raise ValueError("deadline must be positive")
        self.address = address
        self.deadline = deadline
        self._metadata = (("x-api-key", api_key),)
        self._closed = False
        self._retry = retry
        channel_options = _common.channel_options(retry, options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=channel_options)
        self._readiness = AsyncChannelReadiness(self._channel)
        self._stub = _common.discount_stub(self._channel)
        self._admin_stub = _admin.admin_stub(self._channel)
        self._webhook_stub = _webhooks.webhook_stub(self._channel)

    async def close(self) -> None:
        """Closes the channel; a `watch_claims` iterator in progress then simply ends."""
        self._closed = True
        self._readiness.stop()
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncDiscountClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, method: str, request: Any, timeout: float | None, stub: Any = None) -> Any:
        """One unary call. A DiscountService call (no `stub`) that the server refuses saying when
        to ask again is sent again after that delay (see RetryPolicy), within the same deadline."""
        ends_at = _common.seconds_now() + (self.deadline if timeout is None else timeout)
        retries = 0
        while True:
            try:
                response = await getattr(stub or self._stub, method)(
                    request, metadata=self._metadata, timeout=max(0.0, ends_at - _common.seconds_now())
                )
            except grpc.RpcError as exc:
                unreached = "" if self._readiness.connected() else self.address
                error = from_rpc_error(exc, method, unreached_address=unreached)
                delay = None
                if stub is None and self._retry is not None:
                    delay = self._retry.delay_before_retry(error, retries)
                if delay is None or _common.seconds_now() + delay >= ends_at:
                    raise error from exc
                retries += 1
                await asyncio.sleep(delay)
                continue
            self._readiness.mark_connected()
            return response

    async def generate_codes(
        self,
        brand_id: str,
        count: int,
        *,
        request_id: str | None = None,
        prefix: str = "",
        code_length: int = 0,
        expires_at: datetime | None = None,
        timeout: float | None = None,
    ) -> GenerateResult:
        """Creates `count` codes (1..1,000,000) for the brand. Repeating a call with the same
        `request_id` returns the first call's batch and creates nothing; without one, a random
        request_id is generated (and returned in the result). Large batches take a few seconds:
        pass a `timeout` to match."""
        request = _common.generate_request(
            brand_id, count, request_id=request_id, prefix=prefix, code_length=code_length, expires_at=expires_at
        )
        return _common.generate_result(await self._call("GenerateCodes", request, timeout), request.request_id)

    async def claim_code(self, brand_id: str, user_id: str, email: str, *, timeout: float | None = None) -> ClaimResult:
        """Gives the user one code of the brand, or the one they already hold. Raises
        `NoCodesLeft` when the brand has none available."""
        request = pb.ClaimCodeRequest(brand_id=brand_id, user_id=user_id, email=email)
        return _common.claim_result(await self._call("ClaimCode", request, timeout))

    async def get_brand_stats(self, brand_id: str, *, timeout: float | None = None) -> BrandStats:
        """Counts the brand's codes by state."""
        request = pb.GetBrandStatsRequest(brand_id=brand_id)
        return _common.brand_stats(await self._call("GetBrandStats", request, timeout))

    async def redeem_code(
        self, brand_id: str, code: str, user_id: str, order_id: str, *, timeout: float | None = None
    ) -> RedeemResult:
        """Records that the user used their claimed code on the order (the code's case does not
        matter). The same order again returns its first redemption with `newly_redeemed` False.
        Raises `CodeNotFound`, `CodeNotHeldByUser`, `CodeExpired`, `CodeAlreadyRedeemed` (another
        order's redemption stands) or `RedemptionCancelled` (this order's was cancelled: use a new
        order id)."""
        request = pb.RedeemCodeRequest(brand_id=brand_id, code=code, user_id=user_id, order_id=order_id)
        return _redemptions.redeem_result(await self._call("RedeemCode", request, timeout))

    async def cancel_redemption(
        self, brand_id: str, code: str, order_id: str, *, timeout: float | None = None
    ) -> Redemption:
        """Cancels the order's redemption of the code, so its holder can use it on another order;
        cancelling again returns the first cancellation's time. Raises `CodeNotFound` or
        `RedemptionNotFound` (the order never redeemed the code)."""
        request = pb.CancelRedemptionRequest(brand_id=brand_id, code=code, order_id=order_id)
        return _redemptions.cancel_result(await self._call("CancelRedemption", request, timeout))

    async def watch_claims(
        self,
        brand_id: str,
        after_sequence: int = 0,
        *,
        backoff: WatchBackoff = WatchBackoff(),
        on_disconnect: OnDisconnect | None = None,
    ) -> AsyncIterator[Claim]:
        """Yields the brand's claims with a sequence greater than `after_sequence`, in order, then
        new ones live, forever.

        When the stream breaks (server restart, network, proxy) it reconnects with exponential
        backoff and resumes after the last claim it yielded: the caller sees every claim exactly
        once. Errors that a reconnect cannot fix (bad key, unknown brand) are raised. Stop by
        breaking out of the loop (or `aclose()` on the iterator)."""
        if after_sequence < 0:
            raise _common.invalid_field(
                f"after_sequence must be at least 0, got {after_sequence}", "WatchClaims", "after_sequence"
            )
        cursor = after_sequence
        failures = 0
        while not self._closed:
            call: Any = None
            error: DiscountError
            try:
                call = self._stub.WatchClaims(
                    pb.WatchClaimsRequest(
                        brand_id=brand_id,
                        after_sequence=cursor,
                        max_claims_per_response=_common.WATCH_CLAIMS_PER_RESPONSE,
                    ),
                    metadata=self._metadata,
                )
                async for response in call:
                    # A server that predates batching ignores the request and sets `claim`.
                    for claim in response.claims or (response.claim,):
                        if claim.sequence <= cursor:
                            continue  # never yield twice, whatever the server sends
                        cursor = claim.sequence
                        failures = 0
                        yield _common.claim_from_proto(claim)
                error = DiscountError("the server ended the stream", code="OK", method="WatchClaims")
            except asyncio.CancelledError:
                # grpc.aio cancels calls in flight when the channel closes: then end quietly. A
                # cancellation of the caller's own task propagates.
                task = asyncio.current_task()
                if self._closed and (task is None or task.cancelling() == 0):
                    return
                raise
            except grpc.aio.UsageError:  # the channel was closed meanwhile
                if self._closed:
                    return
                raise
            except grpc.RpcError as exc:
                if self._closed:
                    return
                error = from_rpc_error(exc, "WatchClaims")
                if status_code(exc) not in _common.WATCH_RECONNECT_CODES:
                    raise error from exc
            finally:
                if call is not None:
                    call.cancel()
            delay = backoff.delay(failures)
            failures += 1
            log.info("watch of %s interrupted (%s: %s); reconnecting in %.2fs", brand_id, error.code, error, delay)
            if on_disconnect is not None:
                on_disconnect(error, delay, cursor)
            await asyncio.sleep(delay)

    # -- AdminService (admin keys only) ---------------------------------------------------------

    async def create_brand(self, brand_id: str, display_name: str = "", *, timeout: float | None = None) -> Brand:
        """Creates a brand; `display_name` defaults to the id. Raises `AlreadyExists` if it exists.
        Not retried on UNAVAILABLE: the brand may have been created; listing brands tells."""
        request = admin_pb.CreateBrandRequest(brand_id=brand_id, display_name=display_name)
        return _admin.brand_from_proto((await self._call("CreateBrand", request, timeout, self._admin_stub)).brand)

    async def list_brands(self, page_size: int = 0, page_token: str = "", *, timeout: float | None = None) -> BrandPage:
        """One page of brands in brand_id order (`page_size` 0 means 100, at most 1,000); pass the
        page's `next_page_token` for the next one. `iter_brands` walks every page."""
        request = _admin.list_brands_request(page_size, page_token)
        return _admin.brand_page(await self._call("ListBrands", request, timeout, self._admin_stub))

    async def iter_brands(self, page_size: int = 0, *, timeout: float | None = None) -> AsyncIterator[Brand]:
        """Every brand, in brand_id order, fetched a page at a time (`timeout` per page)."""
        token = ""
        while True:
            page = await self.list_brands(page_size, token, timeout=timeout)
            for brand in page.brands:
                yield brand
            token = page.next_page_token
            if not token:
                return

    async def create_api_key(
        self, role: Role | str, brand_id: str | None = None, *, timeout: float | None = None
    ) -> NewApiKey:
        """Creates a key of `role` ("admin", "brand" or "service"; a brand key needs the `brand_id`
        of an existing brand, the others none). The result holds the key's secret, which the server
        never shows again. Not retried on UNAVAILABLE, so a retry cannot leave a second key behind."""
        request = _admin.create_api_key_request(role, brand_id)
        return _admin.new_api_key(await self._call("CreateApiKey", request, timeout, self._admin_stub))

    async def revoke_api_key(self, key_id: str, *, timeout: float | None = None) -> ApiKey:
        """Revokes a key; every server refuses it within DISCOUNT_KEY_CACHE_SECONDS (this one at
        once). Revoking a revoked key returns it unchanged; an unknown key_id raises `NotFound`."""
        request = admin_pb.RevokeApiKeyRequest(key_id=key_id)
        return _admin.api_key_from_proto((await self._call("RevokeApiKey", request, timeout, self._admin_stub)).key)

    async def list_api_keys(
        self,
        brand_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> ApiKeyPage:
        """One page of keys (never their secrets) in key_id order, only `brand_id`'s when given.
        `iter_api_keys` walks every page."""
        request = _admin.list_api_keys_request(brand_id, page_size, page_token)
        return _admin.api_key_page(await self._call("ListApiKeys", request, timeout, self._admin_stub))

    async def iter_api_keys(
        self, brand_id: str | None = None, page_size: int = 0, *, timeout: float | None = None
    ) -> AsyncIterator[ApiKey]:
        """Every key (only `brand_id`'s when given), in key_id order, a page at a time."""
        token = ""
        while True:
            page = await self.list_api_keys(brand_id, page_size, token, timeout=timeout)
            for key in page.keys:
                yield key
            token = page.next_page_token
            if not token:
                return

    # -- WebhookService (the brand's own key or an admin key) -----------------------------------

    async def create_webhook(
        self,
        brand_id: str,
        url: str,
        *,
        after_sequence: int | None = None,
        max_claims_per_delivery: int = 0,
        timeout: float | None = None,
    ) -> NewWebhookSecret:
        """Registers an endpoint that receives the brand's claims with a sequence above
        `after_sequence` (None: only claims made from now on; 0: every claim), at most
        `max_claims_per_delivery` per request (0 means 100). The result holds the signing secret,
        which the server never shows again. Not retried on UNAVAILABLE: list_webhooks tells."""
        request = _webhooks.create_request(brand_id, url, after_sequence, max_claims_per_delivery)
        return _webhooks.new_secret(await self._call("CreateWebhook", request, timeout, self._webhook_stub))

    async def get_webhook(self, webhook_id: str, *, timeout: float | None = None) -> Webhook:
        """One endpoint and where its delivery stands."""
        request = webhook_pb.GetWebhookRequest(webhook_id=webhook_id)
        return _webhooks.webhook_from_proto(
            (await self._call("GetWebhook", request, timeout, self._webhook_stub)).webhook
        )

    async def list_webhooks(self, brand_id: str, *, timeout: float | None = None) -> list[Webhook]:
        """The brand's endpoints (at most 10), oldest first."""
        request = webhook_pb.ListWebhooksRequest(brand_id=brand_id)
        return _webhooks.webhooks(await self._call("ListWebhooks", request, timeout, self._webhook_stub))

    async def delete_webhook(self, webhook_id: str, *, timeout: float | None = None) -> None:
        """Removes an endpoint; nothing more is sent to it."""
        request = webhook_pb.DeleteWebhookRequest(webhook_id=webhook_id)
        await self._call("DeleteWebhook", request, timeout, self._webhook_stub)

    async def replay_webhook(
        self, webhook_id: str, after_sequence: int = 0, *, timeout: float | None = None
    ) -> Webhook:
        """Delivers the brand's claims again from `after_sequence` on (0: every claim) and makes a
        disabled endpoint active again."""
        request = _webhooks.replay_request(webhook_id, after_sequence)
        return _webhooks.webhook_from_proto(
            (await self._call("ReplayWebhook", request, timeout, self._webhook_stub)).webhook
        )

    async def rotate_webhook_secret(self, webhook_id: str, *, timeout: float | None = None) -> NewWebhookSecret:
        """A new signing secret; requests carry signatures by it and by the previous one for 24 hours."""
        request = webhook_pb.RotateWebhookSecretRequest(webhook_id=webhook_id)
        return _webhooks.new_secret(await self._call("RotateWebhookSecret", request, timeout, self._webhook_stub))

    async def list_webhook_deliveries(
        self, webhook_id: str, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> WebhookDeliveryPage:
        """One page of the endpoint's delivery attempts, newest first (`page_size` 0 means 100, at
        most 1,000); pass the page's `next_page_token` for the next one."""
        request = _webhooks.deliveries_request(webhook_id, page_size, page_token)
        return _webhooks.delivery_page(await self._call("ListWebhookDeliveries", request, timeout, self._webhook_stub))
