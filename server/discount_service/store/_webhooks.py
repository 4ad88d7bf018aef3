"""Webhooks: the endpoints brands register, where each one's delivery stands and its attempts, and
the session advisory locks that let exactly one process at a time deliver a webhook."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ..models import AttemptRow, DeliveryAttempt, WebhookRow
from ._errors import translate_errors
from ._pool import StoreBase, connect_with_keepalives
from ._queries import QUERIES

# The first key of every webhook advisory lock (the second is a hash of the webhook or brand): a
# negative number, so never a brand_key, whose two-key locks the claims take.
WEBHOOK_LOCK_CLASS = -0x5748  # delivery of one webhook, held by a session
WEBHOOK_CREATE_LOCK_CLASS = -0x5749  # creations of one brand's webhooks, held by a transaction


@dataclass(frozen=True)
class DeliveryState:
    """What the delivering process reads of a webhook when it takes it over or after a change."""

    brand_id: str
    url: str
    state: str
    delivered_sequence: int
    max_claims_per_delivery: int
    secret: bytes = field(repr=False)  # ciphertexts: never the secrets themselves
    previous_secret: bytes | None = field(repr=False)
    previous_secret_until: datetime | None
    delivery_id: str | None
    first_sequence: int | None
    last_sequence: int | None
    attempts: int
    next_attempt_at: datetime | None
    config_version: int


@dataclass(frozen=True)
class ScannedWebhook:
    webhook_id: str
    brand_key: int
    brand_id: str
    config_version: int
    state: str


@dataclass(frozen=True)
class AttemptOutcome(DeliveryAttempt):
    """One attempt, as recorded."""

    brand_key: int
    webhook_id: str
    config_version: int
    succeeded: bool
    gone: bool
    retry_in_seconds: float


def _webhook(brand_id: str, row: tuple[Any, ...]) -> WebhookRow:
    brand_key, webhook_id, url, state, delivered, max_claims, created_at, last_error, next_attempt_at = row
    return WebhookRow(
        brand_key=brand_key,
        brand_id=brand_id,
        webhook_id=webhook_id,
        url=url,
        state=state,
        delivered_sequence=int(delivered),
        max_claims_per_delivery=int(max_claims),
        created_at=created_at,
        last_error=last_error,
        next_attempt_at=next_attempt_at,
    )


class Webhooks(StoreBase):
    async def insert_webhook(
        self,
        brand_id: str,
        brand_key: int,
        webhook_id: str,
        url: str,
        after_sequence: int | None,
        max_claims: int,
        secret: bytes,
        limit: int,
    ) -> WebhookRow | None:
        """Stores a new webhook; None (nothing stored) if the brand has `limit` webhooks already."""
        params = {
            "lock_class": WEBHOOK_CREATE_LOCK_CLASS,
            "brand_key": brand_key,
            "webhook_id": webhook_id,
            "url": url,
            "after_sequence": after_sequence,
            "max_claims": max_claims,
            "secret": secret,
            "limit": limit,
        }
        with translate_errors():
            async with self._connection() as conn, conn.transaction():
                await conn.execute(QUERIES["webhook_lock_brand"], params)
                cur = await conn.execute(QUERIES["webhook_insert"], params)
                row = await cur.fetchone()
        return None if row is None else _webhook(brand_id, row)

    async def webhook(self, webhook_id: str) -> WebhookRow | None:
        rows = await self._fetch("webhook_get", {"webhook_id": webhook_id}, retry=True)
        if not rows:
            return None
        brand_key, brand_id, *rest = rows[0]
        return _webhook(brand_id, (brand_key, *rest))

    async def webhooks_of(self, brand_id: str, brand_key: int) -> list[WebhookRow]:
        rows = await self._fetch("webhook_list", {"brand_key": brand_key}, retry=True)
        return [_webhook(brand_id, row) for row in rows]

    async def delete_webhook(self, brand_key: int, webhook_id: str) -> bool:
        rows = await self._fetch("webhook_delete", {"brand_key": brand_key, "webhook_id": webhook_id}, retry=True)
        return bool(rows)

    async def replay_webhook(self, brand_id: str, brand_key: int, webhook_id: str, after: int) -> WebhookRow | None:
        params = {"brand_key": brand_key, "webhook_id": webhook_id, "after_sequence": after}
        rows = await self._fetch("webhook_replay", params)
        return _webhook(brand_id, rows[0]) if rows else None

    async def rotate_webhook_secret(
        self, brand_id: str, brand_key: int, webhook_id: str, secret: bytes, overlap_seconds: float
    ) -> WebhookRow | None:
        params = {
            "brand_key": brand_key,
            "webhook_id": webhook_id,
            "secret": secret,
            "overlap_seconds": overlap_seconds,
        }
        rows = await self._fetch("webhook_rotate", params)
        return _webhook(brand_id, rows[0]) if rows else None

    async def webhook_attempts(self, brand_key: int, webhook_id: str, before: int, limit: int) -> list[AttemptRow]:
        """Up to `limit` attempts numbered below `before`, newest first."""
        params = {"brand_key": brand_key, "webhook_id": webhook_id, "before": before, "limit": limit}
        rows = await self._fetch("webhook_attempts_page", params, retry=True)
        return [
            AttemptRow(
                delivery_id=r[0],
                first_sequence=int(r[1]),
                last_sequence=int(r[2]),
                attempt=int(r[3]),
                attempted_at=r[4],
                http_status=int(r[5]),
                error=r[6],
                duration_seconds=float(r[7]),
                number=int(r[8]),
            )
            for r in rows
        ]

    async def webhook_delivery_state(self, brand_key: int, webhook_id: str) -> DeliveryState | None:
        rows = await self._fetch(
            "webhook_delivery_state", {"brand_key": brand_key, "webhook_id": webhook_id}, retry=True
        )
        if not rows:
            return None
        r = rows[0]
        return DeliveryState(
            brand_id=r[0],
            url=r[1],
            state=r[2],
            delivered_sequence=int(r[3]),
            max_claims_per_delivery=int(r[4]),
            secret=bytes(r[5]),
            previous_secret=None if r[6] is None else bytes(r[6]),
            previous_secret_until=r[7],
            delivery_id=r[8],
            first_sequence=r[9],
            last_sequence=r[10],
            attempts=int(r[11]),
            next_attempt_at=r[12],
            config_version=int(r[14]),
        )

    async def begin_webhook_delivery(
        self,
        brand_key: int,
        webhook_id: str,
        *,
        delivery_id: str,
        first_sequence: int,
        last_sequence: int,
        delivered_sequence: int,
        config_version: int,
    ) -> bool:
        """Fixes the next delivery before its first attempt; False if the webhook moved meanwhile."""
        params = {
            "brand_key": brand_key,
            "webhook_id": webhook_id,
            "delivery_id": delivery_id,
            "first_sequence": first_sequence,
            "last_sequence": last_sequence,
            "delivered_sequence": delivered_sequence,
            "config_version": config_version,
        }
        return bool(await self._fetch("webhook_begin_delivery", params))

    async def record_webhook_attempt(
        self, outcome: AttemptOutcome, *, retry_period_seconds: float, keep: int
    ) -> tuple[str, int] | None:
        """Records an attempt; the webhook's (state, failed attempts) after it, or None if the
        attempt was no longer its delivery in progress (replayed, rotated or deleted meanwhile)."""
        params = {
            **outcome.__dict__,
            "retry_period_seconds": retry_period_seconds,
            "keep": keep,
        }
        rows = await self._fetch("webhook_record_attempt", params)
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def webhook_locks(self) -> WebhookLocks:
        return WebhookLocks(self._conninfo, f"{self._application_name}-webhooks", on_answer=self._lock_scan_answered)

    def _lock_scan_answered(self) -> None:
        # A scan that succeeded proves the database answers: the health check need not ask again.
        self._answered_at = time.monotonic()


class WebhookLocks:
    """One connection that holds the session advisory locks of the webhooks this process delivers.
    If it breaks, PostgreSQL releases them all at once and another process can take them over, so
    the owner must stop delivering the moment any call here fails (it raises errors.Unavailable)."""

    def __init__(self, conninfo: str, application_name: str, on_answer: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._on_answer = on_answer
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await connect_with_keepalives(
                self._conninfo, self._application_name, "webhook_lock_keepalives"
            )
        return self._conn

    async def scan(self, held: Iterable[str]) -> list[ScannedWebhook]:
        """Every webhook to deliver, and those this process holds. Read on this connection, so a
        scan that succeeds also proves the locks are still held."""
        with translate_errors():
            try:
                conn = await self._connection()
                cur = await conn.execute(QUERIES["webhook_scan"], {"held": list(held)})
                rows = await cur.fetchall()
                self._on_answer()
            except psycopg.Error:
                await self.close()
                raise
        return [ScannedWebhook(r[0], int(r[1]), r[2], int(r[3]), r[4]) for r in rows]

    async def try_lock(self, webhook_ids: list[str]) -> list[str]:
        """The webhooks among these whose lock this process now holds."""
        if not webhook_ids:
            return []
        with translate_errors():
            try:
                conn = await self._connection()
                cur = await conn.execute(
                    QUERIES["webhook_try_locks"], {"ids": webhook_ids, "lock_class": WEBHOOK_LOCK_CLASS}
                )
                return [row[0] for row in await cur.fetchall()]
            except psycopg.Error:
                await self.close()
                raise

    async def unlock(self, webhook_ids: list[str]) -> None:
        if not webhook_ids or self._conn is None:
            return
        with translate_errors():
            try:
                await self._conn.execute(
                    QUERIES["webhook_unlock"], {"ids": webhook_ids, "lock_class": WEBHOOK_LOCK_CLASS}
                )
            except psycopg.Error:
                await self.close()
                raise

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
