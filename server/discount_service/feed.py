"""The live claim feed of one process.

- One LISTEN connection per process, whatever the number of watchers.
- Per brand with watchers, one `BrandChannel` reads new claims from the database once and fans
  them out from a bounded in-memory tail. A watcher further behind than the tail (a replay from
  sequence 0, or a slow consumer) pages from the database itself, so memory stays bounded.
- Claims made by this process wake the channel directly; other replicas hear of them through a
  NOTIFY sent after commit, outside the claim transaction (ENGINEERING.md trap 3). A periodic poll
  covers a lost notification, so an event can be late but never lost.
- Sequences are gapless and commit in order (see migrations/0002), so `sequence > cursor` is a
  safe resume point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator

from . import errors
from .models import Claim
from .store import Store

log = logging.getLogger(__name__)

TAIL_SIZE = 8192
# At most one NOTIFY per brand per this interval from a process: under load a hot brand sent one
# per round trip, ~7% of the server's CPU (docs/performance.md). Only other processes' watchers
# wait for it (local ones are woken in-process), by at most this much.
NOTIFY_INTERVAL_SECONDS = 0.005
PAGE_SIZE = 1000
REFRESH_INTERVAL_SECONDS = 0.004


class BrandChannel:
    def __init__(self, feed: ClaimFeed, brand_id: str, brand_key: int) -> None:
        self.brand_id = brand_id
        self.brand_key = brand_key
        self.watchers = 0
        self._feed = feed
        self._tail: deque[Claim] = deque(maxlen=TAIL_SIZE)
        self._head = -1  # highest sequence read into the tail; -1 until the first read
        self._wake = asyncio.Event()
        self._new_data = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._signal()

    def _signal(self) -> None:
        fired, self._new_data = self._new_data, asyncio.Event()
        fired.set()

    async def _refresh_loop(self) -> None:
        store = self._feed.store
        loop = asyncio.get_running_loop()
        last_delivery = 0.0
        while True:
            try:
                if self._head < 0:
                    self._head = await store.feed_head(self.brand_key)
                    self._ready.set()
                while True:
                    page = await store.feed_page(self.brand_id, self.brand_key, self._head, PAGE_SIZE)
                    if page:
                        self._tail.extend(page)
                        self._head = page[-1].sequence
                        self._signal()
                        last_delivery = loop.time()
                    if len(page) < PAGE_SIZE:
                        break
            except errors.Unavailable:
                # The poll retries; watchers keep their cursor and catch up when it is back.
                await asyncio.sleep(min(self._feed.poll_seconds, 0.5))
                continue
            await self._wake.wait()
            # Under a stream of claims, read at most once per REFRESH_INTERVAL_SECONDS: every read
            # wakes every watcher of the brand, so a run of claims per read, not one, keeps the
            # fan-out cost per claim down (docs/performance.md). An idle brand reads at once.
            pause = last_delivery + REFRESH_INTERVAL_SECONDS - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()

    def events_after(self, cursor: int) -> list[Claim] | None:
        """Claims after `cursor` from memory, or None if the tail no longer reaches back that far."""
        if not self._tail:
            return [] if cursor >= self._head >= 0 else None
        first = self._tail[0].sequence
        if cursor < first - 1:
            return None
        start = cursor - first + 1
        return [self._tail[i] for i in range(start, len(self._tail))] if start < len(self._tail) else []

    async def wait_for_news(self, timeout: float) -> None:
        waiter = self._new_data
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await waiter.wait()

    async def ready(self) -> None:
        await self._ready.wait()


class ClaimFeed:
    def __init__(self, store: Store, *, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self._channels: dict[str, BrandChannel] = {}
        self._pending_notifications: set[str] = set()
        self._notifier: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        # Tags this process's NOTIFYs, so it does not re-read claims it already woke itself for.
        self._origin = secrets.token_hex(4)

    @property
    def watcher_count(self) -> int:
        return sum(channel.watchers for channel in self._channels.values())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._poll())]

    async def stop(self) -> None:
        """Ends every watch stream cleanly and stops the listener."""
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in list(self._channels.values()):
            await channel.close()
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._notifier, timeout=1.0)

    def claim_committed(self, brand_id: str) -> None:
        """Called after a claim commits: wake local watchers now and tell other replicas."""
        channel = self._channels.get(brand_id)
        if channel is not None:
            channel.wake()
        self._pending_notifications.add(brand_id)
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.get_running_loop().create_task(self._send_notifications())

    async def _send_notifications(self) -> None:
        # Coalesces: while one round of NOTIFYs is in flight, and for NOTIFY_INTERVAL_SECONDS
        # after it, later claims of a brand share the next one. A lone claim is sent at once.
        while self._pending_notifications:
            brands, self._pending_notifications = self._pending_notifications, set()
            for brand_id in brands:
                try:
                    await self.store.notify_claims(f"{self._origin}:{brand_id}")
                except errors.DiscountError:
                    log.debug("NOTIFY failed; other replicas will see the claim at their next poll")
            await asyncio.sleep(NOTIFY_INTERVAL_SECONDS)

    async def _listen(self) -> None:
        async for payload in self.store.notifications():
            if payload is None:  # (re)connected: anything may have been missed
                for channel in self._channels.values():
                    channel.wake()
                continue
            origin, _, brand_id = payload.partition(":")
            target = self._channels.get(brand_id)
            if target is not None and origin != self._origin:
                target.wake()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            for channel in list(self._channels.values()):
                channel.wake()

    async def watch(self, brand_id: str, brand_key: int, after_sequence: int) -> AsyncIterator[list[Claim]]:
        """Every claim of the brand after `after_sequence`, oldest first, then live ones, until
        the feed stops (server shutdown). Yields them in runs of consecutive claims, as they are
        available: every watcher of a brand shares the same Claim objects."""
        existing = self._channels.get(brand_id)
        channel = existing if existing is not None else BrandChannel(self, brand_id, brand_key)
        self._channels[brand_id] = channel
        channel.watchers += 1
        cursor = after_sequence
        try:
            await channel.ready()
            while not self._closing.is_set():
                batch = channel.events_after(cursor)
                if batch is None:  # behind the in-memory tail: page from the database
                    batch = await self.store.feed_page(brand_id, brand_key, cursor, PAGE_SIZE)
                if batch:
                    yield batch
                    cursor = batch[-1].sequence
                    continue
                await channel.wait_for_news(self.poll_seconds)
        finally:
            channel.watchers -= 1
            if channel.watchers == 0 and self._channels.get(brand_id) is channel:
                del self._channels[brand_id]
                await channel.close()
