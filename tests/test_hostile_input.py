"""Hostile input: hypothesis drives every RPC with arbitrary strings (unicode, NUL, very long),
numbers at and beyond their limits, missing fields, random credentials and random bytes as the
request body, against one real `discount serve` process.

The only allowed results are OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
FAILED_PRECONDITION, UNAUTHENTICATED and PERMISSION_DENIED; never INTERNAL or UNKNOWN. After each
test the server is still SERVING, its log holds no traceback, and the brand's stats equal exactly
what the successful calls did (rejected calls changed nothing). Apart from those, a server of its
own takes a short hostile session and its log is read as an operator reads it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.hostile_support import (
    HostileTarget,
    assert_serving_without_traceback,
    hostile_target,
    keys_of_every_role,
    send_raw_body,
)
from tests.support import (
    Databases,
    create_brand,
    create_key,
    generate_codes_sql,
    in_process_server,
    sql,
    start_server_process,
    stop_process,
)

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
BRAND = "hx"
OTHER_BRAND = "hx-other"
INITIAL_CODES = 2_000
SERVICE = "/discount.v1.DiscountService/"
MAX_MESSAGE = 1024 * 1024

EXAMPLES = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


@dataclass
class Target(HostileTarget):
    """The server under attack, its keys, and what the successful calls did to BRAND."""

    claimed: set[str] = field(default_factory=set)
    batches: dict[str, int] = field(default_factory=dict)

    def expected_stats(self) -> tuple[int, int, int]:
        total = INITIAL_CODES + sum(self.batches.values())
        return total, total - len(self.claimed), len(self.claimed)


@pytest.fixture(scope="module")
def target(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = databases.create()
    create_brand(url, BRAND)
    create_brand(url, OTHER_BRAND)
    generate_codes_sql(url, BRAND, INITIAL_CODES)
    generate_codes_sql(url, OTHER_BRAND, 100)
    # OTHER_BRAND's feed is not empty, so a watch from 0 gets a claim at once.
    sql(
        url,
        "SELECT * FROM discount_claim_many(ARRAY[%s], ARRAY['seed'], ARRAY['seed@example.com'], ARRAY[0::bigint])",
        (OTHER_BRAND,),
    )
    keys = keys_of_every_role(url, BRAND, OTHER_BRAND)
    with hostile_target(databases, url, tmp_path_factory.mktemp("hostile") / "server.log", keys) as (handle, channel):
        yield Target(handle, channel, pb_grpc.DiscountServiceStub(channel), keys)


@pytest.fixture
def checked(target: Target) -> Iterator[Target]:
    """After the test: still SERVING, no traceback logged, stats exactly as the OK calls left them."""
    yield target
    assert_serving_without_traceback(target.channel, target.handle)
    stats = target.stub.GetBrandStats(
        pb.GetBrandStatsRequest(brand_id=BRAND), metadata=(("x-api-key", target.keys["admin"]),), timeout=5
    )
    assert (stats.total, stats.available, stats.claimed) == target.expected_stats()
    rows = sql(
        target.handle.database_url,
        "SELECT count(*) FROM claims c JOIN brands b USING (brand_key) WHERE b.brand_id = %s",
        (BRAND,),
    )
    assert rows == [(len(target.claimed),)]


# -- strategies ----------------------------------------------------------------------------------

nasty_text = st.one_of(
    st.text(),  # any unicode (no surrogates: protobuf strings must be UTF-8; raw bytes cover the rest)
    st.text(st.characters(codec="utf-8"), min_size=60, max_size=70),  # around the 64-character limit
    st.text(min_size=200, max_size=5000),  # very long
    st.builds(lambda a, b: a + "\x00" + b, st.text(max_size=20), st.text(max_size=20)),  # NUL inside
    st.sampled_from(
        ["", " ", "\x00", "\u202e", "\ufeff", "a" * 64, "a" * 65, "a" * 129, "💸" * 64, "%s%n", "' OR 1=1 --"]
    ),
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], percent: int = 70) -> st.SearchStrategy[Any]:
    """`good` about `percent`% of the time: so calls also get past auth and validation to the database."""
    return st.integers(0, 99).flatmap(lambda i: good if i < percent else bad)


brand_ids = mostly(
    st.sampled_from([BRAND, OTHER_BRAND]), st.one_of(st.sampled_from([BRAND.upper(), BRAND + " ", "nope"]), nasty_text)
)
user_ids = mostly(st.builds(lambda n: f"user-{n}", st.integers(0, 10_000)), nasty_text)
emails = mostly(
    st.one_of(st.builds(lambda n: f"u{n}@example.com", st.integers(0, 100)), st.emails()),
    st.one_of(nasty_text, st.builds(lambda a: a + "@example.com", nasty_text)),
)
printable_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
valid_credentials = st.sampled_from(["admin", "service", "brand", "other-brand"])
hostile_credentials = st.one_of(
    st.just("none"),
    st.tuples(st.just("x-api-key"), printable_ascii),
    st.tuples(st.just("authorization"), printable_ascii),
)
# Mostly real keys (so the fields get validated), hostile credentials the rest of the time.
credentials = mostly(valid_credentials, hostile_credentials)
uint32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 5, 6, 32, 33, 2**31, 2**32 - 1]))
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 5), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]))


def metadata(target: Target, credential: str | tuple[str, str]) -> tuple[tuple[str, str], ...]:
    if isinstance(credential, tuple):
        return (credential,)
    if credential == "none":
        return ()
    return (("x-api-key", target.keys[credential]),)


def error_info(error: grpc.RpcError) -> ErrorInfo:
    details = rpc_status.from_call(error).details  # type: ignore[arg-type]
    return next(ErrorInfo.FromString(d.value) for d in details if d.Is(ErrorInfo.DESCRIPTOR))


def call(fn: object, request: object, md: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, object]:
    try:
        reply = fn(request, metadata=md, timeout=10)  # type: ignore[operator]
        event("OK")
        return grpc.StatusCode.OK, reply
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        event(code.name)
        assert code in ALLOWED, f"{code} {exc.details()} for {request!r}"[:2000]  # type: ignore[attr-defined]
        return code, None


# -- one test per RPC ----------------------------------------------------------------------------


@EXAMPLES
@given(brand=brand_ids, user=user_ids, email=emails, credential=credentials)
def test_claim_code_with_hostile_fields(
    checked: Target, brand: str, user: str, email: str, credential: str | tuple[str, str]
) -> None:
    request = pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=email)
    code, reply = call(checked.stub.ClaimCode, request, metadata(checked, credential))
    if code is grpc.StatusCode.OK:
        assert isinstance(reply, pb.ClaimCodeResponse)
        assert reply.claim.user_id == user and reply.claim.brand_id == brand
        if brand == BRAND:
            checked.claimed.add(user)


timestamps = st.one_of(
    st.none(),
    st.builds(
        lambda s, n: Timestamp(seconds=s, nanos=n),
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 4_000_000_000), st.just(253402300800)),
        st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1)),
    ),
)


@EXAMPLES
@given(
    brand=brand_ids,
    count=mostly(st.integers(1, 50), st.one_of(uint32, st.sampled_from([0, 1_000_000, 1_000_001]))),
    request_id=st.one_of(st.just(""), st.sampled_from(["r1", "r2"]), nasty_text),
    code_length=mostly(st.sampled_from([0, 6, 12, 32]), uint32),
    prefix=mostly(st.sampled_from(["", "HX-", "A" * 16]), st.one_of(st.sampled_from(["A" * 17, "hx-"]), nasty_text)),
    expires_at=mostly(st.one_of(st.none(), st.just(Timestamp(seconds=4_000_000_000))), timestamps),
    credential=credentials,
)
def test_generate_codes_with_hostile_fields(
    checked: Target,
    brand: str,
    count: int,
    request_id: str,
    code_length: int,
    prefix: str,
    expires_at: Timestamp | None,
    credential: str | tuple[str, str],
) -> None:
    # Large valid batches are tested elsewhere; here they would only make the run slow.
    assume(not (brand in (BRAND, OTHER_BRAND) and 50 < count <= 1_000_000))
    request = pb.GenerateCodesRequest(
        brand_id=brand, count=count, request_id=request_id, code_length=code_length, prefix=prefix
    )
    if expires_at is not None:
        request.expires_at.CopyFrom(expires_at)
    code, reply = call(checked.stub.GenerateCodes, request, metadata(checked, credential))
    if code is grpc.StatusCode.OK:
        assert isinstance(reply, pb.GenerateCodesResponse)
        assert reply.brand_id == brand
        if brand == BRAND:
            checked.batches[reply.batch_id] = reply.generated


@EXAMPLES
@given(brand=brand_ids, credential=credentials)
def test_get_brand_stats_with_hostile_fields(checked: Target, brand: str, credential: str | tuple[str, str]) -> None:
    call(checked.stub.GetBrandStats, pb.GetBrandStatsRequest(brand_id=brand), metadata(checked, credential))


@EXAMPLES
@given(brand=brand_ids, after=mostly(st.just(0), uint64, 50), credential=credentials)
def test_watch_claims_with_hostile_fields(
    checked: Target, brand: str, after: int, credential: str | tuple[str, str]
) -> None:
    stream = checked.stub.WatchClaims(
        pb.WatchClaimsRequest(brand_id=brand, after_sequence=after),
        metadata=metadata(checked, credential),
        timeout=0.3,
    )
    try:
        first = next(stream)
        assert first.claim.sequence > after
        event("OK: a claim arrived")
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        event(code.name)
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE):
            # Waiting for a claim, or past the brand's head: only a caller allowed to watch a brand gets here.
            assert brand in (BRAND, OTHER_BRAND)
            assert credential == "admin" or credential == ("brand" if brand == BRAND else "other-brand")
        if code is grpc.StatusCode.OUT_OF_RANGE:
            info = error_info(exc)
            assert info.reason == "AFTER_SEQUENCE_BEYOND_HEAD" and int(info.metadata["head"]) < after
        elif code is not grpc.StatusCode.DEADLINE_EXCEEDED:
            assert code in ALLOWED, f"{code} {exc.details()}"  # type: ignore[attr-defined]
    except StopIteration:
        pytest.fail("a watch stream ended on its own")
    finally:
        stream.cancel()


# -- random bytes as the request body ------------------------------------------------------------


def _string_field(number: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field holding arbitrary bytes (e.g. invalid UTF-8)."""
    tag = bytes([(number << 3) | 2])
    length = bytearray()
    n = len(payload)
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return tag + bytes(length) + payload


bodies = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda n, b: _string_field(n, b), st.integers(1, 3), st.binary(max_size=64)),
    st.builds(lambda b: _string_field(1, BRAND.encode()) + b, st.binary(max_size=64)),
    st.sampled_from([b"", b"\x00", b"\xff" * 16, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10]),
    st.just(b"\x00" * (MAX_MESSAGE + 16)),  # beyond the maximum message size
)


@EXAMPLES
@given(method=st.sampled_from(["ClaimCode", "GenerateCodes", "GetBrandStats", "WatchClaims"]), body=bodies)
def test_random_bytes_as_the_request_body(checked: Target, method: str, body: bytes) -> None:
    md = (("x-api-key", checked.keys["admin"]),)
    if method == "WatchClaims":
        stream = checked.channel.unary_stream(SERVICE + method)(body, metadata=md, timeout=0.3)
        try:
            next(stream)
            event(f"{method} OK")
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            event(f"{method} {code.name}")
            assert code in ALLOWED | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE}, exc.details()  # type: ignore[attr-defined]
            assert code is not grpc.StatusCode.OUT_OF_RANGE or error_info(exc).reason == "AFTER_SEQUENCE_BEYOND_HEAD"
        except StopIteration:
            pytest.fail("a watch stream ended on its own")
        finally:
            stream.cancel()
        return
    reply = send_raw_body(checked, method, body, md, ALLOWED)
    if reply is None:
        return
    # Some random bodies are valid messages; keep the stats bookkeeping exact for those.
    if method == "ClaimCode":
        claim = pb.ClaimCodeResponse.FromString(reply)
        if claim.claim.brand_id == BRAND:
            checked.claimed.add(claim.claim.user_id)
    elif method == "GenerateCodes":
        generated = pb.GenerateCodesResponse.FromString(reply)
        if generated.brand_id == BRAND:
            checked.batches[generated.batch_id] = generated.generated


def test_the_maximum_message_size_is_enforced(target: Target) -> None:
    """A request just over DISCOUNT_MAX_MESSAGE_BYTES is refused with RESOURCE_EXHAUSTED."""
    request = pb.GetBrandStatsRequest(brand_id="x" * (MAX_MESSAGE + 1))
    with pytest.raises(grpc.RpcError) as raised:
        target.stub.GetBrandStats(request, metadata=(("x-api-key", target.keys["admin"]),), timeout=10)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


# One event per line, as logs.py writes it: "<date> <time>,<ms> <LEVEL> <logger> <message>".
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+) (?P<message>.*)")


def test_the_log_after_hostile_calls_names_the_failure_and_holds_no_secret(database_url: str, tmp_path: Path) -> None:
    """What an operator reads after an attack, in the log of a server of its own: one line per
    event from start to stop, the call that failed on the server's side named once, no error and no
    traceback, and none of the secrets or shopper data the callers sent."""
    create_brand(database_url, BRAND)
    generate_codes_sql(database_url, BRAND, 10)
    keys = {
        "admin": create_key(database_url, "admin"),
        "service": create_key(database_url, "service"),
        "brand": create_key(database_url, "brand", BRAND),
    }
    marker = f"hostile{secrets.token_hex(4)}"  # in every caller-chosen value below
    wrong_secret = f"{marker}{secrets.token_urlsafe(24)}"
    forged_key = "_".join(keys["admin"].split("_", 2)[:2]) + "_" + wrong_secret  # a real key's id, a wrong secret
    token = f"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ{marker}In0."  # the server has no JWT secret set
    shopper = f"{marker}-shopper"
    email = f"{marker}@example.com"
    handle = start_server_process(
        database_url,
        log_path=tmp_path / "server.log",
        admin_key=keys["admin"],
        # lock_timeout: a claim stuck behind a lock fails on the server's side (UNAVAILABLE) instead
        # of running into the caller's deadline, so the log has a failing call to report.
        extra_env={"DISCOUNT_LOG_LEVEL": "INFO", "PGOPTIONS": "-c lock_timeout=500"},
    )
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = pb_grpc.DiscountServiceStub(channel)

            def refused(method: Any, request: Any, md: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
                with pytest.raises(grpc.RpcError) as raised:
                    method(request, metadata=md, timeout=10)
                return raised.value.code()  # type: ignore[attr-defined,no-any-return]

            claim = pb.ClaimCodeRequest(brand_id=BRAND, user_id=shopper, email=email)
            unauthenticated = grpc.StatusCode.UNAUTHENTICATED
            assert refused(stub.ClaimCode, claim, (("x-api-key", forged_key),)) is unauthenticated
            assert refused(stub.ClaimCode, claim, (("x-api-key", f"dsk_{marker}_{wrong_secret}"),)) is unauthenticated
            stats = pb.GetBrandStatsRequest(brand_id=BRAND)
            assert refused(stub.GetBrandStats, stats, (("authorization", f"Bearer {token}"),)) is unauthenticated
            generate = pb.GenerateCodesRequest(brand_id=BRAND, count=5)
            service = (("x-api-key", keys["service"]),)
            assert refused(stub.GenerateCodes, generate, service) is grpc.StatusCode.PERMISSION_DENIED
            forged_line = f"{marker}\n2099-01-01 00:00:00,000 ERROR discount_service forged"
            for bad in (
                pb.ClaimCodeRequest(brand_id=BRAND, user_id=forged_line, email=email),
                pb.ClaimCodeRequest(brand_id=BRAND, user_id=f"{shopper}\u2028forged", email=email),
                pb.ClaimCodeRequest(brand_id=BRAND, user_id=shopper, email=f"{email}\r\n{forged_line}"),
                pb.ClaimCodeRequest(brand_id=forged_line, user_id=shopper, email=email),
            ):
                assert refused(stub.ClaimCode, bad, service) is grpc.StatusCode.INVALID_ARGUMENT
            raw = channel.unary_unary(SERVICE + "ClaimCode")
            assert (
                refused(raw, _string_field(2, marker.encode() + b"\xff\xfe"), service)
                is grpc.StatusCode.INVALID_ARGUMENT
            )
            too_big = pb.GetBrandStatsRequest(brand_id=marker * (MAX_MESSAGE // len(marker) + 1))
            assert refused(stub.GetBrandStats, too_big, service) is grpc.StatusCode.RESOURCE_EXHAUSTED
            batch = stub.GenerateCodes(generate, metadata=(("x-api-key", keys["brand"]),), timeout=10)

            # The failing call: the brand's feed-head row is held (say, by an operator's open
            # transaction), so the claim gives up after lock_timeout. Once released, it goes through.
            with psycopg.connect(database_url) as holder:
                holder.execute("SELECT 1 FROM brand_feed_heads FOR UPDATE")
                assert refused(stub.ClaimCode, claim, service) is grpc.StatusCode.UNAVAILABLE
            reply = stub.ClaimCode(claim, metadata=service, timeout=10)
            assert (reply.claim.user_id, reply.claim.sequence, reply.newly_claimed) == (shopper, 1, True)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert stop_process(handle) == 0

    text = handle.log_text()
    assert text.endswith("\n"), text[-500:]
    lines = text.removesuffix("\n").split("\n")
    events = [LOG_LINE.fullmatch(line) for line in lines]
    assert all(events), [line for line, match in zip(lines, events, strict=True) if not match]
    messages = [(e["level"], e["message"]) for e in events if e]
    # The whole life of the server, from listening to stopped.
    assert any(f"listening on {handle.address}" in m for _, m in messages), messages
    assert messages[-1] == ("INFO", "stopped"), messages
    assert ("INFO", f"generated batch={batch.batch_id} brand={BRAND} count=5") in messages
    warnings = [m for level, m in messages if level != "INFO"]
    assert len(warnings) == 1 and warnings[0].startswith("ClaimCode unavailable: "), messages
    assert "lock timeout" in warnings[0]
    assert "Traceback" not in text
    # No credential (the real keys, the forged one, the token) and nothing a caller chose.
    for secret in [*keys.values(), forged_key, wrong_secret, token, marker, shopper, email]:
        assert secret not in text, secret


async def test_the_server_deadline_cuts_a_long_call_and_leaves_nothing_behind(database_url: str) -> None:
    """DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS caps every unary call, even when the client allows more:
    a 1M-code generation cut at 0.5 s is DEADLINE_EXCEEDED and rolled back entirely."""
    create_brand(database_url, "slowgen")
    async with in_process_server(database_url, default_call_timeout_seconds=0.5) as (_, handle):
        channel, stub = handle.aio_stub()
        async with channel:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await stub.GenerateCodes(
                    pb.GenerateCodesRequest(brand_id="slowgen", count=1_000_000),
                    metadata=handle.metadata(),
                    timeout=60,
                )
            elapsed = time.monotonic() - started
            assert cut.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, cut.value
            assert elapsed < 5
            # Nothing half-done: no codes, no batch, and the server still answers.
            stats = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="slowgen"), metadata=handle.metadata())
            assert (stats.total, stats.available) == (0, 0)
            small = await stub.GenerateCodes(
                pb.GenerateCodesRequest(brand_id="slowgen", count=10), metadata=handle.metadata()
            )
            assert small.generated == 10
    assert sql(database_url, "SELECT count(*) FROM codes") == [(10,)]
    assert sql(database_url, "SELECT count(*) FROM code_batches") == [(1,)]
