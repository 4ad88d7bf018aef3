"""What the commands that talk to a running server share: the client of DISCOUNT_ADDRESS and how
they print a timestamp."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import discount_client
from discount_client import DiscountClient

from .common import CommandError


@contextmanager
def service_client(missing_key_hint: str) -> Iterator[DiscountClient]:
    """A client of DISCOUNT_ADDRESS with DISCOUNT_API_KEY; a failed call becomes one line for the user.
    `missing_key_hint` tells the user which key to set when DISCOUNT_API_KEY is empty."""
    address = os.environ.get("DISCOUNT_ADDRESS") or discount_client.DEFAULT_ADDRESS
    api_key = os.environ.get("DISCOUNT_API_KEY", "")
    if not api_key:
        raise CommandError(f"DISCOUNT_API_KEY is not set{missing_key_hint}")
    client = DiscountClient(address, api_key)
    try:
        yield client
    except discount_client.Unavailable as exc:
        raise CommandError(f"cannot reach the discount service at {address} (DISCOUNT_ADDRESS): {exc}") from None
    except discount_client.DiscountError as exc:
        raise CommandError(f"{exc.method} failed: {exc.code}: {exc}") from None
    finally:
        client.close()


def iso(value: datetime | None) -> str | None:
    """A timestamp as UTC ISO 8601 with a `Z`, or None."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None
