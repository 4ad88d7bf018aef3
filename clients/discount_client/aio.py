"""`AsyncDiscountClient`: the asyncio client (grpc.aio)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from discount.v1 import admin_service_pb2 as admin_pb
from discount.v1 import admin_service_pb2_grpc as admin_pb_grpc
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc

from . import _admin, _common
from ._admin import ApiKey, ApiKeyPage, Brand, BrandPage, NewApiKey, Role
from ._common import BrandStats, Claim, ClaimResult, GenerateResult, RetryPolicy, WatchBackoff
from .errors import DiscountError, InvalidArgument, from_rpc_error

log = logging.getLogger("discount_client")

OnDisconnect = Callable[[DiscountError, float, int], None]


class AsyncDiscountClient:
    """The asyncio twin of `DiscountClient`: same arguments, same behaviour, awaitable calls.

    >>> async with AsyncDiscountClient("127.0.0.1:50051", api_key) as client:
    ...     result = await client.claim_code("acme", "user-42", "user42@example.com")
    ...     async for claim in client.watch_claims("acme"):
    ...         print(claim.sequence, claim.code)

    Create it inside the event loop that uses it.
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
        channel_options = _common.channel_options(retry, options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=channel_options)
        self._stub = pb_grpc.DiscountServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin_stub = admin_pb_grpc.AdminServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Closes the channel; a `watch_claims` iterator in progress then simply ends."""
        self._closed = True
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncDiscountClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, method: str, request: Any, timeout: float | None, stub: Any = None) -> Any:
        try:
            return await getattr(stub or self._stub, method)(
                request, metadata=self._metadata, timeout=self.deadline if timeout is None else timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, method) from exc

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
        """See `DiscountClient.generate_codes`."""
        request = _common.generate_request(
            brand_id, count, request_id=request_id, prefix=prefix, code_length=code_length, expires_at=expires_at
        )
        return _common.generate_result(await self._call("GenerateCodes", request, timeout), request.request_id)

    async def claim_code(self, brand_id: str, user_id: str, email: str, *, timeout: float | None = None) -> ClaimResult:
        """See `DiscountClient.claim_code`."""
        request = pb.ClaimCodeRequest(brand_id=brand_id, user_id=user_id, email=email)
        return _common.claim_result(await self._call("ClaimCode", request, timeout))

    async def get_brand_stats(self, brand_id: str, *, timeout: float | None = None) -> BrandStats:
        """See `DiscountClient.get_brand_stats`."""
        request = pb.GetBrandStatsRequest(brand_id=brand_id)
        return _common.brand_stats(await self._call("GetBrandStats", request, timeout))

    async def watch_claims(
        self,
        brand_id: str,
        after_sequence: int = 0,
        *,
        backoff: WatchBackoff = WatchBackoff(),
        on_disconnect: OnDisconnect | None = None,
    ) -> AsyncIterator[Claim]:
        """See `DiscountClient.watch_claims`: every claim exactly once, across reconnects."""
        if after_sequence < 0:
            raise InvalidArgument(
                f"after_sequence must be at least 0, got {after_sequence}",
                code="INVALID_ARGUMENT",
                method="WatchClaims",
                reason="INVALID_FIELD",
                field="after_sequence",
            )
        cursor = after_sequence
        failures = 0
        while not self._closed:
            call = self._stub.WatchClaims(
                pb.WatchClaimsRequest(
                    brand_id=brand_id,
                    after_sequence=cursor,
                    max_claims_per_response=_common.WATCH_CLAIMS_PER_RESPONSE,
                ),
                metadata=self._metadata,
            )
            error: DiscountError
            try:
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
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                error = from_rpc_error(exc, "WatchClaims")
                if exc.code() not in _common.WATCH_RECONNECT_CODES:
                    raise error from exc
            finally:
                call.cancel()
            delay = backoff.delay(failures)
            failures += 1
            log.info("watch of %s interrupted (%s: %s); reconnecting in %.2fs", brand_id, error.code, error, delay)
            if on_disconnect is not None:
                on_disconnect(error, delay, cursor)
            await asyncio.sleep(delay)

    # -- AdminService (admin keys only) ---------------------------------------------------------

    async def create_brand(self, brand_id: str, display_name: str = "", *, timeout: float | None = None) -> Brand:
        """See `DiscountClient.create_brand`."""
        request = admin_pb.CreateBrandRequest(brand_id=brand_id, display_name=display_name)
        return _admin.brand_from_proto((await self._call("CreateBrand", request, timeout, self._admin_stub)).brand)

    async def list_brands(self, page_size: int = 0, page_token: str = "", *, timeout: float | None = None) -> BrandPage:
        """See `DiscountClient.list_brands`."""
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
        """See `DiscountClient.create_api_key`."""
        request = _admin.create_api_key_request(role, brand_id)
        return _admin.new_api_key(await self._call("CreateApiKey", request, timeout, self._admin_stub))

    async def revoke_api_key(self, key_id: str, *, timeout: float | None = None) -> ApiKey:
        """See `DiscountClient.revoke_api_key`."""
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
        """See `DiscountClient.list_api_keys`."""
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
