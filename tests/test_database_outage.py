"""A database outage through a real server: the database goes away for a few seconds under steady
claims (a proxy between the server and PostgreSQL refuses connections and cuts the open ones).

Every call that fails says why (UNAVAILABLE, reason DATABASE_UNAVAILABLE) and when to ask again
(google.rpc.RetryInfo), within DISCOUNT_DB_TIMEOUT_SECONDS + 0.5 s, and before its own deadline
even when that is shorter than the wait for a connection; the log has one line when the outage
starts and one when it ends; afterwards claims succeed and every claim the server acknowledged is
in the database."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

import grpc
import pytest

from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.db_proxy import proxied
from tests.grpc_errors import refusal_with_retry_delay
from tests.support import claim_request, create_brand, generate_codes_sql, in_process_server, sql

DB_TIMEOUT_SECONDS = 2.0
CLAIMS_PER_SECOND = 100
OUTAGE_SECONDS = 4.0
SHORT_DEADLINE_SECONDS = 1.0


@dataclass
class Outcome:
    user_id: str
    deadline: float
    started: float
    seconds: float
    code: str = ""  # the claimed code, when the call succeeded
    status: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""
    retry_delay: float | None = None


async def _claim(
    stub: pb_grpc.DiscountServiceStub, metadata: tuple[tuple[str, str], ...], user_id: str, deadline: float
) -> Outcome:
    started = time.monotonic()
    try:
        reply = await stub.ClaimCode(claim_request("outage", user_id), metadata=metadata, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        _, reason, delay = refusal_with_retry_delay(exc)
        return Outcome(user_id, deadline, started, time.monotonic() - started, "", exc.code(), reason, delay)
    return Outcome(user_id, deadline, started, time.monotonic() - started, reply.claim.code)


@pytest.mark.timeout(120)
async def test_an_outage_is_answered_at_once_with_a_reason_and_logged_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="discount_service")
    create_brand(database_url, "outage")
    generate_codes_sql(database_url, "outage", 5000)
    async with (
        proxied(database_url) as (proxy, proxied_url),
        in_process_server(proxied_url, db_timeout_seconds=DB_TIMEOUT_SECONDS) as (_, server),
    ):
        channel, stub = server.aio_stub()
        calls: list[asyncio.Task[Outcome]] = []
        sent = 0

        async def claims_for(seconds: float) -> None:
            """Claims at a steady rate, every other one with a deadline shorter than the wait for a connection."""
            nonlocal sent
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                deadline = SHORT_DEADLINE_SECONDS if sent % 2 else 30.0
                calls.append(asyncio.ensure_future(_claim(stub, server.metadata(), f"user-{sent}", deadline)))
                sent += 1
                await asyncio.sleep(1 / CLAIMS_PER_SECOND)

        async with channel:
            await claims_for(1.5)
            cut_at = time.monotonic()
            await proxy.cut()
            await claims_for(OUTAGE_SECONDS)
            await proxy.restore()
            restored_at = time.monotonic()
            # Until a claim sent now succeeds; then a steady stretch that must succeed throughout.
            probes: list[Outcome] = []
            while not probes or probes[-1].status is not grpc.StatusCode.OK:
                assert time.monotonic() - restored_at < 10, "claims did not succeed again within 10 s"
                probes.append(await _claim(stub, server.metadata(), f"probe-{len(probes)}", 30.0))
                await claims_for(0.2)
            recovered_at = time.monotonic()
            await claims_for(1.5)
            outcomes = [*await asyncio.gather(*calls), *probes]

    before = [o for o in outcomes if o.started + o.seconds < cut_at]
    after = [o for o in outcomes if o.started > recovered_at]
    failed = [o for o in outcomes if o.status is not grpc.StatusCode.OK]
    assert before and all(o.code for o in before), "claims before the outage succeed"
    assert len(failed) > OUTAGE_SECONDS * CLAIMS_PER_SECOND / 2, "the outage was seen"
    # Every failure says why and when to ask again, and comes within the wait for a connection.
    assert {(o.status, o.reason) for o in failed} == {(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")}
    assert all(o.retry_delay is not None and 0 < o.retry_delay <= 1.0 for o in failed)
    slowest = max(o.seconds for o in failed)
    assert slowest <= DB_TIMEOUT_SECONDS + 0.5, f"a failure took {slowest:.2f}s"
    # Once the server knows, it does not make callers wait at all.
    fast = sorted(o.seconds for o in failed)[len(failed) // 2]
    assert fast < 0.1, f"the median failure took {fast:.3f}s"
    # A deadline shorter than the wait for a connection is answered before it, with the reason.
    short = [o for o in outcomes if o.deadline == SHORT_DEADLINE_SECONDS and o.status is not grpc.StatusCode.OK]
    assert short and all(o.seconds < SHORT_DEADLINE_SECONDS for o in short)
    assert after and all(o.code for o in after), "claims succeed once the database is back"

    # Nothing acknowledged is lost: every code the server handed out is in the claims table, to its user.
    acknowledged = {(o.user_id, o.code) for o in outcomes if o.code}
    stored = set(sql(database_url, "SELECT user_id, code FROM claims"))
    assert acknowledged <= stored

    # One line when the outage starts, one when it ends, counting the calls refused meanwhile.
    ours = [r for r in caplog.records if r.name.startswith("discount_service")]
    warnings = [r.getMessage() for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("database unreachable"), warnings
    ended = [r.getMessage() for r in ours if "reachable again" in r.getMessage()]
    assert len(ended) == 1, ended
    found = re.search(r"(\d+) calls were refused", ended[0])
    assert found is not None and 0 < int(found.group(1)) <= len(failed), (ended[0], len(failed))
