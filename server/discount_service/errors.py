"""Domain errors. The store raises them from database errors; the servicer maps them to gRPC
status codes and to the rich error details (google.rpc.ErrorInfo, BadRequest). Nothing else
crosses a boundary.

Each error carries a stable `reason` (UPPER_SNAKE_CASE, the ErrorInfo reason callers switch on)
and, for a bad field, the field's name. The message is for people and is safe to show to the
caller; the reason is for programs and never changes for an error once published.
"""

from __future__ import annotations


class DiscountError(Exception):
    """Base class; the message is safe to show to the caller."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        # Extra machine-readable facts for ErrorInfo.metadata (e.g. the brand_id); never secrets.
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DiscountError):
    """The request is malformed; retrying it unchanged will fail again."""

    reason = "INVALID_FIELD"

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        # The offending request field (google.rpc.BadRequest.FieldViolation.field); empty if the
        # request as a whole is bad (an unparsable body).
        self.field = field


class NotFound(DiscountError):
    """The brand (or key) does not exist."""

    reason = "BRAND_NOT_FOUND"


class AlreadyExists(DiscountError):
    """The brand already exists."""

    reason = "BRAND_ALREADY_EXISTS"


class NoCodesLeft(DiscountError):
    """The brand has no available, unexpired code."""

    reason = "NO_CODES_LEFT"


class OutOfRange(DiscountError):
    """A position past the end of what exists (a cursor beyond a feed's head); `field` names it."""

    reason = "OUT_OF_RANGE"

    def __init__(
        self, message: str, *, field: str, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field = field


class FailedPrecondition(DiscountError):
    """The request is valid but cannot be done in the current state."""

    reason = "FAILED_PRECONDITION"


class IdempotencyKeyReused(FailedPrecondition):
    """A request_id was used before with different parameters; `field` names the first that differs."""

    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, message: str, *, field: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.field = field


class Unauthenticated(DiscountError):
    """No credential, or one that is unknown, revoked, expired or forged."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(DiscountError):
    """The credential is valid but does not allow this call."""

    reason = "PERMISSION_DENIED"


class Unavailable(DiscountError):
    """The database is unreachable; the call changed nothing it acknowledged and may be retried."""

    reason = "DATABASE_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        # How soon asking again may help (google.rpc.RetryInfo): the store sets it to when its
        # probe tries the database next. None: retry with the usual backoff.
        self.retry_after_seconds = retry_after_seconds


class DatabaseOutage(Unavailable):
    """No connection to the database: refused, broken, or none free in time. The store logs an
    outage once, when it starts and when it ends, so a call that meets one is not logged again."""


class Throttled(DiscountError):
    """The call was refused before any work, to protect the server; retry after `retry_after_seconds`."""

    def __init__(self, message: str, *, retry_after_seconds: float, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class RateLimited(Throttled):
    """Too many failed authentications from the caller's host."""

    reason = "RATE_LIMITED"


class Overloaded(Throttled):
    """The server is at its limit of calls in flight or open streams."""

    reason = "OVERLOADED"
