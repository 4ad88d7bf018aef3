"""Fault 6: a watcher that reads nothing neither grows server memory without bound nor slows claims.

What happens (feed.py): the server writes to the stream until gRPC/HTTP2 flow control stops it
(the client's receive window is full); the stream's generator then simply waits. The watcher's
cursor falls behind the in-memory tail (feed.TAIL_SIZE claims), and when it reads again it pages
from the database from where it left off, in order, with nothing lost. It is NOT cut off.

The pause is 10 s rather than 30 s: the state that matters (the client's window full, the watcher
more than TAIL_SIZE claims behind so it no longer reads from memory) is reached within the first
seconds and does not change afterwards: the server holds one blocked write and one page
(feed.PAGE_SIZE claims) for it however long it sleeps. The test asserts that this state was
reached (behind by more than TAIL_SIZE) and that memory stayed flat across the whole pause; run with
DISCOUNT_SLOW_CONSUMER_SECONDS=30 for the full 30 s (measured: same result, see docs/operations.md)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_service.feed import TAIL_SIZE
from tests.faults.harness import ClaimLoad, Watcher, check_invariants, rss_bytes
from tests.support import create_brand, create_key, generate_codes_sql, sql, start_server_process, stop_process

# DISCOUNT_SLOW_CONSUMER_SECONDS=30 runs the full 30 s (see the module docstring).
PAUSE_SECONDS = float(os.environ.get("DISCOUNT_SLOW_CONSUMER_SECONDS", "10"))
pytestmark = pytest.mark.timeout(60 + PAUSE_SECONDS)
BASELINE_SECONDS = 4.0
BACKLOG = 10_000
SERVER_ENV = {"DISCOUNT_POOL_MIN_SIZE": "2", "DISCOUNT_POOL_MAX_SIZE": "8"}


async def test_a_watcher_that_reads_nothing_falls_behind_and_resumes(database_url: str, tmp_path: Path) -> None:
    brand = "slow"
    create_brand(database_url, brand)
    generate_codes_sql(database_url, brand, 60_000)
    # A backlog, so the watcher starts far behind the in-memory tail.
    sql(
        database_url,
        "SELECT count(*) FROM generate_series(1, %s) g, "
        "LATERAL discount_claim('slow', 'pre-' || g, 'pre-' || g || '@example.com', 0)",
        (BACKLOG,),
    )
    service_key = create_key(database_url, "service")
    server = await asyncio.to_thread(
        start_server_process, database_url, log_path=tmp_path / "server.log", extra_env=SERVER_ENV
    )
    assert server.process is not None
    pid = server.process.pid
    load = ClaimLoad([server.address], [brand], service_key, clients=16)
    channel = grpc.aio.insecure_channel(server.address)
    # A normal watcher, reading as fast as claims come, runs throughout: the baseline phase then
    # differs from the paused phase only by the slow watcher.
    fast = Watcher(server.address, brand, server.admin_key, after=BACKLOG)
    try:
        fast.start()
        load.start()
        await asyncio.sleep(1.0)
        ok0, t0 = load.ok_calls, time.monotonic()
        await asyncio.sleep(BASELINE_SECONDS)
        baseline_rate = (load.ok_calls - ok0) / (time.monotonic() - t0)

        slow = pb_grpc.DiscountServiceStub(channel).WatchClaims(
            pb.WatchClaimsRequest(brand_id=brand, after_sequence=0), metadata=server.metadata()
        )
        first = await slow.read()
        assert first.claim.sequence == 1
        await asyncio.sleep(1.0)  # let the server fill the client's flow-control window
        rss_start = rss_bytes(pid)
        rss_samples = [rss_start]
        ok1, t1 = load.ok_calls, time.monotonic()
        while time.monotonic() - t1 < PAUSE_SECONDS:
            await asyncio.sleep(0.5)
            rss_samples.append(rss_bytes(pid))
        paused_rate = (load.ok_calls - ok1) / (time.monotonic() - t1)
        await load.stop()

        head = sql(database_url, "SELECT last_sequence FROM brand_feed_heads")[0][0]
        behind = head - 1
        # Now read: the stream resumes where it stopped, in order, gapless, up to the head.
        sequences = [first.claim.sequence]
        started = time.monotonic()
        async with asyncio.timeout(30):
            while sequences[-1] < head:
                message = await slow.read()
                assert message is not grpc.aio.EOF
                sequences.append(message.claim.sequence)
        drain_seconds = time.monotonic() - started
        slow.cancel()
        assert sequences == list(range(1, head + 1))
        assert behind > TAIL_SIZE  # far outside the in-memory tail: it can only resume from the database
        growth = max(rss_samples) - rss_start
        print(
            f"slow watcher: paused {PAUSE_SECONDS:g}s, {behind} claims behind at the end "
            f"(in-memory tail {TAIL_SIZE}); server RSS {rss_start / 2**20:.1f} MiB -> max "
            f"{max(rss_samples) / 2**20:.1f} MiB (+{growth / 2**20:.1f}); "
            f"claims/s {baseline_rate:.0f} with a live watcher only, "
            f"{paused_rate:.0f} with the slow one added; drained {len(sequences) - 1} claims in {drain_seconds:.2f}s"
        )
        assert growth < 48 * 2**20, rss_samples
        await fast.wait_for(head)
        assert fast.problems == [] and fast.reopened == 0
        assert paused_rate > 0.5 * baseline_rate, (baseline_rate, paused_rate)
        total = await check_invariants(database_url, server.address, server.admin_key, [brand], load)
        assert total == head
    finally:
        await load.stop()
        await fast.stop()
        await channel.close()
        assert await asyncio.to_thread(stop_process, server) == 0
