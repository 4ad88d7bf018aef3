"""`discount serve` and `discount migrate`: run the server, create or upgrade the schema."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from ..settings import Settings
from .common import replace_settings


def _stop_before_serving(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    # Until serving.serve installs its own handlers, a stop simply ends the process: nothing has been
    # acknowledged yet. Without a handler, a container's PID 1 would ignore the signal.
    signal.signal(signal.SIGTERM, _stop_before_serving)
    if args.listen:
        settings = replace_settings(settings, listen=args.listen)
    if args.workers:
        settings = replace_settings(settings, workers=args.workers)
    if settings.workers > 1:
        from ..workers import serve_workers

        serve_workers(settings)
        return
    from ..eventloop import run
    from ..serving import serve

    run(serve(settings))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from ..app import resolve_database_url
    from ..store import Store

    applied = asyncio.run(Store(resolve_database_url(settings)).migrate())
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")


def add_serve_commands(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Adds serve and migrate to the `discount` parser."""
    serve = sub.add_parser("serve", help="run the gRPC server (DISCOUNT_LISTEN, default 127.0.0.1:50051)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides DISCOUNT_LISTEN)")
    serve.add_argument("--workers", type=int, help="server processes sharing the port (DISCOUNT_WORKERS)")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(func=cmd_migrate)
