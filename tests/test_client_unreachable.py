"""A call that fails by its deadline says whether the server could be reached, with either client:
gRPC's own message is "Deadline Exceeded" whether nothing listens or the server is slow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from discount_client import AsyncDiscountClient, DeadlineExceeded, DiscountClient, RetryPolicy
from tests.support import ServerHandle, create_brand, free_port

BOTH_CLIENTS = pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])


def deadline_error(address: str, api_key: str, *, use_async: bool, **client_args: Any) -> DeadlineExceeded:
    """The error of GetBrandStats through a new client of the kind asked, run in this thread."""
    run: Callable[[], object]
    if use_async:

        async def call() -> None:
            async with AsyncDiscountClient(address, api_key, **client_args) as client:
                await client.get_brand_stats("acme")

        run = lambda: asyncio.run(call())  # noqa: E731
    else:

        def run() -> None:
            with DiscountClient(address, api_key, **client_args) as client:
                client.get_brand_stats("acme")

    with pytest.raises(DeadlineExceeded) as raised:
        run()
    return raised.value


@BOTH_CLIENTS
def test_with_nothing_listening_the_deadline_error_says_the_server_could_not_be_reached(use_async: bool) -> None:
    address = f"127.0.0.1:{free_port()}"
    # gRPC retries UNAVAILABLE after a random wait of up to 5 s here, so the 0.3 s deadline passes
    # first (a quicker policy may spend its attempts before it and fail with UNAVAILABLE instead).
    slow_retries = RetryPolicy(initial_backoff=5.0, max_backoff=5.0)
    started = time.monotonic()
    error = deadline_error(address, "dk_any", use_async=use_async, deadline=0.3, retry=slow_retries)
    assert time.monotonic() - started < 3
    assert (error.code, error.method, error.reason) == ("DEADLINE_EXCEEDED", "GetBrandStats", "")
    assert str(error) == (
        f"Deadline Exceeded: the server at {address} could not be reached (the client has not connected to it)"
    )


@BOTH_CLIENTS
async def test_a_server_that_accepted_the_connection_but_answers_late_is_not_called_unreachable(
    server: ServerHandle, use_async: bool
) -> None:
    create_brand(server.database_url, "acme")
    with ThreadPoolExecutor(1) as pool:
        # Waited for without awaiting: the server's handlers run on this event loop, so none runs
        # until the deadline has passed, while gRPC's own threads accept the connection.
        error = pool.submit(
            deadline_error, server.address, server.admin_key, use_async=use_async, deadline=1.0
        ).result()
    assert (error.code, error.method, error.reason) == ("DEADLINE_EXCEEDED", "GetBrandStats", "")
    assert str(error) == "Deadline Exceeded"
