"""Plain records passed between the store, the domain and the transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class Role(StrEnum):
    ADMIN = "admin"
    BRAND = "brand"
    SERVICE = "service"
    USER = "user"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's role (and brand), or a signed-in shopper (`user`)."""

    role: Role
    key_id: str
    brand_id: str | None = None
    user_id: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class Brand:
    brand_id: str
    name: str
    created_at: datetime
    total_codes: int = 0
    claimed: int = 0


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    role: Role
    brand_id: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Claim:
    sequence: int
    brand_id: str
    code: str
    user_id: str
    email: str
    claimed_at: datetime
    expires_at: datetime | None


class ClaimOutcome(StrEnum):
    """What one claim did; the values are the `outcome` column of discount_claim_brand (sql/schema.sql)."""

    CLAIMED = "claimed"  # this call took a new code for the user
    EXISTING = "existing"  # the user already held a code of the brand: that one, again
    BRAND_NOT_FOUND = "brand_not_found"
    EXHAUSTED = "exhausted"  # the brand has no free, unexpired code left


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    newly_claimed: bool


@dataclass(frozen=True)
class GenerateResult:
    brand_id: str
    batch_id: str
    generated: int
    available: int


@dataclass(frozen=True)
class BrandStats:
    brand_id: str
    total: int
    available: int
    claimed: int
    expired: int
    # Claimed codes with a standing redemption (within `claimed`); counted only by GetBrandStats.
    redeemed: int = 0


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: what is stored about it, and the key itself, shown to its creator once.
    The secret is left out of repr, so logging the record cannot leak it."""

    key: ApiKeyInfo
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; `next_page_token` is empty on the last page."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True)
class WebhookRow:
    """A brand's webhook as stored, and how its delivery stands."""

    brand_key: int
    brand_id: str
    webhook_id: str
    url: str
    state: str  # 'active', 'failing' or 'disabled'
    delivered_sequence: int
    max_claims_per_delivery: int
    created_at: datetime
    last_error: str
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class DeliveryAttempt:
    """One attempt to deliver a range of a webhook's claims; `http_status` 0 means no answer."""

    delivery_id: str
    first_sequence: int
    last_sequence: int
    attempt: int
    attempted_at: datetime
    http_status: int
    error: str
    duration_seconds: float


@dataclass(frozen=True)
class AttemptRow(DeliveryAttempt):
    """A recorded attempt; `number` orders the listing."""

    number: int
