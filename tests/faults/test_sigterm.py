"""Fault 5: SIGTERM under load: in-flight calls finish, exit 0 within the grace period, no
acknowledged claim lost."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.faults.harness import ClaimLoad, Watcher, check_invariants
from tests.support import create_brand, create_key, generate_codes_sql, sql, start_server_process, stop_process

pytestmark = pytest.mark.timeout(60)

GRACE_SECONDS = 10.0
SERVER_ENV = {
    "DISCOUNT_POOL_MIN_SIZE": "2",
    "DISCOUNT_POOL_MAX_SIZE": "8",
    "DISCOUNT_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
}


async def test_sigterm_under_load_finishes_in_flight_calls_and_exits_0(database_url: str, tmp_path: Path) -> None:
    brands = ["st-a", "st-b"]
    for brand in brands:
        create_brand(database_url, brand)
        generate_codes_sql(database_url, brand, 20_000)
    create_brand(database_url, "st-bulk")
    service_key = create_key(database_url, "service")
    log = tmp_path / "server.log"
    server = await asyncio.to_thread(start_server_process, database_url, log_path=log, extra_env=SERVER_ENV)
    assert server.process is not None
    port = int(server.address.rsplit(":", 1)[1])
    watcher = Watcher(server.address, brands[0], server.admin_key)
    watcher.start()
    load = ClaimLoad([server.address], brands, service_key, clients=16)
    load.start()
    try:
        await asyncio.sleep(2.0)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DiscountServiceStub(channel)
            # A long call (a bulk generation of 1-5 s) that is surely in flight when SIGTERM arrives.
            bulk = asyncio.ensure_future(
                stub.GenerateCodes(
                    pb.GenerateCodesRequest(brand_id="st-bulk", count=200_000, request_id="bulk-1"),
                    metadata=server.metadata(),
                    timeout=30,
                )
            )
            await asyncio.to_thread(wait_for_copy, database_url)  # the generation is writing codes now
            assert not bulk.done()
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(server.process.wait, GRACE_SECONDS + 5)
            exit_seconds = time.monotonic() - sigterm_at
            generated = await bulk
        assert exit_code == 0, server.log_text()[-3000:]
        assert exit_seconds < GRACE_SECONDS + 2, exit_seconds
        assert generated.generated == 200_000
        in_flight = load.in_flight_at(sigterm_at)
        await asyncio.sleep(0.5)  # clients now meet a closed port, and retry
        server = await asyncio.to_thread(start_server_process, database_url, port, log_path=log, extra_env=SERVER_ENV)
        load.mark("restarted")
        recovered_after = await load.wait_for_success_after("restarted")
        await asyncio.sleep(1.0)
    finally:
        await load.stop()
    try:
        assert in_flight["OK"] > 0, in_flight
        # Every call in flight when the signal arrived finished OK. Calls sent after it are refused:
        # UNAVAILABLE once the port is closed, or CANCELLED from gRPC core for a call that reached
        # the transport in the last instant before the server stopped accepting (a client retries
        # both). Proof that none of the refused calls had claimed: the retry of every such user
        # claimed a code NEWLY, i.e. no refused attempt had committed one.
        assert set(in_flight) == {"OK"}, in_flight
        assert set(load.errors) <= {"UNAVAILABLE", "CANCELLED"}, load.errors
        assert all(started > sigterm_at for started, _, status in load.calls if status == "CANCELLED")
        assert load.retried, "no claim was refused during the shutdown"
        lost_replies = {user: failures for user, (failures, newly) in load.retried.items() if not newly}
        assert lost_replies == {}, f"calls that claimed but answered an error: {lost_replies}"
        assert set(watcher.stream_errors) <= {"UNAVAILABLE"}, watcher.stream_errors
        total = await check_invariants(database_url, server.address, server.admin_key, brands, load)
        stats = await asyncio.to_thread(_stats, server.address, server.admin_key)
        assert stats.total == 200_000 and stats.available == 200_000
        cancelled = [
            (round(a - sigterm_at, 3), round(b - sigterm_at, 3)) for a, b, st in load.calls if st == "CANCELLED"
        ]
        print(
            f"SIGTERM: exit 0 after {exit_seconds:.2f}s (grace {GRACE_SECONDS:g}s); in-flight GenerateCodes of "
            f"200,000 finished; claims in flight at the signal: {dict(in_flight)}; {total} claims, "
            f"{len(load.acked)} acknowledged; errors {dict(load.errors)}; "
            f"watcher stream ends {dict(watcher.stream_errors)}; claims resumed {recovered_after:.2f}s after restart; "
            f"{len(load.retried)} users retried, every retry claimed newly; "
            f"CANCELLED (start, end) after the signal: {cancelled}"
        )
    finally:
        await watcher.stop()
        assert await asyncio.to_thread(stop_process, server) == 0


def _stats(address: str, key: str) -> pb.GetBrandStatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.DiscountServiceStub(channel).GetBrandStats(
            pb.GetBrandStatsRequest(brand_id="st-bulk"), metadata=(("x-api-key", key),), timeout=5
        )


def wait_for_copy(url: str, timeout: float = 10.0) -> None:
    """Until a COPY into codes runs in the test's database (the bulk generation is in flight)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sql(
            url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND query LIKE 'COPY codes%%'",
        ):
            return
        time.sleep(0.02)
    raise AssertionError("the bulk generation never started its COPY")


def test_sigterm_during_startup_stops_at_once_with_exit_0(tmp_path: Path) -> None:
    """A stop that arrives before the server listens (a container stopped while it starts) ends the
    process at once and cleanly, instead of being ignored until the runtime kills it."""
    # A "database" that accepts the connection and never answers: startup hangs in its first query.
    with socket.socket() as silent_database:
        silent_database.bind(("127.0.0.1", 0))
        silent_database.listen()
        port = silent_database.getsockname()[1]
        env = {
            **os.environ,
            "DISCOUNT_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/none",
            "DISCOUNT_LISTEN": "127.0.0.1:0",
            "DISCOUNT_DB_TIMEOUT_SECONDS": "30",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "discount_service.cli", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            silent_database.settimeout(20)
            connection, _ = silent_database.accept()  # the server is inside its startup now
            with connection:
                sigterm_at = time.monotonic()
                process.send_signal(signal.SIGTERM)
                output, _ = process.communicate(timeout=10)
                stopped_after = time.monotonic() - sigterm_at
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, output
    assert stopped_after < 3.0, output
    assert "stopped before serving" in output
    assert "listening" not in output
