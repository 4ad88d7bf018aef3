"""`discount serve --workers N`: N server processes sharing one port.

grpc.aio runs one event loop per process, so one process uses one core at most
(docs/design.md#trap-one-event-loop). Each worker is a full server (its own pool, its own LISTEN
connection) bound to the same address with the `grpc.so_reuseport` option (app.py sets it when
workers > 1); the kernel spreads incoming connections across them. The parent only supervises:

- it resolves the database URL once (so an embedded PostgreSQL is started once, by the parent,
  and lives as long as it) and runs the migrations once, then passes the URL down;
- port 0 is resolved to one free port first, since every worker must bind the same one;
- SIGTERM or SIGINT is forwarded to every worker as SIGTERM; the parent exits 0 once all of them
  exited 0 (each drains its calls within DISCOUNT_SHUTDOWN_GRACE_SECONDS);
- if a worker dies on its own, the others are stopped and the parent exits 1, so a supervisor
  (systemd, Kubernetes) restarts the whole set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
from types import FrameType

from .settings import Settings

log = logging.getLogger(__name__)


def _worker_main(settings: Settings, database_url: str, index: int) -> None:
    from .eventloop import run
    from .logs import configure_logging
    from .serving import serve

    configure_logging(settings.log_level)
    log.info("worker %d (of %d) starting", index + 1, settings.workers)
    run(serve(settings, database_url=database_url))


def _resolve_port(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return f"{host}:{s.getsockname()[1]}"


def serve_workers(settings: Settings) -> None:
    from .app import resolve_database_url
    from .store import Store

    database_url = resolve_database_url(settings)
    asyncio.run(Store(database_url).migrate())
    settings = dataclasses.replace(settings, listen=_resolve_port(settings.listen))

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(settings, database_url, i), name=f"discount-worker-{i + 1}")
        for i in range(settings.workers)
    ]
    stopping = False

    def stop_all(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("stopping %d workers", len(processes))
        stopping = True
        for p in processes:
            if p.pid is not None and p.exitcode is None:
                p.terminate()  # SIGTERM: each worker shuts down gracefully

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in processes:
            p.start()
        log.info("discount service listening on %s with %d worker processes", settings.listen, len(processes))
        while any(p.exitcode is None for p in processes):
            multiprocessing.connection.wait([p.sentinel for p in processes if p.exitcode is None], timeout=1.0)
            if not stopping and any(p.exitcode is not None for p in processes):
                dead = [p for p in processes if p.exitcode is not None]
                log.error("worker %s exited with %s; stopping the others", dead[0].name, dead[0].exitcode)
                stop_all()
        grace = settings.shutdown_grace_seconds + 5
        for p in processes:
            p.join(grace)
            if p.exitcode is None:
                p.kill()
                p.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        log.error("%d worker(s) did not exit cleanly: %s", len(failed), [(p.name, p.exitcode) for p in failed])
        sys.exit(1)
    log.info("stopped")
