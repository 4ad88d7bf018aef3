"""Group commit for the claims of a hot brand.

A claim holds its brand's feed-head row lock until its commit is flushed to disk; that keeps feed
sequences gapless and in commit order (ENGINEERING.md trap 4), but it also means the claims of
one brand cannot share a WAL flush: one brand tops out at about 1 / fsync time. So claims of a
brand that arrive while one of its transactions is running wait for it and then go together, in
one call of `discount_claim_batch` (migrations/0004): one round trip and one flush for all of them.

- A claim that finds its brand idle goes at once, alone (`discount_claim`): no added latency.
- At most `MAX_IN_FLIGHT` transactions per brand run at a time, each with up to `MAX_BATCH` claims.
- Every claim gets the same answer it would have got alone. If a batch fails as a whole (say one
  item holds a value the database refuses), its claims are retried one by one, so one bad claim
  fails alone. A caller that gave up (deadline, cancel) before its batch left is not claimed for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

from . import errors
from .models import Claim
from .store import ClaimRow, Store

log = logging.getLogger(__name__)

MAX_BATCH = 64
# One transaction per brand at a time: a second one would only wait for the feed-head row lock inside
# PostgreSQL, while claims that wait here join the next batch. 1 vs 2, alternated 10 s runs on one
# database: 2,215 / 2,347 / 2,277 vs 2,091 / 2,167 / 2,018 claims/s (docs/performance.md, section 3).
MAX_IN_FLIGHT = 1


@dataclass
class _Pending:
    user_id: str
    email: str
    future: asyncio.Future[ClaimRow]


@dataclass
class _BrandQueue:
    pending: list[_Pending] = field(default_factory=list)
    in_flight: int = 0


class ClaimBatcher:
    def __init__(
        self,
        store: Store,
        hints: MutableMapping[str, int],
        *,
        on_committed: Callable[[str, list[Claim]], None],
    ) -> None:
        self._store = store
        # Told of every transaction's new claims, in sequence order, even if their callers are
        # gone: the live feed takes them from here without reading them back.
        self._on_committed = on_committed
        # Per brand, the highest code_key this process handed out (kept up to date by the service).
        self._hints = hints
        self._queues: dict[str, _BrandQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def claim(self, brand_id: str, user_id: str, email: str) -> ClaimRow:
        queue = self._queues.get(brand_id)
        if queue is None:
            queue = self._queues[brand_id] = _BrandQueue()
        future: asyncio.Future[ClaimRow] = asyncio.get_running_loop().create_future()
        queue.pending.append(_Pending(user_id, email, future))
        if queue.in_flight < MAX_IN_FLIGHT:
            queue.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._drain(brand_id, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, brand_id: str, queue: _BrandQueue) -> None:
        batch: list[_Pending] = []
        try:
            while queue.pending:
                batch = [p for p in queue.pending[:MAX_BATCH] if not p.future.done()]
                del queue.pending[:MAX_BATCH]
                if batch:
                    await self._run(brand_id, batch)
                batch = []
        except BaseException as exc:  # never leave a caller waiting (e.g. cancelled at shutdown)
            for p in batch + queue.pending:
                if not p.future.done():
                    p.future.set_exception(errors.Unavailable("the server is stopping; retry"))
            queue.pending.clear()
            if not isinstance(exc, Exception):
                raise
            log.exception("claim batch failed")
        finally:
            queue.in_flight -= 1
            if queue.in_flight == 0 and not queue.pending and self._queues.get(brand_id) is queue:
                del self._queues[brand_id]

    async def _run(self, brand_id: str, batch: list[_Pending]) -> None:
        hint = self._hints.get(brand_id, 0)
        if len(batch) == 1:
            await self._one(brand_id, batch[0], hint)
            return
        try:
            rows = await self._store.claim_code_batch(brand_id, [(p.user_id, p.email) for p in batch], hint)
        except Exception as exc:  # noqa: BLE001 - any failure: isolate it by claiming one by one
            log.info("claim batch of %d failed (%s); claiming one by one", len(batch), type(exc).__name__)
            await asyncio.gather(*(self._one(brand_id, p, hint) for p in batch))
            return
        claimed = [row.claim for row in rows if row.outcome == "claimed" and row.claim is not None]
        self._on_committed(brand_id, sorted(claimed, key=lambda claim: claim.sequence))
        for p, row in zip(batch, rows, strict=True):
            if not p.future.done():
                p.future.set_result(row)

    async def _one(self, brand_id: str, pending: _Pending, hint: int) -> None:
        try:
            row = await self._store.claim_code(brand_id, pending.user_id, pending.email, hint)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who maps it
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if row.outcome == "claimed" and row.claim is not None:
            self._on_committed(brand_id, [row.claim])
        if not pending.future.done():
            pending.future.set_result(row)
