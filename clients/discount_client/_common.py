"""What the sync and async clients share: configuration, the retry service config, result types
and protobuf conversion."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc

from .errors import DiscountError, InvalidArgument

SERVICE_NAME = "discount.v1.DiscountService"
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DEADLINE_SECONDS = 10.0
# Watches ask for up to this many claims per message: a watcher that is behind, or a busy brand,
# costs the server one write per run of claims instead of one per claim.
WATCH_CLAIMS_PER_RESPONSE = 256

# Watch streams end with these codes when the server, the network or a proxy goes away; the
# watch iterator reconnects. Anything else (bad key, unknown brand, ...) is raised to the caller.
WATCH_RECONNECT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# Refusals after which the server tells the caller how long to wait (google.rpc.RetryInfo); the
# same request is then safe to send again, as every DiscountService call is idempotent.
RETRY_INFO_REASONS = frozenset({"DATABASE_UNAVAILABLE", "RATE_LIMITED", "OVERLOADED"})


def seconds_now() -> float:
    """A monotonic clock, for the time a call has left across its attempts."""
    return time.monotonic()


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retry policy for UNAVAILABLE, applied through the channel's service config, and
    the client's for the refusals that say when to ask again (RETRY_INFO_REASONS).

    gRPC waits a random time between 0 and the current backoff before each new attempt; the
    backoff starts at `initial_backoff` and is multiplied by `multiplier` up to `max_backoff`.
    gRPC caps `max_attempts` at 5. The call's deadline covers all attempts.

    When the failure that ends those attempts carries a `google.rpc.RetryInfo` delay (the database
    is unreachable, the caller or the server is over a limit), the client calls again after that
    delay plus the same random backoff, up to `max_attempts` times in all, while the deadline
    leaves room for the wait.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delay_before_retry(self, error: DiscountError, retries_so_far: int) -> float | None:
        """Seconds to wait before calling again after `error`, or None when it is not worth it: the
        server did not say when to ask again, or the attempts are used up. At least the server's
        delay; the random part spreads the callers it refused at the same moment."""
        if error.retry_after is None or error.reason not in RETRY_INFO_REASONS:
            return None
        if retries_so_far + 1 >= self.max_attempts:
            return None
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retries_so_far)
        return error.retry_after + random.uniform(0, ceiling)

    def service_config(self) -> dict[str, Any]:
        return {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {
                        "maxAttempts": self.max_attempts,
                        "initialBackoff": f"{self.initial_backoff:.3f}s",
                        "maxBackoff": f"{self.max_backoff:.3f}s",
                        "backoffMultiplier": self.multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }


@dataclass(frozen=True)
class WatchBackoff:
    """How the watch iterator waits between reconnects: exponential, with full jitter."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect number `attempt` (0-based)."""
        ceiling = min(self.maximum, self.initial * self.multiplier**attempt)
        return random.uniform(ceiling / 2, ceiling)


def discount_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The generated DiscountService stub of a channel of either kind (the clients type its results)."""
    return pb_grpc.DiscountServiceStub(channel)  # type: ignore[no-untyped-call]


def channel_options(retry: RetryPolicy | None, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        # Reconnect quickly after a server restart (gRPC's default starts at 1 s and grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # Notice a dead peer on an idle watch stream; the server allows pings every 10 s.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    if retry is None:
        options += [("grpc.enable_retries", 0)]
    else:
        options += [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(retry.service_config())),
        ]
    overridden = {name for name, _ in extra}
    return [option for option in options if option[0] not in overridden] + list(extra)


@dataclass(frozen=True)
class Claim:
    """One claim: which user got which code of a brand, and its position in the brand's feed."""

    sequence: int
    brand_id: str
    code: str
    user_id: str
    email: str
    claimed_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class ClaimResult:
    """The user's code of the brand; `newly_claimed` is False if the user already held it."""

    claim: Claim
    newly_claimed: bool


@dataclass(frozen=True)
class GenerateResult:
    """A batch of codes. `request_id` is the idempotency key used (generated if none was given)."""

    brand_id: str
    batch_id: str
    generated: int
    available: int
    request_id: str


@dataclass(frozen=True)
class BrandStats:
    """A brand's code counts: total = available + claimed + expired."""

    brand_id: str
    total: int
    available: int
    claimed: int
    expired: int
    # Claimed codes with a redemption that stands (within `claimed`).
    redeemed: int = 0


def invalid_field(message: str, method: str, field_name: str) -> InvalidArgument:
    """The error a request refused before it is sent gets: what the server would answer for it."""
    return InvalidArgument(message, code="INVALID_ARGUMENT", method=method, reason="INVALID_FIELD", field=field_name)


def new_request_id() -> str:
    return str(uuid.uuid4())


def claim_from_proto(message: pb.Claim) -> Claim:
    return Claim(
        sequence=message.sequence,
        brand_id=message.brand_id,
        code=message.code,
        user_id=message.user_id,
        email=message.email,
        claimed_at=message.claimed_at.ToDatetime(tzinfo=UTC),
        expires_at=message.expires_at.ToDatetime(tzinfo=UTC) if message.HasField("expires_at") else None,
    )


def generate_request(
    brand_id: str,
    count: int,
    *,
    request_id: str | None,
    prefix: str,
    code_length: int,
    expires_at: datetime | None,
) -> pb.GenerateCodesRequest:
    for field, value in (("count", count), ("code_length", code_length)):
        if not 0 <= value < 2**32:
            raise invalid_field(f"{field} must be a non-negative 32-bit integer, got {value}", "GenerateCodes", field)
    request = pb.GenerateCodesRequest(
        brand_id=brand_id,
        count=count,
        request_id=request_id or new_request_id(),
        code_length=code_length,
        prefix=prefix,
    )
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise invalid_field(
                "expires_at must be timezone-aware, e.g. datetime(..., tzinfo=UTC)", "GenerateCodes", "expires_at"
            )
        request.expires_at.FromDatetime(expires_at.astimezone(UTC))
    return request


def generate_result(response: pb.GenerateCodesResponse, request_id: str) -> GenerateResult:
    return GenerateResult(
        brand_id=response.brand_id,
        batch_id=response.batch_id,
        generated=response.generated,
        available=response.available,
        request_id=request_id,
    )


def claim_result(response: pb.ClaimCodeResponse) -> ClaimResult:
    return ClaimResult(claim=claim_from_proto(response.claim), newly_claimed=response.newly_claimed)


def brand_stats(response: pb.GetBrandStatsResponse) -> BrandStats:
    return BrandStats(
        brand_id=response.brand_id,
        total=response.total,
        available=response.available,
        claimed=response.claimed,
        expired=response.expired,
        redeemed=response.redeemed,
    )
