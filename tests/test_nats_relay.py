"""The NATS JetStream relay, as a brand's engineer reading the stream would check it: every claim
once, in order per brand, with its headers; a server that started while NATS was unreachable
relays once it is up; a stream that cannot take the subjects stops `serve` with one line; kill -9
and a restart leave exactly one message per claim; of two replicas one relays, and the other takes
over within 15 s of a kill -9. Against the real NATS server at 127.0.0.1:4222 (.ci/run starts one);
each test uses a stream and subject prefix of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js.api import RawStreamMsg

from discount.v1 import discount_service_pb2 as pb
from tests.db_proxy import proxied
from tests.support import (
    BIN,
    ServerHandle,
    claim_request,
    create_brand,
    free_port,
    generate_codes_sql,
    in_process_server,
    start_server_process,
    stop_process,
)
from tests.test_feed_many_brands import create_brands, idle_rate

NATS_URL = "nats://127.0.0.1:4222"
TAKEOVER_SECONDS = 15.0


@pytest.fixture
async def names() -> AsyncIterator[tuple[str, str]]:
    """A stream and a subject prefix of this test's own; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    stream, prefix = f"TEST_{tag}", f"test{tag}.claims"
    yield stream, prefix
    client = await nats.connect(NATS_URL)
    with contextlib.suppress(Exception):
        await client.jetstream().delete_stream(stream)
    await client.close()


def relay_env(stream: str, prefix: str, url: str = NATS_URL) -> dict[str, str]:
    return {"DISCOUNT_NATS_URL": url, "DISCOUNT_NATS_STREAM": stream, "DISCOUNT_NATS_SUBJECT_PREFIX": prefix}


async def stream_messages(stream: str) -> list[RawStreamMsg]:
    """Every message in the stream, in stream order (none if the stream does not exist)."""
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        state = info.state
        return (
            [await js.get_msg(stream, seq) for seq in range(state.first_seq, state.last_seq + 1)]
            if state.messages
            else []
        )
    finally:
        await client.close()


async def wait_for_messages(stream: str, count: int, timeout: float = 30.0) -> list[RawStreamMsg]:
    deadline = time.monotonic() + timeout
    while True:
        messages = await stream_messages(stream)
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.2)


def by_brand(messages: list[RawStreamMsg]) -> dict[str, list[int]]:
    """brand_id -> the claim sequences of its messages, in stream order."""
    seen: dict[str, list[int]] = {}
    for message in messages:
        headers = message.headers or {}
        seen.setdefault(headers["Discount-Brand-Id"], []).append(int(headers["Discount-Sequence"]))
    return seen


async def make_claims(server: ServerHandle, brand: str, users: range) -> list[pb.Claim]:
    channel, stub = server.aio_stub()
    async with channel:
        return [
            (await stub.ClaimCode(claim_request(brand, f"user-{i}"), metadata=server.metadata())).claim for i in users
        ]


@pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py): the positions are a distributed table there
async def test_every_claim_once_in_order_per_brand_with_its_headers(database_url: str, names: tuple[str, str]) -> None:
    stream, prefix = names
    for brand in ("acme", "shop.example"):
        create_brand(database_url, brand)
        generate_codes_sql(database_url, brand, 100)
    # Claims made while no relay runs are relayed too, once one starts.
    async with in_process_server(database_url) as (_, handle):
        early = await make_claims(handle, "acme", range(5))
    async with in_process_server(database_url, nats_url=NATS_URL, nats_stream=stream, nats_subject_prefix=prefix) as (
        _,
        handle,
    ):
        acme, dotted = await asyncio.gather(
            make_claims(handle, "acme", range(5, 40)), make_claims(handle, "shop.example", range(30))
        )
        messages = await wait_for_messages(stream, 70)
    claims = {("acme", c.sequence): c for c in early + acme} | {("shop.example", c.sequence): c for c in dotted}
    assert len(messages) == 70
    assert by_brand(messages) == {"acme": list(range(1, 41)), "shop.example": list(range(1, 31))}
    for message in messages:
        headers = message.headers or {}
        brand, sequence = headers["Discount-Brand-Id"], headers["Discount-Sequence"]
        assert headers["Nats-Msg-Id"] == f"{brand}:{sequence}"
        assert headers["Content-Type"] == "application/json"
        assert message.subject == f"{prefix}.{brand.replace('.', '%2E')}"
        body = json.loads(message.data)
        claim = claims[(brand, int(sequence))]
        assert body["sequence"] == sequence  # a string, as protobuf's JSON writes a uint64
        assert (body["brand_id"], body["code"], body["user_id"]) == (brand, claim.code, claim.user_id)
    client = await nats.connect(NATS_URL)
    info = await client.jetstream().stream_info(stream)
    await client.close()
    assert info.config.subjects == [f"{prefix}.>"]


class SwitchableForwarder:
    """A TCP port that refuses NATS (closes every connection at once) until switched on, and then
    forwards to the real server: NATS unreachable, then up, without touching the real one."""

    def __init__(self) -> None:
        self.on = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.on:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 4222)
        for task in (
            asyncio.ensure_future(self._pipe(reader, upstream_writer)),
            asyncio.ensure_future(self._pipe(upstream_reader, writer)),
        ):
            self._tasks.add(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def nats_behind_a_switch(
    database_url: str, stream: str, prefix: str
) -> AsyncIterator[tuple[SwitchableForwarder, Any, ServerHandle]]:
    """A server whose NATS is reached only through a SwitchableForwarder, switched off at first."""
    forwarder = SwitchableForwarder()
    port = await forwarder.start()
    try:
        async with in_process_server(
            database_url, nats_url=f"nats://127.0.0.1:{port}", nats_stream=stream, nats_subject_prefix=prefix
        ) as (server, handle):
            yield forwarder, server, handle
    finally:
        await forwarder.close()


async def test_a_server_started_while_nats_was_unreachable_relays_once_it_is_up(
    database_url: str, names: tuple[str, str]
) -> None:
    stream, prefix = names
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 50)
    async with nats_behind_a_switch(database_url, stream, prefix) as (forwarder, server, handle):
        # Claims and health go on while NATS cannot be reached.
        claims = await make_claims(handle, "acme", range(10))
        channel = grpc.aio.insecure_channel(handle.address)
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        await channel.close()
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        await asyncio.sleep(1.0)
        assert await stream_messages(stream) == []
        assert server.relay.lag() == 10  # the gauge: how far behind the relay is

        forwarder.on = True
        claims += await make_claims(handle, "acme", range(10, 20))
        messages = await wait_for_messages(stream, 20)
        assert by_brand(messages) == {"acme": [c.sequence for c in claims]}
        deadline = time.monotonic() + 5
        while server.relay.lag() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert server.relay.lag() == 0


async def test_a_stream_that_does_not_cover_the_subjects_stops_serve_with_one_line(
    database_url: str, names: tuple[str, str], tmp_path: Path
) -> None:
    from discount_service.app import create_server
    from discount_service.jetstream import StreamMismatch
    from tests.support import server_settings

    stream, prefix = names
    client = await nats.connect(NATS_URL)
    await client.jetstream().add_stream(name=stream, subjects=[f"{prefix}-other.>"])
    await client.close()
    expected = f"JetStream stream {stream} exists with subjects {prefix}-other.>, which do not cover {prefix}.>"

    settings = server_settings(nats_url=NATS_URL, nats_stream=stream, nats_subject_prefix=prefix)
    with pytest.raises(StreamMismatch, match="^" + expected.replace(".", r"\.")):
        await create_server(settings, database_url=database_url)

    env = {
        **os.environ,
        **relay_env(stream, prefix),
        "DISCOUNT_DATABASE_URL": database_url,
        "DISCOUNT_LISTEN": f"127.0.0.1:{free_port()}",
    }
    result = await asyncio.to_thread(
        subprocess.run, [str(BIN / "discount"), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"discount: {expected}: add {prefix}.> to the stream"), lines
    assert await stream_messages(stream) == []


async def test_a_stream_changed_to_not_cover_the_subjects_is_logged_as_an_error_when_found_later(
    database_url: str, names: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    stream, prefix = names
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    async with nats_behind_a_switch(database_url, stream, prefix) as (forwarder, _, handle):
        # While the server cannot see NATS, someone makes the stream with other subjects.
        client = await nats.connect(NATS_URL)
        await client.jetstream().add_stream(name=stream, subjects=[f"{prefix}-other.>"])
        await client.close()
        forwarder.on = True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            r.levelname == "ERROR" and "do not cover" in r.getMessage() for r in caplog.records
        ):
            await asyncio.sleep(0.1)
        (error,) = [r for r in caplog.records if r.levelname == "ERROR" and "do not cover" in r.getMessage()]
        assert f"JetStream stream {stream} exists with subjects {prefix}-other.>" in error.getMessage()
        assert len(await make_claims(handle, "acme", range(3))) == 3  # claims go on
        await asyncio.sleep(1.0)
        assert await stream_messages(stream) == []


async def test_an_up_to_date_relay_of_a_thousand_brands_adds_at_most_2_idle_transactions_a_second(
    database_url: str, names: tuple[str, str]
) -> None:
    stream, prefix = names
    brands = create_brands(database_url, 1000, 5)
    async with proxied(database_url) as (proxy, proxied_url):
        async with in_process_server(proxied_url) as (_, handle):
            for brand in brands[:20]:
                await make_claims(handle, brand, range(2))
            await asyncio.sleep(2.0)
            without = await idle_rate(proxy)
        async with in_process_server(
            proxied_url, nats_url=NATS_URL, nats_stream=stream, nats_subject_prefix=prefix
        ) as (server, _):
            assert len(await wait_for_messages(stream, 40)) == 40
            await asyncio.sleep(3.0)  # every brand followed, each channel's head read
            assert server.relay.lag() == 0
            with_relay = await idle_rate(proxy)
    print(f"idle transactions/s: {without:.2f} without the relay, {with_relay:.2f} with it on 1,000 brands")
    assert with_relay <= without + 2.0, (without, with_relay)


class Load:
    """Claims one at a time from several clients until stopped; remembers every acknowledged claim."""

    def __init__(self, handle_of: Any, brands: list[str]) -> None:
        self._handle_of = handle_of  # the server to send to now (it changes when one is replaced)
        self._brands = brands
        self.claimed: dict[str, set[int]] = {brand: set() for brand in brands}
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []
        self._users = iter(range(10**9))

    def start(self, clients: int = 4) -> None:
        self._tasks = [asyncio.ensure_future(self._run(i)) for i in range(clients)]

    async def _run(self, client: int) -> None:
        while not self._stop:
            handle = self._handle_of()
            brand = self._brands[client % len(self._brands)]
            channel, stub = handle.aio_stub()
            async with channel:
                while not self._stop and self._handle_of() is handle:
                    try:
                        reply = await stub.ClaimCode(
                            claim_request(brand, f"user-{next(self._users)}"), metadata=handle.metadata(), timeout=5
                        )
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.05)  # the server is being replaced
                        continue
                    self.claimed[brand].add(reply.claim.sequence)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.claimed.values())


async def test_kill_9_while_relaying_then_restart_leaves_one_message_per_claim(
    database_url: str, names: tuple[str, str], tmp_path: Path
) -> None:
    stream, prefix = names
    brands = ["acme", "globex"]
    for brand in brands:
        create_brand(database_url, brand)
        generate_codes_sql(database_url, brand, 5000)
    env = relay_env(stream, prefix)
    first = start_server_process(database_url, log_path=tmp_path / "first.log", extra_env=env)
    current = [first]
    load = Load(lambda: current[0], brands)
    load.start()
    try:
        await wait_for_messages(stream, 100)
        assert len(await stream_messages(stream)) >= 100, first.log_text()
        stop_process(first, signal.SIGKILL)  # mid-stream: claims still coming, positions not all written
        second = start_server_process(
            database_url, log_path=tmp_path / "second.log", extra_env=env, admin_key=first.admin_key
        )
        current[0] = second
        await asyncio.sleep(2.0)
    finally:
        await load.stop()
    try:
        messages = await wait_for_messages(stream, load.total)
        await asyncio.sleep(1.0)  # anything sent twice would arrive by now
        messages = await stream_messages(stream)
    finally:
        stop_process(second)
    heads = {brand: max(load.claimed[brand]) for brand in brands}
    # Claims acknowledged to a client, and those the kill cut off before the client heard back: all
    # of them, each once and in order.
    assert by_brand(messages) == {brand: list(range(1, heads[brand] + 1)) for brand in brands}, second.log_text()
    assert len({(m.headers or {})["Nats-Msg-Id"] for m in messages}) == len(messages)


def relay_active(metrics_port: int) -> bool | None:
    """Whether the server says it relays (discount_relay_active), or None if it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return "discount_relay_active 1.0" in text


async def test_two_replicas_one_relays_and_the_other_takes_over_within_15_s_of_a_kill_9(
    database_url: str, names: tuple[str, str], tmp_path: Path
) -> None:
    stream, prefix = names
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 100)
    replicas: list[tuple[ServerHandle, int]] = []
    for name in ("a", "b"):
        metrics_port = free_port()
        env = {**relay_env(stream, prefix), "DISCOUNT_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
        handle = start_server_process(database_url, log_path=tmp_path / f"{name}.log", extra_env=env)
        replicas.append((handle, metrics_port))
    try:
        deadline = time.monotonic() + TAKEOVER_SECONDS
        while not any(relay_active(port) for _, port in replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for _ in range(10):  # never both, never neither once one relays
            assert [relay_active(port) for _, port in replicas].count(True) == 1
            await asyncio.sleep(0.3)
        (relaying, _), (other, other_port) = sorted(replicas, key=lambda r: not relay_active(r[1]))
        await make_claims(other, "acme", range(10))  # claims made on either replica are relayed
        assert by_brand(await wait_for_messages(stream, 10)) == {"acme": list(range(1, 11))}

        stop_process(relaying, signal.SIGKILL)
        killed_at = time.monotonic()
        while not relay_active(other_port) and time.monotonic() - killed_at < TAKEOVER_SECONDS + 5:
            await asyncio.sleep(0.2)
        took = time.monotonic() - killed_at
        assert took <= TAKEOVER_SECONDS, (took, other.log_text())
        await make_claims(other, "acme", range(10, 20))
        await wait_for_messages(stream, 20)
        await asyncio.sleep(0.5)
        assert by_brand(await stream_messages(stream)) == {"acme": list(range(1, 21))}, other.log_text()
    finally:
        for handle, _ in replicas:
            stop_process(handle, signal.SIGKILL)
