"""GenerateCodes in bulk: new codes streamed to COPY in bounded chunks, in one transaction."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from .. import errors
from ._errors import translate_errors, unique_violation
from ._pool import StoreBase
from ._queries import QUERIES

log = logging.getLogger(__package__)  # one logger for the whole store

# Rows per COPY chunk when generating: bounds memory whatever the batch size.
GENERATION_CHUNK = 50_000


@dataclass(frozen=True)
class BatchRow:
    """A GenerateCodes batch as recorded: its id and the parameters it was made with."""

    batch_id: str
    generated: int
    code_length: int
    prefix: str
    expires_at: datetime | None


class Generation(StoreBase):
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


def _copy_rows(make_codes: Callable[[int], list[str]], n: int, head: str, separator: str) -> str:
    """`n` new codes as COPY text rows, each prefixed with `head` (`separator` = newline + head)."""
    return head + separator.join(make_codes(n)) + "\n"


def _copy_value(value: datetime | None) -> str:
    """A value in COPY's text format."""
    return "\\N" if value is None else value.isoformat()
