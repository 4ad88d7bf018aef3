"""How the watch streams of one process share its CPU with the claims it serves: a brand's fan-outs
are spaced by its number of watchers and stretched by its claim rate, and while claims are being
made, runs sent as several messages come out of a budget that each committed claim adds to."""

from __future__ import annotations

import asyncio
from collections import deque

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
# While this process made a claim in the last FANOUT_BUDGET_CLAIMS_SECONDS, a run that a watch
# stream splits into several messages (a watcher that asks for fewer claims per message than the run
# holds, such as one per message) is sent out of a budget that each claim this process commits adds
# FANOUT_BUDGET_MESSAGES_PER_CLAIM messages to, shared by all its watch streams. A message costs the
# server tens to hundreds of microseconds inside gRPC and the kernel, and a Python client as much
# again (docs/performance.md); tying the budget to claims rather than to a fixed rate keeps the
# watchers' share of the CPU the same on a slow machine as on a fast one: shoppers first. Watchers
# that want more fall behind and catch up from the tail or the database once the claims stop.
# Unlimited otherwise, and a run of one message is never held back (the fan-out pacing above bounds those).
FANOUT_BUDGET_MESSAGES_PER_CLAIM = 4.0
FANOUT_BUDGET_BURST_CLAIMS = 128  # unused budget kept for a burst, in claims' worth of messages
FANOUT_BUDGET_CLAIMS_SECONDS = 0.25
FANOUT_BUDGET_GRANT = 16  # messages per grant: a watcher that wants more queues again behind the others


class FanoutBudget:
    """Messages the watch streams of this process may send while it serves claims: a bucket that
    each committed claim adds `per_claim` messages to, whose waiters are served in turn (no
    thundering herd), and which lets everything through as soon as no claim was made for
    `claims_seconds`."""

    def __init__(self, per_claim: float, burst_claims: int, claims_seconds: float, grant: int) -> None:
        self._per_claim = per_claim
        self._capacity = max(float(grant), per_claim * burst_claims)
        self._claims_seconds = claims_seconds
        self._grant = grant
        self._loop = asyncio.get_running_loop()
        self._tokens = self._capacity
        self._claims_until = 0.0
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()
        self._timer: asyncio.Handle | None = None

    def claims_made(self, count: int) -> None:
        self._claims_until = self._loop.time() + self._claims_seconds
        self._tokens = min(self._capacity, self._tokens + count * self._per_claim)
        if self._waiters:
            self._schedule()

    async def take(self, messages: int) -> int:
        """Waits until the stream may send; returns how many of `messages` it may send now (>= 1)."""
        if not self._waiters:
            granted = self._try(messages)
            if granted:
                return granted
        future: asyncio.Future[int] = self._loop.create_future()
        self._waiters.append((messages, future))
        self._schedule()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled: give it back
                self._tokens += future.result()
            raise

    def _try(self, messages: int) -> int:
        if self._loop.time() >= self._claims_until:
            return messages
        granted = min(messages, self._grant, int(self._tokens))
        self._tokens -= granted
        return granted

    def _schedule(self) -> None:
        """Serves the waiters now, or, with too few tokens, in one round when the claims stop or
        FANOUT_BUDGET_CLAIMS_SECONDS from now, whichever is first, with the tokens the claims added
        meanwhile. Rounds, not a release per claim: the messages of a round go out back to back,
        which costs a fraction of the CPU of the same messages sent one by one between claims
        (docs/performance.md)."""
        if self._timer is not None or not self._waiters:
            return
        now = self._loop.time()
        if now >= self._claims_until or min(self._waiters[0][0], self._grant) <= self._tokens:
            self._timer = self._loop.call_soon(self._release)
        else:
            self._timer = self._loop.call_at(self._claims_until, self._release)

    def _release(self) -> None:
        self._timer = None
        while self._waiters:
            messages, future = self._waiters[0]
            if future.done():  # its stream was cancelled meanwhile
                self._waiters.popleft()
                continue
            granted = self._try(messages)
            if not granted:
                break
            self._waiters.popleft()
            future.set_result(granted)
        self._schedule()


def fanout_interval(watchers: int, claim_rate: float) -> float:
    """Seconds between a brand's fan-outs, for its number of watchers and its claims/s."""
    pressure = 1 + claim_rate / FANOUT_CLAIM_RATE_UNIT
    interval = pressure * watchers / FANOUT_MESSAGES_PER_SECOND
    return min(max(interval, FANOUT_MIN_INTERVAL_SECONDS), FANOUT_MAX_INTERVAL_SECONDS)


def claim_budget() -> FanoutBudget:
    """The budget of a process's watch streams, with the FANOUT_BUDGET_* settings."""
    return FanoutBudget(
        FANOUT_BUDGET_MESSAGES_PER_CLAIM,
        FANOUT_BUDGET_BURST_CLAIMS,
        FANOUT_BUDGET_CLAIMS_SECONDS,
        FANOUT_BUDGET_GRANT,
    )
