"""How much work one server process takes on: unary calls in flight and open streams, each up to
a limit from the settings. Past a limit a new call is refused at once, before authentication, with
RESOURCE_EXHAUSTED, reason OVERLOADED and a retry delay: a server that queued it instead would only
answer it late and make every call it already holds slower.

Refusals are counted by reason (OVERLOADED here, RATE_LIMITED from the authentication throttle)
for the metrics, and logged at most once per LOG_EVERY_SECONDS with the count since the last line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator

from . import errors

log = logging.getLogger(__name__)

# A call in flight ends within milliseconds on a healthy server: asking again this much later
# finds room unless the overload goes on.
RETRY_AFTER_SECONDS = 0.25
LOG_EVERY_SECONDS = 10.0


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string ("ipv4:10.0.0.1:5000", "ipv6:[::1]:5000", "unix:/path"),
    without the port: one machine's connections share a throttle."""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0] or address
    if kind == "ipv6":
        return address.rpartition("]:")[0].lstrip("[") or address
    return peer


class Capacity:
    """The calls in flight and streams open in this process, against their limits."""

    def __init__(self, max_calls: int, max_streams: int) -> None:
        self.max_calls = max_calls
        self.max_streams = max_streams
        self.calls = 0
        self.streams = 0
        self.refused: Counter[str] = Counter()  # by reason, since the process started
        self._unlogged = 0
        self._logged_at = -LOG_EVERY_SECONDS

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Holds a place for a unary call, or raises Overloaded."""
        if self.calls >= self.max_calls:
            raise self._overloaded(f"the server has {self.calls} calls in flight, its limit")
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

    def open_stream(self) -> None:
        """Takes a place for a stream (close_stream gives it back), or raises Overloaded."""
        if self.streams >= self.max_streams:
            raise self._overloaded(f"the server has {self.streams} streams open, its limit")
        self.streams += 1

    def close_stream(self) -> None:
        self.streams -= 1

    def _overloaded(self, why: str) -> errors.Overloaded:
        return errors.Overloaded(f"{why}; retry after the delay given", retry_after_seconds=RETRY_AFTER_SECONDS)

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            log.warning(
                "refused %d calls since the last line like this (in all: %s; %d calls in flight of %d, "
                "%d streams open of %d)",
                self._unlogged,
                ", ".join(f"{reason} {count}" for reason, count in sorted(self.refused.items())),
                self.calls,
                self.max_calls,
                self.streams,
                self.max_streams,
            )
            self._unlogged, self._logged_at = 0, now
