"""The expiry sweep: expired, unclaimed codes leave the claim path (docs/design.md#trap-expired-scan).

A claim picks the oldest free code from the free-code index; a code past its expires_at is never
handed out, but while it stays in that index every pick that starts below it steps over it (500,000
expired codes cost a NO_CODES_LEFT 23-50 ms of index reading). So every server runs this task: each
round it finds the brands with a batch expired and not swept yet (reading batches, never codes),
marks their expired codes `expired` in bounded transactions, each counted on the brand's feed head
so brand stats stay exact, and after a large sweep vacuums the codes table, which removes the swept
codes' entries from the index. A brand is swept by one process at a time (its sweep lock, taken
inside each bounded transaction); any server may sweep any brand, and a server that stops leaves the
work to the others' next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from . import errors
from .store import BrandToSweep, Store

log = logging.getLogger(__name__)

# The next round after one that found brands to sweep (another process may still hold one of them).
SWEEP_INTERVAL_SECONDS = 1.0
# Otherwise a round is due when the soonest batch expires, which the database tells, and a server
# asks again at least this often: it also learns of batches other servers generated (its own wake
# it at once). An idle server therefore adds one transaction per minute, not one per second (the
# idle budget of 1,000 watched brands is 2 transactions/s in all). A batch another server made is
# swept at most this late; meanwhile its expired codes are still never handed out.
MAX_IDLE_SECONDS = 60.0
# Codes marked per transaction: a few hundred milliseconds, so a claim of the brand waits at most
# that long for the feed-head row the transaction updates last.
SWEEP_BATCH = 10_000
# Vacuum the codes table once this many codes were swept since the last vacuum: below it, the dead
# index entries a pick may step over cost less than the vacuum (which reads every index of codes).
VACUUM_AFTER_SWEPT = 10_000


class ExpirySweep:
    def __init__(
        self,
        store: Store,
        *,
        interval_seconds: float = SWEEP_INTERVAL_SECONDS,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
        batch: int = SWEEP_BATCH,
        vacuum_after: int = VACUUM_AFTER_SWEPT,
    ) -> None:
        self._store = store
        self._interval = interval_seconds
        self._max_idle = max_idle_seconds
        self._wake = asyncio.Event()
        self._batch = batch
        self._vacuum_after = vacuum_after
        self._swept_since_vacuum = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="expiry-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def batch_expires(self, expires_at: datetime) -> None:
        """A batch this server generated expires at `expires_at`: the sleeping sweep works out its
        next round again, so the batch is swept when it expires, not up to MAX_IDLE_SECONDS later."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # Cleared before the round, not after: a batch generated while the round runs wakes the next wait.
            self._wake.clear()
            delay = self._interval
            try:
                if not await self._sweep_round():
                    delay = self._until(await self._store.next_expiry())
            except errors.Unavailable as exc:
                # The store logs outages once; the next round tries again.
                log.debug("expiry sweep skipped a round: %s", exc)
            except Exception:  # noqa: BLE001 - the sweep must outlive one bad round; the next one retries
                log.exception("expiry sweep round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _until(self, next_expiry: datetime | None) -> float:
        if next_expiry is None:
            return self._max_idle
        seconds = (next_expiry - datetime.now(UTC)).total_seconds()
        # A little after the expiry, so the batch counts as expired in the database's clock too.
        return min(max(seconds + 0.05, 0.05), self._max_idle)

    async def _sweep_round(self) -> bool:
        """One round; whether any brand was due (then the next round follows soon)."""
        brands = await self._store.brands_to_sweep()
        if brands:
            await self._sweep(brands)
        return bool(brands)

    async def sweep_once(self) -> int:
        """One round: every brand with a batch expired and not swept yet, swept to the end unless
        another process holds its sweep lock; returns how many codes this round marked."""
        return await self._sweep(await self._store.brands_to_sweep())

    async def _sweep(self, brands: list[BrandToSweep]) -> int:
        total = 0
        for brand in brands:
            swept, finished = await self._sweep_brand(brand.brand_key)
            total += swept
            if finished:
                await self._store.mark_batches_swept(brand.brand_key, brand.swept_until)
        self._swept_since_vacuum += total
        if self._swept_since_vacuum >= self._vacuum_after:
            self._swept_since_vacuum = 0
            await self._store.vacuum_codes()
        if total:
            log.info("expiry sweep: %d expired codes left the claim path", total)
        return total

    async def _sweep_brand(self, brand_key: int) -> tuple[int, bool]:
        """(codes marked, whether the brand has none left to mark); False while another process
        sweeps it, which then marks its batches swept itself."""
        swept = 0
        while True:
            step = await self._store.sweep_expired_codes(brand_key, self._batch)
            if not step.held:
                return swept, False
            swept += step.swept
            if step.swept < self._batch:
                return swept, True
