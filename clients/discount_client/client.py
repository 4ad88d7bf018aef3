"""`DiscountClient`: the synchronous client."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc

from . import _common
from ._common import BrandStats, Claim, ClaimResult, GenerateResult, RetryPolicy, WatchBackoff
from .errors import DiscountError, InvalidArgument, from_rpc_error

log = logging.getLogger("discount_client")

# Called before each watch reconnect with the error that ended the stream, the delay before the
# next attempt and the last sequence delivered.
OnDisconnect = Callable[[DiscountError, float, int], None]


class DiscountClient:
    """A typed, synchronous client of `discount.v1.DiscountService`.

    >>> with DiscountClient("127.0.0.1:50051", api_key) as client:
    ...     result = client.claim_code("acme", "user-42", "user42@example.com")
    ...     print(result.claim.code)

    - Every call sends `api_key` as `x-api-key`; every unary call has a deadline
      (`deadline` seconds unless the call passes `timeout`).
    - UNAVAILABLE is retried by gRPC itself with exponential backoff (`retry`, a service-config
      retry policy; `retry=None` turns it off). Every call is idempotent: GenerateCodes without a
      `request_id` gets a fresh one here, so a retried attempt cannot create a second batch.
    - Failures raise the exceptions of `discount_client.errors`, carrying the server's message.
    - `credentials` (e.g. `grpc.ssl_channel_credentials()`) switches to TLS.
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
            self._channel = grpc.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=channel_options)
        self._stub = pb_grpc.DiscountServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Closes the channel; a `watch_claims` iterator in progress then simply ends."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> DiscountClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, metadata=self._metadata, timeout=self.deadline if timeout is None else timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, method) from exc

    def generate_codes(
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
        return _common.generate_result(self._call("GenerateCodes", request, timeout), request.request_id)

    def claim_code(self, brand_id: str, user_id: str, email: str, *, timeout: float | None = None) -> ClaimResult:
        """Gives the user one code of the brand, or the one they already hold. Raises
        `NoCodesLeft` when the brand has none available."""
        request = pb.ClaimCodeRequest(brand_id=brand_id, user_id=user_id, email=email)
        return _common.claim_result(self._call("ClaimCode", request, timeout))

    def get_brand_stats(self, brand_id: str, *, timeout: float | None = None) -> BrandStats:
        """Counts the brand's codes by state."""
        return _common.brand_stats(self._call("GetBrandStats", pb.GetBrandStatsRequest(brand_id=brand_id), timeout))

    def watch_claims(
        self,
        brand_id: str,
        after_sequence: int = 0,
        *,
        backoff: WatchBackoff = WatchBackoff(),
        on_disconnect: OnDisconnect | None = None,
    ) -> Iterator[Claim]:
        """Yields the brand's claims with a sequence greater than `after_sequence`, in order, then
        new ones live, forever.

        When the stream breaks (server restart, network, proxy) it reconnects with exponential
        backoff and resumes after the last claim it yielded: the caller sees every claim exactly
        once. Errors that a reconnect cannot fix (bad key, unknown brand) are raised. Stop by
        breaking out of the loop (or `close()` on the iterator)."""
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
            try:
                call = self._stub.WatchClaims(
                    pb.WatchClaimsRequest(
                        brand_id=brand_id,
                        after_sequence=cursor,
                        max_claims_per_response=_common.WATCH_CLAIMS_PER_RESPONSE,
                    ),
                    metadata=self._metadata,
                )
            except ValueError:  # the channel was closed meanwhile
                if self._closed:
                    return
                raise
            error: DiscountError
            try:
                for response in call:
                    # A server that predates batching ignores the request and sets `claim`.
                    for claim in response.claims or (response.claim,):
                        if claim.sequence <= cursor:
                            continue  # never yield twice, whatever the server sends
                        cursor = claim.sequence
                        failures = 0
                        yield _common.claim_from_proto(claim)
                error = DiscountError("the server ended the stream", code="OK", method="WatchClaims")
            except grpc.RpcError as exc:
                if self._closed:
                    return
                error = from_rpc_error(exc, "WatchClaims")
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code not in _common.WATCH_RECONNECT_CODES:
                    raise error from exc
            finally:
                call.cancel()
            delay = backoff.delay(failures)
            failures += 1
            log.info("watch of %s interrupted (%s: %s); reconnecting in %.2fs", brand_id, error.code, error, delay)
            if on_disconnect is not None:
                on_disconnect(error, delay, cursor)
            time.sleep(delay)
