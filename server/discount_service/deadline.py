"""The deadline of the call being served, for the waits below the transport.

The servicer sets it once per call; the store caps its wait for a database connection with it, and
the claim batcher caps a claim's wait for its batch. A caller whose deadline is shorter than the
wait it faces is then told UNAVAILABLE with the reason before its deadline, rather than left to
expire as DEADLINE_EXCEEDED with none.

It holds only in the task that serves the call: a task started from there (a claim batch that
serves many callers, a lookup others share, anything that outlives the call) inherits the context
variable but not the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Iterator

# Kept this long before a call's deadline: time for the answer to reach the caller.
ANSWER_MARGIN_SECONDS = 0.15

_deadline: contextvars.ContextVar[tuple[float, asyncio.Task[object] | None] | None] = contextvars.ContextVar(
    "call_deadline", default=None
)


@contextlib.contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Code inside, in this task, serves a call that must be answered within `seconds`."""
    token = _deadline.set((time.monotonic() + seconds, asyncio.current_task()))
    try:
        yield
    finally:
        _deadline.reset(token)


def wait_budget(longest: float | None = None) -> float | None:
    """How long the current call may still wait for something: until ANSWER_MARGIN_SECONDS before
    its deadline (never below 0), and at most `longest`. `longest` when no call is being served in
    this task."""
    current = _deadline.get()
    if current is None or current[1] is not asyncio.current_task():
        return longest
    left = max(0.0, current[0] - time.monotonic() - ANSWER_MARGIN_SECONDS)
    return left if longest is None else min(left, longest)
