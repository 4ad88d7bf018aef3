"""Exceptions raised by the discount client: one class per gRPC status a caller handles differently.

Every exception carries the server's message (``str(exc)`` and ``exc.message``), the gRPC status
code name (``exc.code``, e.g. ``"NOT_FOUND"``) and the method that failed (``exc.method``).
"""

from __future__ import annotations

import grpc


class DiscountError(Exception):
    """Base class of every error the client raises for a failed call."""

    def __init__(self, message: str, *, code: str = "UNKNOWN", method: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.method = method

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, method={self.method!r})"


class InvalidArgument(DiscountError):
    """INVALID_ARGUMENT: the request is malformed; sending it again unchanged fails again."""


class NotFound(DiscountError):
    """NOT_FOUND: the brand does not exist."""


class NoCodesLeft(DiscountError):
    """RESOURCE_EXHAUSTED: the brand has no available, unexpired code left to claim."""


class Unauthenticated(DiscountError):
    """UNAUTHENTICATED: the API key is missing, unknown or revoked."""


class PermissionDenied(DiscountError):
    """PERMISSION_DENIED: the API key is valid but its role (or brand) does not allow this call."""


class Unavailable(DiscountError):
    """UNAVAILABLE: the server (or its database) could not be reached, even after the automatic retries.

    Every call of this API is idempotent, so the caller may retry later."""


class DeadlineExceeded(DiscountError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline."""


_BY_STATUS: dict[grpc.StatusCode, type[DiscountError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: NoCodesLeft,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(error: grpc.RpcError, method: str) -> DiscountError:
    """The documented exception for a failed call, carrying the server's message."""
    code: grpc.StatusCode | None = error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    details: str | None = error.details() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    name = code.name if code is not None else "UNKNOWN"
    message = details or f"{method} failed with {name}"
    cls = _BY_STATUS.get(code, DiscountError) if code is not None else DiscountError
    return cls(message, code=name, method=method)
