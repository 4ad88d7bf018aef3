"""The live claim feed of one process.

- One LISTEN connection per process, whatever the number of watchers.
- Per brand with watchers, one `BrandChannel` keeps the newest claims in a bounded in-memory tail
  and fans them out from there. A watcher further behind than the tail (a replay from sequence 0,
  or a slow consumer) pages from the database itself, so memory stays bounded.
- Claims made by this process are handed to the channel in memory after commit, no read needed;
  other replicas hear of them through a NOTIFY sent after commit, outside the claim transaction
  (docs/design.md#trap-notify-commit-lock), and read them. A periodic poll covers a lost
  notification, so an event can be late but never lost.
- Fan-outs are paced by the number of watchers and the brand's claim rate (FANOUT_*); caught-up
  watchers all get the same run of claims, so it is encoded once.
- Sequences are gapless and commit in order (docs/design.md#trap-outbox-order), so
  `sequence > cursor` is a safe resume point.
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
# At most one NOTIFY per brand per this interval from a process: one per claim transaction would
# add a database call per transaction of a hot brand, a measurable share of the server's CPU
# (docs/performance.md). Only other processes' watchers wait for it (local ones get this process's
# claims handed over in memory), by at most this much.
NOTIFY_INTERVAL_SECONDS = 0.005
PAGE_SIZE = 1000
# Reads of the database for claims this process did not make (NOTIFY, poll) come at most this often.
REFRESH_INTERVAL_SECONDS = 0.004
# Every fan-out costs one gRPC message per watcher: server CPU, more in a Python client, and a
# stall of the one event loop that claims wait behind (docs/design.md#trap-one-event-loop). So a
# brand's fan-outs are spaced by its number of watchers and stretched by its claim rate: a quiet
# brand's claim goes out at once, and in a flash sale shoppers come first and watchers get fewer,
# larger runs.
FANOUT_MESSAGES_PER_SECOND = 8000  # to all of a brand's watchers, before the claim rate stretches it
FANOUT_CLAIM_RATE_UNIT = 200  # every this many claims/s of the brand add one more base interval
FANOUT_MIN_INTERVAL_SECONDS = 0.001
FANOUT_MAX_INTERVAL_SECONDS = 0.1
CLAIM_RATE_WINDOW_SECONDS = 0.25


class BrandChannel:
    def __init__(self, feed: ClaimFeed, brand_id: str, brand_key: int) -> None:
        self.brand_id = brand_id
        self.brand_key = brand_key
        self.watchers = 0
        self._feed = feed
        self._loop = asyncio.get_running_loop()
        self._tail: deque[Claim] = deque(maxlen=TAIL_SIZE)
        self._head = -1  # highest sequence in the tail; -1 until the first read
        self._visible = -1  # highest sequence watchers have been told of (<= _head)
        # The run of the last fan-out: every watcher that was caught up gets this same list object,
        # so the transport encodes it once for all of them.
        self._latest: list[Claim] = []
        self._last_fanout = 0.0
        self._claim_rate = 0.0  # claims/s of the brand, over the last full window
        self._rate_window_start = self._loop.time()
        self._rate_window_head = -1
        self._fanout_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._new_data = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = self._loop.create_task(self._refresh_loop())

    def wake(self) -> None:
        """New claims may be in the database (another process's, or a lost notification)."""
        self._wake.set()

    def committed(self, claims: list[Claim]) -> None:
        """Claims this process just committed, in sequence order: appended without a read when
        they follow the tail; anything else (another process's claims in between) is read."""
        for claim in claims:
            if claim.sequence <= self._head:
                continue
            if claim.sequence != self._head + 1 or self._head < 0:
                self.wake()
                break
            self._tail.append(claim)
            self._head = claim.sequence
        self._schedule_fanout()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._fanout_timer is not None:
            self._fanout_timer.cancel()
        self._signal()

    def _signal(self) -> None:
        fired, self._new_data = self._new_data, asyncio.Event()
        fired.set()

    def _schedule_fanout(self) -> None:
        if self._fanout_timer is not None or self._head <= self._visible:
            return
        now = self._loop.time()
        if now - self._rate_window_start >= CLAIM_RATE_WINDOW_SECONDS:
            if self._rate_window_head >= 0:
                self._claim_rate = (self._head - self._rate_window_head) / (now - self._rate_window_start)
            self._rate_window_start, self._rate_window_head = now, self._head
        pressure = 1 + self._claim_rate / FANOUT_CLAIM_RATE_UNIT
        interval = pressure * self.watchers / FANOUT_MESSAGES_PER_SECOND
        interval = min(max(interval, FANOUT_MIN_INTERVAL_SECONDS), FANOUT_MAX_INTERVAL_SECONDS)
        due = self._last_fanout + interval
        if due <= now:
            self._fanout()
        else:
            self._fanout_timer = self._loop.call_at(due, self._fanout)

    def _fanout(self) -> None:
        self._fanout_timer = None
        first = self._tail[0].sequence
        start = max(self._visible + 1 - first, 0)
        self._latest = [self._tail[i] for i in range(start, len(self._tail))]
        self._visible = self._head
        self._last_fanout = self._loop.time()
        self._signal()

    async def _refresh_loop(self) -> None:
        store = self._feed.store
        last_read = 0.0
        while True:
            try:
                if self._head < 0:
                    self._head = self._visible = await store.feed_head(self.brand_key)
                    self._ready.set()
                while True:
                    page = await store.feed_page(self.brand_id, self.brand_key, self._head, PAGE_SIZE)
                    # Claims handed over while the read was in flight are in the tail already.
                    fresh = [claim for claim in page if claim.sequence > self._head]
                    if fresh:
                        self._tail.extend(fresh)
                        self._head = fresh[-1].sequence
                        self._schedule_fanout()
                    if len(page) < PAGE_SIZE:
                        break
            except errors.Unavailable:
                # The poll retries; watchers keep their cursor and catch up when it is back.
                await asyncio.sleep(min(self._feed.poll_seconds, 0.5))
                continue
            await self._wake.wait()
            pause = last_read + REFRESH_INTERVAL_SECONDS - self._loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            last_read = self._loop.time()

    def events_after(self, cursor: int) -> list[Claim] | None:
        """Claims after `cursor` that watchers have been told of, from memory, or None if the tail
        no longer reaches back that far."""
        if self._latest and cursor == self._latest[0].sequence - 1:
            return self._latest
        if cursor >= self._visible:
            return []
        if not self._tail or cursor < self._tail[0].sequence - 1:
            return None
        first = self._tail[0].sequence
        start, stop = cursor - first + 1, self._visible - first + 1
        return [self._tail[i] for i in range(start, stop)]

    async def wait_for_news(self) -> None:
        # close() signals too, so a watcher never waits past the channel's end.
        await self._new_data.wait()

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

    def claims_committed(self, brand_id: str, claims: list[Claim]) -> None:
        """Called after claims commit: hands them to local watchers and tells other replicas."""
        channel = self._channels.get(brand_id)
        if channel is not None:
            channel.committed(claims)
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
                await channel.wait_for_news()
        finally:
            channel.watchers -= 1
            if channel.watchers == 0 and self._channels.get(brand_id) is channel:
                del self._channels[brand_id]
                await channel.close()
