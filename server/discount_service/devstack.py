"""`discount dev-stack`: the server plus Envoy's gRPC-Web bridge on localhost (issue 4)."""

from __future__ import annotations

from typing import Any


def add_devstack_command(sub: Any) -> None:
    """Placeholder until the dev stack lands (issue 4)."""
    del sub
