"""The event loop a server process runs on: uvloop when it is installed (a dependency on Linux
and macOS), else asyncio's own. grpc.aio and psycopg's async API both run on it.

A server process has one event loop for all its calls (docs/design.md#trap-one-event-loop), so
the loop's own overhead is paid on every call; uvloop's is lower (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
