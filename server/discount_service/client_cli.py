"""Client commands of the `discount` CLI (generate, claim, stats, watch): they call a running server."""

from __future__ import annotations

from typing import Any


def add_client_commands(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Placeholder until the client commands land (issue 3)."""
    del sub
