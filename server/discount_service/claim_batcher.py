"""Group commit for claims, across brands.

A claim holds its brand's feed-head row lock until its commit is flushed to disk; that keeps feed
sequences gapless and in commit order (docs/design.md#trap-outbox-order), but it also means the
claims of one brand cannot share a WAL flush through PostgreSQL's own group commit. And a claim
alone in its transaction pays a round trip, a pool checkout, a commit and a flush of its own,
whatever its brand. So claims that arrive while a claim transaction runs wait, and then go
together, whatever their brands, in one call of `discount_claim_many` (sql/schema.sql): one round
trip and one flush for all of them (docs/design.md#group-commit).

- A claim that finds no transaction running goes at once, alone: no added latency.
- One transaction at a time, each with up to `MAX_BATCH` claims: on two shared cores every further
  transaction in flight only meant smaller batches and more commits for the same claims
  (docs/performance.md). A second one starts only when the one in flight has run for
  `STALL_SECONDS` (say it waits for a lock another server holds), and only with claims of other
  lanes; at most `MAX_TRANSACTIONS`.
- Brands are hashed to `LANES` lanes, and a lane is in at most one transaction at a time, so two
  transactions of this process never hold locks of the same brand: they never wait for each other,
  and a stalled brand holds up only its lane. Inside a transaction the function takes its locks
  in one global order, so transactions of other servers cannot deadlock with it either.
- Every claim gets the same answer it would have got alone. If a transaction fails as a whole
  because one item holds a value the database refuses, its claims are retried one by one, so one
  bad claim fails alone. If it fails because the database is unavailable, every claim of it fails
  at once with that error: alone they would only wait for it again. A caller that gave up
  (deadline, cancel) before its batch left is not claimed for.
- A caller waits for its batch only until shortly before its call's deadline (deadline.py): then
  it is told UNAVAILABLE, and retries, since a claim is idempotent per brand and user. A batch
  serves many callers, so it runs without any one caller's deadline (a task of its own).
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
from dataclasses import dataclass

from . import deadline, errors
from .models import Claim, ClaimOutcome
from .store import ClaimItem, ClaimRow, Store

log = logging.getLogger(__name__)

MAX_BATCH = 64
LANES = 64
STALL_SECONDS = 0.05
MAX_TRANSACTIONS = 4


@dataclass
class _Pending:
    brand_id: str
    user_id: str
    email: str
    future: asyncio.Future[ClaimRow]


class ClaimBatcher:
    def __init__(self, store: Store, *, on_committed: Callable[[str, list[Claim]], None]) -> None:
        self._store = store
        # Told of every transaction's new claims of each brand, in sequence order, even if their
        # callers are gone: the live feed takes them from here without reading them back.
        self._on_committed = on_committed
        # Per brand, the highest code_key this process claimed: where the next code pick starts.
        self._hints: dict[str, int] = {}
        self._lanes: list[deque[_Pending]] = [deque() for _ in range(LANES)]
        self._busy = [False] * LANES
        # Lanes with waiting claims, the longest waiting first.
        self._waiting: dict[int, None] = {}
        self._started: list[float] = []  # loop.time() at which each transaction in flight started
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def lane_of(brand_id: str) -> int:
        # Stable across processes and restarts (str.__hash__ is salted per process).
        return zlib.crc32(brand_id.encode()) % LANES

    async def claim(self, brand_id: str, user_id: str, email: str) -> ClaimRow:
        future: asyncio.Future[ClaimRow] = asyncio.get_running_loop().create_future()
        lane = self.lane_of(brand_id)
        self._lanes[lane].append(_Pending(brand_id, user_id, email, future))
        self._waiting.setdefault(lane, None)
        self._maybe_start()
        budget = deadline.wait_budget()
        if budget is None:
            return await future
        try:
            # On timeout the future is cancelled, as when the caller cancels: a batch that has not
            # left yet drops the claim.
            return await asyncio.wait_for(future, budget)
        except TimeoutError:
            raise errors.DatabaseOutage(
                "the database did not answer before the call's deadline; retry",
                retry_after_seconds=self._store.retry_after_seconds,
            ) from None

    def _maybe_start(self) -> None:
        """Starts a transaction if none runs, or if every one in flight has stalled."""
        while self._waiting and len(self._started) < MAX_TRANSACTIONS:
            loop = asyncio.get_running_loop()
            if self._started:
                stalled_at = max(self._started) + STALL_SECONDS
                if loop.time() < stalled_at:
                    if self._timer is None:
                        self._timer = loop.call_at(stalled_at, self._on_timer)
                    return
            batch, lanes = self._take()
            if not lanes:
                return  # every waiting claim is in a lane that is in a transaction already
            self._started.append(loop.time())
            task = loop.create_task(self._transaction(batch, lanes, self._started[-1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_start()

    def _take(self) -> tuple[list[_Pending], list[int]]:
        """Up to MAX_BATCH waiting claims from lanes not in a transaction, longest waiting first;
        marks those lanes busy. Claims whose callers gave up are dropped here, before they leave."""
        batch: list[_Pending] = []
        lanes: list[int] = []
        for lane in list(self._waiting):
            if self._busy[lane]:
                continue
            queue = self._lanes[lane]
            while queue and len(batch) < MAX_BATCH:
                pending = queue.popleft()
                if not pending.future.done():
                    batch.append(pending)
            if not queue:
                del self._waiting[lane]
            self._busy[lane] = True
            lanes.append(lane)
            if len(batch) >= MAX_BATCH:
                break
        return batch, lanes

    async def _transaction(self, batch: list[_Pending], lanes: list[int], started: float) -> None:
        try:
            if batch:
                await self._run(batch)
        except BaseException as exc:  # never leave a caller waiting (e.g. cancelled at shutdown)
            waiting = [p for lane in range(LANES) for p in self._lanes[lane]]
            for p in [*batch, *waiting]:
                if not p.future.done():
                    p.future.set_exception(
                        errors.Unavailable("the server is stopping; retry", reason="SERVER_STOPPING")
                    )
            for queue in self._lanes:
                queue.clear()
            self._waiting.clear()
            if not isinstance(exc, Exception):
                raise
            log.exception("claim batch failed")
        finally:
            for lane in lanes:
                self._busy[lane] = False
            self._started.remove(started)
            if self._timer is not None and not self._started:
                self._timer.cancel()
                self._timer = None
            self._maybe_start()

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
        except errors.Unavailable as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a value the database refused: isolate it by claiming one by one
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
