"""Fault 4: two and three replicas behind one database; clients spread across them, a watcher on
each; every watcher sees every claim. One replica runs too, as the baseline for docs/scaling.md.

Prints (and writes to test-output/replicas-N.json) the claim throughput and latency per replica count."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import pytest

from discount_dev.processes import cpu_seconds
from tests.faults.harness import ClaimLoad, Watcher, backend_pids, check_invariants
from tests.support import ROOT, create_brand, create_key, generate_codes_sql, sql, start_server_process, stop_process

pytestmark = pytest.mark.timeout(60)

SERVER_ENV = {"DISCOUNT_POOL_MIN_SIZE": "2", "DISCOUNT_POOL_MAX_SIZE": "6"}
LOAD_SECONDS = 5.0


@pytest.mark.parametrize("replicas", [1, 2, 3])
async def test_replicas_share_one_database_and_every_watcher_sees_every_claim(
    replicas: int, database_url: str, tmp_path: Path
) -> None:
    brands = ["rep-a", "rep-b"]
    for brand in brands:
        create_brand(database_url, brand)
        generate_codes_sql(database_url, brand, 20_000)
    service_key = create_key(database_url, "service")
    admin_key = create_key(database_url, "admin")
    servers = await asyncio.gather(
        *(
            asyncio.to_thread(
                start_server_process,
                database_url,
                log_path=tmp_path / f"server-{i}.log",
                extra_env=SERVER_ENV,
                admin_key=admin_key,
            )
            for i in range(replicas)
        )
    )
    watchers = [Watcher(s.address, brand, admin_key) for s in servers for brand in brands]
    for watcher in watchers:
        watcher.start()
    load = ClaimLoad([s.address for s in servers], brands, service_key, clients=16, call_timeout=10.0)
    try:
        await asyncio.sleep(0.5)
        load.start()
        await asyncio.sleep(1.0)  # warm-up
        server_pids = [s.process.pid for s in servers if s.process is not None]
        pg_start = {pid: cpu_seconds(pid) for pid in backend_pids(database_url)}
        cpu_start = {"servers": sum(map(cpu_seconds, server_pids)), "client": cpu_seconds(os.getpid())}
        window_start, ok_start = time.monotonic(), load.ok_calls
        await asyncio.sleep(LOAD_SECONDS)
        window = time.monotonic() - window_start
        claims_in_window = load.ok_calls - ok_start
        cpu_ms = {
            "servers": sum(map(cpu_seconds, server_pids)) - cpu_start["servers"],
            "client": cpu_seconds(os.getpid()) - cpu_start["client"],
            "postgres": sum(cpu_seconds(pid) - pg_start.get(pid, 0.0) for pid in backend_pids(database_url)),
        }
        cpu_ms = {k: round(1000 * v / max(claims_in_window, 1), 3) for k, v in cpu_ms.items()}
        await load.stop()
        assert load.errors == {}, load.errors
        total = await check_invariants(database_url, servers[-1].address, admin_key, brands, load)
        heads = dict(
            sql(
                database_url,
                "SELECT b.brand_id, h.last_sequence FROM brand_feed_heads h JOIN brands b USING (brand_key)",
            )
        )
        started = time.monotonic()
        for watcher in watchers:
            await watcher.wait_for(heads[watcher.brand_id], timeout=20)
        catch_up = time.monotonic() - started
        for watcher in watchers:
            assert watcher.problems == []
            assert [c.sequence for c in watcher.claims] == list(range(1, heads[watcher.brand_id] + 1))
            expected = [(s, u, c) for s, u, c in _rows(database_url, watcher.brand_id)]
            assert [(c.sequence, c.user_id, c.code) for c in watcher.claims] == expected
    finally:
        await load.stop()
        for watcher in watchers:
            await watcher.stop()
        codes = [await asyncio.to_thread(stop_process, s) for s in servers]
    assert codes == [0] * replicas
    latencies = sorted(end - start for start, end, status in load.calls if status == "OK")
    result = {
        "replicas": replicas,
        "clients": 16,
        "claims_per_second": round(claims_in_window / window, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
        "claims": total,
        "watchers": len(watchers),
        "watchers_caught_up_seconds": round(catch_up, 2),
        "cpu_ms_per_claim": cpu_ms,
        "cores": os.cpu_count(),
    }
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / f"replicas-{replicas}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def _rows(url: str, brand: str) -> list[tuple[int, str, str]]:
    return sql(
        url,
        "SELECT c.sequence, c.user_id, c.code FROM claims c JOIN brands b USING (brand_key) "
        "WHERE b.brand_id = %s ORDER BY c.sequence",
        (brand,),
    )
