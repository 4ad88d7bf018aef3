"""The connection pool every part of the store runs its statements through, its health, and the one
LISTEN connection of the claim channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .. import errors
from ._errors import is_connection_error, translate_errors
from ._queries import QUERIES

log = logging.getLogger(__package__)  # one logger for the whole store


class StoreBase:
    """Async access to PostgreSQL through one connection pool, plus one LISTEN connection."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 4,
        max_size: int = 24,
        timeout: float = 2.0,
        application_name: str = "discount-service",
    ) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True, "application_name": application_name},
            reconnect_timeout=0,  # keep trying for as long as the database is away
            name="discount",
        )
        self._checking = False
        self._answered_at = -math.inf  # time.monotonic() of the last statement that succeeded
        # Whether one claim call may hold claims of several brands (discount_claim_many). Not on a
        # Citus cluster, where a call must stay on the one node that holds its brand (discount_claim_brand);
        # `open` finds out which.
        self.claims_span_brands = True
        # brand_id -> brand_key, filled as brands are looked up: a brand's key never changes.
        self._brand_keys: dict[str, int] = {}

    async def open(self, wait: bool = True) -> None:
        with translate_errors():
            await self._pool.open(wait=wait, timeout=max(self._pool.timeout, 10.0))
        if wait:
            rows = await self._fetch("citus_installed", {}, retry=True)
            self.claims_span_brands = not rows[0][0]

    async def close(self) -> None:
        await self._pool.close()

    def pool_stats(self) -> dict[str, int]:
        return dict(self._pool.get_stats())

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except BaseException as exc:
            if is_connection_error(exc):
                self._schedule_pool_check()
            raise

    def _schedule_pool_check(self) -> None:
        """After a broken connection, replace the other dead ones instead of failing on each."""
        if self._checking:
            return
        self._checking = True

        async def check() -> None:
            try:
                await self._pool.check()
            except Exception:  # noqa: BLE001 - best effort; the next call reports the outage
                log.debug("pool check failed", exc_info=True)
            finally:
                self._checking = False

        asyncio.get_running_loop().create_task(check())

    async def _fetch(self, query: str, params: dict[str, Any], *, retry: bool = False) -> list[tuple[Any, ...]]:
        """Runs one statement. `retry` (for idempotent statements only) hides one stale pooled
        connection, e.g. after the database restarted or a backend was terminated."""
        return (await self._fetch_many(query, [params], retry=retry))[0]

    async def _fetch_many(
        self, query: str, params: Sequence[dict[str, Any]], *, retry: bool = False
    ) -> list[list[tuple[Any, ...]]]:
        """Runs one statement once per parameter set and returns each run's rows. Several runs go
        in one pipeline: one round trip, and one (implicit) transaction."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                with translate_errors():
                    async with self._connection() as conn:
                        if len(params) == 1:
                            cursors = [await conn.execute(QUERIES[query], params[0])]
                        else:
                            async with conn.pipeline():
                                cursors = [await conn.execute(QUERIES[query], p) for p in params]
                        results = [await cur.fetchall() if cur.description else [] for cur in cursors]
                self._answered_at = time.monotonic()
                return results
            except errors.Unavailable as exc:
                cause = exc.__cause__
                if attempt + 1 < attempts and not isinstance(cause, PoolTimeout):
                    continue
                raise
        raise AssertionError("unreachable")

    async def brand_key(self, brand_id: str) -> int | None:
        """The brand's compact key, or None if it does not exist; every part looks brands up here."""
        if (known := self._brand_keys.get(brand_id)) is not None:
            return known
        rows = await self._fetch("get_brand_key", {"brand_id": brand_id}, retry=True)
        if not rows:
            return None
        self._brand_keys[brand_id] = int(rows[0][0])
        return self._brand_keys[brand_id]

    async def ping(self, timeout: float = 1.0, *, unless_answered_within: float = 0.0) -> bool:
        """Whether the database answers. With `unless_answered_within`, a statement of this store
        that succeeded that recently counts as the answer, and nothing is sent: an idle server's
        health checks then add no transactions to its feed's polling."""
        if time.monotonic() - self._answered_at < unless_answered_within:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._fetch("ping", {})
            return True
        except (errors.Unavailable, TimeoutError):
            return False

    async def notifications(self, keepalive_seconds: float = 5.0) -> AsyncIterator[str | None]:
        """Payloads of the claim channel from one dedicated LISTEN connection.

        Yields None after every (re)connect: notifications sent while it was away are lost, so the
        consumer must re-read the feed from its cursor then. Reconnects with backoff forever.
        """
        backoff = 0.05
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name=f"{self._application_name}-listen"
                ) as conn:
                    await conn.execute(QUERIES["listen_claims"])
                    backoff = 0.05
                    yield None
                    while True:
                        async for note in conn.notifies(timeout=keepalive_seconds):
                            yield note.payload
                        await conn.execute(QUERIES["ping"])  # idle: prove the connection is alive
            except (psycopg.OperationalError, OSError) as exc:
                log.warning(
                    "claim listener lost its connection (%s); reconnecting in %.2fs", type(exc).__name__, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
