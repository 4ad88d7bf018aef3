"""The deadline of the call being served, for the waits below the transport.

The servicer sets it once per call; the store caps its wait for a database connection with it, and
the claim batcher caps a claim's wait for its batch. A caller whose deadline is shorter than the
wait it faces is then told UNAVAILABLE with the reason before its deadline, rather than left to
expire as DEADLINE_EXCEEDED with none. Code that serves no one call (a batch of many callers, a
background task) runs without one.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

# Kept this long before a call's deadline: time for the answer to reach the caller.
ANSWER_MARGIN_SECONDS = 0.15

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)


@contextlib.contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Code inside serves a call that must be answered within `seconds`."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def wait_budget(longest: float | None = None) -> float | None:
    """How long the current call may still wait for something: until ANSWER_MARGIN_SECONDS before
    its deadline (never below 0), and at most `longest`. None when no call deadline is set and no
    `longest` is given."""
    deadline = _deadline.get()
    if deadline is None:
        return longest
    left = max(0.0, deadline - time.monotonic() - ANSWER_MARGIN_SECONDS)
    return left if longest is None else min(left, longest)


def without_call_deadline() -> contextvars.Context:
    """A context for work that serves many calls at once (a claim batch): none of their deadlines
    applies to it."""
    context = contextvars.copy_context()
    context.run(_deadline.set, None)
    return context
