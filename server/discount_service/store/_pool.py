"""The connection pool every part of the store runs its statements through, its health, and the one
LISTEN connection of the claim channel.

A circuit breaker stands in front of the pool. A connection that fails (or a pool that has none to
lend within the wait) starts one background probe, which opens a fresh connection of its own: if
that fails too, the database is unreachable and the breaker opens. While it is open, every
statement is refused at once with UNAVAILABLE and a retry delay, instead of each call waiting
`timeout` for a connection that will not come; the probe keeps trying every PROBE_SECONDS and
closes the breaker when the database answers again. One WARNING when an outage starts, one INFO
when it ends, with the count of calls refused."""

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

from .. import deadline, errors
from ._errors import is_connection_error, translate_errors
from ._queries import QUERIES

log = logging.getLogger(__package__)  # one logger for the whole store

# While the database is unreachable, how often the probe tries it; callers are told to retry after this.
PROBE_SECONDS = 0.5


def _lost_connection(exc: BaseException) -> bool:
    """Whether `exc` says the server has no working connection to the database (none came, it
    broke, the database refused or is shutting down), as opposed to a statement that failed on a
    working one (a lock timeout is an OperationalError too)."""
    if not is_connection_error(exc):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


async def connect_with_keepalives(
    conninfo: str, application_name: str, keepalives_query: str
) -> psycopg.AsyncConnection[Any]:
    """A connection of its own (autocommit) for a session that holds a lock. Keepalives both ways:
    this process learns of a dead database, and the database of a dead process (`keepalives_query`
    sets the server's side), within about 11 s, not at the next statement or the kernel's hours."""
    conn = await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        application_name=application_name,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
    await conn.execute(QUERIES[keepalives_query])
    return conn


class StoreBase:
    """Async access to PostgreSQL through one connection pool, plus one LISTEN connection."""

    # What callers told UNAVAILABLE are asked to wait before they retry: by then the probe has
    # tried the database again.
    retry_after_seconds = PROBE_SECONDS

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
        self._timeout = timeout
        self._probe_task: asyncio.Task[None] | None = None
        self._outage_since: float | None = None  # time.monotonic() the breaker opened; None: closed
        self._refused_calls = 0  # calls answered UNAVAILABLE during the current outage
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
        if self._probe_task is not None:
            self._probe_task.cancel()
        await self._pool.close()

    def pool_stats(self) -> dict[str, int]:
        return dict(self._pool.get_stats())

    @property
    def database_unreachable(self) -> bool:
        """Whether the breaker is open: the probe found the database unreachable, and it has not
        answered since."""
        return self._outage_since is not None

    def count_refused_call(self) -> None:
        """Called for every call answered UNAVAILABLE; those of an outage are counted in its end's log line."""
        if self._outage_since is not None:
            self._refused_calls += 1

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._outage_since is not None:
            raise errors.DatabaseOutage(
                "the database is unreachable; retry after the delay given", retry_after_seconds=PROBE_SECONDS
            )
        # A call with a deadline waits for a connection only while an answer can still reach it.
        wait = deadline.wait_budget(self._timeout)
        if wait is not None and wait <= 0:
            raise errors.DatabaseOutage("no database connection came free before the call's deadline; retry")
        try:
            async with self._pool.connection(timeout=wait) as conn:
                yield conn
        except BaseException as exc:
            # A pool timeout cut short by the call's deadline says nothing about the database.
            if _lost_connection(exc) and not (
                isinstance(exc, PoolTimeout) and wait is not None and wait < self._timeout
            ):
                self._start_probe()
            raise

    def _start_probe(self) -> None:
        """After a connection failed: find out whether the database is away (once at a time)."""
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """Opens the breaker while a fresh connection cannot reach the database, and closes it when
        one can; either way the pool's other dead connections are replaced then, instead of each
        failing a call."""
        while not await self._database_answers():
            if self._outage_since is None:
                self._outage_since, self._refused_calls = time.monotonic(), 0
                log.warning(
                    "database unreachable: refusing calls at once with UNAVAILABLE until it answers "
                    "(probing every %.1fs)",
                    PROBE_SECONDS,
                )
            await asyncio.sleep(PROBE_SECONDS)
        try:
            async with asyncio.timeout(self._timeout):
                await self._pool.check()
        except Exception:  # noqa: BLE001 - best effort; a call that meets a dead connection starts a probe
            log.debug("pool check failed", exc_info=True)
        if self._outage_since is not None:
            log.info(
                "database reachable again after %.1fs; %d calls were refused meanwhile",
                time.monotonic() - self._outage_since,
                self._refused_calls,
            )
            self._outage_since = None

    async def _database_answers(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name=f"{self._application_name}-probe"
                )
                async with conn:
                    await conn.execute(QUERIES["ping"])
            return True
        except (psycopg.Error, OSError, TimeoutError):
            return False

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
                cause = exc.__cause__  # None: refused by the breaker or the call's deadline, not worth a retry
                if attempt + 1 < attempts and cause is not None and not isinstance(cause, PoolTimeout):
                    continue
                if exc.retry_after_seconds is None:
                    exc.retry_after_seconds = self.retry_after_seconds
                if cause is not None and _lost_connection(cause) and not isinstance(exc, errors.DatabaseOutage):
                    raise errors.DatabaseOutage(str(exc), retry_after_seconds=exc.retry_after_seconds) from cause
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
        if self._outage_since is not None:
            return False
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
        # Its first loss is logged, the retries that follow at debug: an outage has one warning, the breaker's.
        connected = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name=f"{self._application_name}-listen"
                ) as conn:
                    await conn.execute(QUERIES["listen_claims"])
                    backoff, connected = 0.05, True
                    yield None
                    while True:
                        async for note in conn.notifies(timeout=keepalive_seconds):
                            yield note.payload
                        await conn.execute(QUERIES["ping"])  # idle: prove the connection is alive
            except (psycopg.OperationalError, OSError) as exc:
                log.log(
                    logging.INFO if connected else logging.DEBUG,
                    "claim listener lost its connection (%s); reconnecting in %.2fs",
                    type(exc).__name__,
                    backoff,
                )
                connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
