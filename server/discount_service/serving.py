"""One server process from start to stop: serve until SIGTERM or SIGINT, then drain.

`discount serve` runs `serve` in the process itself; `discount serve --workers N` runs it in each
worker process (workers.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from .app import SHUTDOWN_DRAIN_SECONDS, create_server
from .settings import Settings

log = logging.getLogger("discount_service")


async def serve(settings: Settings, database_url: str | None = None) -> None:
    """Serves on `settings.listen` until SIGTERM or SIGINT, then drains and stops gracefully."""
    server, port = await create_server(settings, database_url=database_url)
    await server.start()
    log.info("discount service listening on %s (port %d)", settings.listen, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: finishing in-flight calls (grace %.1fs)", settings.shutdown_grace_seconds)
    await server.stop(drain=SHUTDOWN_DRAIN_SECONDS)
    log.info("stopped")
