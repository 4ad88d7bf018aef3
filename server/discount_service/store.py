"""The only module that talks to PostgreSQL.

It executes the named statements of `sql/queries.sql`, applies `migrations/*.sql`, and turns
psycopg errors into domain errors (errors.py) exactly once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import errors
from .models import ApiKeyInfo, Brand, Claim, ClaimOutcome, Role

log = logging.getLogger(__name__)

# Serialises schema migrations of every process that starts at the same time.
_MIGRATION_LOCK_KEY = 0x44495343  # "DISC"
# Rows per COPY chunk when generating: bounds memory whatever the batch size.
GENERATION_CHUNK = 50_000


def _load_queries() -> dict[str, str]:
    """name -> statement, from the `-- name:` blocks of sql/queries.sql, without each block's
    leading description comment, final semicolon and any comment after it (a section heading
    before the next block), so a statement can be embedded, e.g. after `PREPARE name AS` or
    `EXPLAIN`."""
    text = resources.files(__package__).joinpath("sql/queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        while lines and (lines[-1].startswith("--") or not lines[-1].strip()):
            lines.pop()
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


QUERIES = _load_queries()


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files(__package__).joinpath("migrations")
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in files]


# A comment, a quoted string or identifier, a dollar-quote opening tag, or a statement's end.
_SQL_TOKEN = re.compile(r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$[A-Za-z_0-9]*\$)|;""", re.DOTALL)


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each without its `;`. A migration is sent one statement per
    message: Citus forwards some DDL (CREATE INDEX, ALTER TABLE ... ADD FOREIGN KEY) to the workers
    as a prepared statement, which cannot hold several commands."""
    statements: list[str] = []
    start = pos = 0
    while found := _SQL_TOKEN.search(script, pos):
        pos = found.end()
        if tag := found.group(1):  # a dollar-quoted body runs to the same tag
            end = script.find(tag, pos)
            if end < 0:
                raise ValueError(f"unterminated dollar quote {tag}")
            pos = end + len(tag)
        elif found.group(0) == ";":
            statements.append(script[start : found.start()])
            start = pos
    statements.append(script[start:])
    return [s.strip() for s in statements if _SQL_TOKEN.sub(_drop_comment, s).strip()]


def _drop_comment(token: re.Match[str]) -> str:
    return "" if token.group(0).startswith(("--", "/*")) else token.group(0)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc,
        psycopg.OperationalError | PoolTimeout | psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow,
    ) and not isinstance(exc, psycopg.errors.QueryCanceled)


_UNIQUE_VIOLATION = re.compile(r'duplicate key value violates unique constraint "(.+)"')


def unique_violation(exc: BaseException) -> str | None:
    """The unique constraint `exc` violates ("" if it does not say), or None for another error.

    The same on plain PostgreSQL and Citus. Through Citus, the violation happens in a shard: the
    error names the shard's copy of the constraint (`brands_brand_id_key_102008`) in its message
    only, and a collision inside a COPY arrives as an internal error (XX000) with that message; the
    shard id is cut off, leaving the constraint's name."""
    if not isinstance(exc, psycopg.Error):
        return None
    if isinstance(exc, psycopg.errors.UniqueViolation) and exc.diag.constraint_name:
        return exc.diag.constraint_name
    if not isinstance(exc, psycopg.errors.UniqueViolation | psycopg.errors.InternalError_):
        return None
    found = _UNIQUE_VIOLATION.fullmatch(exc.diag.message_primary or "")
    if found is None:
        return "" if isinstance(exc, psycopg.errors.UniqueViolation) else None
    return re.sub(r"_\d+$", "", found.group(1))


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turns a psycopg error into the domain error that says what happened."""
    try:
        yield
    except errors.DiscountError:
        raise
    except (psycopg.errors.UniqueViolation, psycopg.errors.InternalError_) as exc:
        constraint = unique_violation(exc)
        if constraint is None:  # an internal error of another kind
            raise
        if constraint == "brands_brand_id_key":
            raise errors.AlreadyExists("the brand already exists") from exc
        raise errors.FailedPrecondition(f"conflict on {constraint or 'a unique key'}; retry the call") from exc
    except (psycopg.DataError, psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter) as exc:
        raise errors.InvalidArgument("a field holds a value the database cannot store (e.g. a NUL byte)") from exc
    except psycopg.errors.QueryCanceled as exc:
        raise errors.Unavailable("the database call timed out; retry") from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise errors.Unavailable("the database is unavailable; retry with backoff") from exc


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


@dataclass(frozen=True)
class BatchRow:
    """A GenerateCodes batch as recorded: its id and the parameters it was made with."""

    batch_id: str
    generated: int
    code_length: int
    prefix: str
    expires_at: datetime | None


@dataclass(frozen=True)
class StatsRow:
    total: int
    claimed: int
    expired: int


class Store:
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

    # -- lifecycle ---------------------------------------------------------------------------

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
            if _is_connection_error(exc):
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

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Applies pending migrations, one process at a time; returns the versions applied."""
        applied: list[str] = []
        with translate_errors():
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, application_name=f"{self._application_name}-migrate"
            ) as conn:
                lock = {"key": _MIGRATION_LOCK_KEY}
                await conn.execute(QUERIES["lock_migrations"], lock)
                try:
                    cur = await conn.execute(QUERIES["migrations_table_exists"])
                    row = await cur.fetchone()
                    # Checked first: CREATE ... IF NOT EXISTS still needs CREATE on the schema, which
                    # a least-privilege runtime role does not have (docs/operations.md).
                    if not (row and row[0]):
                        await conn.execute(QUERIES["create_migrations_table"])
                    cur = await conn.execute(QUERIES["applied_migrations"])
                    done = {row[0] for row in await cur.fetchall()}
                    cur = await conn.execute(QUERIES["citus_installed"])
                    row = await cur.fetchone()
                    citus = bool(row and row[0])
                    for version, sql in _migrations():
                        if version in done:
                            continue
                        async with conn.transaction():
                            if citus:
                                await conn.execute(QUERIES["citus_sequential_ddl"])
                            for statement in split_statements(sql):
                                await conn.execute(statement.encode())
                            await conn.execute(QUERIES["record_migration"], {"version": version})
                        applied.append(version)
                        log.info("applied migration %s", version)
                    if citus:
                        await _distribute(conn)
                finally:
                    await conn.execute(QUERIES["unlock_migrations"], lock)
        return applied

    # -- brands and keys ---------------------------------------------------------------------

    async def create_brand(self, brand_id: str, name: str) -> Brand:
        rows = await self._fetch("create_brand", {"brand_id": brand_id, "name": name})
        _, brand_id, name, created_at = rows[0]
        return Brand(brand_id=brand_id, name=name, created_at=created_at)

    async def list_brands(self) -> list[Brand]:
        rows = await self._fetch("list_brands", {}, retry=True)
        return [Brand(brand_id=r[0], name=r[1], created_at=r[2], total_codes=r[3], claimed=r[4]) for r in rows]

    async def brand_key(self, brand_id: str) -> int | None:
        if (known := self._brand_keys.get(brand_id)) is not None:
            return known
        rows = await self._fetch("get_brand_key", {"brand_id": brand_id}, retry=True)
        if not rows:
            return None
        self._brand_keys[brand_id] = int(rows[0][0])
        return self._brand_keys[brand_id]

    async def create_api_key(self, key_id: str, key_hash: bytes, role: Role, brand_id: str | None) -> None:
        brand_key = None if brand_id is None else await self.brand_key(brand_id)
        if brand_id is not None and brand_key is None:
            raise errors.NotFound(f"brand {brand_id!r} does not exist; create it with `discount brand create`")
        await self._fetch(
            "create_api_key", {"key_id": key_id, "key_hash": key_hash, "role": role.value, "brand_key": brand_key}
        )

    async def find_api_key(self, key_hash: bytes) -> tuple[str, Role, str | None] | None:
        rows = await self._fetch("find_api_key", {"key_hash": key_hash}, retry=True)
        if not rows:
            return None
        key_id, role, brand_id = rows[0]
        return key_id, Role(role), brand_id

    async def revoke_api_key(self, key_id: str) -> bool:
        return bool(await self._fetch("revoke_api_key", {"key_id": key_id}, retry=True))

    async def list_api_keys(self) -> list[ApiKeyInfo]:
        rows = await self._fetch("list_api_keys", {}, retry=True)
        return [ApiKeyInfo(key_id=r[0], role=Role(r[1]), brand_id=r[2], created_at=r[3], revoked_at=r[4]) for r in rows]

    # -- claims ------------------------------------------------------------------------------

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

    # -- generation --------------------------------------------------------------------------

    async def find_batch(self, brand_id: str, request_id: str) -> BatchRow | None:
        rows = await self._fetch("find_batch", {"brand_id": brand_id, "request_id": request_id}, retry=True)
        if not rows:
            return None
        batch_id, generated, code_length, prefix, expires_at = rows[0]
        return BatchRow(str(batch_id), int(generated), int(code_length), str(prefix), expires_at)

    async def generate_codes(
        self,
        *,
        brand_id: str,
        request_id: str | None,
        count: int,
        code_length: int,
        prefix: str,
        expires_at: datetime | None,
        make_codes: Callable[[int], list[str]],
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[BatchRow, bool]:
        """Inserts exactly `count` new codes in one transaction; returns (the batch, True).

        Codes stream to COPY in chunks, so memory stays bounded. A collision (with the brand's
        existing codes or within the batch) aborts the fast path; the exact path then stages
        candidates and tops up until `count` new codes went in. A concurrent call with the same
        request_id waits on the batch's unique key, creates nothing and returns (the first call's
        batch, False), for the caller to compare its parameters with.
        """
        batch_id = str(uuid.uuid4())
        with translate_errors():
            async with self._connection() as conn:
                cur = await conn.execute(QUERIES["get_brand_key"], {"brand_id": brand_id})
                row = await cur.fetchone()
                if row is None:
                    raise errors.NotFound(f"brand {brand_id!r} does not exist")
                brand_key = int(row[0])
                try:
                    async with conn.transaction():
                        cur = await conn.execute(
                            QUERIES["insert_batch"],
                            {
                                "batch_id": batch_id,
                                "brand_key": brand_key,
                                "request_id": request_id,
                                "generated": count,
                                "code_length": code_length,
                                "prefix": prefix,
                                "expires_at": expires_at,
                            },
                        )
                        batch_row = await cur.fetchone()
                        assert batch_row is not None
                        batch_key = int(batch_row[0])
                        head = f"{brand_key}\t{batch_key}\t{_copy_value(expires_at)}\t"
                        try:
                            async with conn.transaction():  # savepoint around the fast path
                                await self._copy_direct(conn, head, count, make_codes, on_progress)
                        except psycopg.Error as exc:
                            if unique_violation(exc) is None:
                                raise
                            log.info("code collision in batch %s; taking the exact path", batch_id)
                            await self._copy_exact(
                                conn, brand_key, batch_key, expires_at, count, make_codes, on_progress
                            )
                        await conn.execute(QUERIES["add_total_codes"], {"count": count, "brand_key": brand_key})
                except psycopg.Error as exc:
                    if request_id and unique_violation(exc) == "code_batches_brand_key_request_id_key":
                        found = await self.find_batch(brand_id, request_id)
                        if found is not None:
                            return found, False
                    raise
        return BatchRow(batch_id, count, code_length, prefix, expires_at), True

    async def _copy_direct(
        self,
        conn: psycopg.AsyncConnection[Any],
        head: str,
        count: int,
        make_codes: Callable[[int], list[str]],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        async with conn.cursor().copy(QUERIES["copy_codes"]) as copy:
            done = 0
            separator = "\n" + head
            while done < count:
                n = min(GENERATION_CHUNK, count - done)
                # Off the event loop: making and formatting a chunk is ~0.1 s of CPU, and claims
                # queued behind it would wait (and be cancelled by a shutdown before a handler ran).
                chunk = await asyncio.to_thread(_copy_rows, make_codes, n, head, separator)
                await copy.write(chunk)
                done += n
                if on_progress:
                    on_progress(done)

    async def _copy_exact(
        self,
        conn: psycopg.AsyncConnection[Any],
        brand_key: int,
        batch_key: int,
        expires_at: datetime | None,
        count: int,
        make_codes: Callable[[int], list[str]],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        await conn.execute(QUERIES["create_staging"])
        inserted = 0
        for _ in range(64):
            needed = count - inserted
            if needed == 0:
                return
            await conn.execute(QUERIES["clear_staged_codes"])
            async with conn.cursor().copy(QUERIES["copy_staged_codes"]) as copy:
                staged = 0
                while staged < needed:
                    n = min(GENERATION_CHUNK, needed - staged)
                    await copy.write(await asyncio.to_thread(_copy_rows, make_codes, n, "", "\n"))
                    staged += n
            cur = await conn.execute(
                QUERIES["insert_staged_codes"],
                {"brand_key": brand_key, "batch_key": batch_key, "expires_at": expires_at, "needed": needed},
            )
            row = await cur.fetchone()
            inserted += int(row[0]) if row else 0
            if on_progress:
                on_progress(inserted)
        raise errors.FailedPrecondition(
            "could not find enough unused codes for this prefix and length; use a longer code_length"
        )

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

    # -- AdminService ------------------------------------------------------------------------

    async def brands_after(self, after: str, limit: int) -> list[Brand]:
        """Up to `limit` brands whose brand_id sorts after `after`, in brand_id order."""
        rows = await self._fetch("admin_list_brands", {"after": after, "limit": limit}, retry=True)
        return [Brand(brand_id=r[0], name=r[1], created_at=r[2]) for r in rows]

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
            raise errors.FailedPrecondition("the database has no page-token secret; run `discount migrate`")
        return bytes(rows[0][0])


# The Citus layout (docs/scaling.md): the small tables every node reads are copied to every node;
# the brand-keyed ones are split by brand_key, colocated, so all rows of one brand are on one node.
CITUS_REFERENCE_TABLES = ("brands", "api_keys")
CITUS_DISTRIBUTED_TABLES = ("brand_feed_heads", "codes", "claims", "code_batches")
# Functions whose calls go whole to the node holding their brand: (signature, the brand_key argument).
CITUS_DISTRIBUTED_FUNCTIONS = (("discount_claim_brand(integer,text[],text[],bigint)", "p_brand_key"),)


async def _distribute(conn: psycopg.AsyncConnection[Any]) -> None:
    """Puts the tables and functions Citus does not manage yet into the Citus layout, in one transaction."""
    cur = await conn.execute(QUERIES["citus_tables"])
    managed = {row[0] for row in await cur.fetchall()}
    missing = [t for t in (*CITUS_REFERENCE_TABLES, *CITUS_DISTRIBUTED_TABLES) if t not in managed]
    cur = await conn.execute(QUERIES["citus_distributed_functions"])
    routed = {row[0] for row in await cur.fetchall()}
    functions = [(f, argument) for f, argument in CITUS_DISTRIBUTED_FUNCTIONS if f not in routed]
    if not missing and not functions:
        return
    async with conn.transaction():
        await conn.execute(QUERIES["citus_sequential_ddl"])
        await conn.execute(QUERIES["citus_keep_foreign_keys"])
        for table in CITUS_REFERENCE_TABLES:
            if table in missing:
                await conn.execute(QUERIES["citus_create_reference_table"], {"table": table})
        first = CITUS_DISTRIBUTED_TABLES[0]
        for table in CITUS_DISTRIBUTED_TABLES:
            if table in missing:
                colocate_with = "default" if table == first else first
                params = {"table": table, "colocate_with": colocate_with}
                await conn.execute(QUERIES["citus_create_distributed_table"], params)
        for function, argument in functions:
            params = {"function": function, "argument": argument, "colocate_with": first}
            await conn.execute(QUERIES["citus_create_distributed_function"], params)
    log.info("distributed %s over the Citus cluster", ", ".join([*missing, *(f for f, _ in functions)]))


def _api_key(row: tuple[Any, ...]) -> ApiKeyInfo:
    key_id, role, brand_id, created_at, revoked_at = row
    return ApiKeyInfo(key_id=key_id, role=Role(role), brand_id=brand_id, created_at=created_at, revoked_at=revoked_at)


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


def _copy_rows(make_codes: Callable[[int], list[str]], n: int, head: str, separator: str) -> str:
    """`n` new codes as COPY text rows, each prefixed with `head` (`separator` = newline + head)."""
    return head + separator.join(make_codes(n)) + "\n"


def _copy_value(value: datetime | None) -> str:
    """A value in COPY's text format."""
    return "\\N" if value is None else value.isoformat()
