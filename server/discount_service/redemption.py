"""Redeeming a claimed code on an order, and cancelling that: the code's life after its claim.

A code stands redeemed on at most one order at a time; the database's unique index on the standing
redemption guarantees it (sql/schema.sql, discount_redeem). The same order again gets its first
redemption back, unchanged; a cancelled order's id cannot redeem the code again, so a late retry of
a cancelled checkout cannot silently re-use it. Checks run in the contract's order, the first that
fails answering: fields; key; brand; the code exists; the user holds it; the order's own redemption;
expiry; another order's standing redemption.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime

from . import errors, validation
from .auth import require_redeem_access
from .models import Principal
from .store import RedemptionOutcome, RedemptionRow, Store

MAX_CODE = 64
MAX_ORDER_ID = 128


@dataclass(frozen=True)
class Redemption:
    brand_id: str
    code: str
    user_id: str
    order_id: str
    redeemed_at: datetime
    cancelled_at: datetime | None


@dataclass(frozen=True)
class RedeemResult:
    redemption: Redemption
    newly_redeemed: bool


def normalised_code(value: str) -> str:
    """The code as a shopper typed it, in the one case codes are generated in (codes.ALPHABET and
    PREFIX_PATTERN are upper case and digits): so the match is the primary key's equality, where a
    case-insensitive comparison (ILIKE, lower()) could use no index but one more on every code of
    every brand. Only ASCII letters change case: a non-ASCII character is in no code, and
    str.upper() of one could turn it into ASCII ("ﬁ" -> "FI") and match a code nobody typed."""
    if not 1 <= len(value) <= MAX_CODE:
        raise errors.InvalidArgument(f"code must be 1..{MAX_CODE} characters, got {len(value)}", field="code")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in value):
        raise errors.InvalidArgument("code must not contain control or invisible format characters", field="code")
    return value.upper() if value.isascii() else value


def normalised_order_id(value: str) -> str:
    """An order id, under the user_id rules (NFC, visible, 1..128 characters); returned in NFC, the
    form it is compared and stored in."""
    return validation.identifier("order_id", value, MAX_ORDER_ID)


class RedemptionService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def redeem_code(
        self, principal: Principal, *, brand_id: str, code: str, user_id: str, order_id: str
    ) -> RedeemResult:
        brand_id = validation.brand_id(brand_id)
        typed = normalised_code(code)
        user_id = validation.user_id(user_id)
        order = normalised_order_id(order_id)
        require_redeem_access(principal, brand_id)
        row = await self._store.redeem(brand_id, typed, user_id, order)
        outcome = row.outcome
        if outcome in (RedemptionOutcome.REDEEMED, RedemptionOutcome.EXISTING):
            redemption = _redemption(brand_id, typed, order, row)
            return RedeemResult(redemption=redemption, newly_redeemed=outcome is RedemptionOutcome.REDEEMED)
        if outcome is RedemptionOutcome.CANCELLED:
            raise errors.FailedPrecondition(
                f"order {order!r} redeemed this code and that redemption was cancelled; redeem it on a new order id",
                reason="REDEMPTION_CANCELLED",
                metadata={"brand_id": brand_id, "order_id": order},
            )
        raise _refusal(brand_id, typed, outcome)

    async def cancel_redemption(self, principal: Principal, *, brand_id: str, code: str, order_id: str) -> Redemption:
        brand_id = validation.brand_id(brand_id)
        typed = normalised_code(code)
        order = normalised_order_id(order_id)
        require_redeem_access(principal, brand_id)
        row = await self._store.cancel_redemption(brand_id, typed, order)
        if row.outcome is RedemptionOutcome.CANCELLED:
            return _redemption(brand_id, typed, order, row)
        if row.outcome is RedemptionOutcome.REDEMPTION_NOT_FOUND:
            raise errors.NotFound(
                f"order {order!r} has no redemption of this code",
                reason="REDEMPTION_NOT_FOUND",
                metadata={"brand_id": brand_id, "order_id": order},
            )
        raise _refusal(brand_id, typed, row.outcome)

    async def redeemed_count(self, brand_id: str) -> int:
        """Standing redemptions of a brand the caller may already count (brand_stats checked it)."""
        return await self._store.redeemed_count(brand_id) or 0


def _redemption(brand_id: str, code: str, order_id: str, row: RedemptionRow) -> Redemption:
    if row.user_id is None or row.redeemed_at is None:
        raise errors.Unavailable("the redemption call answered without the redemption")
    return Redemption(
        brand_id=brand_id,
        code=code,
        user_id=row.user_id,
        order_id=order_id,
        redeemed_at=row.redeemed_at,
        cancelled_at=row.cancelled_at,
    )


def _refusal(brand_id: str, code: str, outcome: RedemptionOutcome) -> errors.DiscountError:
    """The error of an outcome that refuses. No message names the user who holds a code."""
    metadata = {"brand_id": brand_id}
    if outcome is RedemptionOutcome.BRAND_NOT_FOUND:
        return errors.NotFound(f"brand {brand_id!r} does not exist", metadata=metadata)
    if outcome is RedemptionOutcome.CODE_NOT_FOUND:
        return errors.NotFound(f"brand {brand_id!r} has no code {code!r}", reason="CODE_NOT_FOUND", metadata=metadata)
    if outcome is RedemptionOutcome.NOT_HELD:
        return errors.FailedPrecondition(
            "this user does not hold the code: claim a code first, and redeem the one claimed",
            reason="CODE_NOT_HELD_BY_USER",
            metadata=metadata,
        )
    if outcome is RedemptionOutcome.EXPIRED:
        return errors.FailedPrecondition(f"code {code!r} has expired", reason="CODE_EXPIRED", metadata=metadata)
    if outcome is RedemptionOutcome.ALREADY_REDEEMED:
        return errors.FailedPrecondition(
            f"code {code!r} is already redeemed on another order; cancel that redemption first to use it again",
            reason="CODE_ALREADY_REDEEMED",
            metadata=metadata,
        )
    return errors.Unavailable(f"the redemption call answered {outcome.value!r}")
