"""The claim feed's reads: pages of a brand's claims, the heads of many brands' feeds, and the
NOTIFY that wakes other processes' watchers (the LISTEN side is the pool's own connection)."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import Claim
from ._pool import StoreBase


class Feed(StoreBase):
    async def notify_claims(self, payloads: list[str]) -> None:
        """Sends every payload on the claim channel, in one transaction."""
        await self._fetch("notify_claims", {"payloads": payloads})

    async def feed_page(self, brand_id: str, brand_key: int, after_sequence: int, limit: int) -> list[Claim]:
        """A brand's claims after `after_sequence`, oldest first, at most `limit`."""
        return (await self.feed_pages([(brand_id, brand_key, after_sequence)], limit))[0]

    async def feed_pages(self, cursors: Sequence[tuple[str, int, int]], limit: int) -> list[list[Claim]]:
        """For each (brand_id, brand_key, after_sequence), that brand's claims after the cursor,
        oldest first, at most `limit`: one round trip and one transaction for all of them."""
        results = await self._fetch_many(
            "feed_page",
            [{"brand_key": key, "after_sequence": after, "limit": limit} for _, key, after in cursors],
            retry=True,
        )
        return [
            [
                Claim(
                    sequence=r[0],
                    brand_id=brand_id,
                    code=r[1],
                    user_id=r[2],
                    email=r[3],
                    claimed_at=r[4],
                    expires_at=r[5],
                )
                for r in rows
            ]
            for (brand_id, _, _), rows in zip(cursors, results, strict=True)
        ]

    async def feed_heads(self, brand_keys: Sequence[int]) -> dict[int, int]:
        """brand_key -> the last sequence of its feed, for each of these brands that exists."""
        rows = await self._fetch("feed_heads", {"brand_keys": list(brand_keys)}, retry=True)
        return {int(key): int(last) for key, last in rows}
