"""discount_client against real servers: every RPC, error mapping, deadlines, the API key,
idempotent GenerateCodes, gRPC's own retries, and a watch iterator that survives kill -9."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from discount_client import (
    AsyncDiscountClient,
    BrandStats,
    Claim,
    DeadlineExceeded,
    DiscountClient,
    DiscountError,
    InvalidArgument,
    NoCodesLeft,
    NotFound,
    PermissionDenied,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    WatchBackoff,
)
from tests.support import (
    ServerHandle,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
    in_process_server,
    sql,
    start_server_process,
    stop_process,
)


def run_sync(fn: Any, *args: Any) -> Any:
    """Sync client code runs in a thread: the in-process server lives on this test's event loop."""
    return asyncio.to_thread(fn, *args)


async def test_sync_client_calls_every_rpc(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")

    def use() -> tuple[Any, ...]:
        with DiscountClient(server.address, server.admin_key) as client:
            generated = client.generate_codes("acme", 20, prefix="AC-", code_length=8)
            claim = client.claim_code("acme", "alice", "alice@example.com")
            again = client.claim_code("acme", "alice", "alice@example.com")
            stats = client.get_brand_stats("acme")
            watched = next(iter(client.watch_claims("acme")))
        return generated, claim, again, stats, watched

    generated, claim, again, stats, watched = await run_sync(use)
    assert generated.brand_id == "acme"
    assert generated.generated == 20
    assert generated.available == 20
    assert claim.newly_claimed is True
    assert claim.claim.code.startswith("AC-") and len(claim.claim.code) == 3 + 8
    assert (claim.claim.user_id, claim.claim.email, claim.claim.sequence) == ("alice", "alice@example.com", 1)
    assert claim.claim.claimed_at.tzinfo is not None
    assert claim.claim.expires_at is None
    assert again.newly_claimed is False and again.claim == claim.claim
    assert stats == BrandStats(brand_id="acme", total=20, available=19, claimed=1, expired=0)
    assert watched == claim.claim
    assert sql(server.database_url, "SELECT code, user_id FROM claims") == [(claim.claim.code, "alice")]


async def test_async_client_calls_every_rpc(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        generated = await client.generate_codes("acme", 5)
        claims = [await client.claim_code("acme", f"user-{i}", f"u{i}@example.com") for i in range(3)]
        stats = await client.get_brand_stats("acme")
        seen: list[Claim] = []
        async for claim in client.watch_claims("acme", after_sequence=1):
            seen.append(claim)
            if len(seen) == 2:
                break
    assert generated.generated == 5
    assert [c.claim.sequence for c in claims] == [1, 2, 3]
    assert stats == BrandStats(brand_id="acme", total=5, available=2, claimed=3, expired=0)
    assert seen == [claims[1].claim, claims[2].claim]


async def test_generate_without_request_id_gets_a_uuid_so_a_repeat_creates_nothing(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        first = await client.generate_codes("acme", 100)
        assert uuid.UUID(first.request_id).version == 4
        # What a gRPC retry of that call sends: the same request, so the same request_id.
        repeat = await client.generate_codes("acme", 100, request_id=first.request_id)
        other = await client.generate_codes("acme", 100)
        stats = await client.get_brand_stats("acme")
    assert repeat.batch_id == first.batch_id
    assert other.request_id != first.request_id and other.batch_id != first.batch_id
    assert stats.total == 200
    rows = sql(server.database_url, "SELECT request_id, generated FROM code_batches ORDER BY batch_key")
    assert rows == [(first.request_id, 100), (other.request_id, 100)]


async def test_status_codes_become_documented_exceptions_with_the_server_message(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    create_brand(server.database_url, "empty")
    generate_codes_sql(server.database_url, "acme", 5)
    service_key = create_key(server.database_url, "service")
    async with (
        AsyncDiscountClient(server.address, server.admin_key) as admin,
        AsyncDiscountClient(server.address, service_key) as service,
        AsyncDiscountClient(server.address, "dk_not-a-real-key") as stranger,
    ):
        cases: list[tuple[Any, type[DiscountError], str, str]] = [
            (admin.generate_codes("acme", 0), InvalidArgument, "INVALID_ARGUMENT", "count must be between 1 and"),
            (admin.claim_code("nope", "alice", "a@example.com"), NotFound, "NOT_FOUND", "brand 'nope' does not exist"),
            (service.claim_code("empty", "alice", "a@example.com"), NoCodesLeft, "RESOURCE_EXHAUSTED", "empty"),
            (stranger.get_brand_stats("acme"), Unauthenticated, "UNAUTHENTICATED", "API key"),
            (service.get_brand_stats("acme"), PermissionDenied, "PERMISSION_DENIED", "service"),
        ]
        for call, cls, code, text in cases:
            with pytest.raises(cls) as raised:
                await call
            assert raised.value.code == code
            assert text in str(raised.value), str(raised.value)
            assert raised.value.message == str(raised.value)
            assert raised.value.method in {"GenerateCodes", "ClaimCode", "GetBrandStats"}
        # Errors a reconnect cannot fix end a watch instead of looping.
        with pytest.raises(PermissionDenied):
            async for _ in service.watch_claims("acme"):
                pass
    # Nothing listens on this port: UNAVAILABLE once gRPC's retries are spent.
    async with AsyncDiscountClient(f"127.0.0.1:{free_port()}", "k", retry=RetryPolicy(initial_backoff=0.01)) as gone:
        with pytest.raises(Unavailable) as raised:
            await gone.get_brand_stats("acme")
        assert raised.value.code == "UNAVAILABLE"
        assert "connect" in str(raised.value).lower()


async def test_every_unary_call_carries_a_deadline(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 5)

    def calls(client: DiscountClient) -> list[Any]:
        return [
            lambda: client.generate_codes("acme", 1000),
            lambda: client.claim_code("acme", "alice", "a@example.com"),
            lambda: client.get_brand_stats("acme"),
        ]

    def use() -> tuple[list[str], list[str]]:
        # A default deadline too short for any call: every unary call must fail by it.
        with DiscountClient(server.address, server.admin_key, deadline=0.0005) as client:
            expired = []
            for call in calls(client):
                with pytest.raises(DeadlineExceeded) as raised:
                    call()
                expired.append(raised.value.code)
            # A per-call timeout overrides the default.
            overridden = [type(client.get_brand_stats("acme", timeout=10)).__name__]
        return expired, overridden

    expired, overridden = await run_sync(use)
    assert expired == ["DEADLINE_EXCEEDED"] * 3
    assert overridden == ["BrandStats"]
    async with AsyncDiscountClient(server.address, server.admin_key, deadline=0.0005) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get_brand_stats("acme")


async def test_the_api_key_goes_out_as_x_api_key_on_every_call(server: ServerHandle) -> None:
    """The server authenticates only the `x-api-key` header: every call (unary and stream) works
    with a brand key bound to acme, and is refused for another brand."""
    create_brand(server.database_url, "acme")
    create_brand(server.database_url, "globex")
    brand_key = create_key(server.database_url, "brand", "acme")
    async with AsyncDiscountClient(server.address, brand_key) as client:
        await client.generate_codes("acme", 3)
        assert (await client.get_brand_stats("acme")).total == 3
        with pytest.raises(PermissionDenied):
            await client.get_brand_stats("globex")
        async with AsyncDiscountClient(server.address, server.admin_key) as admin:
            claim = await admin.claim_code("acme", "bob", "bob@example.com")
        async for watched in client.watch_claims("acme"):
            assert watched == claim.claim
            break
    async with AsyncDiscountClient(server.address, "") as keyless:
        with pytest.raises(Unauthenticated):
            await keyless.get_brand_stats("acme")


def test_the_retry_policy_is_grpc_service_config() -> None:
    config = RetryPolicy(max_attempts=4, initial_backoff=0.5, max_backoff=3, multiplier=1.5).service_config()
    assert config == {
        "methodConfig": [
            {
                "name": [{"service": "discount.v1.DiscountService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.500s",
                    "maxBackoff": "3.000s",
                    "backoffMultiplier": 1.5,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    json.dumps(config)  # it goes into the channel as JSON


async def test_unavailable_is_retried_by_grpc_until_the_server_is_up(database_url: str) -> None:
    """The call starts while nothing listens; the server comes up 0.2 s later; gRPC's retry
    policy (not a loop of ours) delivers the call. Without retries the same call fails at once."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 3)
    admin_key = create_key(database_url, "admin")
    port = free_port()
    address = f"127.0.0.1:{port}"

    async with AsyncDiscountClient(address, admin_key, retry=None) as no_retry:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await no_retry.claim_code("acme", "alice", "a@example.com")
        assert time.monotonic() - started < 1.0

    # gRPC waits U(0, ceiling) before each retry, ceilings 2, 4, 8, 8 s: the 5 attempts almost surely
    # (simulated: all but ~1 in 10,000) reach past the server's start; fast reconnects (0.2 s) see it.
    policy = RetryPolicy(max_attempts=5, initial_backoff=2.0, max_backoff=8.0, multiplier=2.0)
    fast_reconnect = [("grpc.max_reconnect_backoff_ms", 200)]
    async with AsyncDiscountClient(address, admin_key, retry=policy, deadline=30, options=fast_reconnect) as client:
        call = asyncio.create_task(client.claim_code("acme", "alice", "a@example.com"))
        await asyncio.sleep(0.2)
        assert not call.done()
        async with in_process_server(database_url, listen=address):
            result = await asyncio.wait_for(call, 30)
    assert result.newly_claimed and result.claim.user_id == "alice"


def _watch_across_kill_9(tmp_path: Path, database_url: str, use_async: bool) -> None:
    """Server A (a `discount serve` process) feeds the watcher. It is killed with SIGKILL while
    server B, another replica on the same database, keeps taking claims; A restarts on the same
    port. The iterator must yield every sequence 1..N once, in order."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 1000)
    admin_key = create_key(database_url, "admin")
    port = free_port()
    first = start_server_process(database_url, port, log_path=tmp_path / "a.log", admin_key=admin_key)
    other = start_server_process(database_url, log_path=tmp_path / "b.log", admin_key=admin_key)
    seen: queue.Queue[Claim] = queue.Queue()
    done = threading.Event()
    failure: list[BaseException] = []
    backoff = WatchBackoff(initial=0.05, maximum=0.5)

    def watch_sync() -> None:
        with DiscountClient(first.address, admin_key) as client:
            for claim in client.watch_claims("acme", backoff=backoff):
                seen.put(claim)
                if done.is_set():
                    return

    def watch_async() -> None:
        async def run() -> None:
            async with AsyncDiscountClient(first.address, admin_key) as client:
                async for claim in client.watch_claims("acme", backoff=backoff):
                    seen.put(claim)
                    if done.is_set():
                        return

        asyncio.run(run())

    def guarded() -> None:
        try:
            (watch_async if use_async else watch_sync)()
        except BaseException as exc:  # surfaced by the assertions below
            failure.append(exc)

    watcher = threading.Thread(target=guarded, daemon=True)
    restarted: Any = None
    try:
        with DiscountClient(other.address, admin_key) as claimer:
            claimer.claim_code("acme", "before-0", "b0@example.com")  # replayed from sequence 0
            watcher.start()
            for i in range(1, 10):
                claimer.claim_code("acme", f"before-{i}", f"b{i}@example.com")
            got = [seen.get(timeout=15) for _ in range(10)]
            stop_process(first, signal.SIGKILL)
            for i in range(20):
                claimer.claim_code("acme", f"while-down-{i}", f"d{i}@example.com")
            restarted = start_server_process(database_url, port, log_path=tmp_path / "a2.log", admin_key=admin_key)
            for i in range(10):
                claimer.claim_code("acme", f"after-{i}", f"a{i}@example.com")
            got += [seen.get(timeout=30) for _ in range(30)]
            done.set()
            claimer.claim_code("acme", "last", "last@example.com")  # wakes the watcher so it returns
            watcher.join(timeout=15)
            time.sleep(0.3)
            while not seen.empty():
                got.append(seen.get_nowait())
    finally:
        for handle in (first, other, restarted):
            if handle is not None:
                stop_process(handle, signal.SIGKILL)
    assert failure == []
    assert [c.sequence for c in got] == list(range(1, 42))
    users = [c.user_id for c in got]
    assert users[:10] == [f"before-{i}" for i in range(10)]
    assert users[10:30] == [f"while-down-{i}" for i in range(20)]
    assert users[30:40] == [f"after-{i}" for i in range(10)]
    db = sql(database_url, "SELECT sequence, code FROM claims ORDER BY sequence")
    assert [(c.sequence, c.code) for c in got] == [(int(s), code) for s, code in db]


def test_sync_watch_keeps_its_place_across_kill_9(tmp_path: Path, database_url: str) -> None:
    _watch_across_kill_9(tmp_path, database_url, use_async=False)


def test_async_watch_keeps_its_place_across_kill_9(tmp_path: Path, database_url: str) -> None:
    _watch_across_kill_9(tmp_path, database_url, use_async=True)


async def test_closing_the_client_ends_a_watch_quietly(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    client = AsyncDiscountClient(server.address, server.admin_key)
    seen: list[Claim] = []

    async def watch() -> None:
        async for claim in client.watch_claims("acme"):
            seen.append(claim)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await client.close()
    await asyncio.wait_for(task, 5)
    assert seen == []


async def test_closing_the_sync_client_ends_a_watch_in_another_thread_quietly(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    client = DiscountClient(server.address, server.admin_key)
    outcome: list[object] = []

    def watch() -> None:
        try:
            outcome.extend(client.watch_claims("acme"))
            outcome.append("ended")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    await asyncio.sleep(0.3)
    client.close()
    await asyncio.to_thread(thread.join, 5)
    assert outcome == ["ended"]
