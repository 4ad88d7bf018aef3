"""gRPC transport: protobuf <-> domain calls, and domain errors -> status codes, once, here."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from discount.v1 import discount_service_pb2 as pb

from . import errors
from .auth import Authenticator
from .models import Claim, Principal
from .service import DiscountService

log = logging.getLogger(__name__)

SERVICE_NAME = "discount.v1.DiscountService"

STATUS_FOR_ERROR: dict[type[errors.DiscountError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.NoCodesLeft: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Called with (method, status code name, seconds) after every call; metrics.py plugs in here.
CallObserver = Callable[[str, str, float], None]


class MalformedRequest:
    """Stands in for a request body that is not a valid protobuf message, so the call can
    answer INVALID_ARGUMENT instead of the INTERNAL that a failing deserializer would give."""


def _lenient_parser(message_type: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_type.FromString(data)
        except Exception:  # noqa: BLE001 - any decode failure is the caller's malformed body
            return MalformedRequest()

    return parse


def claim_to_proto(claim: Claim) -> pb.Claim:
    message = pb.Claim(
        sequence=claim.sequence,
        brand_id=claim.brand_id,
        code=claim.code,
        user_id=claim.user_id,
        email=claim.email,
    )
    message.claimed_at.FromDatetime(claim.claimed_at)
    if claim.expires_at is not None:
        message.expires_at.FromDatetime(claim.expires_at)
    return message


def _metadata(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


MAX_CLAIMS_PER_RESPONSE = 1000  # keeps a response far below the 1 MiB message limit


def _length_delimited(field_tag: int, payload: bytes) -> bytes:
    """One protobuf length-delimited field: tag, varint length, bytes."""
    size, length = len(payload), bytearray()
    while size > 0x7F:
        length.append((size & 0x7F) | 0x80)
        size >>= 7
    length.append(size)
    return bytes((field_tag,)) + bytes(length) + payload


class EncodedClaims:
    """Each claim encoded once and shared as bytes by every watcher that streams it: the feed
    hands all watchers of a brand the same Claim objects, so fan-out costs one protobuf encoding
    per event instead of one per watcher (docs/performance.md).

    Per claim it keeps two ready-made pieces of a WatchClaimsResponse: field 1 (`claim`, a whole
    response on its own) and one element of field 2 (`claims`); a batched response is just the
    concatenation of its claims' elements."""

    _CLAIM_TAG = 0x0A  # field 1, wire type 2
    _CLAIMS_TAG = 0x12  # field 2, wire type 2

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        # id(claim) -> (claim, single, element); holding the claim keeps its id from being reused.
        self._entries: dict[int, tuple[Claim, bytes, bytes]] = {}
        self._last_batch: tuple[list[Claim], bytes] | None = None

    def _get(self, claim: Claim) -> tuple[Claim, bytes, bytes]:
        entry = self._entries.get(id(claim))
        if entry is not None and entry[0] is claim:
            return entry
        body = claim_to_proto(claim).SerializeToString()
        entry = (claim, _length_delimited(self._CLAIM_TAG, body), _length_delimited(self._CLAIMS_TAG, body))
        if len(self._entries) >= self._size:  # drop the oldest quarter (dicts keep insertion order)
            for key in list(itertools.islice(self._entries, self._size // 4)):
                del self._entries[key]
        self._entries[id(claim)] = entry
        return entry

    def single(self, claim: Claim) -> bytes:
        """A WatchClaimsResponse with `claim` set."""
        return self._get(claim)[1]

    def batch(self, claims: list[Claim]) -> bytes:
        """A WatchClaimsResponse with `claims` set to these claims. The feed hands every caught-up
        watcher the same list, so the last one's encoding is kept and reused."""
        last = self._last_batch
        if last is not None and last[0] is claims:
            return last[1]
        encoded = b"".join([self._get(claim)[2] for claim in claims])
        self._last_batch = (claims, encoded)
        return encoded


T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


class DiscountServicer:
    def __init__(
        self,
        service: DiscountService,
        authenticator: Authenticator,
        *,
        default_timeout: float = 30.0,
        observe: CallObserver | None = None,
    ) -> None:
        self._service = service
        self._auth = authenticator
        self._default_timeout = default_timeout
        self._observe = observe
        self._encoded = EncodedClaims()

    async def _principal(self, context: Context) -> Principal:
        return await self._auth.authenticate(_metadata(context, "x-api-key"), _metadata(context, "authorization"))

    async def _unary(
        self,
        method: str,
        request: Any,
        context: Context,
        handler: Callable[[Principal], Awaitable[T]],
    ) -> T:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, MalformedRequest):
                raise errors.InvalidArgument("the request body is not a valid protobuf message")
            timeout = context.time_remaining()
            if timeout is None or timeout > self._default_timeout:
                timeout = self._default_timeout
            async with asyncio.timeout(timeout):
                return await handler(await self._principal(context))
        except errors.DiscountError as exc:
            code = STATUS_FOR_ERROR.get(type(exc), grpc.StatusCode.INTERNAL)
            if code is grpc.StatusCode.UNAVAILABLE:
                log.warning("%s unavailable: %s", method, exc.__cause__ or exc)
            await context.abort(code, str(exc))
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await context.abort(code, f"{method} did not finish within its deadline")
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            await context.abort(code, "internal error; it has been logged")
        finally:
            if self._observe is not None:
                self._observe(method, code.name, time.perf_counter() - started)
        raise AssertionError("unreachable: abort raises")

    async def GenerateCodes(self, request: Any, context: Context) -> pb.GenerateCodesResponse:
        async def handle(principal: Principal) -> pb.GenerateCodesResponse:
            expires_at = None
            if request.HasField("expires_at"):
                try:
                    expires_at = request.expires_at.ToDatetime(tzinfo=UTC)
                except (ValueError, OverflowError) as exc:
                    raise errors.InvalidArgument(f"expires_at is not a valid timestamp: {exc}") from None
            result = await self._service.generate_codes(
                principal,
                brand_id=request.brand_id,
                count=request.count,
                request_id=request.request_id,
                code_length=request.code_length,
                prefix=request.prefix,
                expires_at=expires_at,
            )
            return pb.GenerateCodesResponse(
                brand_id=result.brand_id,
                batch_id=result.batch_id,
                generated=result.generated,
                available=result.available,
            )

        return await self._unary("GenerateCodes", request, context, handle)

    async def ClaimCode(self, request: Any, context: Context) -> pb.ClaimCodeResponse:
        async def handle(principal: Principal) -> pb.ClaimCodeResponse:
            result = await self._service.claim_code(
                principal, brand_id=request.brand_id, user_id=request.user_id, email=request.email
            )
            return pb.ClaimCodeResponse(claim=claim_to_proto(result.claim), newly_claimed=result.newly_claimed)

        return await self._unary("ClaimCode", request, context, handle)

    async def GetBrandStats(self, request: Any, context: Context) -> pb.GetBrandStatsResponse:
        async def handle(principal: Principal) -> pb.GetBrandStatsResponse:
            stats = await self._service.brand_stats(principal, brand_id=request.brand_id)
            return pb.GetBrandStatsResponse(
                brand_id=stats.brand_id,
                total=stats.total,
                available=stats.available,
                claimed=stats.claimed,
                expired=stats.expired,
            )

        return await self._unary("GetBrandStats", request, context, handle)

    async def WatchClaims(self, request: Any, context: Context) -> AsyncIterator[bytes]:
        """Yields encoded WatchClaimsResponse messages (registered with a pass-through serializer)."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, MalformedRequest):
                raise errors.InvalidArgument("the request body is not a valid protobuf message")
            principal = await self._principal(context)
            claims = await self._service.open_watch(
                principal, brand_id=request.brand_id, after_sequence=request.after_sequence
            )
            # Headers now, not with the first claim: a watcher of a quiet brand learns at once that
            # its stream is open (the browser page shows "Live" from this).
            await context.send_initial_metadata(())
            per_response = min(request.max_claims_per_response, MAX_CLAIMS_PER_RESPONSE)
            async for run in claims:
                if per_response <= 1:
                    for claim in run:
                        yield self._encoded.single(claim)
                elif len(run) <= per_response:
                    yield self._encoded.batch(run)
                else:
                    for start in range(0, len(run), per_response):
                        yield self._encoded.batch(run[start : start + per_response])
        except errors.DiscountError as exc:
            code = STATUS_FOR_ERROR.get(type(exc), grpc.StatusCode.INTERNAL)
            await context.abort(code, str(exc))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("WatchClaims failed")
            await context.abort(code, "internal error; it has been logged")
        finally:
            if self._observe is not None:
                self._observe("WatchClaims", code.name, time.perf_counter() - started)


def add_to_server(servicer: DiscountServicer, server: grpc.aio.Server) -> None:
    """Registers the service with lenient request parsers (see MalformedRequest)."""
    unary = grpc.unary_unary_rpc_method_handler
    handlers = {
        "GenerateCodes": unary(
            servicer.GenerateCodes,
            request_deserializer=_lenient_parser(pb.GenerateCodesRequest),
            response_serializer=pb.GenerateCodesResponse.SerializeToString,
        ),
        "ClaimCode": unary(
            servicer.ClaimCode,
            request_deserializer=_lenient_parser(pb.ClaimCodeRequest),
            response_serializer=pb.ClaimCodeResponse.SerializeToString,
        ),
        "GetBrandStats": unary(
            servicer.GetBrandStats,
            request_deserializer=_lenient_parser(pb.GetBrandStatsRequest),
            response_serializer=pb.GetBrandStatsResponse.SerializeToString,
        ),
        "WatchClaims": grpc.unary_stream_rpc_method_handler(
            servicer.WatchClaims,
            request_deserializer=_lenient_parser(pb.WatchClaimsRequest),
            response_serializer=None,  # WatchClaims yields bytes, encoded once per claim
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
