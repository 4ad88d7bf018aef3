"""Fault: SIGKILL one Citus worker under load, then start it again.

The brands on the other worker keep claiming; the dead worker's brands get UNAVAILABLE (retryable,
the same status and message as a database that is down), never INTERNAL; once the worker is back
they claim again, no acknowledged claim is lost and no code is given twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from discount_dev.citus import CitusCluster, CitusDatabases
from tests.faults.harness import ClaimLoad, check_invariants
from tests.support import create_key, start_server_process, stop_process
from tests.test_citus import brands_on_every_node, worker_port_of

pytestmark = pytest.mark.timeout(180)

SERVER_ENV = {"DISCOUNT_POOL_MIN_SIZE": "2", "DISCOUNT_POOL_MAX_SIZE": "8", "DISCOUNT_DB_TIMEOUT_SECONDS": "2"}


async def test_a_worker_killed_under_load_fails_only_its_brands_and_loses_nothing(
    citus_cluster: CitusCluster, citus_databases: CitusDatabases, tmp_path: Path
) -> None:
    url = citus_databases.create()
    server = None
    killed = False
    try:
        brands = brands_on_every_node(url, 2, 5_000)
        victim = citus_cluster.workers[0]
        dead = [b for b in brands if worker_port_of(url, b) == victim.port]
        alive = [b for b in brands if b not in dead]
        assert len(dead) == len(alive) == 2
        service_key = create_key(url, "service")
        server = await asyncio.to_thread(
            start_server_process, url, log_path=tmp_path / "server.log", extra_env=SERVER_ENV
        )
        alive_load = ClaimLoad([server.address], alive, service_key, clients=6, prefix="alive")
        dead_load = ClaimLoad([server.address], dead, service_key, clients=6, prefix="dead")
        alive_load.start()
        dead_load.start()
        await asyncio.sleep(2.0)
        assert alive_load.ok_calls > 0 and dead_load.ok_calls > 0, server.log_text()

        await asyncio.to_thread(citus_cluster.kill_worker, 0)
        killed = True
        await asyncio.sleep(0.5)  # calls in flight at the kill have ended
        alive_before, dead_before = alive_load.ok_calls, dead_load.ok_calls
        await asyncio.sleep(3.0)
        alive_during = alive_load.ok_calls - alive_before
        dead_during = dead_load.ok_calls - dead_before
        outage_errors = dict(dead_load.errors)

        dead_load.mark("restarted")
        await asyncio.to_thread(citus_cluster.start_worker, 0)
        killed = False
        back_after = await dead_load.wait_for_success_after("restarted", timeout=30.0)
        await asyncio.sleep(1.0)
        await alive_load.stop()
        await dead_load.stop()

        assert alive_during > 20, (
            f"the live worker's brands stopped claiming ({alive_during} in 3 s): {alive_load.details}"
        )
        assert dead_during == 0
        assert alive_load.errors == {}, alive_load.details
        assert set(outage_errors) == {"UNAVAILABLE"}, dead_load.details
        assert dead_load.details["UNAVAILABLE"] == {"the database is unavailable; retry with backoff"}
        assert back_after < 10.0
        for brand_ids, load in ((alive, alive_load), (dead, dead_load)):
            await check_invariants(url, server.address, server.admin_key, brand_ids, load)
    finally:
        if killed:
            citus_cluster.start_worker(0)
        if server is not None:
            stop_process(server)
        citus_databases.drop(url)
