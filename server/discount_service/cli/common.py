"""What every `discount` command shares: the one-line user error and the database helper."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from .. import errors
from ..logs import configure_logging
from ..settings import Settings

__all__ = ["CommandError", "configure_logging", "error_line", "replace_settings", "with_store"]


class CommandError(Exception):
    """A one-line error for the user; the CLI prints it and exits with `exit_status` (1 unless said)."""

    def __init__(self, message: str, *, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def error_line(exc: errors.DiscountError, args: argparse.Namespace) -> str:
    """A domain error as the user reads it: its message, after the command's option for the request
    field it names, when the command has one (its `options`: field -> option)."""
    option = getattr(args, "options", {}).get(getattr(exc, "field", ""))
    return f"{option}: {exc}" if option else str(exc)


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


def with_store(settings: Settings, action: Callable[[Any], Awaitable[Any]]) -> Any:
    """Runs `action(store)` on a small, migrated store of the configured database, then closes it."""
    from ..app import resolve_database_url
    from ..store import Store

    async def run() -> Any:
        store = Store(resolve_database_url(settings), min_size=1, max_size=2, timeout=settings.db_timeout_seconds)
        await store.migrate()
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())
