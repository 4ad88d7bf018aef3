"""`discount serve --workers N`: N processes on one port, one SIGTERM stops them all with exit 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support import (
    claim_request,
    create_brand,
    create_key,
    generate_codes_sql,
    sql,
    start_server_process,
    stop_process,
)


async def test_two_workers_share_the_port_serve_claims_and_stop_on_one_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    create_brand(database_url, "wk")
    generate_codes_sql(database_url, "wk", 100)
    key = create_key(database_url, "service")
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        extra_env={"DISCOUNT_WORKERS": "2", "DISCOUNT_POOL_MIN_SIZE": "1", "DISCOUNT_POOL_MAX_SIZE": "4"},
    )
    try:
        # Each worker is a full server with its own LISTEN connection; both get connected to.
        deadline = time.monotonic() + 20
        listeners: list[tuple[int]] = []
        while time.monotonic() < deadline:
            listeners = sql(
                database_url,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'discount-service-listen' AND datname = current_database()",
            )
            if listeners[0][0] == 2:
                break
            await asyncio.sleep(0.2)
        assert listeners == [(2,)], server.log_text()
        codes = set()
        for i in range(8):  # separate connections, so the kernel spreads them over the workers
            channel, stub = server.aio_stub()
            async with channel:
                reply = await stub.ClaimCode(claim_request("wk", f"u{i}"), metadata=(("x-api-key", key),), timeout=10)
            codes.add(reply.claim.code)
        assert len(codes) == 8
        assert sql(database_url, "SELECT count(*) FROM claims") == [(8,)]
    finally:
        exit_code = await asyncio.to_thread(stop_process, server)
    assert exit_code == 0, server.log_text()[-3000:]
    assert "with 2 worker processes" in server.log_text()
