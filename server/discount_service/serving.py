"""One server process from start to stop: serve until SIGTERM or SIGINT, then drain.

`discount serve` runs `serve` in the process itself; `discount serve --workers N` runs it in each
worker process (workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from .app import SHUTDOWN_DRAIN_SECONDS, create_server
from .settings import Settings

log = logging.getLogger("discount_service")


async def serve(settings: Settings, database_url: str | None = None) -> None:
    """Serves on `settings.listen` until SIGTERM or SIGINT, then drains and stops gracefully.

    The signal handlers go in before anything else: as a container's first process, a SIGTERM that
    found no handler would be ignored, and a stop during startup would wait for the runtime's kill."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    startup = asyncio.ensure_future(create_server(settings, database_url=database_url))
    stop_requested = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({startup, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if not startup.done():
        # Nothing was acknowledged yet, so there is nothing to drain: abandon the startup.
        startup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await startup
        log.info("stopped before serving (a stop signal arrived during startup)")
        return
    server, port = startup.result()
    await server.start()
    log.info("discount service listening on %s (port %d)", settings.listen, port)
    await stop_requested
    log.info("shutting down: finishing in-flight calls (grace %.1fs)", settings.shutdown_grace_seconds)
    await server.stop(drain=SHUTDOWN_DRAIN_SECONDS)
    log.info("stopped")
