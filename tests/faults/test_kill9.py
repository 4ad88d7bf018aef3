"""Fault 1: SIGKILL the server mid-load, start it again, continue."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import ClaimLoad, check_invariants
from tests.support import create_brand, create_key, generate_codes_sql, start_server_process, stop_process

pytestmark = pytest.mark.timeout(60)

SERVER_ENV = {"DISCOUNT_POOL_MIN_SIZE": "2", "DISCOUNT_POOL_MAX_SIZE": "8", "DISCOUNT_DB_TIMEOUT_SECONDS": "1"}


async def test_kill_9_mid_load_loses_no_acknowledged_claim(database_url: str, tmp_path: Path) -> None:
    brands = ["k9-a", "k9-b"]
    for brand in brands:
        create_brand(database_url, brand)
        generate_codes_sql(database_url, brand, 20_000)
    service_key = create_key(database_url, "service")
    log = tmp_path / "server.log"
    server = await asyncio.to_thread(start_server_process, database_url, log_path=log, extra_env=SERVER_ENV)
    port = int(server.address.rsplit(":", 1)[1])
    load = ClaimLoad([server.address], brands, service_key, clients=16)
    load.start()
    try:
        for round_ in range(2):
            await asyncio.sleep(2.0)
            before = load.ok_calls
            assert before > 0, f"no claim succeeded before kill {round_}:\n{server.log_text()}"
            code = await asyncio.to_thread(stop_process, server, signal.SIGKILL)
            assert code == -signal.SIGKILL
            killed_at = time.monotonic()
            load.mark(f"restart-{round_}")
            await asyncio.sleep(0.5)  # clients keep calling a dead server and retry the same users
            server = await asyncio.to_thread(
                start_server_process, database_url, port, log_path=log, extra_env=SERVER_ENV
            )
            up_after = time.monotonic() - killed_at
            resumed = await load.wait_for_success_after(f"restart-{round_}")
            print(
                f"kill {round_}: {before} claims before, server back after {up_after:.2f}s, claims after {resumed:.2f}s"
            )
        await asyncio.sleep(1.0)
    finally:
        await load.stop()
    try:
        assert load.errors["UNAVAILABLE"] > 0, "the kill did not happen under load"
        assert set(load.errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}, load.errors
        assert all(f"restart-{r}" in load.first_ok_after for r in range(2)), "claims did not resume after restart"
        total = await check_invariants(database_url, server.address, server.admin_key, brands, load)
        print(f"kill -9 x2: {len(load.acked)} acknowledged claims, {total} in the database, errors {dict(load.errors)}")
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0
