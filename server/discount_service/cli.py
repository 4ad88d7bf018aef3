"""The `discount` command: run the server and administer brands and keys.

Admin commands talk to the database directly (they are for operators on the server's host);
client commands (generate, claim, stats, watch) talk to a running server over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import errors, validation
from .auth import new_api_key
from .models import Role
from .settings import Settings, SettingsError

log = logging.getLogger("discount_service")


class OneLineFormatter(logging.Formatter):
    """One line per event, tracebacks included, so log shippers never split an event."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # psycopg_pool logs connection failures at WARNING on every retry; our own lines say it once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class CommandError(Exception):
    """A one-line error for the user; the CLI prints it and exits 1."""


# -- serve ---------------------------------------------------------------------------------------


async def _serve(settings: Settings, database_url: str | None = None) -> None:
    from .app import SHUTDOWN_DRAIN_SECONDS, create_server

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


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    if args.listen:
        settings = _replace(settings, listen=args.listen)
    if args.workers:
        settings = _replace(settings, workers=args.workers)
    if settings.workers > 1:
        from .workers import serve_workers

        serve_workers(settings)
        return
    from .eventloop import run

    run(_serve(settings))


def _replace(settings: Settings, **changes: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


# -- admin ---------------------------------------------------------------------------------------


def _with_store(settings: Settings, action: Callable[[Any], Awaitable[Any]]) -> Any:
    from .app import resolve_database_url
    from .store import Store

    async def run() -> Any:
        store = Store(resolve_database_url(settings), min_size=1, max_size=2, timeout=settings.db_timeout_seconds)
        await store.migrate()
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from .app import resolve_database_url
    from .store import Store

    applied = asyncio.run(Store(resolve_database_url(settings)).migrate())
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")


def cmd_brand_create(args: argparse.Namespace, settings: Settings) -> None:
    brand_id = validation.new_brand_id(args.brand_id)
    name = validation.brand_name(args.name or brand_id)
    brand = _with_store(settings, lambda store: store.create_brand(brand_id, name))
    print(f"created brand {brand.brand_id} ({brand.name})")


def cmd_brand_list(args: argparse.Namespace, settings: Settings) -> None:
    brands = _with_store(settings, lambda store: store.list_brands())
    print(f"{'BRAND':<24} {'TOTAL':>10} {'CLAIMED':>10}  NAME")
    for brand in brands:
        print(f"{brand.brand_id:<24} {brand.total_codes:>10} {brand.claimed:>10}  {brand.name}")


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> None:
    role = Role(args.role)
    if role is Role.BRAND and not args.brand:
        raise CommandError("a brand key needs --brand BRAND_ID")
    if role is not Role.BRAND and args.brand:
        raise CommandError(f"--brand only applies to --role brand, not {role.value}")
    key_id, key, key_hash = new_api_key()
    _with_store(settings, lambda store: store.create_api_key(key_id, key_hash, role, args.brand))
    scope = f" for brand {args.brand}" if args.brand else ""
    print(f"created {role.value} key {key_id}{scope}; store it now, it is not shown again:", file=sys.stderr)
    print(key)


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    if not _with_store(settings, lambda store: store.revoke_api_key(args.key_id)):
        raise CommandError(f"no active key {args.key_id!r}; see `discount key list`")
    print(f"revoked key {args.key_id}; servers stop accepting it within {settings.key_cache_seconds:g}s")


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> None:
    keys = _with_store(settings, lambda store: store.list_api_keys())
    print(f"{'KEY ID':<14} {'ROLE':<8} {'BRAND':<24} STATUS")
    for key in keys:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.key_id:<14} {key.role.value:<8} {key.brand_id or '-':<24} {status}")


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="discount", description="The discount-code service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server (DISCOUNT_LISTEN, default 127.0.0.1:50051)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides DISCOUNT_LISTEN)")
    serve.add_argument("--workers", type=int, help="server processes sharing the port (DISCOUNT_WORKERS)")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(func=cmd_migrate)

    brand = sub.add_parser("brand", help="manage brands").add_subparsers(dest="brand_command", required=True)
    create = brand.add_parser("create", help="create a brand")
    create.add_argument("brand_id")
    create.add_argument("--name")
    create.set_defaults(func=cmd_brand_create)
    brand.add_parser("list", help="list brands with their code counts").set_defaults(func=cmd_brand_list)

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="key_command", required=True)
    key_create = key.add_parser("create", help="create an API key; prints it as the last line")
    key_create.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.USER])
    key_create.add_argument("--brand", help="the brand a brand key is bound to")
    key_create.set_defaults(func=cmd_key_create)
    revoke = key.add_parser("revoke", help="revoke an API key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_key_revoke)
    key.add_parser("list", help="list API keys (ids and roles, never the keys)").set_defaults(func=cmd_key_list)

    from .client_cli import add_client_commands
    from .devstack import add_devstack_command

    add_client_commands(sub)
    add_devstack_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level if args.command == "serve" else "WARNING")
        args.func(args, settings)
    except (SettingsError, CommandError) as exc:
        print(f"discount: {exc}", file=sys.stderr)
        return 1
    except errors.Unavailable as exc:
        print(f"discount: {exc}; check DISCOUNT_DATABASE_URL and that PostgreSQL is running", file=sys.stderr)
        return 1
    except errors.DiscountError as exc:
        print(f"discount: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
