"""Fault 2: PostgreSQL restarts (`pg_ctl -m fast stop`, then start) under a live server.

The machine's PostgreSQL is shared, so this test runs a PostgreSQL of its own (harness.OwnPostgres)
on a free port and restarts that one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_service.store import Store
from tests.faults.harness import ClaimLoad, OwnPostgres, Watcher, check_invariants, health_status
from tests.support import (
    claim_request,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
    sql,
    start_server_process,
    stop_process,
)

pytestmark = pytest.mark.timeout(60)

SERVER_ENV = {"DISCOUNT_POOL_MIN_SIZE": "2", "DISCOUNT_POOL_MAX_SIZE": "8", "DISCOUNT_DB_TIMEOUT_SECONDS": "1"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    pg = OwnPostgres(free_port())
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.cleanup()


async def wait_for_health(address: str, wanted: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            if await health_status(address) == wanted:
                return time.monotonic() - started
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"health never became {health_pb2.HealthCheckResponse.ServingStatus.Name(wanted)}")
        await asyncio.sleep(0.1)


async def test_database_restart_under_a_live_server(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    url = own_postgres.url
    await Store(url).migrate()
    brands = ["dbr-a"]
    create_brand(url, brands[0])
    generate_codes_sql(url, brands[0], 20_000)
    service_key = create_key(url, "service")
    server = await asyncio.to_thread(start_server_process, url, log_path=tmp_path / "server.log", extra_env=SERVER_ENV)
    watcher = Watcher(server.address, brands[0], server.admin_key)
    watcher.start()
    load = ClaimLoad([server.address], brands, service_key, clients=8)
    load.start()
    try:
        await asyncio.sleep(2.0)
        assert load.ok_calls > 0, server.log_text()
        errors_before = sum(load.errors.values())

        await asyncio.to_thread(own_postgres.stop, "fast")
        stopped_at = time.monotonic()
        not_serving_after = await wait_for_health(server.address, NOT_SERVING, timeout=10)
        # During the outage a call fails fast with UNAVAILABLE, and the process keeps running.
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DiscountServiceStub(channel)
            probe_started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as probe:
                await stub.ClaimCode(
                    claim_request(brands[0], "probe-during-outage"), metadata=server.metadata(service_key), timeout=10
                )
            probe_seconds = time.monotonic() - probe_started
        assert probe.value.code() is grpc.StatusCode.UNAVAILABLE, probe.value
        assert probe_seconds < 3.5
        await asyncio.sleep(1.5)
        ok_during_outage = load.ok_calls
        await asyncio.sleep(0.5)
        assert load.ok_calls == ok_during_outage, "claims succeeded while the database was down"
        outage_errors = sum(load.errors.values()) - errors_before
        assert outage_errors > 0
        assert server.process is not None and server.process.poll() is None

        await asyncio.to_thread(own_postgres.start)
        load.mark("database back")
        restarted_at = time.monotonic()
        serving_after = await wait_for_health(server.address, SERVING, timeout=15)
        deadline = time.monotonic() + 15
        while "database back" not in load.first_ok_after and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "database back" in load.first_ok_after, f"claims never recovered:\n{server.log_text()[-3000:]}"
        claims_after = load.first_ok_after["database back"] - restarted_at
        await asyncio.sleep(2.0)
    finally:
        await load.stop()
    try:
        assert set(load.errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, load.errors
        total = await check_invariants(url, server.address, server.admin_key, brands, load)
        head = sql(url, "SELECT max(last_sequence) FROM brand_feed_heads")[0][0]
        await watcher.wait_for(head)
        assert watcher.problems == []
        assert [c.sequence for c in watcher.claims] == list(range(1, head + 1))
        print(
            f"database down {restarted_at - stopped_at:.1f}s: NOT_SERVING after {not_serving_after:.2f}s, "
            f"probe UNAVAILABLE in {probe_seconds:.2f}s, {outage_errors} failed calls; after start: SERVING in "
            f"{serving_after:.2f}s, first claim in {claims_after:.2f}s; {total} claims, {len(load.acked)} "
            f"acknowledged; watcher reopened {watcher.reopened}x ({dict(watcher.stream_errors)})"
        )
    finally:
        await watcher.stop()
        assert await asyncio.to_thread(stop_process, server) == 0
