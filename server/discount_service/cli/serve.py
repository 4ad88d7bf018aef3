"""`discount serve` and `discount migrate`: run the server, create or upgrade the schema."""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import socket
from typing import Any

from ..settings import Settings
from .common import CommandError, replace_settings


def _stop_before_serving(signum: int, frame: object) -> None:
    raise SystemExit(0)


def check_address_free(listen: str) -> None:
    """Refuses, before anything starts (the embedded PostgreSQL, the migrations), an address that
    something already listens on; gRPC would find out only after all that, with a traceback.

    A trial bind with SO_REUSEADDR, as gRPC binds: a port whose last connections are still closing
    (TIME_WAIT) is free, one that a process listens on is not, whatever options that process used.
    A name that does not resolve is left to gRPC, which says so itself."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError):
        return
    in_use = f"{listen} is already in use (another discount serve?); use --listen HOST:PORT or DISCOUNT_LISTEN"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                trial.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CommandError(in_use, exit_status=2) from None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    # Until serving.serve installs its own handlers, a stop simply ends the process: nothing has been
    # acknowledged yet. Without a handler, a container's PID 1 would ignore the signal.
    signal.signal(signal.SIGTERM, _stop_before_serving)
    if args.listen:
        settings = replace_settings(settings, listen=args.listen)
    if args.workers:
        settings = replace_settings(settings, workers=args.workers)
    check_address_free(settings.listen)
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
