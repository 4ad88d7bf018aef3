"""Claims: many claims in one call, each the result it would have got alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..models import Claim, ClaimOutcome
from ._pool import StoreBase


@dataclass(frozen=True)
class ClaimItem:
    """One claim to make: the brand, the user and email, and the code_key the pick starts after."""

    brand_id: str
    user_id: str
    email: str
    after_code_key: int


@dataclass(frozen=True)
class ClaimRow:
    """One claim's result: the claim (CLAIMED, EXISTING), and for a new claim the code_key it took."""

    outcome: ClaimOutcome
    claim: Claim | None
    code_key: int | None


class Claims(StoreBase):
    async def claim_codes(self, items: Sequence[ClaimItem]) -> list[ClaimRow]:
        """Claims of any brands in one transaction (discount_claim_many), one result per item, in
        order: each the result the item would have got alone. Any error fails them all. Without
        `claims_span_brands` (Citus), the items must all be of one brand."""
        if not self.claims_span_brands:
            return await self._claim_brand(items)
        rows = await self._fetch(
            "claim_codes",
            {
                "brand_ids": [item.brand_id for item in items],
                "user_ids": [item.user_id for item in items],
                "emails": [item.email for item in items],
                "after_code_keys": [item.after_code_key for item in items],
            },
            retry=True,  # a claim is idempotent per (brand, user): a retry on a fresh connection is safe
        )
        by_item = {int(row[0]): row[1:] for row in rows}
        if len(by_item) != len(items):
            raise errors.Unavailable(f"the claim call returned {len(by_item)} results for {len(items)} claims")
        return [_claim_row(item.brand_id, item.user_id, by_item[i + 1]) for i, item in enumerate(items)]

    async def _claim_brand(self, items: Sequence[ClaimItem]) -> list[ClaimRow]:
        """Claims of one brand in one call of discount_claim_brand, which Citus runs on the node
        holding the brand; the brand_key comes from the cache, so it is still one round trip."""
        brand_id = items[0].brand_id
        if any(item.brand_id != brand_id for item in items):
            raise ValueError("a claim call on a Citus cluster holds claims of one brand")
        brand_key = await self.brand_key(brand_id)
        if brand_key is None:
            return [ClaimRow(ClaimOutcome.BRAND_NOT_FOUND, None, None) for _ in items]
        rows = await self._fetch(
            "claim_brand",
            {
                "brand_key": brand_key,
                "user_ids": [item.user_id for item in items],
                "emails": [item.email for item in items],
                "after_code_key": items[0].after_code_key,
            },
            retry=True,  # idempotent per (brand, user), as in claim_codes
        )
        by_item = {int(row[0]): row[1:] for row in rows}
        if len(by_item) != len(items):
            raise errors.Unavailable(f"the claim call returned {len(by_item)} results for {len(items)} claims")
        return [_claim_row(brand_id, item.user_id, by_item[i + 1]) for i, item in enumerate(items)]


def _claim_row(brand_id: str, user_id: str, row: tuple[Any, ...]) -> ClaimRow:
    value, sequence, code, stored_email, claimed_at, expires_at, code_key = row
    outcome = ClaimOutcome(value)
    if outcome not in (ClaimOutcome.CLAIMED, ClaimOutcome.EXISTING):
        return ClaimRow(outcome=outcome, claim=None, code_key=None)
    claim = Claim(
        sequence=sequence,
        brand_id=brand_id,
        code=code,
        user_id=user_id,
        email=stored_email,
        claimed_at=claimed_at,
        expires_at=expires_at,
    )
    return ClaimRow(outcome=outcome, claim=claim, code_key=code_key)
