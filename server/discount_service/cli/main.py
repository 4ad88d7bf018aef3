"""The `discount` parser and `main`: which command runs, and how its errors become exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import errors
from ..settings import Settings, SettingsError
from .client import add_client_commands
from .common import CommandError, configure_logging, error_line
from .operator import add_operator_commands
from .serve import add_serve_commands
from .webhook import add_webhook_commands

# Errors that are the user's to fix: printed as one line, exit status 1.
USER_ERRORS: tuple[type[Exception], ...] = (SettingsError, CommandError)

# The dev tools are a distribution of their own (dev/pyproject.toml), absent from `pip install .` and
# from the server image; without them, their commands say how to get them instead of "invalid choice".
DEV_COMMANDS = ("dev-stack", "dev-token")
DEV_TOOLS_MISSING = (
    "{command} is one of the development tools, which are not installed here; from a checkout of the "
    "repository, install them with `pip install -e ./dev` (./scripts/test.sh does) and run it again"
)

dev_commands: Callable[[Any], None] | None
try:
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
    add_operator_commands(sub)
    add_client_commands(sub)
    add_webhook_commands(sub)
    if dev_commands is not None:
        dev_commands(sub)
    else:
        for command in DEV_COMMANDS:
            sub.add_parser(command, help="(not installed: pip install -e ./dev)", add_help=False)
    return parser


def _database_unreachable(exc: errors.Unavailable) -> str:
    """What to check when the database does not answer: the service's own message is advice for API
    callers (retry), of no use to whoever starts the server or runs an admin command."""
    cause = str(exc.__cause__ or exc).strip().splitlines()
    why = f" ({cause[0].strip()})" if cause else ""
    return f"cannot reach the database{why}; check DISCOUNT_DATABASE_URL and that PostgreSQL is running there"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if dev_commands is None and arguments and arguments[0] in DEV_COMMANDS:
        print(f"discount: {DEV_TOOLS_MISSING.format(command=arguments[0])}", file=sys.stderr)
        return 1
    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level if args.command == "serve" else "WARNING")
        args.func(args, settings)
        # Written out here, inside the try, so that a reader that went away shows up as BrokenPipeError
        # below rather than at exit.
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped reading (`discount key list | head -3`): end quietly, as a program killed
        # by SIGPIPE would, and point stdout at /dev/null so the flush at exit finds nothing to write.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except CommandError as exc:
        print(f"discount: {exc}", file=sys.stderr)
        return exc.exit_status
    except USER_ERRORS as exc:
        print(f"discount: {exc}", file=sys.stderr)
        return 1
    except errors.Unavailable as exc:
        print(f"discount: {_database_unreachable(exc)}", file=sys.stderr)
        return 1
    except errors.DiscountError as exc:
        print(f"discount: {error_line(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
