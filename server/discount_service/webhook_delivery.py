"""Sends each brand's claims to its webhooks: signed, in order, retried, one delivery in flight per
webhook across every replica.

- Who delivers: every process scans the webhooks every SCAN_SECONDS on one connection of its own and
  tries the session advisory lock of each webhook nobody holds; the holder delivers it. If the
  holder dies, PostgreSQL drops its connection and its locks, and another process takes the
  webhooks over at its next scan. A process whose lock connection fails stops all its deliveries.
- What it costs: a webhook that is up to date waits on the claim feed like a watcher (feed.py), so
  it reads nothing while no claims are made; the scan is one statement per SCAN_SECONDS for all of
  a process's webhooks.
- A delivery's id and claims are written (`begin_webhook_delivery`) before its first attempt, so an
  attempt after a restart or a takeover sends the same `webhook-id` and claims. The next delivery
  starts only after a 2xx.
- Each webhook has its own task, and an attempt is bounded by DISCOUNT_WEBHOOK_TIMEOUT_SECONDS, so
  a hanging endpoint delays only its own webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from . import errors
from .feed import ClaimFeed
from .models import Claim
from .settings import Settings
from .store import AttemptOutcome, ScannedWebhook, Store, WebhookLocks
from .webhook_http import ClaimJson, Poster, body, next_delivery, retry_delay, signature
from .webhooks import SecretBox

log = logging.getLogger(__name__)

SCAN_SECONDS = 5.0  # how soon a process takes over the webhooks of one that died
KEEP_ATTEMPTS = 10_000
# A webhook starts a delivery at most this often while claims keep coming (a full one at once).
GATHER_SECONDS = 0.05
PUMP_CLAIMS = 10_000
STOP_SECONDS = 5.0
# The feed sends a run of claims as one message at most this big: never split, so never paced by
# the watchers' fan-out budget (a webhook sends its own, fewer, requests).
_WHOLE_RUN = 1 << 30


class DeliveryObserver(Protocol):
    """What the metrics hear of deliveries (metrics.py)."""

    def attempt(self, result: str, retry: bool) -> None:
        """result: 'success', 'failure' or 'gone'; retry: the attempt repeated a failed one."""


class _Unobserved:
    def attempt(self, result: str, retry: bool) -> None:
        pass


class WebhookWorker:
    """Delivers one webhook until it is disabled, changed elsewhere or the process stops."""

    def __init__(self, deliverer: WebhookDeliverer, scanned: ScannedWebhook) -> None:
        self.webhook_id = scanned.webhook_id
        self.brand_id = scanned.brand_id
        self.config_version = scanned.config_version
        self._brand_key = scanned.brand_key
        self._d = deliverer
        # claimed_at of the oldest claim the endpoint has not acknowledged (None: up to date).
        self.oldest_undelivered: datetime | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"webhook {self.webhook_id}")

    async def _run(self) -> None:
        pause = 0.5
        while True:
            try:
                await self._deliver()
                return
            except errors.Unavailable as exc:
                log.warning("webhook %s: database unavailable (%s); trying again in %.1fs", self.webhook_id, exc, pause)
            except errors.FailedPrecondition as exc:
                log.error("webhook %s: %s", self.webhook_id, exc)
                pause = 30.0
            except Exception:  # noqa: BLE001 - one webhook's failure must not end the others
                log.exception("webhook %s: delivery failed", self.webhook_id)
                pause = 30.0
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)

    async def _deliver(self) -> None:
        d, store = self._d, self._d.store
        state = await store.webhook_delivery_state(self._brand_key, self.webhook_id)
        if state is None or state.state == "disabled":
            return
        self.config_version = state.config_version
        box = d.box()
        keys = [box.open(self.webhook_id, state.secret)]
        previous = None if state.previous_secret is None else box.open(self.webhook_id, state.previous_secret)
        cursor = state.delivered_sequence
        pending = None
        if state.delivery_id is not None and state.first_sequence is not None and state.last_sequence is not None:
            pending = (state.delivery_id, state.first_sequence, state.last_sequence)
        failures = state.attempts
        due = time.monotonic()
        if state.next_attempt_at is not None and pending is not None:
            due += max((state.next_attempt_at - datetime.now(UTC)).total_seconds(), 0.0)
        claims = _Pump(d.feed, state.brand_id, self._brand_key, cursor)
        buffer = claims.buffer
        started = -GATHER_SECONDS
        try:
            while True:
                if pending is None:
                    self.oldest_undelivered = None
                    await claims.wait_for(cursor + 1)
                    # Under a steady stream of claims, one delivery per GATHER_SECONDS carries what
                    # came meanwhile, instead of a request (and two statements) per few claims.
                    linger = started + GATHER_SECONDS - time.monotonic()
                    if linger > 0 and len(buffer) < state.max_claims_per_delivery:
                        await asyncio.sleep(linger)
                    batch = next_delivery(buffer, state.max_claims_per_delivery, d.claim_json)
                    pending = ("msg_" + secrets.token_hex(16), batch[0].sequence, batch[-1].sequence)
                    began = await store.begin_webhook_delivery(
                        self._brand_key,
                        self.webhook_id,
                        delivery_id=pending[0],
                        first_sequence=pending[1],
                        last_sequence=pending[2],
                        delivered_sequence=cursor,
                        config_version=self.config_version,
                    )
                    if not began:
                        return  # replayed, rotated, disabled or deleted meanwhile: the scan restarts it
                    failures = 0
                else:
                    await claims.wait_for(pending[2])
                    batch = list(itertools.islice(buffer, pending[2] - pending[1] + 1))
                self.oldest_undelivered = batch[0].claimed_at
                content = body(state.brand_id, [d.claim_json(c) for c in batch])
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = datetime.now(UTC)
                signing = (
                    keys if previous is None or not _before(now, state.previous_secret_until) else [*keys, previous]
                )
                timestamp = int(now.timestamp())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": pending[0],
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": signature(pending[0], timestamp, content, signing),
                    "user-agent": "discount-service-webhooks",
                }
                started = time.monotonic()
                answer = await d.poster.post(state.url, headers, content)
                succeeded, gone = 200 <= answer.status < 300, answer.status == 410
                retry_in = 0.0
                if not succeeded and not gone:
                    retry_in = max(
                        retry_delay(failures + 1, d.settings.webhook_retry_base_seconds), answer.retry_after or 0
                    )
                outcome = AttemptOutcome(
                    brand_key=self._brand_key,
                    webhook_id=self.webhook_id,
                    config_version=self.config_version,
                    delivery_id=pending[0],
                    first_sequence=pending[1],
                    last_sequence=pending[2],
                    attempt=failures + 1,
                    attempted_at=now,
                    http_status=answer.status,
                    error="" if succeeded else answer.error,
                    duration_seconds=answer.seconds,
                    succeeded=succeeded,
                    gone=gone,
                    retry_in_seconds=retry_in,
                )
                d.observer.attempt("success" if succeeded else "gone" if gone else "failure", failures > 0)
                recorded = await store.record_webhook_attempt(
                    outcome, retry_period_seconds=d.settings.webhook_retry_period_seconds, keep=KEEP_ATTEMPTS
                )
                if recorded is None:
                    return  # the webhook changed meanwhile: the scan restarts it from what is stored
                standing, failures = recorded
                if succeeded:
                    claims.consumed(len(batch))
                    cursor, pending = pending[2], None
                elif standing == "disabled":
                    log.warning("webhook %s disabled: %s", self.webhook_id, answer.error)
                    return
                else:
                    due = time.monotonic() + retry_in
        except StopAsyncIteration:
            return  # the feed stopped: the server is stopping
        finally:
            await claims.close()


class _Pump:
    """Reads the brand's claims from the feed into `buffer` while the worker delivers, so claims
    made during an attempt are there for the next delivery; at most PUMP_CLAIMS ahead."""

    def __init__(self, feed: ClaimFeed, brand_id: str, brand_key: int, cursor: int) -> None:
        self.buffer: deque[Claim] = deque()
        self._stream = feed.watch(brand_id, brand_key, cursor, claims_per_message=_WHOLE_RUN)
        self._news = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ended = False
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for run in self._stream:
                self.buffer.extend(run)
                self._news.set()
                while len(self.buffer) >= PUMP_CLAIMS:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._ended = True
            self._news.set()

    async def wait_for(self, sequence: int) -> None:
        """Until the buffer reaches `sequence`; StopAsyncIteration if the feed stopped first."""
        while not self.buffer or self.buffer[-1].sequence < sequence:
            if self._ended:
                raise StopAsyncIteration
            self._news.clear()
            await self._news.wait()

    def consumed(self, count: int) -> None:
        for _ in range(count):
            self.buffer.popleft()
        if len(self.buffer) < PUMP_CLAIMS:
            self._room.set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()


def _before(now: datetime, until: datetime | None) -> bool:
    return until is not None and now < until


class WebhookDeliverer:
    """The webhooks this process delivers: which it holds the lock of, and a worker for each."""

    def __init__(self, store: Store, feed: ClaimFeed, settings: Settings, box: Callable[[], SecretBox]) -> None:
        self.store = store
        self.feed = feed
        self.settings = settings
        self.box = box
        self.observer: DeliveryObserver = _Unobserved()
        self.claim_json = ClaimJson()
        self.poster = Poster(settings.webhook_timeout_seconds, settings.webhook_allow_insecure)
        self._locks: WebhookLocks = store.webhook_locks()
        self._workers: dict[str, WebhookWorker] = {}
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.settings.webhook_allow_insecure:
            log.warning(
                "DISCOUNT_WEBHOOK_ALLOW_INSECURE is on: webhooks may use http:// and private or loopback "
                "addresses; for development only"
            )
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    def poke(self) -> None:
        """A webhook changed on this process: look now rather than at the next scan."""
        self._poked.set()

    def lag(self) -> list[tuple[str, str, float]]:
        """(webhook_id, brand_id, seconds since the oldest claim not yet acknowledged) per webhook held."""
        now = datetime.now(UTC)
        return [
            (
                w.webhook_id,
                w.brand_id,
                0.0 if w.oldest_undelivered is None else (now - w.oldest_undelivered).total_seconds(),
            )
            for w in self._workers.values()
        ]

    @property
    def held(self) -> list[str]:
        return list(self._workers)

    async def stop(self) -> None:
        """Ends every delivery; bounded, so a statement or request that does not end on cancellation
        cannot hold up the server's shutdown (the process exit then drops the locks)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):
                if self._task is not None:
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                await self._drop_all()
        await self.poster.close()

    async def _supervise(self) -> None:
        while True:
            try:
                await self._scan()
            except errors.Unavailable as exc:
                if self._workers:
                    log.warning("webhook locks lost (%s): stopping %d deliveries", exc, len(self._workers))
                await self._drop_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), SCAN_SECONDS)
            self._poked.clear()

    async def _scan(self) -> None:
        rows = {row.webhook_id: row for row in await self._locks.scan(self._workers)}
        released: list[str] = []
        for webhook_id, worker in list(self._workers.items()):
            row = rows.get(webhook_id)
            if row is None or row.state == "disabled":
                await _end(worker)
                del self._workers[webhook_id]
                released.append(webhook_id)
            elif row.config_version != worker.config_version or worker.task.done():
                await _end(worker)
                self._workers[webhook_id] = WebhookWorker(self, row)
        wanted = [w for w, row in rows.items() if w not in self._workers and row.state != "disabled"]
        for webhook_id in await self._locks.try_lock(wanted):
            self._workers[webhook_id] = WebhookWorker(self, rows[webhook_id])
        await self._locks.unlock(released)

    async def _drop_all(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await _end(worker)
        await self._locks.close()


async def _end(worker: WebhookWorker) -> None:
    worker.task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await worker.task
