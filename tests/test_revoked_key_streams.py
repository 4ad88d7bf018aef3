"""A revoked API key stops streaming: an open WatchClaims stream of a key revoked through
AdminService ends with UNAUTHENTICATED at once on the server that revoked it, and within
DISCOUNT_KEY_CACHE_SECONDS on another replica of the same database; no claim reaches it after."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status

from discount.v1 import admin_service_pb2 as admin_pb
from discount.v1 import admin_service_pb2_grpc as admin_grpc
from discount.v1 import discount_service_pb2 as pb
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql, in_process_server

BRAND = "acme"


@dataclass
class Watcher:
    """A WatchClaims stream read in the background: what it received, and how and when it ended."""

    call: Any
    claims: list[pb.Claim] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for response in self.call:
                self.claims.extend(response.claims or [response.claim])
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        self.ended_at = time.monotonic()

    async def wait_for_claims(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.claims) < count and self.ended_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(self.claims) >= count, (len(self.claims), self.error)

    async def wait_for_end(self, timeout: float) -> float:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        assert self.ended_at is not None
        return self.ended_at


async def watch(server: ServerHandle, key: str, channel: grpc.aio.Channel) -> Watcher:
    stub = channel.unary_stream(
        "/discount.v1.DiscountService/WatchClaims",
        request_serializer=pb.WatchClaimsRequest.SerializeToString,
        response_deserializer=pb.WatchClaimsResponse.FromString,
    )
    call = stub(pb.WatchClaimsRequest(brand_id=BRAND, max_claims_per_response=100), metadata=server.metadata(key))
    await call.initial_metadata()
    watcher = Watcher(call)
    watcher.task = asyncio.ensure_future(watcher.read())
    return watcher


async def new_brand_key(server: ServerHandle, channel: grpc.aio.Channel) -> tuple[str, str]:
    """(key_id, secret) of a new ROLE_BRAND key of BRAND, made through AdminService."""
    admin = admin_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
    reply = await admin.CreateApiKey(
        admin_pb.CreateApiKeyRequest(role=admin_pb.ROLE_BRAND, brand_id=BRAND), metadata=server.metadata()
    )
    return reply.key.key_id, reply.secret


async def revoke(server: ServerHandle, channel: grpc.aio.Channel, key_id: str) -> None:
    admin = admin_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
    await admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(key_id=key_id), metadata=server.metadata())


async def claim(server: ServerHandle, channel: grpc.aio.Channel, user: str) -> pb.Claim:
    stub = channel.unary_unary(
        "/discount.v1.DiscountService/ClaimCode",
        request_serializer=pb.ClaimCodeRequest.SerializeToString,
        response_deserializer=pb.ClaimCodeResponse.FromString,
    )
    reply = await stub(claim_request(BRAND, user), metadata=server.metadata(), timeout=10)
    return reply.claim


def assert_revoked(watcher: Watcher, key_id: str) -> None:
    error = watcher.error
    assert error is not None, "the stream ended without an error"
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (error.code(), error.details())
    assert "revoked" in (error.details() or ""), error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    (info,) = [ErrorInfo.FromString(d.value) for d in status.details if d.Is(ErrorInfo.DESCRIPTOR)]
    assert info.reason == "UNAUTHENTICATED"
    assert info.metadata["key_id"] == key_id


async def test_a_key_revoked_through_admin_service_ends_its_open_stream_at_once(database_url: str) -> None:
    create_brand(database_url, BRAND)
    generate_codes_sql(database_url, BRAND, 20)
    # A key cache far longer than the test: only the revocation itself can end the stream in time.
    async with in_process_server(database_url, key_cache_seconds=60.0) as (_, server):
        channel = grpc.aio.insecure_channel(server.address)
        try:
            key_id, brand_key = await new_brand_key(server, channel)
            revoked_watcher = await watch(server, brand_key, channel)
            admin_watcher = await watch(server, server.admin_key, channel)

            await claim(server, channel, "before-1")
            await revoked_watcher.wait_for_claims(1)

            revoked_at = time.monotonic()
            await revoke(server, channel, key_id)
            ended_at = await revoked_watcher.wait_for_end(timeout=5.0)
            assert ended_at - revoked_at < 1.0, ended_at - revoked_at
            assert_revoked(revoked_watcher, key_id)

            for i in range(3):
                await claim(server, channel, f"after-{i}")
            await admin_watcher.wait_for_claims(4)  # another key's stream of the brand goes on
            assert [c.user_id for c in revoked_watcher.claims] == ["before-1"]
            assert [c.user_id for c in admin_watcher.claims] == ["before-1", "after-0", "after-1", "after-2"]

            # A new stream with the revoked key is refused too.
            refused = await watch(server, brand_key, channel)
            await refused.wait_for_end(timeout=5.0)
            assert refused.error is not None and refused.error.code() is grpc.StatusCode.UNAUTHENTICATED
            admin_watcher.call.cancel()
        finally:
            await channel.close(None)


async def test_a_key_revoked_on_one_replica_ends_its_stream_on_another_within_the_key_cache_time(
    database_url: str,
) -> None:
    cache_seconds = 1.0
    create_brand(database_url, BRAND)
    generate_codes_sql(database_url, BRAND, 20)
    async with contextlib.AsyncExitStack() as stack:
        _, replica_a = await stack.enter_async_context(in_process_server(database_url, key_cache_seconds=cache_seconds))
        _, replica_b = await stack.enter_async_context(in_process_server(database_url, key_cache_seconds=cache_seconds))
        channel_a = grpc.aio.insecure_channel(replica_a.address)
        channel_b = grpc.aio.insecure_channel(replica_b.address)
        stack.push_async_callback(channel_a.close, None)
        stack.push_async_callback(channel_b.close, None)

        key_id, brand_key = await new_brand_key(replica_a, channel_a)
        watcher = await watch(replica_b, brand_key, channel_b)
        await claim(replica_a, channel_a, "before-1")
        await watcher.wait_for_claims(1)

        revoked_at = time.monotonic()
        await revoke(replica_a, channel_a, key_id)
        # Claims keep coming on replica A while replica B has not learnt of the revocation yet.
        claims_after = 0
        while watcher.ended_at is None and time.monotonic() - revoked_at < cache_seconds + 1.0:
            await claim(replica_a, channel_a, f"after-{claims_after}")
            claims_after += 1
            await asyncio.sleep(0.05)
        ended_at = await watcher.wait_for_end(timeout=1.0)
        assert ended_at - revoked_at <= cache_seconds + 0.5, ended_at - revoked_at
        assert_revoked(watcher, key_id)

        received = len(watcher.claims)
        await claim(replica_a, channel_a, "after-the-end")
        await asyncio.sleep(0.3)
        assert len(watcher.claims) == received
        assert "after-the-end" not in {c.user_id for c in watcher.claims}
