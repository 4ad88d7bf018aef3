"""WatchClaims from a cursor beyond the brand's last claim is OUT_OF_RANGE, naming the head: such a
stream would otherwise stay open and silent however many claims came."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from grpc_status import rpc_status

from discount.v1 import discount_service_pb2 as pb
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)

UINT64_MAX = 2**64 - 1


async def first_message_or_error(
    stub: object, server: ServerHandle, after_sequence: int, brand: str = "acme"
) -> grpc.aio.AioRpcError:
    call = stub.WatchClaims(  # type: ignore[attr-defined]
        pb.WatchClaimsRequest(brand_id=brand, after_sequence=after_sequence), metadata=server.metadata()
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call.read(), 10)
    return raised.value


def error_info(error: grpc.aio.AioRpcError) -> tuple[ErrorInfo, BadRequest]:
    status = rpc_status.from_call(error)
    assert status is not None
    (info,) = [ErrorInfo.FromString(d.value) for d in status.details if d.Is(ErrorInfo.DESCRIPTOR)]
    (bad,) = [BadRequest.FromString(d.value) for d in status.details if d.Is(BadRequest.DESCRIPTOR)]
    return info, bad


async def test_after_sequence_beyond_the_head_is_out_of_range_and_names_the_head(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    create_brand(server.database_url, "empty")
    generate_codes_sql(server.database_url, "acme", 10)
    channel, stub = server.aio_stub()
    async with channel:
        for i in range(3):
            await stub.ClaimCode(claim_request("acme", f"user-{i}"), metadata=server.metadata())

        for after in (4, 1000, 2**63, UINT64_MAX):
            error = await first_message_or_error(stub, server, after)
            assert error.code() is grpc.StatusCode.OUT_OF_RANGE, (after, error.code(), error.details())
            assert "beyond the head of brand 'acme', 3 " in (error.details() or ""), error.details()
            info, bad = error_info(error)
            assert info.reason == "AFTER_SEQUENCE_BEYOND_HEAD"
            assert info.metadata["head"] == "3"
            assert info.metadata["after_sequence"] == str(after)
            assert info.metadata["brand_id"] == "acme"
            assert [v.field for v in bad.field_violations] == ["after_sequence"]

        error = await first_message_or_error(stub, server, 1, brand="empty")
        assert error.code() is grpc.StatusCode.OUT_OF_RANGE
        assert error_info(error)[0].metadata["head"] == "0"

        # At the head the stream is open and carries the next claim.
        at_head = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme", after_sequence=3), metadata=server.metadata())
        await at_head.initial_metadata()
        reply = await stub.ClaimCode(claim_request("acme", "user-3"), metadata=server.metadata())
        response = await asyncio.wait_for(at_head.read(), 10)
        assert (response.claim.sequence, response.claim.code) == (4, reply.claim.code)
        at_head.cancel()
