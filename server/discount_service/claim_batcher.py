"""Group commit for claims, across brands.

A claim holds its brand's feed-head row lock until its commit is flushed to disk; that keeps feed
sequences gapless and in commit order (docs/design.md#trap-outbox-order), but it also means the
claims of one brand cannot share a WAL flush through PostgreSQL's own group commit. And a claim
alone in its transaction pays a round trip, a pool checkout, a commit and a flush of its own,
whatever its brand. So claims are gathered in a few lanes and each lane's waiting claims go
together, whatever their brands, in one call of `discount_claim_many` (sql/schema.sql): one round
trip and one flush for all of them (docs/design.md, "Group commit across brands").

- A brand always goes to the same lane (a stable hash of its id), and a lane runs one transaction
  at a time. So two transactions of this process never hold locks of the same brand: they never
  wait for each other, and a hot brand's claims queue here, not on its feed-head row in PostgreSQL.
  Inside a transaction the function takes its locks in one global order, so transactions of other
  servers cannot deadlock with it either.
- A claim that finds its lane idle goes at once, alone: no added latency.
- Each transaction carries up to `MAX_BATCH` claims. Every claim gets the same answer it would
  have got alone. If a transaction fails as a whole (say one item holds a value the database
  refuses), its claims are retried one by one, so one bad claim fails alone. A caller that gave up
  (deadline, cancel) before its batch left is not claimed for.
- On a Citus cluster (`store.claims_span_brands` false) a call must stay on the one node that holds
  its brand, so a transaction's claims go as one call per brand, all at once: each brand's still
  share a commit, on its node.
- Per brand, the batcher remembers the highest code_key this process claimed and passes it as the
  hint where the next code pick starts, so the index descent skips the claimed prefix instead of
  walking its dead entries (docs/design.md#trap-plan-drift).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import errors
from .models import Claim, ClaimOutcome
from .store import ClaimItem, ClaimRow, Store

log = logging.getLogger(__name__)

MAX_BATCH = 64
# Transactions in flight at most. More lanes mean smaller batches (more commits for the same claims)
# but more claims moving while one lane waits for its flush; docs/performance.md measures the choice.
LANES = 4


@dataclass
class _Pending:
    brand_id: str
    user_id: str
    email: str
    future: asyncio.Future[ClaimRow]


@dataclass
class _Lane:
    pending: deque[_Pending] = field(default_factory=deque)
    busy: bool = False


class ClaimBatcher:
    def __init__(
        self,
        store: Store,
        *,
        on_committed: Callable[[str, list[Claim]], None],
        lanes: int = LANES,
    ) -> None:
        self._store = store
        # Told of every transaction's new claims of each brand, in sequence order, even if their
        # callers are gone: the live feed takes them from here without reading them back.
        self._on_committed = on_committed
        # Per brand, the highest code_key this process claimed: where the next code pick starts.
        self._hints: dict[str, int] = {}
        self._lanes = [_Lane() for _ in range(lanes)]
        self._tasks: set[asyncio.Task[None]] = set()

    def _lane(self, brand_id: str) -> _Lane:
        # Stable across processes and restarts (str.__hash__ is salted per process).
        return self._lanes[zlib.crc32(brand_id.encode()) % len(self._lanes)]

    async def claim(self, brand_id: str, user_id: str, email: str) -> ClaimRow:
        lane = self._lane(brand_id)
        future: asyncio.Future[ClaimRow] = asyncio.get_running_loop().create_future()
        lane.pending.append(_Pending(brand_id, user_id, email, future))
        if not lane.busy:
            lane.busy = True
            task = asyncio.get_running_loop().create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, lane: _Lane) -> None:
        batch: list[_Pending] = []
        try:
            while lane.pending:
                taken = [lane.pending.popleft() for _ in range(min(MAX_BATCH, len(lane.pending)))]
                batch = [p for p in taken if not p.future.done()]
                if batch:
                    await self._run(batch)
                batch = []
        except BaseException as exc:  # never leave a caller waiting (e.g. cancelled at shutdown)
            for p in [*batch, *lane.pending]:
                if not p.future.done():
                    p.future.set_exception(
                        errors.Unavailable("the server is stopping; retry", reason="SERVER_STOPPING")
                    )
            lane.pending.clear()
            if not isinstance(exc, Exception):
                raise
            log.exception("claim batch failed")
        finally:
            lane.busy = False

    def _item(self, p: _Pending) -> ClaimItem:
        return ClaimItem(p.brand_id, p.user_id, p.email, self._hints.get(p.brand_id, 0))

    async def _run(self, batch: list[_Pending]) -> None:
        if not self._store.claims_span_brands:  # Citus: one call per brand, each to its node, all at once
            brands: dict[str, list[_Pending]] = {}
            for p in batch:
                brands.setdefault(p.brand_id, []).append(p)
            if len(brands) > 1:
                await asyncio.gather(*(self._run(claims) for claims in brands.values()))
                return
        if len(batch) == 1:
            await self._one(batch[0])
            return
        try:
            rows = await self._store.claim_codes([self._item(p) for p in batch])
        except Exception as exc:  # noqa: BLE001 - any failure: isolate it by claiming one by one
            log.info("claim batch of %d failed (%s); claiming one by one", len(batch), type(exc).__name__)
            await asyncio.gather(*(self._one(p) for p in batch))
            return
        for p, row in zip(batch, rows, strict=True):
            if not p.future.done():
                p.future.set_result(row)
        self._committed([(p.brand_id, row) for p, row in zip(batch, rows, strict=True)])

    async def _one(self, pending: _Pending) -> None:
        try:
            (row,) = await self._store.claim_codes([self._item(pending)])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who maps it
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(row)
        self._committed([(pending.brand_id, row)])

    def _committed(self, results: list[tuple[str, ClaimRow]]) -> None:
        """Raises each brand's hint to the highest code_key its claims took (only ever raised: a
        claim that finished late with a lower key must not send the next pick back over the
        prefix), and hands each brand's new claims to the feed in sequence order."""
        claimed: dict[str, list[Claim]] = {}
        for brand_id, row in results:
            if row.outcome is not ClaimOutcome.CLAIMED or row.claim is None:
                continue
            claimed.setdefault(brand_id, []).append(row.claim)
            if row.code_key is not None and row.code_key > self._hints.get(brand_id, 0):
                self._hints[brand_id] = row.code_key
        for brand_id, claims in claimed.items():
            claims.sort(key=lambda claim: claim.sequence)
            self._on_committed(brand_id, claims)
