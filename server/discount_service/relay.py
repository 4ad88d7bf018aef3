"""Relays every claim of every brand to NATS JetStream, in order per brand, at least once.

- Who relays: one process across all replicas, the holder of a session advisory lock on a
  connection of its own (store/_relay.py). The others try for it every LOCK_SECONDS; PostgreSQL
  drops a dead holder's connection and lock, so another process takes over within that time.
- What is sent: one message per claim on `<prefix>.<brand_id with "." written %2E>`, the claim's
  JSON as a webhook body carries it, with `Nats-Msg-Id: <brand_id>:<sequence>`, so JetStream drops
  a message sent again within the stream's duplicate window.
- Where it stands: per brand, the last sequence JetStream acknowledged, written to PostgreSQL after
  the PubAck (every POSITION_FLUSH_SECONDS, one statement for all brands). A restart resends at most
  what was acknowledged but not yet written, and the duplicate window drops those.
- Order: a brand's claims go out in sequence order on one connection, and acks are awaited in that
  order. Any failure (NATS gone, an ack that errs or does not come) ends the connection and every
  publish on it; the next connection starts again from the acknowledged positions, so nothing sent
  later can overtake a claim that was lost.
- Cost: a brand that is up to date waits on the claim feed like a watcher (feed.py), so nothing is
  read while no claims are made. On each (re)connection the brands that are behind are caught up
  first, CATCH_UP_BRANDS of them per read, with the next read in flight while a page is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from . import errors
from .feed import ClaimFeed
from .jetstream import StreamMismatch, claim_message, connect, ensure_stream, subject_for
from .models import Claim
from .settings import Settings
from .store import RelayLock, Store

log = logging.getLogger(__name__)

LOCK_SECONDS = 3.0
POSITION_FLUSH_SECONDS = 0.2
ACK_TIMEOUT_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 1.0
STREAM_MISMATCH_RETRY_SECONDS = 30.0
PAGE_SIZE = 1000
CATCH_UP_BRANDS = 32
MAX_IN_FLIGHT = 8192
PUBLISH_GATHER_SECONDS = 0.02
STATUS_HEADER = "Status"  # nats-py puts a reply's status line there; 503: no stream took the message
# The feed hands a run of claims over whole, never split into messages paced by the watchers' budget.
_WHOLE_RUN = 1 << 30


class ClaimRelay:
    """Runs the relay while this process holds its lock."""

    def __init__(self, store: Store, feed: ClaimFeed, settings: Settings) -> None:
        assert settings.nats_url is not None
        self.store = store
        self.feed = feed
        self.url = settings.nats_url
        self.stream = settings.nats_stream
        self.prefix = settings.nats_subject_prefix
        self.leading = False
        self.connected = False
        self._brands: dict[int, str] = {}  # brand_key -> brand_id, every brand known
        self._heads: dict[int, int] = {}  # brand_key -> the highest sequence known to exist
        self._acked: dict[int, int] = {}  # brand_key -> the last sequence JetStream acknowledged
        self._unsaved: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: _Session | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="claim relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def lag(self) -> int:
        """Claims committed that JetStream has not acknowledged, over every brand (0 unless leading)."""
        if not self.leading:
            return 0
        behind = 0
        for key, brand_id in self._brands.items():
            head = max(self._heads.get(key, 0), self.feed.known_head(brand_id))
            behind += max(head - self._acked.get(key, 0), 0)
        return behind

    def acknowledged(self, brand_key: int, sequence: int) -> None:
        if sequence > self._acked.get(brand_key, 0):
            self._acked[brand_key] = sequence
            self._unsaved.add(brand_key)
        if sequence > self._heads.get(brand_key, 0):
            self._heads[brand_key] = sequence

    async def _run(self) -> None:
        lock = self.store.relay_lock()
        try:
            while True:
                try:
                    if await lock.try_lock():
                        log.info("relaying claims to NATS stream %s (this process holds the relay lock)", self.stream)
                        await self._lead(lock)
                except errors.Unavailable as exc:
                    if self.leading:
                        log.warning("relay lock lost (%s): relaying stops here", exc)
                    await lock.close()
                except Exception:  # noqa: BLE001 - the relay starts over rather than stop for good
                    log.exception("relay failed; starting over")
                    await lock.close()
                finally:
                    self.leading = False
                await asyncio.sleep(LOCK_SECONDS)
        finally:
            await lock.close()

    async def _lead(self, lock: RelayLock) -> None:
        self._brands, self._heads, self._acked, self._unsaved = {}, {}, {}, set()
        for standing in await self.store.relay_standings():
            self._brands[standing.brand_key] = standing.brand_id
            self._heads[standing.brand_key] = standing.head
            self._acked[standing.brand_key] = standing.relayed
        self.leading = True
        relaying = asyncio.get_running_loop().create_task(self._relay())
        try:
            while not relaying.done():
                await asyncio.wait({relaying}, timeout=LOCK_SECONDS)
                # Also proves the lock is still held: if this fails, another process may relay now.
                for key, brand_id in await lock.brands_after(max(self._brands, default=0)):
                    self._brands[key] = brand_id
                    if self._session is not None:
                        self._session.follow(key, brand_id)
            relaying.result()
        finally:
            relaying.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relaying
            with contextlib.suppress(errors.DiscountError):
                await self._save_positions()

    async def _save_positions(self) -> None:
        if self._unsaved:
            keys, self._unsaved = self._unsaved, set()
            try:
                await self.store.save_relay_positions([(k, self._acked[k]) for k in sorted(keys)])
            except errors.DiscountError:
                self._unsaved |= keys
                raise

    async def _keep_saving(self) -> None:
        while True:
            await asyncio.sleep(POSITION_FLUSH_SECONDS)
            with contextlib.suppress(errors.Unavailable):  # kept, and written once the database is back
                await self._save_positions()

    async def _relay(self) -> None:
        """Connects, relays until something fails, and connects again."""
        saving = asyncio.get_running_loop().create_task(self._keep_saving())
        pause = 0.5
        try:
            while True:
                session = _Session(self)
                try:
                    await session.open()
                    self.connected, pause = True, 0.5
                    log.info("relay connected to NATS at %s", self.url)
                    self._session = session
                    await session.run()
                except StreamMismatch as exc:
                    log.error("relay stopped: %s", exc)
                    pause = STREAM_MISMATCH_RETRY_SECONDS
                except nats.js.errors.APIError as exc:
                    log.error("relay: JetStream refused a claim (%r); reconnecting", exc)
                except (nats.errors.Error, OSError, TimeoutError, errors.Unavailable) as exc:
                    if self.connected:
                        log.warning("relay lost NATS or the database (%r); reconnecting", exc)
                finally:
                    self.connected, self._session = False, None
                    await session.close()
                # While away, the feed heads still say how far behind the relay is.
                with contextlib.suppress(errors.DiscountError):
                    for standing in await self.store.relay_standings():
                        self._brands.setdefault(standing.brand_key, standing.brand_id)
                        self._heads[standing.brand_key] = standing.head
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_SECONDS)
        finally:
            saving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saving


class _Session:
    """One NATS connection of the relay, from the catch-up to the first failure.

    Publishes are JetStream publishes as nats-py's publish_async makes them (a core publish with a
    reply subject the PubAck comes back on), with the acks matched here: one subscription for all of
    them and no task or timer per message, a tenth of publish_async's cost per claim."""

    def __init__(self, relay: ClaimRelay) -> None:
        self.relay = relay
        self.client: NatsClient | None = None
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._followers: dict[int, asyncio.Task[None]] = {}
        self._inbox = ""
        self._tokens = itertools.count()
        # reply token -> (brand_key, sequence, when sent), oldest first.
        self._waiting: dict[str, tuple[int, int, float]] = {}
        # Per brand, its claims sent and not yet acknowledged, in order: [sequence, acknowledged].
        self._unacked: dict[int, deque[list[int]]] = {}
        self._sent: dict[int, int] = {}  # brand_key -> the last sequence sent on this connection
        self._room = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.client = await connect(self.relay.url, on_lost=self._lost)
        await ensure_stream(self.client.jetstream(), self.relay.stream, self.relay.prefix)
        self._inbox = self.client.new_inbox()
        await self.client.subscribe(f"{self._inbox}.*", cb=self._acked)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_acks())

    async def _lost(self, *_: Any) -> None:
        self.fail(nats.errors.ConnectionClosedError())

    def fail(self, exc: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_exception(exc)

    async def run(self) -> None:
        await self._catch_up()
        for key, brand_id in list(self.relay._brands.items()):
            self.follow(key, brand_id)
        await self.failed

    def follow(self, brand_key: int, brand_id: str) -> None:
        if brand_key not in self._followers:
            task = asyncio.get_running_loop().create_task(self._follow(brand_key, brand_id))
            task.add_done_callback(self._ended)
            self._followers[brand_key] = task

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A brand's task failed: the whole connection goes, so no later claim overtakes a lost one."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.fail(exc)

    async def close(self) -> None:
        tasks = [*self._followers.values(), *([self._watchdog] if self._watchdog else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.failed.done() and not self.failed.cancelled():
            self.failed.exception()  # retrieved: the session's end was reported by run()

    async def _publish(self, brand_key: int, claim: Claim) -> None:
        assert self.client is not None
        while len(self._waiting) >= MAX_IN_FLIGHT:
            self._room.clear()
            await asyncio.wait_for(self._room.wait(), ACK_TIMEOUT_SECONDS)
        sequence = str(claim.sequence)
        headers = {
            "Nats-Msg-Id": f"{claim.brand_id}:{sequence}",
            "Discount-Brand-Id": claim.brand_id,
            "Discount-Sequence": sequence,
            "Content-Type": "application/json",
            # JetStream refuses the message unless this stream would store it.
            "Nats-Expected-Stream": self.relay.stream,
        }
        token = str(next(self._tokens))
        self._waiting[token] = (brand_key, claim.sequence, time.monotonic())
        self._unacked.setdefault(brand_key, deque()).append([claim.sequence, 0])
        self._sent[brand_key] = claim.sequence
        await self.client.publish(
            subject_for(self.relay.prefix, claim.brand_id),
            claim_message(claim),
            reply=f"{self._inbox}.{token}",
            headers=headers,
        )

    async def _acked(self, message: Msg) -> None:
        waiting = self._waiting.pop(message.subject.rpartition(".")[2], None)
        if waiting is None:
            return
        if len(self._waiting) < MAX_IN_FLIGHT:
            self._room.set()
        if message.headers and message.headers.get(STATUS_HEADER) == "503":
            self.fail(nats.js.errors.NoStreamResponseError())
            return
        if b'"error"' in message.data:  # a PubAck is {"stream":...,"seq":...}: parsed only when it is not
            self.fail(nats.js.errors.APIError.from_error(json.loads(message.data)["error"]))
            return
        brand_key, sequence, _ = waiting
        unacked = self._unacked[brand_key]
        position = sequence - unacked[0][0]  # a brand's claims are sent with consecutive sequences
        if 0 <= position < len(unacked):
            unacked[position][1] = 1
        last = 0
        while unacked and unacked[0][1]:
            last = unacked.popleft()[0]
        if last:
            self.relay.acknowledged(brand_key, last)

    async def _watch_acks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._waiting:
                _, sequence, sent = next(iter(self._waiting.values()))
                if time.monotonic() - sent > ACK_TIMEOUT_SECONDS:
                    self.fail(TimeoutError(f"no PubAck within {ACK_TIMEOUT_SECONDS:g} s"))

    async def _catch_up(self) -> None:
        """Brands behind, CATCH_UP_BRANDS per read: the next page is read while this one is sent."""
        relay = self.relay
        behind = [
            (relay._brands[k], k, relay._acked.get(k, 0))
            for k in relay._brands
            if relay._heads.get(k, 0) > relay._acked.get(k, 0)
        ]
        while behind:
            group, behind = behind[:CATCH_UP_BRANDS], behind[CATCH_UP_BRANDS:]
            reading = asyncio.ensure_future(relay.store.feed_pages(group, PAGE_SIZE))
            while group:
                pages = await reading
                more = [
                    (brand_id, key, page[-1].sequence)
                    for (brand_id, key, _), page in zip(group, pages, strict=True)
                    if len(page) == PAGE_SIZE
                ]
                if more:
                    reading = asyncio.ensure_future(relay.store.feed_pages(more, PAGE_SIZE))
                try:
                    for (_, key, _), page in zip(group, pages, strict=True):
                        for claim in page:
                            await self._publish(key, claim)
                except BaseException:
                    if more:
                        reading.cancel()
                    raise
                group = more

    async def _follow(self, brand_key: int, brand_id: str) -> None:
        """Live: the brand's claims from the feed as they commit, after what the catch-up sent."""
        after = self._sent.get(brand_key, self.relay._acked.get(brand_key, 0))
        stream = self.relay.feed.watch(brand_id, brand_key, after, claims_per_message=_WHOLE_RUN)
        try:
            async for run in stream:
                for claim in run:
                    await self._publish(brand_key, claim)
                # The claims committed meanwhile go out together: one write and one burst of acks for
                # several claims instead of a few event-loop wake-ups each.
                await asyncio.sleep(PUBLISH_GATHER_SECONDS)
        finally:
            await stream.aclose()
