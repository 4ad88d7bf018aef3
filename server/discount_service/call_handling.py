"""How every gRPC call of this server is handled, whichever service it belongs to: the limits on
calls in flight and open streams, the caller's credential, the unary deadline, lenient request
parsing, and the one mapping of domain errors to status codes with the rich error details
(`status_for`), with one log line and metric per call."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from . import deadline, errors
from .auth import Authenticator
from .limits import Capacity, peer_host
from .models import Principal

# The per-call log keeps the logger name operators already filter on.
log = logging.getLogger("discount_service.servicer")

STATUS_FOR_ERROR: dict[type[errors.DiscountError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.NoCodesLeft: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Throttled: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# google.rpc.ErrorInfo.domain of every error this service returns (AIP-193): the reason is
# unique within it.
ERROR_DOMAIN = "discount.v1"


@dataclasses.dataclass(frozen=True)
class Failure:
    """How a failed call answers: its status code and message for people, and for programs the
    reason (ErrorInfo.reason), the offending field (BadRequest) and facts (ErrorInfo.metadata)."""

    code: grpc.StatusCode
    message: str
    reason: str
    field: str = ""
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # When asking again may help (google.rpc.RetryInfo): an open breaker, a throttle, an overload.
    retry_after_seconds: float | None = None

    def status(self) -> Status:
        """The google.rpc.Status that travels in the `grpc-status-details-bin` trailer."""
        status = Status(code=self.code.value[0], message=self.message)
        status.details.add().Pack(ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata))
        # Every bad request, and any other failure that names a field (a reused request_id with a
        # different count), says which field in a BadRequest: one place for clients to look.
        if self.code is grpc.StatusCode.INVALID_ARGUMENT or self.field:
            violation = BadRequest.FieldViolation(field=self.field, description=self.message, reason=self.reason)
            status.details.add().Pack(BadRequest(field_violations=[violation]))
        if self.retry_after_seconds is not None:
            delay = Duration()
            delay.FromNanoseconds(round(self.retry_after_seconds * 1e9))
            status.details.add().Pack(RetryInfo(retry_delay=delay))
        return status

    async def abort(self, context: Context) -> NoReturn:
        """Ends the call with this status, its details in the trailers (the standard encoding that
        grpcurl, the gRPC libraries and connect-web read); the same for unary and streaming calls,
        before or after a stream's first message."""
        if self.reason in REFUSAL_REASONS:
            status = _refusal_status(self.code, self.message, self.reason, self.retry_after_seconds)
        else:
            status = rpc_status.to_status(self.status())
        await context.abort(status.code, status.details, status.trailing_metadata)


@functools.lru_cache(maxsize=512)
def _refusal_status(code: grpc.StatusCode, message: str, reason: str, retry_after_seconds: float | None) -> Any:
    """A refusal's status, encoded once: a flood gets the same few answers, and encoding each
    would be most of what refusing it costs."""
    return rpc_status.to_status(Failure(code, message, reason, retry_after_seconds=retry_after_seconds).status())


def status_for(method: str, exc: Exception) -> Failure:
    """How a call that raised `exc` answers, unary and streaming alike. Logs an unexpected error in
    full, and another UNAVAILABLE as a warning; a database outage is the store's to log, once per
    outage, not once per call."""
    if isinstance(exc, errors.DiscountError):
        # The most specific mapped class: IdempotencyKeyReused is a FailedPrecondition.
        mapped = (STATUS_FOR_ERROR.get(cls) for cls in type(exc).__mro__)
        code = next((c for c in mapped if c is not None), grpc.StatusCode.INTERNAL)
        if isinstance(exc, errors.DatabaseOutage):
            log.debug("%s unavailable: %s", method, exc.__cause__ or exc)
        elif code is grpc.StatusCode.UNAVAILABLE:  # not an outage (say a lock timeout): worth a look each time
            log.warning("%s unavailable: %s", method, exc.__cause__ or exc)
        return Failure(
            code,
            str(exc),
            exc.reason,
            getattr(exc, "field", ""),
            exc.metadata,
            getattr(exc, "retry_after_seconds", None),
        )
    if isinstance(exc, TimeoutError):
        return Failure(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} did not finish within its deadline", "DEADLINE_EXCEEDED"
        )
    log.error("%s failed", method, exc_info=exc)
    return Failure(grpc.StatusCode.INTERNAL, "internal error; it has been logged", "INTERNAL")


# Called with (method, status code name, seconds) after every call; metrics.py plugs in here.
CallObserver = Callable[[str, str, float], None]


class MalformedRequest:
    """Stands in for a request body that is not a valid protobuf message, so the call can
    answer INVALID_ARGUMENT instead of the INTERNAL that a failing deserializer would give."""


def lenient_parser(message_type: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_type.FromString(data)
        except Exception:  # noqa: BLE001 - any decode failure is the caller's malformed body
            return MalformedRequest()

    return parse


# Each unary method of a service: its handler, its request type and its response type.
UnaryMethods = dict[str, tuple[Callable[..., Any], type[Message], type[Message]]]


def lenient_unary_handlers(methods: UnaryMethods) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The handlers of a service's unary methods, each reading its request with lenient_parser."""
    return {
        name: grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=lenient_parser(request_type),
            response_serializer=response_type.SerializeToString,
        )
        for name, (handler, request_type, response_type) in methods.items()
    }


def _credential_header(context: Context, key: str) -> str | None:
    """The one value of a credential header. Two are refused rather than one picked: a proxy that
    adds its own credential would otherwise decide, unseen, which identity the call runs as."""
    values = [value for name, value in context.invocation_metadata() or () if name == key]
    if len(values) > 1:
        raise errors.Unauthenticated(f"send exactly one {key}")
    return values[0] if values and isinstance(values[0], str) else None


T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

# Refusals that protect the server: counted and logged in limits.Capacity, not once per call.
REFUSAL_REASONS = frozenset({errors.RateLimited.reason, errors.Overloaded.reason})


class CallHandling:
    """What every servicer of this server shares: the limits on calls in flight and open streams,
    the caller's credential (and the throttle on failed ones), the unary call's deadline, the one
    mapping of failures to statuses, and one log line and metric per call."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        default_timeout: float = 30.0,
        observe: CallObserver | None = None,
    ) -> None:
        self._auth = authenticator
        self._default_timeout = default_timeout
        self._observe = observe
        self._capacity: Capacity | None = None

    def share_capacity(self, capacity: Capacity) -> None:
        """Every servicer of a server counts its calls and streams against the same limits."""
        self._capacity = capacity

    def _call_place(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self._capacity is None else self._capacity.call()

    def guarded_stream(
        self, method: str, handler: Callable[[Any, Context], AsyncIterator[T]]
    ) -> Callable[[Any, Context], AsyncIterator[T]]:
        """`handler` behind the limit on open streams: past it, the stream is refused before its
        handler (and its authentication) runs."""

        async def guarded(request: Any, context: Context) -> AsyncIterator[T]:
            if self._capacity is not None:
                try:
                    self._capacity.open_stream()
                except errors.Overloaded as exc:
                    failure = status_for(method, exc)
                    self._finished(method, context, time.perf_counter(), failure)
                    await failure.abort(context)
            try:
                async for message in handler(request, context):
                    yield message
            finally:
                if self._capacity is not None:
                    self._capacity.close_stream()

        return guarded

    async def _principal(self, context: Context) -> Principal:
        return await self._auth.authenticate(
            _credential_header(context, "x-api-key"),
            _credential_header(context, "authorization"),
            peer=peer_host(context.peer()),
        )

    async def _unary(
        self,
        method: str,
        request: Any,
        context: Context,
        handler: Callable[[Principal], Awaitable[T]],
    ) -> T:
        started = time.perf_counter()
        failure: Failure | None = None
        try:
            with self._call_place():
                if isinstance(request, MalformedRequest):
                    raise errors.InvalidArgument("the request body is not a valid protobuf message")
                timeout = context.time_remaining()
                if timeout is None or timeout > self._default_timeout:
                    timeout = self._default_timeout
                async with asyncio.timeout(timeout):
                    with deadline.call_deadline(timeout):
                        return await handler(await self._principal(context))
        except Exception as exc:  # noqa: BLE001 - every failure gets a status; status_for logs the unexpected
            failure = status_for(method, exc)
            await failure.abort(context)
        finally:
            self._finished(method, context, started, failure)
        raise AssertionError("unreachable: abort raises")

    def _finished(self, method: str, context: Context, started: float, failure: Failure | None) -> None:
        """Every call ends here, unary and streaming: one log line (a failure at INFO, a success at
        DEBUG) and the metrics. The line holds the reason and field but never the message or
        anything else the caller sent (user ids, emails, brand ids can be anything), nor a
        credential: the peer address identifies the caller. A call refused to protect the server
        (RATE_LIMITED, OVERLOADED) is counted instead, and logged at most every few seconds: a
        flood must not flood the log too."""
        seconds = time.perf_counter() - started
        code = grpc.StatusCode.OK if failure is None else failure.code
        if failure is not None and failure.reason in REFUSAL_REASONS:
            if self._capacity is not None:
                self._capacity.count_refusal(failure.reason)
        elif failure is not None:
            log.info(
                "%s failed: %s reason=%s%s peer=%s duration_ms=%.1f",
                method,
                code.name,
                failure.reason,
                f" field={failure.field}" if failure.field else "",
                context.peer(),
                seconds * 1000,
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s OK peer=%s duration_ms=%.1f", method, context.peer(), seconds * 1000)
        if self._observe is not None:
            self._observe(method, code.name, seconds)
