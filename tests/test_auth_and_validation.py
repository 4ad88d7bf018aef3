"""The auth matrix, and bad input: each case gets its status code and changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import ServerHandle, create_brand, create_key, generate_codes_sql, sql

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def _call(stub: pb_grpc.DiscountServiceStub, rpc: str, request: Any, metadata: Any) -> grpc.StatusCode:
    try:
        if rpc == "WatchClaims":
            stream = stub.WatchClaims(request, metadata=metadata, timeout=2)
            try:
                next(iter(stream))
            except grpc.RpcError as exc:
                # The stream opened (auth passed) and simply had nothing more within the deadline.
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return OK
                raise
            return OK
        getattr(stub, rpc)(request, metadata=metadata, timeout=10)
        return OK
    except grpc.RpcError as exc:
        return exc.code()


@pytest.fixture
def world(server: ServerHandle) -> dict[str, Any]:
    create_brand(server.database_url, "acme")
    create_brand(server.database_url, "globex")
    for brand in ("acme", "globex"):
        generate_codes_sql(server.database_url, brand, 50)
    url = server.database_url
    return {
        "admin": server.admin_key,
        "acme": create_key(url, "brand", "acme"),
        "globex": create_key(url, "brand", "globex"),
        "service": create_key(url, "service"),
    }


REQUESTS = {
    "GenerateCodes": pb.GenerateCodesRequest(brand_id="acme", count=5),
    "ClaimCode": pb.ClaimCodeRequest(brand_id="acme", user_id="matrix-user", email="m@example.com"),
    "WatchClaims": pb.WatchClaimsRequest(brand_id="acme"),
    "GetBrandStats": pb.GetBrandStatsRequest(brand_id="acme"),
}

# (credential, rpc) -> expected status, for calls about brand "acme".
MATRIX = {
    "admin": {"GenerateCodes": OK, "ClaimCode": OK, "WatchClaims": OK, "GetBrandStats": OK},
    "acme": {"GenerateCodes": OK, "ClaimCode": DENIED, "WatchClaims": OK, "GetBrandStats": OK},
    "globex": {"GenerateCodes": DENIED, "ClaimCode": DENIED, "WatchClaims": DENIED, "GetBrandStats": DENIED},
    "service": {"GenerateCodes": DENIED, "ClaimCode": OK, "WatchClaims": DENIED, "GetBrandStats": DENIED},
    "missing": dict.fromkeys(REQUESTS, UNAUTH),
    "unknown": dict.fromkeys(REQUESTS, UNAUTH),
}


async def test_auth_matrix(server: ServerHandle, world: dict[str, Any]) -> None:
    import asyncio

    def run() -> dict[str, dict[str, grpc.StatusCode]]:
        results: dict[str, dict[str, grpc.StatusCode]] = {}
        with server.stub() as stub:
            for who in MATRIX:
                if who == "missing":
                    metadata: Any = ()
                elif who == "unknown":
                    metadata = (("x-api-key", "dsk_000000000000_" + "A" * 43),)
                else:
                    metadata = (("x-api-key", world[who]),)
                results[who] = {rpc: _call(stub, rpc, REQUESTS[rpc], metadata) for rpc in REQUESTS}
        return results

    assert await asyncio.to_thread(run) == MATRIX


async def test_health_and_reflection_need_no_key(server: ServerHandle) -> None:
    import asyncio

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def run() -> tuple[int, list[str]]:
        with grpc.insecure_channel(server.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            service_status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service="discount.v1.DiscountService"), timeout=5)
                .status
            )
            assert service_status == status
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = [s.name for r in replies for s in r.list_services_response.service]
        return status, names

    status, names = await asyncio.to_thread(run)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert "discount.v1.DiscountService" in names


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


BAD_CLAIMS = [
    ("empty brand", pb.ClaimCodeRequest(brand_id="", user_id="u", email="u@example.com")),
    ("brand too long", pb.ClaimCodeRequest(brand_id="a" * 65, user_id="u", email="u@example.com")),
    ("brand with control char", pb.ClaimCodeRequest(brand_id="ac\x01me", user_id="u", email="u@example.com")),
    ("brand with NUL", pb.ClaimCodeRequest(brand_id="acme\x00", user_id="u", email="u@example.com")),
    ("empty user", pb.ClaimCodeRequest(brand_id="acme", user_id="", email="u@example.com")),
    ("user too long", pb.ClaimCodeRequest(brand_id="acme", user_id="u" * 129, email="u@example.com")),
    ("user with newline", pb.ClaimCodeRequest(brand_id="acme", user_id="u\nx", email="u@example.com")),
    ("user with NUL", pb.ClaimCodeRequest(brand_id="acme", user_id="u\x00", email="u@example.com")),
    ("empty email", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="")),
    ("not-an-email", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="not-an-email")),
    ("@x.com", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="@x.com")),
    ("a b@x.com", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="a b@x.com")),
    ("email without dot", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="a@localhost")),
    ("email too long", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="a" * 250 + "@x.com")),
    ("email with NUL", pb.ClaimCodeRequest(brand_id="acme", user_id="u", email="a\x00@x.com")),
]

BAD_GENERATES = [
    ("count zero", pb.GenerateCodesRequest(brand_id="acme", count=0)),
    ("count over a million", pb.GenerateCodesRequest(brand_id="acme", count=1_000_001)),
    ("count max uint32", pb.GenerateCodesRequest(brand_id="acme", count=2**32 - 1)),
    ("length 5", pb.GenerateCodesRequest(brand_id="acme", count=1, code_length=5)),
    ("length 33", pb.GenerateCodesRequest(brand_id="acme", count=1, code_length=33)),
    ("lower-case prefix", pb.GenerateCodesRequest(brand_id="acme", count=1, prefix="abc")),
    ("prefix too long", pb.GenerateCodesRequest(brand_id="acme", count=1, prefix="A" * 17)),
    ("prefix with space", pb.GenerateCodesRequest(brand_id="acme", count=1, prefix="A B")),
    ("1M codes of length 6", pb.GenerateCodesRequest(brand_id="acme", count=1_000_000, code_length=6)),
    ("expired expires_at", pb.GenerateCodesRequest(brand_id="acme", count=1, expires_at=_ts(1_000_000_000))),
    ("invalid timestamp", pb.GenerateCodesRequest(brand_id="acme", count=1, expires_at=_ts(10**15))),
    ("empty brand", pb.GenerateCodesRequest(brand_id="", count=1)),
    ("request_id too long", pb.GenerateCodesRequest(brand_id="acme", count=1, request_id="r" * 129)),
]


def _snapshot(url: str) -> tuple[Any, ...]:
    return (
        sql(url, "SELECT count(*), count(*) FILTER (WHERE claimed) FROM codes")[0],
        sql(url, "SELECT count(*) FROM claims")[0],
        sql(url, "SELECT count(*) FROM code_batches")[0],
        sql(url, "SELECT array_agg(last_sequence ORDER BY brand_key), sum(total_codes) FROM brand_feed_heads")[0],
    )


@pytest.mark.parametrize("case", BAD_CLAIMS, ids=[c[0] for c in BAD_CLAIMS])
async def test_bad_claim_is_invalid_argument_and_changes_nothing(
    server: ServerHandle, world: dict[str, Any], case: tuple[str, pb.ClaimCodeRequest]
) -> None:
    before = _snapshot(server.database_url)
    channel, stub = server.aio_stub()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ClaimCode(case[1], metadata=server.metadata())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()
    assert _snapshot(server.database_url) == before


@pytest.mark.parametrize("case", BAD_GENERATES, ids=[c[0] for c in BAD_GENERATES])
async def test_bad_generate_is_invalid_argument_and_changes_nothing(
    server: ServerHandle, world: dict[str, Any], case: tuple[str, pb.GenerateCodesRequest]
) -> None:
    before = _snapshot(server.database_url)
    channel, stub = server.aio_stub()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateCodes(case[1], metadata=server.metadata())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()
    assert _snapshot(server.database_url) == before


async def test_unknown_brand_is_not_found_everywhere_and_changes_nothing(
    server: ServerHandle, world: dict[str, Any]
) -> None:
    before = _snapshot(server.database_url)
    channel, stub = server.aio_stub()
    async with channel:
        for call, request in [
            (stub.GenerateCodes, pb.GenerateCodesRequest(brand_id="nope", count=5)),
            (stub.GetBrandStats, pb.GetBrandStatsRequest(brand_id="nope")),
            (stub.ClaimCode, pb.ClaimCodeRequest(brand_id="nope", user_id="u", email="u@example.com")),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=server.metadata())
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, request
    assert _snapshot(server.database_url) == before


async def test_malformed_request_body_is_invalid_argument(server: ServerHandle, world: dict[str, Any]) -> None:
    before = _snapshot(server.database_url)
    async with grpc.aio.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(
            "/discount.v1.DiscountService/ClaimCode",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for body in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x02\xc3\x28"):  # garbage, truncated, bad UTF-8
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(body, metadata=server.metadata())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _snapshot(server.database_url) == before
