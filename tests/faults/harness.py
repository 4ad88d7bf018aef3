"""What the fault tests share: a claim load that remembers every acknowledged claim, watchers that
resume from their cursor, and the invariant check every fault test ends with.

The invariants, checked from the database AND from a fresh WatchClaims stream from 0:
- no code was given to two users;
- no user holds two codes of a brand;
- every claim whose success a client saw is present, with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.postgres import PrivatePostgres
from tests.support import claim_request, sql

# A call that got one of these may or may not have committed; the client retries the same user.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass
class ClaimLoad:
    """`clients` workers claim continuously, each for its own stream of users. After an error a
    worker retries the SAME user (what a real caller does), so a claim that committed but whose
    reply was lost comes back as `newly_claimed=false` with the same code."""

    addresses: Sequence[str]
    brand_ids: Sequence[str]
    key: str
    clients: int = 16
    call_timeout: float = 3.0
    prefix: str = "u"
    acked: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    conflicts: list[str] = field(default_factory=list)
    ok_calls: int = 0
    # The distinct error messages seen, per status.
    details: dict[str, set[str]] = field(default_factory=dict)
    # Users acknowledged after one or more failed attempts: (the failures, newly_claimed of the ack).
    # newly_claimed=true proves none of the failed attempts had claimed anything.
    retried: dict[tuple[str, str], tuple[list[str], bool]] = field(default_factory=dict)
    # (started, finished, status name) of every call, for "what happened to calls in flight at t".
    calls: list[tuple[float, float, str]] = field(default_factory=list)
    first_ok_after: dict[str, float] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    _marks: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._channels = [grpc.aio.insecure_channel(address) for address in self.addresses]
        stubs = [pb_grpc.DiscountServiceStub(channel) for channel in self._channels]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker(i, stubs[i % len(stubs)])) for i in range(self.clients)]

    def mark(self, name: str) -> None:
        """Remember when something happened; `first_ok_after[name]` is when a claim next succeeded."""
        self._marks[name] = time.monotonic()

    async def _worker(self, worker: int, stub: pb_grpc.DiscountServiceStub) -> None:
        metadata = (("x-api-key", self.key),)
        n = 0
        while not self._stop.is_set():
            brand = self.brand_ids[n % len(self.brand_ids)]
            user = f"{self.prefix}-{worker}-{n}"
            failures: list[str] = []
            while not self._stop.is_set():  # retry the same user until the claim is acknowledged
                started = time.monotonic()
                try:
                    reply = await stub.ClaimCode(
                        claim_request(brand, user), metadata=metadata, timeout=self.call_timeout
                    )
                except grpc.aio.AioRpcError as exc:
                    self.calls.append((started, time.monotonic(), exc.code().name))
                    self.errors[exc.code().name] += 1
                    failures.append(exc.code().name)
                    self.details.setdefault(exc.code().name, set()).add((exc.details() or "")[:80])
                    if exc.code() not in RETRYABLE:
                        self.conflicts.append(f"{brand}/{user}: {exc.code().name} {exc.details()}")
                        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                            return
                    await asyncio.sleep(0.05)
                    continue
                self.calls.append((started, time.monotonic(), "OK"))
                if failures:
                    self.retried[(brand, user)] = (failures, reply.newly_claimed)
                self._ack(brand, user, reply)
                break
            n += 1

    def _ack(self, brand: str, user: str, reply: pb.ClaimCodeResponse) -> None:
        self.ok_calls += 1
        now = time.monotonic()
        for name, at in self._marks.items():
            if name not in self.first_ok_after and now > at:
                self.first_ok_after[name] = now
        if reply.claim.user_id != user or reply.claim.brand_id != brand:
            self.conflicts.append(f"{brand}/{user}: reply is for {reply.claim.brand_id}/{reply.claim.user_id}")
        seen = self.acked.setdefault((brand, user), reply.claim.code)
        if seen != reply.claim.code:
            self.conflicts.append(f"{brand}/{user}: acknowledged {seen} and then {reply.claim.code}")

    async def wait_for_success_after(self, name: str, timeout: float = 20.0) -> float:
        """Waits until a claim succeeded after `mark(name)`; returns how long after the mark."""
        deadline = time.monotonic() + timeout
        while name not in self.first_ok_after:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no claim succeeded within {timeout}s after {name!r} (errors {dict(self.errors)})"
                )
            await asyncio.sleep(0.05)
        return self.first_ok_after[name] - self._marks[name]

    def in_flight_at(self, moment: float) -> Counter[str]:
        """Status counts of the calls that had started before `moment` and ended after it."""
        return Counter(status for started, ended, status in self.calls if started < moment < ended)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for channel in self._channels:
            await channel.close()


@dataclass
class Watcher:
    """A brand's claim feed read from `after` on; on a stream error it reopens from its cursor,
    as a client of the feed is told to. Records every claim in order, and any gap or repeat."""

    address: str
    brand_id: str
    key: str
    after: int = 0
    claims: list[pb.Claim] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stream_errors: Counter[str] = field(default_factory=Counter)
    reopened: int = 0
    _task: asyncio.Task[None] | None = None

    @property
    def cursor(self) -> int:
        return self.claims[-1].sequence if self.claims else self.after

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.DiscountServiceStub(channel)
            while True:
                call = stub.WatchClaims(
                    pb.WatchClaimsRequest(brand_id=self.brand_id, after_sequence=self.cursor),
                    metadata=(("x-api-key", self.key),),
                )
                try:
                    async for message in call:
                        claim = message.claim
                        if claim.sequence != self.cursor + 1:
                            self.problems.append(f"after {self.cursor} got {claim.sequence}")
                        self.claims.append(claim)
                except grpc.aio.AioRpcError as exc:
                    self.stream_errors[exc.code().name] += 1
                await asyncio.sleep(0.2)
                self.reopened += 1

    async def wait_for(self, sequence: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cursor < sequence:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"watcher of {self.brand_id} on {self.address} at {self.cursor}, expected {sequence} "
                    f"(stream errors {dict(self.stream_errors)})"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def database_claims(url: str) -> dict[str, list[tuple[int, str, str]]]:
    """Per brand, (sequence, user_id, code) of every claim, in sequence order."""
    rows = sql(
        url,
        "SELECT b.brand_id, c.sequence, c.user_id, c.code FROM claims c JOIN brands b USING (brand_key) "
        "ORDER BY b.brand_id, c.sequence",
    )
    result: dict[str, list[tuple[int, str, str]]] = {}
    for brand, sequence, user, code in rows:
        result.setdefault(brand, []).append((int(sequence), user, code))
    return result


async def read_feed(address: str, brand_id: str, key: str, expected: int, timeout: float = 30.0) -> list[pb.Claim]:
    """A fresh WatchClaims stream from sequence 0, read until `expected` claims arrived."""
    claims: list[pb.Claim] = []
    if expected == 0:
        return claims
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.DiscountServiceStub(channel).WatchClaims(
            pb.WatchClaimsRequest(brand_id=brand_id, after_sequence=0), metadata=(("x-api-key", key),)
        )
        async with asyncio.timeout(timeout):
            async for message in call:
                claims.append(message.claim)
                if len(claims) >= expected:
                    break
        call.cancel()
    return claims


async def check_invariants(url: str, address: str, key: str, brand_ids: Sequence[str], load: ClaimLoad) -> int:
    """Asserts the three invariants from the database and from a fresh feed; returns the claim count."""
    assert not load.conflicts, load.conflicts[:10]
    by_brand = database_claims(url)
    total = 0
    for brand in brand_ids:
        rows = by_brand.get(brand, [])
        total += len(rows)
        codes = Counter(code for _, _, code in rows)
        users = Counter(user for _, user, _ in rows)
        assert [c for c, n in codes.items() if n > 1] == [], f"{brand}: a code was given to two users"
        assert [u for u, n in users.items() if n > 1] == [], f"{brand}: a user holds two codes"
        assert [s for s, _, _ in rows] == list(range(1, len(rows) + 1)), f"{brand}: feed sequences have gaps"
        head = sql(
            url,
            "SELECT h.last_sequence FROM brand_feed_heads h JOIN brands b USING (brand_key) WHERE b.brand_id = %s",
            (brand,),
        )
        assert head == [(len(rows),)]
        claimed = sql(
            url,
            "SELECT count(*) FROM codes c JOIN brands b USING (brand_key) WHERE b.brand_id = %s AND c.claimed",
            (brand,),
        )
        assert claimed == [(len(rows),)], f"{brand}: codes marked claimed differ from claims"
        stored = {user: code for _, user, code in rows}
        lost = {u: c for (b, u), c in load.acked.items() if b == brand and stored.get(u) != c}
        assert lost == {}, f"{brand}: acknowledged claims missing or changed in the database: {list(lost)[:10]}"
        feed = await read_feed(address, brand, key, len(rows))
        assert [(c.sequence, c.user_id, c.code) for c in feed] == rows, f"{brand}: the feed differs from the database"
        feed_users = {c.user_id: c.code for c in feed}
        assert all(feed_users.get(u) == c for (b, u), c in load.acked.items() if b == brand)
    assert total >= len(load.acked)
    return total


async def health_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return int(reply.status)


def bytes_sent_by_server(port: int) -> dict[int, int]:
    """Per client port, the bytes the server at 127.0.0.1:`port` has sent on that TCP connection
    (from the kernel's tcp_info, via `ss`)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    result: dict[int, int] = {}
    peer: int | None = None
    for line in out.splitlines():
        fields = line.split()
        if not line.startswith((" ", "\t")) and len(fields) >= 4:
            peer = int(fields[3].rsplit(":", 1)[1])
            continue
        for item in fields:
            if item.startswith("bytes_sent:") and peer is not None:
                result[peer] = int(item.split(":", 1)[1])
    return result


def backend_pids(url: str) -> list[int]:
    """PostgreSQL backends connected to the database of `url` (for their CPU time)."""
    rows = sql(url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return [int(r[0]) for r in rows]


class OwnPostgres(PrivatePostgres):
    """A PostgreSQL server of the test's own on `port`, so the test can stop and start it without
    touching the machine's shared server; durability is not under test, so fsync is off."""

    def __init__(self, port: int) -> None:
        super().__init__(port=port, settings={"max_connections": "60", "fsync": "off"}, prefix="discount-own-pg-")
