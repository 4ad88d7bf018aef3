"""The `discount` parser and `main`: which command runs, and how its errors become exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import errors
from ..settings import Settings, SettingsError
from .admin import add_admin_commands
from .client import add_client_commands
from .common import CommandError, configure_logging
from .serve import add_serve_commands
from .webhook import add_webhook_commands

# Errors that are the user's to fix: printed as one line, exit status 1.
USER_ERRORS: tuple[type[Exception], ...] = (SettingsError, CommandError)

dev_commands: Callable[[Any], None] | None
try:  # the dev tools (dev-stack, dev-token) are their own package, absent from the server image
    from discount_dev.cli import DevStackError, add_dev_commands
except ModuleNotFoundError as exc:
    if exc.name != "discount_dev":
        raise
    dev_commands = None
else:
    dev_commands = add_dev_commands
    USER_ERRORS += (DevStackError,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="discount", description="The discount-code service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_commands(sub)
    add_admin_commands(sub)
    add_client_commands(sub)
    add_webhook_commands(sub)
    if dev_commands is not None:
        dev_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level if args.command == "serve" else "WARNING")
        args.func(args, settings)
    except USER_ERRORS as exc:
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
