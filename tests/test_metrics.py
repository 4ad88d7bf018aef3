"""The Prometheus endpoint (DISCOUNT_METRICS_LISTEN), scraped over HTTP like Prometheus would."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from discount.v1 import discount_service_pb2 as pb
from discount_service.settings import Settings
from tests.support import (
    claim_request,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
    in_process_server,
    start_server_process,
    stop_process,
)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_endpoint_of_a_running_server(database_url: str, tmp_path: Path) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    service_key = create_key(database_url, "service")
    metrics_port = free_port()
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        extra_env={"DISCOUNT_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", "DISCOUNT_POOL_MAX_SIZE": "5"},
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        channel, stub = server.aio_stub()
        async with channel:
            for user in ("ann", "bob", "cy"):
                await stub.ClaimCode(claim_request("acme", user), metadata=server.metadata(service_key))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ClaimCode(claim_request("acme", "x", "not-an-email"), metadata=server.metadata(service_key))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", "wrong"),))
            watch = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme"), metadata=server.metadata())
            first = await watch.read()
            assert first.claim.sequence == 1

            m = await asyncio.to_thread(scrape, url)
            assert m[("discount_rpc_total", (("method", "ClaimCode"), ("status", "OK")))] == 3
            assert m[("discount_rpc_total", (("method", "ClaimCode"), ("status", "INVALID_ARGUMENT")))] == 1
            assert m[("discount_rpc_total", (("method", "GetBrandStats"), ("status", "UNAUTHENTICATED")))] == 1
            ok = (("method", "ClaimCode"), ("status", "OK"))
            assert m[("discount_rpc_duration_seconds_count", ok)] == 3
            assert 0 < m[("discount_rpc_duration_seconds_sum", ok)] < 10
            assert m[("discount_rpc_duration_seconds_bucket", (("le", "+Inf"), *ok))] == 3
            assert m[("discount_codes_available", (("brand_id", "acme"),))] == 7
            assert m[("discount_watchers_connected", ())] == 1
            assert m[("discount_db_pool_max", ())] == 5
            assert 1 <= m[("discount_db_pool_size", ())] <= 5
            assert (
                m[("discount_db_pool_in_use", ())] + m[("discount_db_pool_idle", ())]
                == m[("discount_db_pool_size", ())]
            )
            assert m[("discount_db_pool_requests_waiting", ())] == 0

            watch.cancel()
            for _ in range(50):  # the stream's end is observed once the server notices the cancel
                m = await asyncio.to_thread(scrape, url)
                if m[("discount_watchers_connected", ())] == 0:
                    break
                await asyncio.sleep(0.1)
            assert m[("discount_watchers_connected", ())] == 0
            assert m[("discount_rpc_total", (("method", "WatchClaims"), ("status", "OK")))] == 1
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0


async def test_metrics_are_off_by_default(database_url: str) -> None:
    assert Settings.from_env({}).metrics_listen is None
    async with in_process_server(database_url) as (server, _):
        assert server.metrics is None


async def test_codes_available_counts_expired_codes_out(database_url: str) -> None:
    create_brand(database_url, "fresh")
    generate_codes_sql(database_url, "fresh", 5)
    generate_codes_sql(database_url, "fresh", 3, expires_sql="now() - interval '1 day'")
    async with in_process_server(database_url, metrics_listen="127.0.0.1:0") as (server, _):
        assert server.metrics is not None and server.metrics.port
        m = await asyncio.to_thread(scrape, f"http://127.0.0.1:{server.metrics.port}/metrics")
    assert m[("discount_codes_available", (("brand_id", "fresh"),))] == 5
