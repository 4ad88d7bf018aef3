"""Expired codes leave the claim path (docs/design.md#trap-expired-scan), through a real server: a
brand with many expired codes and a few live ones hands out only the live ones and then answers
NO_CODES_LEFT, its stats count the expired codes exactly before and after the expiry sweep, the
running server sweeps codes that expire while it runs, and once swept a claim's pick and brand stats
read a handful of buffers however many codes expired."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status

from discount.v1 import discount_service_pb2 as pb
from discount_service.expiry_sweep import MAX_IDLE_SECONDS
from discount_service.store import QUERIES
from discount_service.store._expiry import SWEEP_LOCK_CLASS
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql, sql

EXPIRED = 20_000
LIVE = 5
PAST = "now() - interval '1 hour'"
# The codes are written straight into the database, as another server's GenerateCodes would be: this
# server learns of them on its next look, at most MAX_IDLE_SECONDS after they expired; then enough for
# the sweep of EXPIRED codes and the vacuum after it on a busy two-core machine.
SWEEP_WAIT_SECONDS = MAX_IDLE_SECONDS + 60.0


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(ErrorInfo.DESCRIPTOR):
            info = ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


async def _wait_for(what: str, check: Callable[[], bool], seconds: float = SWEEP_WAIT_SECONDS) -> None:
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {seconds:.0f}s: {what}")
        await asyncio.sleep(0.2)


def _swept(url: str, brand: str) -> int:
    rows = sql(
        url,
        "SELECT count(*) FROM codes WHERE brand_key = (SELECT brand_key FROM brands WHERE brand_id = %s) AND expired",
        (brand,),
    )
    return int(rows[0][0])


async def _claim_all(
    server: ServerHandle, brand: str, users: int, who: str = "user"
) -> tuple[list[str], list[grpc.aio.AioRpcError]]:
    """Each of `users` new users claims once, one after another: the codes handed out and the refusals."""
    codes: list[str] = []
    refused: list[grpc.aio.AioRpcError] = []
    channel, stub = server.aio_stub()
    async with channel:
        for i in range(users):
            try:
                reply = await stub.ClaimCode(claim_request(brand, f"{who}-{i}"), metadata=server.metadata())
                codes.append(reply.claim.code)
            except grpc.aio.AioRpcError as error:
                refused.append(error)
    return codes, refused


async def _stats(server: ServerHandle, brand: str) -> tuple[int, int, int, int]:
    channel, stub = server.aio_stub()
    async with channel:
        s = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id=brand), metadata=server.metadata())
    return s.total, s.available, s.claimed, s.expired


def _assert_no_codes_left(refused: list[grpc.aio.AioRpcError]) -> None:
    assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert _reason(refused[0]) == "NO_CODES_LEFT"


@pytest.mark.both_engines
async def test_many_expired_codes_give_only_live_ones_then_no_codes_left_and_exact_stats(server: ServerHandle) -> None:
    url = server.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", EXPIRED, prefix="OLD-", expires_sql=PAST)
    generate_codes_sql(url, "acme", LIVE, prefix="LIVE-", expires_sql="now() + interval '1 day'")

    codes, refused = await _claim_all(server, "acme", LIVE + 1)
    assert len(codes) == LIVE and all(code.startswith("LIVE-") for code in codes)
    _assert_no_codes_left(refused)
    assert await _stats(server, "acme") == (EXPIRED + LIVE, 0, LIVE, EXPIRED)

    await _wait_for("every expired code swept", lambda: _swept(url, "acme") == EXPIRED)
    assert await _stats(server, "acme") == (EXPIRED + LIVE, 0, LIVE, EXPIRED)
    _, refused = await _claim_all(server, "acme", 1, who="late")
    _assert_no_codes_left(refused)


async def test_stats_are_exact_before_and_after_the_sweep_which_needs_no_restart(server: ServerHandle) -> None:
    url = server.database_url
    brand_key = create_brand(url, "acme")
    with psycopg.connect(url, autocommit=True) as holder:
        # Another process sweeping the brand: this server's sweep leaves it alone meanwhile.
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (SWEEP_LOCK_CLASS, brand_key))
        generate_codes_sql(url, "acme", EXPIRED, prefix="OLD-", expires_sql=PAST)
        generate_codes_sql(url, "acme", LIVE, prefix="LIVE-")
        await asyncio.sleep(2.5)  # two sweep rounds
        assert _swept(url, "acme") == 0
        # Not swept, the expired codes are passed over inside the index: no row fetched to be filtered
        # out, and about the index pages read (some 200 entries a page), not the table's as well.
        pick = _pick(url, brand_key)
        assert pick["removed"] == 0 and pick["buffers"] <= EXPIRED // 100, pick
        assert await _stats(server, "acme") == (EXPIRED + LIVE, LIVE, 0, EXPIRED)
        codes, refused = await _claim_all(server, "acme", LIVE + 1)
        assert sorted(codes) == sorted(r[0] for r in sql(url, "SELECT code FROM codes WHERE code LIKE 'LIVE-%'"))
        _assert_no_codes_left(refused)
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", (SWEEP_LOCK_CLASS, brand_key))

    await _wait_for("every expired code swept", lambda: _swept(url, "acme") == EXPIRED)
    assert await _stats(server, "acme") == (EXPIRED + LIVE, 0, LIVE, EXPIRED)

    # Codes that expire while the server runs are swept by the same server, and counted throughout.
    generate_codes_sql(url, "acme", 300, prefix="SOON-", expires_sql="now() + interval '4 seconds'")
    assert await _stats(server, "acme") == (EXPIRED + LIVE + 300, 300, LIVE, EXPIRED)
    expired = "SELECT now() > expires_at FROM code_batches WHERE prefix = 'SOON-'"
    await _wait_for("the SOON- codes expired", lambda: bool(sql(url, expired)[0][0]), seconds=10)
    assert await _stats(server, "acme") == (EXPIRED + LIVE + 300, 0, LIVE, EXPIRED + 300)
    await _wait_for("the codes that expired later swept", lambda: _swept(url, "acme") == EXPIRED + 300)
    assert await _stats(server, "acme") == (EXPIRED + LIVE + 300, 0, LIVE, EXPIRED + 300)


def _plan(url: str, statement: str) -> dict[str, int]:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement, rolled back: the buffers its whole plan touched, and
    the rows its filters removed."""
    with psycopg.connect(url) as conn:
        (raw,) = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}").fetchall()[0]
        conn.rollback()
    top: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    nodes, removed = [top], 0
    while nodes:
        node = nodes.pop()
        removed += int(node.get("Rows Removed by Filter", 0))
        nodes.extend(node.get("Plans", []))
    return {"buffers": int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"]), "removed": removed}


def _pick(url: str, brand_key: int) -> dict[str, int]:
    """The claim's code pick (pick_free_code) from the start of the brand's codes, as a claim with no
    hint and the NO_CODES_LEFT retry run it."""
    statement = QUERIES["pick_free_code"].replace("$1", f"{brand_key}::integer").replace("$2", "0::bigint")
    return _plan(url, statement)


async def test_once_swept_a_pick_and_brand_stats_do_not_touch_the_expired_codes(server: ServerHandle) -> None:
    url = server.database_url
    brand_key = create_brand(url, "acme")
    generate_codes_sql(url, "acme", EXPIRED, prefix="OLD-", expires_sql=PAST)
    generate_codes_sql(url, "acme", LIVE, prefix="LIVE-")
    await _wait_for("the pick stepping over no swept code", lambda: _pick(url, brand_key)["buffers"] <= 10)
    pick = _pick(url, brand_key)
    assert pick["removed"] == 0, pick

    codes, refused = await _claim_all(server, "acme", LIVE + 1)
    assert len(codes) == LIVE
    _assert_no_codes_left(refused)
    assert _pick(url, brand_key)["buffers"] <= 10  # the NO_CODES_LEFT pick: the claimed codes are dead entries
    stats = _plan(url, QUERIES["brand_stats"].replace("%(brand_id)s", "'acme'"))
    assert stats["buffers"] <= 20, stats
