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

from . import errors
from .store import Store

log = logging.getLogger(__name__)

# How often a round looks for newly expired batches: a brand's expired codes stay in the claim
# path at most this long plus the time their sweep takes (about 20 µs a code).
SWEEP_INTERVAL_SECONDS = 1.0
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
        batch: int = SWEEP_BATCH,
        vacuum_after: int = VACUUM_AFTER_SWEPT,
    ) -> None:
        self._store = store
        self._interval = interval_seconds
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

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except errors.Unavailable as exc:
                # The store logs outages once; the next round tries again.
                log.debug("expiry sweep skipped a round: %s", exc)
            except Exception:  # noqa: BLE001 - the sweep must outlive one bad round; the next one retries
                log.exception("expiry sweep round failed")
            await asyncio.sleep(self._interval)

    async def sweep_once(self) -> int:
        """One round: every brand with a batch expired and not swept yet, swept to the end unless
        another process holds its sweep lock; returns how many codes this round marked."""
        total = 0
        for brand in await self._store.brands_to_sweep():
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
