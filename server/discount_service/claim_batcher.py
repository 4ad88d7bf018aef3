"""Group commit for the claims of a hot brand.

A claim holds its brand's feed-head row lock until its commit is flushed to disk; that keeps feed
sequences gapless and in commit order (docs/design.md#trap-outbox-order), but it also means the
claims of one brand cannot share a WAL flush: one brand tops out at about 1 / fsync time. So claims
of a brand that arrive while one of its transactions is running wait for it and then go together,
in one call of `discount_claim_batch` (sql/schema.sql): one round trip and one flush for all of them.

- A claim that finds its brand idle goes at once, alone (`discount_claim`): no added latency.
- At most `MAX_IN_FLIGHT` transactions per brand run at a time, each with up to `MAX_BATCH` claims.
- Every claim gets the same answer it would have got alone. If a batch fails as a whole (say one
  item holds a value the database refuses), its claims are retried one by one, so one bad claim
  fails alone. A caller that gave up (deadline, cancel) before its batch left is not claimed for.
- Per brand, the batcher remembers the highest code_key this process claimed and passes it as the
  hint where the next code pick starts, so the index descent skips the claimed prefix instead of
  walking its dead entries (docs/design.md#trap-plan-drift).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from . import errors
from .models import Claim, ClaimOutcome
from .store import ClaimRow, Store

log = logging.getLogger(__name__)

MAX_BATCH = 64
# One transaction per brand at a time: a second one would only wait for the feed-head row lock inside
# PostgreSQL, while claims that wait here join the next batch (docs/performance.md measures 1 and 2).
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
        *,
        on_committed: Callable[[str, list[Claim]], None],
    ) -> None:
        self._store = store
        # Told of every transaction's new claims, in sequence order, even if their callers are
        # gone: the live feed takes them from here without reading them back.
        self._on_committed = on_committed
        # Per brand, the highest code_key this process claimed: where the next code pick starts.
        self._hints: dict[str, int] = {}
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
                    p.future.set_exception(
                        errors.Unavailable("the server is stopping; retry", reason="SERVER_STOPPING")
                    )
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
        self._learn_hint(brand_id, rows)
        claimed = [row.claim for row in rows if row.outcome is ClaimOutcome.CLAIMED and row.claim is not None]
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
        self._learn_hint(brand_id, [row])
        if row.outcome is ClaimOutcome.CLAIMED and row.claim is not None:
            self._on_committed(brand_id, [row.claim])
        if not pending.future.done():
            pending.future.set_result(row)

    def _learn_hint(self, brand_id: str, rows: list[ClaimRow]) -> None:
        """Raises the brand's hint to the highest code_key these claims took. Only ever raised: a
        claim that finished late with a lower key must not send the next pick back over the prefix."""
        highest = max((row.code_key for row in rows if row.code_key is not None), default=0)
        if highest > self._hints.get(brand_id, 0):
            self._hints[brand_id] = highest
