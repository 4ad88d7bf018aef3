"""The expiry sweep's statements: the brands to sweep, one bounded sweep of a brand, and the vacuum
that drops the swept codes' index entries (docs/design.md#trap-expired-scan)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ._pool import StoreBase

# The first key of a brand's sweep lock (the second is the brand_key): negative, so never a
# brand_key, whose two-key locks the claims take, and apart from the webhooks' classes.
SWEEP_LOCK_CLASS = -0x5357


@dataclass(frozen=True)
class BrandToSweep:
    """A brand with a batch expired and not swept yet, and the time up to which a sweep covers it."""

    brand_key: int
    swept_until: datetime


@dataclass(frozen=True)
class SweepRound:
    """One bounded sweep of a brand: whether this process held the brand's sweep lock, and how many
    codes it marked expired."""

    held: bool
    swept: int


class Expiry(StoreBase):
    async def brands_to_sweep(self) -> list[BrandToSweep]:
        rows = await self._fetch("expiry_brands_to_sweep", {}, retry=True)
        return [BrandToSweep(brand_key=int(r[0]), swept_until=r[1]) for r in rows]

    async def next_expiry(self) -> datetime | None:
        """When the soonest batch not expired yet expires; None if none will."""
        rows = await self._fetch("expiry_next_due", {}, retry=True)
        return rows[0][0] if rows else None

    async def sweep_expired_codes(self, brand_key: int, limit: int) -> SweepRound:
        """Marks up to `limit` of the brand's expired, unclaimed codes and counts them on its feed
        head, in one transaction; idempotent (a code is marked and counted once), so retried."""
        params = {"lock_class": SWEEP_LOCK_CLASS, "brand_key": brand_key, "limit": limit}
        rows = await self._fetch("expiry_sweep_codes", params, retry=True)
        held, swept = rows[0]
        return SweepRound(held=bool(held), swept=int(swept))

    async def mark_batches_swept(self, brand_key: int, swept_until: datetime) -> None:
        params = {"brand_key": brand_key, "swept_until": swept_until}
        await self._fetch("expiry_mark_batches_swept", params, retry=True)

    async def vacuum_codes(self) -> None:
        await self._fetch("expiry_vacuum_codes", {})
