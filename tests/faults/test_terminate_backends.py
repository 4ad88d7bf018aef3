"""Fault 3: database connections cut mid-transaction (pg_terminate_backend in a loop) under load."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from tests.faults.harness import ClaimLoad, Watcher, check_invariants
from tests.support import create_brand, create_key, generate_codes_sql, sql, start_server_process, stop_process

pytestmark = pytest.mark.timeout(60)

SERVER_ENV = {"DISCOUNT_POOL_MIN_SIZE": "2", "DISCOUNT_POOL_MAX_SIZE": "8", "DISCOUNT_DB_TIMEOUT_SECONDS": "1"}

# Only this test's database: the machine's PostgreSQL is shared with other test runs.
TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


async def test_terminated_backends_under_load_keep_the_invariants(database_url: str, tmp_path: Path) -> None:
    brands = ["tb-a", "tb-b"]
    for brand in brands:
        create_brand(database_url, brand)
        generate_codes_sql(database_url, brand, 20_000)
    service_key = create_key(database_url, "service")
    server = await asyncio.to_thread(
        start_server_process, database_url, log_path=tmp_path / "server.log", extra_env=SERVER_ENV
    )
    watcher = Watcher(server.address, brands[0], server.admin_key)
    watcher.start()
    load = ClaimLoad([server.address], brands, service_key, clients=16)
    load.start()
    terminated = 0
    try:
        await asyncio.sleep(1.0)
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                cur = await admin.execute(TERMINATE)
                row = await cur.fetchone()
                terminated += int(row[0]) if row else 0
                await asyncio.sleep(0.25)
        load.mark("terminations over")
        await asyncio.sleep(2.0)
    finally:
        await load.stop()
    try:
        print(f"terminated {terminated} backends; {len(load.acked)} acknowledged; errors {dict(load.errors)}")
        assert terminated >= 20
        assert set(load.errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, load.errors
        assert "terminations over" in load.first_ok_after
        total = await check_invariants(database_url, server.address, server.admin_key, brands, load)
        # The long-lived watcher, whose stream and LISTEN connection were cut over and over, saw it all.
        await watcher.wait_for(len([1 for b, _ in load.acked if b == brands[0]]))
        head = sql(
            database_url,
            "SELECT last_sequence FROM brand_feed_heads h JOIN brands b USING (brand_key) WHERE b.brand_id = %s",
            (brands[0],),
        )[0][0]
        await watcher.wait_for(head)
        assert watcher.problems == []
        assert [c.sequence for c in watcher.claims] == list(range(1, head + 1))
        print(
            f"{total} claims in the database; watcher reopened {watcher.reopened} times, "
            f"stream errors {dict(watcher.stream_errors)}"
        )
    finally:
        await watcher.stop()
        assert await asyncio.to_thread(stop_process, server) == 0
