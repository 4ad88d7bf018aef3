"""The live claim feed of one process.

- One LISTEN connection per process, whatever the number of watchers.
- Per brand with watchers, one `BrandChannel` keeps the newest claims in a bounded in-memory tail
  and fans them out from there. A watcher further behind than the tail (a replay from sequence 0,
  or a slow consumer) pages from the database, through pages that watchers at the same place
  share, so memory stays bounded and each claim is read and encoded once for all of them.
- Claims made by this process are handed to the channel in memory after commit, no read needed;
  other replicas hear of them through a NOTIFY sent after commit, outside the claim transaction
  (docs/design.md#trap-notify-commit-lock), and read them.
- The database work does not grow with the number of watched brands: one poll reads the heads of
  every watched brand in one statement, and the claims of every channel that is behind are read
  together, one round trip and one transaction for all of them. A lost notification is covered by
  that poll, so an event can be late but never lost.
- Fan-outs are paced by the number of watchers and the brand's claim rate (fanout.py); caught-up
  watchers all get the same run of claims, so it is encoded once. While this process serves
  claims, a run that splits into several messages (a watcher asking for one claim per message)
  comes out of a budget that grows with each claim committed, shared by all watchers
  (fanout.py): shoppers first; watchers that fall behind catch up when the claims stop.
- Sequences are gapless and commit in order (docs/design.md#trap-outbox-order), so
  `sequence > cursor` is a safe resume point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable

from . import errors
from .fanout import CLAIM_RATE_WINDOW_SECONDS, FanoutBudget, claim_budget, fanout_interval
from .models import Claim
from .store import Store

log = logging.getLogger(__name__)

TAIL_SIZE = 8192
# At most one NOTIFY round per this interval from a process, one transaction for every brand with
# new claims: one per claim transaction would add a database call per transaction, a measurable
# share of the server's CPU and of the database's transactions (docs/performance.md). Only other
# processes' watchers wait for it (local ones get this process's claims handed over in memory), by
# at most this much, and only under sustained load: a claim after a quiet spell is sent at once.
NOTIFY_INTERVAL_SECONDS = 0.02
# A notification's payload is at most 8,000 bytes; brands beyond that go in further payloads.
NOTIFY_PAYLOAD_BYTES = 7000
PAGE_SIZE = 1000
# Pages of claims behind the tails that watchers share, for the whole process: bounds memory.
SHARED_PAGES = 16
# Reads of the database for claims this process did not make (NOTIFY, poll) come at most this often.
REFRESH_INTERVAL_SECONDS = 0.004


class WatchStop:
    """Ends one watch stream from outside (its key was revoked): the stream raises `error` instead
    of sending anything more, at once if it was waiting for claims."""

    def __init__(self) -> None:
        self.error: errors.DiscountError | None = None
        self.wake: Callable[[], None] = lambda: None  # its channel's, once the stream watches

    def stop(self, error: errors.DiscountError) -> None:
        if self.error is None:
            self.error = error
            self.wake()  # every watcher of the brand here wakes; the others find nothing new


class BrandChannel:
    def __init__(self, feed: ClaimFeed, brand_id: str, brand_key: int) -> None:
        self.brand_id = brand_id
        self.brand_key = brand_key
        self.watchers = 0
        self._feed = feed
        self._loop = asyncio.get_running_loop()
        self._tail: deque[Claim] = deque(maxlen=TAIL_SIZE)
        self.head = -1  # highest sequence in the tail; -1 until the feed read where the brand stands
        self._visible = -1  # highest sequence watchers have been told of (<= head)
        # The run of the last fan-out: every watcher that was caught up gets this same list object,
        # so the transport encodes it once for all of them.
        self._latest: list[Claim] = []
        self._last_fanout = 0.0
        self._claim_rate = 0.0  # claims/s of the brand, over the last full window
        self._rate_window_start = self._loop.time()
        self._rate_window_head = -1
        self._fanout_timer: asyncio.TimerHandle | None = None
        self._new_data = asyncio.Event()
        self._ready = asyncio.Event()

    def start_at(self, head: int) -> None:
        """Where the brand's feed stands when the channel opens: live watching starts there."""
        if self.head < 0:
            self.head = self._visible = head
            self._ready.set()

    def committed(self, claims: list[Claim]) -> None:
        """Claims this process just committed, in sequence order: appended without a read when
        they follow the tail; anything else (another process's claims in between) is read."""
        self.absorb(claims, hand_over=True)

    def absorb(self, claims: list[Claim], *, hand_over: bool = False) -> None:
        """Appends the claims that follow the tail. A gap (claims of another process in between, or
        a head not known yet) makes the feed read the database instead."""
        for claim in claims:
            if self.head >= 0 and claim.sequence <= self.head:
                continue  # handed over while a read was in flight, or read while being handed over
            if self.head < 0 or claim.sequence != self.head + 1:
                if hand_over:
                    self._feed.mark_stale(self)
                break
            self._tail.append(claim)
            self.head = claim.sequence
        self._schedule_fanout()

    def close(self) -> None:
        if self._fanout_timer is not None:
            self._fanout_timer.cancel()
        self._ready.set()
        self._signal()

    def wake(self) -> None:  # with no news: each watcher looks, and waits again
        self._signal()

    def _signal(self) -> None:
        fired, self._new_data = self._new_data, asyncio.Event()
        fired.set()

    def _schedule_fanout(self) -> None:
        if self._fanout_timer is not None or self.head <= self._visible:
            return
        now = self._loop.time()
        if now - self._rate_window_start >= CLAIM_RATE_WINDOW_SECONDS:
            if self._rate_window_head >= 0:
                self._claim_rate = (self.head - self._rate_window_head) / (now - self._rate_window_start)
            self._rate_window_start, self._rate_window_head = now, self.head
        due = self._last_fanout + fanout_interval(self.watchers, self._claim_rate)
        if due <= now:
            self._fanout()
        else:
            self._fanout_timer = self._loop.call_at(due, self._fanout)

    def _fanout(self) -> None:
        self._fanout_timer = None
        first = self._tail[0].sequence
        start = max(self._visible + 1 - first, 0)
        self._latest = [self._tail[i] for i in range(start, len(self._tail))]
        self._visible = self.head
        self._last_fanout = self._loop.time()
        self._signal()

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
        # Channels that may have claims in the database that they do not hold yet, in the order
        # they were marked; the reader reads them all in one round trip.
        self._stale: dict[BrandChannel, None] = {}
        self._stale_marked = asyncio.Event()
        self._pending_notifications: set[str] = set()
        self._notifier: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        # Pages behind the tails, shared by the watchers that read them: (brand_id, page number)
        # -> the page's claims, or the read in flight that will return them.
        self._pages: OrderedDict[tuple[str, int], asyncio.Future[list[Claim]]] = OrderedDict()
        self._budget: FanoutBudget | None = None
        # Tags this process's NOTIFYs, so it does not re-read claims it already woke itself for.
        self._origin = secrets.token_hex(4)

    @property
    def watcher_count(self) -> int:
        return sum(channel.watchers for channel in self._channels.values())

    @property
    def budget(self) -> FanoutBudget:
        if self._budget is None:
            self._budget = claim_budget()
        return self._budget

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._poll()), loop.create_task(self._read())]

    async def stop(self) -> None:
        """Ends every watch stream cleanly and stops the listener."""
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in list(self._channels.values()):
            channel.close()
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._notifier, timeout=1.0)

    def known_head(self, brand_id: str) -> int:
        """The highest sequence of the brand this process knows of, or -1 if it does not watch it."""
        return channel.head if (channel := self._channels.get(brand_id)) is not None else -1

    def claims_committed(self, brand_id: str, claims: list[Claim]) -> None:
        """Called after claims commit: hands them to local watchers and tells other replicas."""
        self.budget.claims_made(len(claims))
        channel = self._channels.get(brand_id)
        if channel is not None:
            channel.committed(claims)
        self._pending_notifications.add(brand_id)
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.get_running_loop().create_task(self._send_notifications())

    def mark_stale(self, channel: BrandChannel) -> None:
        """The database may hold claims of this channel's brand that it has not seen."""
        self._stale[channel] = None
        self._stale_marked.set()

    async def _send_notifications(self) -> None:
        # Coalesces: while one NOTIFY transaction is in flight, and for NOTIFY_INTERVAL_SECONDS
        # after it, later claims of every brand share the next one. A lone claim is sent at once.
        while self._pending_notifications:
            brands, self._pending_notifications = self._pending_notifications, set()
            try:
                await self.store.notify_claims(self._payloads(sorted(brands)))
            except errors.DiscountError:
                log.debug("NOTIFY failed; other replicas will see the claims at their next poll")
            await asyncio.sleep(NOTIFY_INTERVAL_SECONDS)

    def _payloads(self, brands: list[str]) -> list[str]:
        """`<origin>:<brand>\\n<brand>...`, each under the payload limit (a brand id holds no
        control character, so a newline cannot be part of one)."""
        payloads: list[str] = []
        current: list[str] = []
        size = 0
        for brand_id in brands:
            if current and size + len(brand_id.encode()) + 1 > NOTIFY_PAYLOAD_BYTES:
                payloads.append(f"{self._origin}:" + "\n".join(current))
                current, size = [], 0
            current.append(brand_id)
            size += len(brand_id.encode()) + 1
        if current:
            payloads.append(f"{self._origin}:" + "\n".join(current))
        return payloads

    async def _listen(self) -> None:
        async for payload in self.store.notifications():
            if payload is None:  # (re)connected: anything may have been missed
                for channel in self._channels.values():
                    self.mark_stale(channel)
                continue
            origin, _, brands = payload.partition(":")
            if origin == self._origin:
                continue
            for brand_id in brands.split("\n"):
                target = self._channels.get(brand_id)
                if target is not None:
                    self.mark_stale(target)

    async def _poll(self) -> None:
        """One statement per poll for every watched brand: the heads; channels behind are read."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            channels = [c for c in self._channels.values() if c.head >= 0]
            if not channels:
                continue
            try:
                heads = await self.store.feed_heads([c.brand_key for c in channels])
            except errors.Unavailable:
                continue  # the next poll tries again; watchers keep their cursors
            for channel in channels:
                if heads.get(channel.brand_key, 0) > channel.head:
                    self.mark_stale(channel)

    async def _read(self) -> None:
        """Reads what stale channels lack, all of them in one round trip, at most every
        REFRESH_INTERVAL_SECONDS: a new channel's head, the others' claims after their tails."""
        loop = asyncio.get_running_loop()
        last_read = 0.0
        while True:
            await self._stale_marked.wait()
            pause = last_read + REFRESH_INTERVAL_SECONDS - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._stale_marked.clear()
            stale = [c for c in self._stale if self._channels.get(c.brand_id) is c]
            self._stale.clear()
            last_read = loop.time()
            try:
                new = [c for c in stale if c.head < 0]
                behind = [c for c in stale if c.head >= 0]
                if new:
                    heads = await self.store.feed_heads([c.brand_key for c in new])
                    for channel in new:
                        channel.start_at(heads.get(channel.brand_key, 0))
                if behind:
                    cursors = [(c.brand_id, c.brand_key, c.head) for c in behind]
                    for channel, page in zip(behind, await self.store.feed_pages(cursors, PAGE_SIZE), strict=True):
                        channel.absorb(page)
                        if len(page) == PAGE_SIZE:  # there may be more
                            self.mark_stale(channel)
            except errors.Unavailable:
                # Watchers keep their cursors; the reads are retried once the database is back.
                for channel in stale:
                    self.mark_stale(channel)
                await asyncio.sleep(min(self.poll_seconds, 0.5))

    async def _page(self, brand_id: str, brand_key: int, cursor: int) -> list[Claim]:
        """The claims after `cursor` up to the end of its page (pages are sequences
        k*PAGE_SIZE+1 .. (k+1)*PAGE_SIZE, gapless, so watchers at the same place share one read
        and the same Claim objects, which the transport then encodes once)."""
        number = cursor // PAGE_SIZE
        key = (brand_id, number)
        page = self._pages.get(key)
        if page is None or (page.done() and (page.cancelled() or page.exception() is not None)):
            page = asyncio.ensure_future(self.store.feed_page(brand_id, brand_key, number * PAGE_SIZE, PAGE_SIZE))
            self._pages[key] = page
            while len(self._pages) > SHARED_PAGES:
                self._pages.popitem(last=False)
        else:
            self._pages.move_to_end(key)
        claims = await asyncio.shield(page)
        if len(claims) < PAGE_SIZE and self._pages.get(key) is page:
            del self._pages[key]  # the brand's last page, still filling: not kept
        return [claim for claim in claims if claim.sequence > cursor]

    async def watch(
        self,
        brand_id: str,
        brand_key: int,
        after_sequence: int,
        *,
        claims_per_message: int = 1,
        stop: WatchStop | None = None,
    ) -> AsyncGenerator[list[Claim], None]:
        """Every claim of the brand after `after_sequence`, oldest first, then live ones, until
        the feed stops (server shutdown) or `stop` ends the stream (raising its error). Yields them
        in runs of consecutive claims, as they are available and as the fan-out budget allows (a
        run is sent as messages of up to `claims_per_message` claims): every watcher of a brand
        shares the same Claim objects."""
        existing = self._channels.get(brand_id)
        channel = existing if existing is not None else BrandChannel(self, brand_id, brand_key)
        if existing is None:
            self._channels[brand_id] = channel
            self.mark_stale(channel)
        channel.watchers += 1
        cursor = after_sequence
        per_message = max(1, claims_per_message)
        stop = stop if stop is not None else WatchStop()
        stop.wake = channel.wake
        try:
            await channel.ready()
            while not self._closing.is_set():
                if stop.error is not None:
                    raise stop.error
                batch = channel.events_after(cursor)
                if batch is None:  # behind the in-memory tail: page from the database
                    batch = await self._page(brand_id, brand_key, cursor)
                if not batch:
                    await channel.wait_for_news()
                    continue
                # A run that fits one message is paced by the channel's fan-outs alone; a run that
                # splits into several (a watcher that asked for fewer claims per message than the
                # run holds) is sent out of the budget, all of its messages.
                messages = -(-len(batch) // per_message)
                if messages > 1:
                    allowed = await self.budget.take(messages)
                    if allowed < messages:
                        batch = batch[: allowed * per_message]
                if stop.error is not None:
                    raise stop.error  # ended while this run was read: none of it is sent
                yield batch
                cursor = batch[-1].sequence
        finally:
            channel.watchers -= 1
            if channel.watchers == 0 and self._channels.get(brand_id) is channel:
                del self._channels[brand_id]
                self._stale.pop(channel, None)
                channel.close()
