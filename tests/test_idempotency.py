"""GenerateCodes' request_id: a repeat with the same parameters is a retry (the first batch, nothing
new); with other parameters it is FAILED_PRECONDITION naming the first field that differs, and
creates nothing, whether the first call has committed or is still running."""

from __future__ import annotations

import asyncio
import json

import grpc
import psycopg
import pytest

from discount.v1 import discount_service_pb2 as pb
from tests.support import BIN, ServerHandle, create_brand, sql
from tests.test_client_cli import client_env, discount
from tests.test_error_details import BAD_REQUEST, ERROR_INFO, grpcurl_error

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)


def counts(url: str) -> tuple[int, int]:
    """(batches, codes) in the database."""
    batches = sql(url, "SELECT count(*) FROM code_batches")[0][0]
    codes = sql(url, "SELECT count(*) FROM codes")[0][0]
    return int(batches), int(codes)


async def grpcurl(server: ServerHandle, body: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "grpcurl"),
        "-plaintext",
        "-H",
        f"x-api-key: {server.admin_key}",
        "-d",
        body,
        server.address,
        "discount.v1.DiscountService/GenerateCodes",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


FIRST = (
    '{"brand_id": "acme", "count": 1000, "request_id": "spring-2030", "prefix": "SPRING-", '
    '"expires_at": "2030-01-01T00:00:00Z"}'
)
# One parameter changed at a time (and, last, two: the first one in count, prefix, code_length,
# expires_at order is named) -> the message grpcurl shows, and the field its details name.
REUSES = {
    "count": (
        '{"brand_id": "acme", "count": 500, "request_id": "spring-2030", "prefix": "SPRING-", '
        '"expires_at": "2030-01-01T00:00:00Z"}',
        "request_id 'spring-2030' was first used with count 1,000; this call has count 500: use a new request_id",
        "count",
    ),
    "prefix": (
        '{"brand_id": "acme", "count": 1000, "request_id": "spring-2030", "prefix": "OTHER-", '
        '"expires_at": "2030-01-01T00:00:00Z"}',
        "request_id 'spring-2030' was first used with prefix 'SPRING-'; this call has prefix 'OTHER-': "
        "use a new request_id",
        "prefix",
    ),
    "no prefix": (
        '{"brand_id": "acme", "count": 1000, "request_id": "spring-2030", "expires_at": "2030-01-01T00:00:00Z"}',
        "request_id 'spring-2030' was first used with prefix 'SPRING-'; this call has no prefix: use a new request_id",
        "prefix",
    ),
    "code_length": (
        '{"brand_id": "acme", "count": 1000, "request_id": "spring-2030", "prefix": "SPRING-", "code_length": 10, '
        '"expires_at": "2030-01-01T00:00:00Z"}',
        "request_id 'spring-2030' was first used with code_length 12; this call has code_length 10: "
        "use a new request_id",
        "code_length",
    ),
    "expires_at": (
        '{"brand_id": "acme", "count": 1000, "request_id": "spring-2030", "prefix": "SPRING-", '
        '"expires_at": "2031-06-30T12:00:00Z"}',
        "request_id 'spring-2030' was first used with expires_at 2030-01-01T00:00:00Z; this call has expires_at "
        "2031-06-30T12:00:00Z: use a new request_id",
        "expires_at",
    ),
    "no expires_at": (
        '{"brand_id": "acme", "count": 1000, "request_id": "spring-2030", "prefix": "SPRING-"}',
        "request_id 'spring-2030' was first used with expires_at 2030-01-01T00:00:00Z; this call has no expires_at: "
        "use a new request_id",
        "expires_at",
    ),
    "count and prefix": (
        '{"brand_id": "acme", "count": 500, "request_id": "spring-2030", "prefix": "OTHER-"}',
        "request_id 'spring-2030' was first used with count 1,000; this call has count 500: use a new request_id",
        "count",
    ),
}


async def test_reused_request_id_with_other_parameters_is_refused_through_grpcurl(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    code, out, err = await grpcurl(server, FIRST)
    assert code == 0, err
    assert counts(server.database_url) == (1, 1000)

    for case, (body, message, field) in REUSES.items():
        error = await grpcurl_error(server.address, "GenerateCodes", json.loads(body), server.admin_key)
        assert error.output.splitlines()[:3] == ["ERROR:", "  Code: FailedPrecondition", f"  Message: {message}"]
        info = error.detail(ERROR_INFO)
        assert (info["domain"], info["reason"]) == ("discount.v1", "IDEMPOTENCY_KEY_REUSED"), case
        assert info["metadata"] == {"brand_id": "acme", "request_id": "spring-2030"}, case
        assert [v["field"] for v in error.detail(BAD_REQUEST)["field_violations"]] == [field], case
        assert counts(server.database_url) == (1, 1000), case

    # The same parameters again, code_length spelled as the default it stands for: the first batch.
    same = FIRST.replace('"count": 1000', '"count": 1000, "code_length": 12')
    code, out, err = await grpcurl(server, same)
    assert code == 0, err
    assert '"generated": 1000' in out
    assert counts(server.database_url) == (1, 1000)


async def test_a_repeat_that_raced_the_first_call_is_compared_too(server: ServerHandle) -> None:
    """The first call's batch row is inserted and not yet committed while the repeat arrives: the
    repeat finds nothing, waits on the unique (brand_key, request_id), then compares with what committed."""
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    async with channel, await psycopg.AsyncConnection.connect(server.database_url) as first:
        for request_id, repeat, expected in [
            ("race-other", pb.GenerateCodesRequest(count=50, prefix="X-"), "FAILED_PRECONDITION"),
            ("race-same", pb.GenerateCodesRequest(count=100, prefix="X-", code_length=12), "OK"),
        ]:
            async with first.transaction():
                await first.execute(
                    "INSERT INTO code_batches (batch_id, brand_key, request_id, generated, code_length, prefix) "
                    "SELECT gen_random_uuid(), brand_key, %s, 100, 12, 'X-' FROM brands WHERE brand_id = 'acme'",
                    (request_id,),
                )
                repeat.brand_id, repeat.request_id = "acme", request_id
                call = asyncio.ensure_future(stub.GenerateCodes(repeat, metadata=server.metadata(), timeout=20))
                await wait_for_lock_waiter(server.database_url, call, first.info.backend_pid)
            try:
                reply = await call
                status, details = "OK", ""
            except grpc.aio.AioRpcError as exc:
                reply, status, details = None, exc.code().name, exc.details() or ""
            assert status == expected, details
            batch_id = sql(
                server.database_url, "SELECT batch_id FROM code_batches WHERE request_id = %s", (request_id,)
            )
            if reply is None:
                assert details == (
                    f"request_id '{request_id}' was first used with count 100; this call has count 50: "
                    "use a new request_id"
                )
            else:
                assert (reply.batch_id, reply.generated) == (str(batch_id[0][0]), 100)
    # Nothing was generated by either repeat: the only codes would be theirs.
    assert counts(server.database_url) == (2, 0)


async def wait_for_lock_waiter(url: str, call: asyncio.Future[object], first_pid: int) -> None:
    """Until the repeat's insert of its batch row is running: from then on it can only wait for the
    first call's row (on PostgreSQL a lock wait here; on Citus the wait is on a worker, and the
    coordinator's backend shows the insert as active)."""
    for _ in range(400):
        assert not call.done(), "the repeat finished without waiting for the first call"
        rows = sql(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND pid <> %s AND query LIKE 'INSERT INTO code_batches%%'",
            (first_pid,),
        )
        if rows[0][0]:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the repeat never reached its insert of the batch row")


async def test_concurrent_first_calls_with_other_parameters_make_one_batch(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    async with channel:
        results = await asyncio.gather(
            *(
                stub.GenerateCodes(
                    pb.GenerateCodesRequest(brand_id="acme", count=count, request_id="launch"),
                    metadata=server.metadata(),
                    timeout=60,
                )
                for count in (200_000, 150_000)
            ),
            return_exceptions=True,
        )
    won = [r for r in results if isinstance(r, pb.GenerateCodesResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == len(lost) == 1, results
    assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    other = 150_000 if won[0].generated == 200_000 else 200_000
    assert lost[0].details() == (
        f"request_id 'launch' was first used with count {won[0].generated:,}; this call has count {other:,}: "
        "use a new request_id"
    )
    assert counts(server.database_url) == (1, won[0].generated)


FAILED = "discount: GenerateCodes failed at chunk"
CLI_REUSES = {
    "count": (
        ["500", "--prefix", "OTHER-"],
        f"{FAILED} 1 of 1 (request id spring-2030-0): FAILED_PRECONDITION: request_id 'spring-2030-0' was first "
        "used with count 10,000; this call has count 500: use a new request_id",
    ),
    "prefix": (
        ["25000", "--prefix", "OTHER-"],
        f"{FAILED} 1 of 3 (request id spring-2030-0): FAILED_PRECONDITION: request_id 'spring-2030-0' was first "
        "used with no prefix; this call has prefix 'OTHER-': use a new request_id",
    ),
    "length": (
        ["25000", "--length", "14"],
        f"{FAILED} 1 of 3 (request id spring-2030-0): FAILED_PRECONDITION: request_id 'spring-2030-0' was first "
        "used with code_length 12; this call has code_length 14: use a new request_id",
    ),
    "expires": (
        ["25000", "--expires", "2031-01-01T00:00:00Z"],
        f"{FAILED} 1 of 3 (request id spring-2030-0): FAILED_PRECONDITION: request_id 'spring-2030-0' was first "
        "used with no expires_at; this call has expires_at 2031-01-01T00:00:00Z: use a new request_id",
    ),
    "last chunk": (
        ["24000"],
        f"{FAILED} 3 of 3 (request id spring-2030-2), after 20,000 of 24,000 codes: FAILED_PRECONDITION: "
        "request_id 'spring-2030-2' was first used with count 5,000; this call has count 4,000: use a new request_id",
    ),
}


@pytest.mark.parametrize("case", list(CLI_REUSES))
async def test_cli_names_the_chunk_and_the_field_that_differ(server: ServerHandle, case: str) -> None:
    create_brand(server.database_url, "acme")
    env = client_env(server.address, server.admin_key)
    common = ["--request-id", "spring-2030", "--chunk-size", "10000"]
    code, out, err = await discount("generate", "acme", "25000", *common, env=env)
    assert code == 0, err
    assert counts(server.database_url) == (3, 25_000)

    second, expected = CLI_REUSES[case]
    code, out, err = await discount("generate", "acme", *second, *common, env=env)
    assert (code, out) == (1, "")
    assert err.endswith("\n" + expected + "\n") or err == expected + "\n", err  # after the progress bar, if any
    assert counts(server.database_url) == (3, 25_000)

    # The same command again is a retry: nothing new.
    code, out, err = await discount("generate", "acme", "25000", *common, env=env)
    assert code == 0, err
    assert out.startswith("generated 25,000 codes for acme in 3 chunk(s) (request id spring-2030)")
    assert counts(server.database_url) == (3, 25_000)
