"""Exceptions raised by the discount client: one class per situation a caller handles differently.

The class is chosen by the `google.rpc.ErrorInfo` reason the service sends with every error
(domain ``discount.v1``), never by the status code alone: RESOURCE_EXHAUSTED is "no codes left"
only when the service says NO_CODES_LEFT, and "request too large" when gRPC itself refused an
oversized message. Statuses that gRPC makes on its own (no reason: the server is unreachable, the
deadline passed) are mapped by their code.

Every exception carries the server's message (``str(exc)`` and ``exc.message``), the gRPC status
code name (``exc.code``, e.g. ``"NOT_FOUND"``), the method that failed (``exc.method``), the
service's reason (``exc.reason``, e.g. ``"BRAND_NOT_FOUND"``; empty when the status did not come
from the service), the offending request field (``exc.field``, e.g. ``"email"``; empty if none)
and the ErrorInfo metadata (``exc.metadata``). When the service says how long to wait before asking
again (a ``google.rpc.RetryInfo``: the database is unreachable, the caller or the server is over a
limit), ``exc.retry_after`` is that delay in seconds; otherwise None.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

# ErrorInfo.domain of the discount service's errors; a reason from another domain (a proxy, another
# service) is not ours to interpret.
ERROR_DOMAIN = "discount.v1"


class DiscountError(Exception):
    """Base class of every error the client raises for a failed call."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNKNOWN",
        method: str = "",
        reason: str = "",
        field: str = "",
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.method = method
        self.reason = reason
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}" for name, value in (("reason", self.reason), ("field", self.field)) if value
        )
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, method={self.method!r}{extra})"


class InvalidArgument(DiscountError):
    """INVALID_ARGUMENT (reason INVALID_FIELD): the request is malformed; sending it again unchanged
    fails again. ``field`` names the offending field."""


class NotFound(DiscountError):
    """NOT_FOUND (reason BRAND_NOT_FOUND): the brand does not exist."""


class AlreadyExists(DiscountError):
    """ALREADY_EXISTS (reason BRAND_ALREADY_EXISTS): the brand already exists."""


class NoCodesLeft(DiscountError):
    """RESOURCE_EXHAUSTED with reason NO_CODES_LEFT: the brand has no available, unexpired code left
    to claim."""


class RequestTooLarge(DiscountError):
    """RESOURCE_EXHAUSTED from gRPC itself: a message of the call is larger than the gRPC message
    size limit (the server accepts at most DISCOUNT_MAX_MESSAGE_BYTES, 1 MiB by default). Nothing
    was done; the request must be made smaller."""


class FailedPrecondition(DiscountError):
    """FAILED_PRECONDITION: the request is valid but cannot be done in the current state."""


class IdempotencyKeyReused(FailedPrecondition):
    """FAILED_PRECONDITION with reason IDEMPOTENCY_KEY_REUSED: the request_id was used before with
    different parameters; ``field`` names the first that differs. Nothing was created."""


class CodeNotFound(NotFound):
    """NOT_FOUND with reason CODE_NOT_FOUND: the brand has no such code."""


class RedemptionNotFound(NotFound):
    """NOT_FOUND with reason REDEMPTION_NOT_FOUND: the order never redeemed the code."""


class CodeNotHeldByUser(FailedPrecondition):
    """FAILED_PRECONDITION with reason CODE_NOT_HELD_BY_USER: the user did not claim this code (it is
    unclaimed or someone else's; the service does not say which)."""


class CodeExpired(FailedPrecondition):
    """FAILED_PRECONDITION with reason CODE_EXPIRED: the code is past its expiry."""


class CodeAlreadyRedeemed(FailedPrecondition):
    """FAILED_PRECONDITION with reason CODE_ALREADY_REDEEMED: another order's redemption of the code
    stands; it must be cancelled before the code can be used again."""


class RedemptionCancelled(FailedPrecondition):
    """FAILED_PRECONDITION with reason REDEMPTION_CANCELLED: this order's redemption of the code was
    cancelled; a new order id can redeem it."""


class Unauthenticated(DiscountError):
    """UNAUTHENTICATED: the API key is missing, unknown or revoked."""


class PermissionDenied(DiscountError):
    """PERMISSION_DENIED: the API key is valid but its role (or brand) does not allow this call."""


class Unavailable(DiscountError):
    """UNAVAILABLE: the server (or its database) could not be reached, even after the automatic retries.
    With reason DATABASE_UNAVAILABLE, ``retry_after`` is the server's advice on when to ask again.

    Every call of this API is idempotent, so the caller may retry later."""


class RateLimited(DiscountError):
    """RESOURCE_EXHAUSTED with reason RATE_LIMITED: too many failed authentications from the caller's
    host; ``retry_after`` seconds from now it may try again. A valid key is not refused this way."""


class Overloaded(DiscountError):
    """RESOURCE_EXHAUSTED with reason OVERLOADED: the server was at its limit of calls in flight or
    open streams and refused the call before doing anything; ask again after ``retry_after`` seconds
    (or another replica)."""


class DeadlineExceeded(DiscountError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline. When the client had not
    connected to the server by then, the message says that the server could not be reached."""


# The service's reasons (ErrorInfo.reason in domain discount.v1) that have a class of their own.
_BY_REASON: dict[str, type[DiscountError]] = {
    "INVALID_FIELD": InvalidArgument,
    "BRAND_NOT_FOUND": NotFound,
    "BRAND_ALREADY_EXISTS": AlreadyExists,
    "NO_CODES_LEFT": NoCodesLeft,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReused,
    "CODE_NOT_FOUND": CodeNotFound,
    "REDEMPTION_NOT_FOUND": RedemptionNotFound,
    "CODE_NOT_HELD_BY_USER": CodeNotHeldByUser,
    "CODE_EXPIRED": CodeExpired,
    "CODE_ALREADY_REDEEMED": CodeAlreadyRedeemed,
    "REDEMPTION_CANCELLED": RedemptionCancelled,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "DATABASE_UNAVAILABLE": Unavailable,
    "RATE_LIMITED": RateLimited,
    "OVERLOADED": Overloaded,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}

# Statuses whose meaning does not depend on who sent them: a reason the client does not know yet
# (a newer server), or one that gRPC made itself, still maps to these. RESOURCE_EXHAUSTED is not
# here: it means "no codes left" only with that reason.
_BY_STATUS: dict[grpc.StatusCode, type[DiscountError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

# gRPC's own words when a message exceeds the size limit, on either side ("Received message larger
# than max (1048602 vs. 1048576)", "Sent message larger than max ...").
_TOO_LARGE = re.compile(r"message larger than max", re.IGNORECASE)


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call; None for an RpcError that is not a call's."""
    return error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None


def _details(error: grpc.RpcError) -> Status | None:
    """The google.rpc.Status the server sent in the `grpc-status-details-bin` trailer, if any and
    if it describes this very status."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return None
    try:
        status: Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]  # AioRpcError has the same accessors
    except (ValueError, DecodeError):  # details of another status, or not a Status at all
        return None
    return status


def from_rpc_error(error: grpc.RpcError, method: str, *, unreached_address: str = "") -> DiscountError:
    """The documented exception for a failed call, carrying the server's message, reason and field.

    `unreached_address` is the server's address when the client's channel has not connected to it:
    a deadline that gRPC enforced itself then says so, since gRPC's own message ("Deadline
    Exceeded") does not tell a server that is down from one that is slow."""
    code = status_code(error)
    details: str | None = error.details() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    name = code.name if code is not None else "UNKNOWN"
    message = details or f"{method} failed with {name}"
    reason, field, metadata = "", "", {}
    retry_after: float | None = None
    status = _details(error)
    for detail in status.details if status is not None else ():
        info, request, retry = ErrorInfo(), BadRequest(), RetryInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:  # Unpack is False for another type
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(request):
            field = next((v.field for v in request.field_violations if v.field), field)
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    cls: type[DiscountError]
    if reason in _BY_REASON:
        cls = _BY_REASON[reason]
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and not reason and _TOO_LARGE.search(message):
        cls = RequestTooLarge
    else:
        cls = _BY_STATUS.get(code, DiscountError) if code is not None else DiscountError
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and not reason and unreached_address:
        message += f": the server at {unreached_address} could not be reached (the client has not connected to it)"
    return cls(
        message, code=name, method=method, reason=reason, field=field, metadata=metadata, retry_after=retry_after
    )
