"""Domain errors. The store raises them from database errors; the servicer maps them to gRPC
status codes. Nothing else crosses a boundary."""


class DiscountError(Exception):
    """Base class; the message is safe to show to the caller."""


class InvalidArgument(DiscountError):
    """The request is malformed; retrying it unchanged will fail again."""


class NotFound(DiscountError):
    """The brand (or key) does not exist."""


class AlreadyExists(DiscountError):
    """The brand already exists."""


class NoCodesLeft(DiscountError):
    """The brand has no available, unexpired code."""


class FailedPrecondition(DiscountError):
    """The request is valid but cannot be done in the current state."""


class Unauthenticated(DiscountError):
    """No credential, or one that is unknown, revoked, expired or forged."""


class PermissionDenied(DiscountError):
    """The credential is valid but does not allow this call."""


class Unavailable(DiscountError):
    """The database is unreachable; the call changed nothing it acknowledged and may be retried."""
