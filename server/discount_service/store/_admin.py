"""Brands and API keys: creating and looking them up, the pages AdminService lists, and the code
counts of brand stats and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import errors
from ..models import ApiKeyInfo, Brand, Role
from ._pool import StoreBase


@dataclass(frozen=True)
class StatsRow:
    total: int
    claimed: int
    expired: int


class Admin(StoreBase):
    async def create_brand(self, brand_id: str, name: str) -> Brand:
        rows = await self._fetch("create_brand", {"brand_id": brand_id, "name": name})
        _, brand_id, name, created_at = rows[0]
        return Brand(brand_id=brand_id, name=name, created_at=created_at)

    async def find_api_key(self, key_hash: bytes) -> tuple[str, Role, str | None] | None:
        rows = await self._fetch("find_api_key", {"key_hash": key_hash}, retry=True)
        if not rows:
            return None
        key_id, role, brand_id = rows[0]
        return key_id, Role(role), brand_id

    async def active_key_ids(self, key_ids: list[str]) -> set[str]:
        """Those of `key_ids` that exist and are not revoked: one statement however many."""
        rows = await self._fetch("admin_active_key_ids", {"key_ids": key_ids}, retry=True)
        return {str(r[0]) for r in rows}

    async def brand_stats(self, brand_id: str) -> StatsRow | None:
        rows = await self._fetch("brand_stats", {"brand_id": brand_id}, retry=True)
        if not rows:
            return None
        total, claimed, expired = rows[0]
        return StatsRow(total=int(total), claimed=int(claimed), expired=int(expired))

    async def codes_available(self) -> list[tuple[str, int]]:
        """(brand_id, claimable codes) of every brand, for the metrics endpoint."""
        rows = await self._fetch("codes_available", {}, retry=True)
        return [(str(r[0]), int(r[1])) for r in rows]

    async def brands_after(self, after: str, limit: int) -> list[Brand]:
        """Up to `limit` brands whose brand_id sorts after `after`, in brand_id order, with their code
        total and claim count."""
        rows = await self._fetch("admin_list_brands", {"after": after, "limit": limit}, retry=True)
        return [Brand(brand_id=r[0], name=r[1], created_at=r[2], total_codes=r[3], claimed=r[4]) for r in rows]

    async def insert_api_key(self, key_id: str, key_hash: bytes, role: Role, brand_id: str | None) -> ApiKeyInfo | None:
        """Stores a new key; None (and nothing stored) if `brand_id` names no brand."""
        brand_key = None if brand_id is None else await self.brand_key(brand_id)
        if brand_id is not None and brand_key is None:
            return None
        params = {
            "key_id": key_id,
            "key_hash": key_hash,
            "role": role.value,
            "brand_key": brand_key,
            "brand_id": brand_id,
        }
        rows = await self._fetch("admin_insert_api_key", params)
        return _api_key(rows[0])

    async def revoke_api_key_returning(self, key_id: str) -> ApiKeyInfo | None:
        """Revokes the key if it is active; returns it as it now is (revoked_at of its first
        revocation), or None if there is no such key."""
        rows = await self._fetch("admin_revoke_api_key", {"key_id": key_id}, retry=True)
        if not rows:
            # Unknown or revoked before. A separate statement, so it sees a concurrent revocation
            # that made the update above find nothing.
            rows = await self._fetch("admin_get_api_key", {"key_id": key_id}, retry=True)
        return _api_key(rows[0]) if rows else None

    async def api_keys_after(self, after: str, limit: int, *, brand_key: int | None = None) -> list[ApiKeyInfo]:
        """Up to `limit` keys (of one brand when `brand_key` is given) whose key_id sorts after
        `after`, in key_id order."""
        if brand_key is None:
            rows = await self._fetch("admin_list_api_keys", {"after": after, "limit": limit}, retry=True)
        else:
            params = {"brand_key": brand_key, "after": after, "limit": limit}
            rows = await self._fetch("admin_list_brand_api_keys", params, retry=True)
        return [_api_key(r) for r in rows]

    async def page_token_secret(self) -> bytes:
        """The database's secret for signing page tokens (made by migration 0006)."""
        rows = await self._fetch("admin_page_token_secret", {}, retry=True)
        if not rows:
            raise errors.FailedPrecondition("the database has no page-token secret: its schema is not migrated")
        return bytes(rows[0][0])


def _api_key(row: tuple[Any, ...]) -> ApiKeyInfo:
    key_id, role, brand_id, created_at, revoked_at = row
    return ApiKeyInfo(key_id=key_id, role=Role(role), brand_id=brand_id, created_at=created_at, revoked_at=revoked_at)
