"""Redemptions: a claimed code used on an order, and cancelled, each in one call of a function that
runs on the node holding the brand (sql/redemptions.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from .. import errors
from ._pool import StoreBase


class RedemptionOutcome(StrEnum):
    """The `outcome` column of discount_redeem and discount_cancel_redemption (sql/schema.sql)."""

    REDEEMED = "redeemed"  # this call redeemed the code on the order
    EXISTING = "existing"  # the order's redemption already stood: that one, unchanged
    CANCELLED = "cancelled"  # the order's redemption is cancelled (by this call, or before it)
    BRAND_NOT_FOUND = "brand_not_found"
    CODE_NOT_FOUND = "code_not_found"
    NOT_HELD = "not_held"  # unclaimed, or claimed by another user: one answer for both
    EXPIRED = "expired"
    ALREADY_REDEEMED = "already_redeemed"  # another order's redemption of the code stands
    REDEMPTION_NOT_FOUND = "redemption_not_found"


@dataclass(frozen=True)
class RedemptionRow:
    """What the function answered; the redemption's fields are set when there is one."""

    outcome: RedemptionOutcome
    user_id: str | None = None
    redeemed_at: datetime | None = None
    cancelled_at: datetime | None = None


class Redemptions(StoreBase):
    async def redeem(self, brand_id: str, code: str, user_id: str, order_id: str) -> RedemptionRow:
        """`code` in the case codes are generated in (upper)."""
        brand_key = await self.brand_key(brand_id)
        if brand_key is None:
            return RedemptionRow(RedemptionOutcome.BRAND_NOT_FOUND)
        params = {"brand_key": brand_key, "code": code, "user_id": user_id, "order_id": order_id}
        # Idempotent per (code, order): a retry on a fresh connection finds the first attempt's row.
        return _row(await self._fetch("redeem", params, retry=True))

    async def cancel_redemption(self, brand_id: str, code: str, order_id: str) -> RedemptionRow:
        brand_key = await self.brand_key(brand_id)
        if brand_key is None:
            return RedemptionRow(RedemptionOutcome.BRAND_NOT_FOUND)
        params = {"brand_key": brand_key, "code": code, "order_id": order_id}
        # Idempotent: a second cancellation returns the first one's time.
        return _row(await self._fetch("cancel_redemption", params, retry=True))

    async def redeemed_count(self, brand_id: str) -> int | None:
        """The brand's standing redemptions, or None if the brand does not exist."""
        brand_key = await self.brand_key(brand_id)
        if brand_key is None:
            return None
        rows = await self._fetch("redeemed_count", {"brand_key": brand_key}, retry=True)
        return int(rows[0][0])


def _row(rows: list[tuple[object, ...]]) -> RedemptionRow:
    if len(rows) != 1:
        raise errors.Unavailable(f"the redemption call returned {len(rows)} rows instead of one")
    outcome, user_id, redeemed_at, cancelled_at = rows[0]
    return RedemptionRow(
        RedemptionOutcome(str(outcome)),
        user_id=user_id if isinstance(user_id, str) else None,
        redeemed_at=redeemed_at if isinstance(redeemed_at, datetime) else None,
        cancelled_at=cancelled_at if isinstance(cancelled_at, datetime) else None,
    )
