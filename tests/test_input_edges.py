"""Edges of the input rules a hostile caller probes, through a real server on a real port.

Identity text (user_id, brand_id, request_id, display_name) refuses what a person cannot see or
check: fillers and blanks that are not whitespace, line separators, variation selectors, tag
characters, noncharacters and private-use code points, and a combining mark with nothing to sit on.
Email follows RFC 5321/5322 as email-validator reads it: a quoted local part is an address, a
leading or doubled dot, a hyphen at a domain label's edge or a 65-character local part is not.
Credentials come in exactly one header: two x-api-key (or authorization) headers are refused,
never one silently picked."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from google.rpc.status_pb2 import Status

from discount.v1 import admin_service_pb2 as admin_pb
from discount.v1 import admin_service_pb2_grpc as admin_grpc
from discount.v1 import discount_service_pb2 as pb
from discount_service.tokens import mint_token
from tests.support import ServerHandle, create_brand, create_key, generate_codes_sql, in_process_server, sql

INVISIBLE = "must not contain control or invisible format characters"
UNKNOWN = "must not contain unassigned or private-use characters"
# A character inside a value -> what the message says of it.
REFUSED_CHARACTERS = {
    "\u3164": f"{INVISIBLE} (found U+3164 HANGUL FILLER)",
    "\u115f": f"{INVISIBLE} (found U+115F HANGUL CHOSEONG FILLER)",
    "\u1160": f"{INVISIBLE} (found U+1160 HANGUL JUNGSEONG FILLER)",
    "\uffa0": f"{INVISIBLE} (found U+FFA0 HALFWIDTH HANGUL FILLER)",
    "\u2800": f"{INVISIBLE} (found U+2800 BRAILLE PATTERN BLANK)",
    "\u2028": f"{INVISIBLE} (found U+2028 LINE SEPARATOR)",
    "\u2029": f"{INVISIBLE} (found U+2029 PARAGRAPH SEPARATOR)",
    "\u180b": f"{INVISIBLE} (found U+180B MONGOLIAN FREE VARIATION SELECTOR ONE)",
    "\u180f": f"{INVISIBLE} (found U+180F MONGOLIAN FREE VARIATION SELECTOR FOUR)",
    "\ufe0f": f"{INVISIBLE} (found U+FE0F VARIATION SELECTOR-16)",
    "\U000e0001": f"{INVISIBLE} (found U+E0001 LANGUAGE TAG)",
    "\U000e0100": f"{INVISIBLE} (found U+E0100 VARIATION SELECTOR-17)",
    "\U000e0fff": f"{INVISIBLE} (found U+E0FFF)",
    "\u200f": f"{INVISIBLE} (found U+200F RIGHT-TO-LEFT MARK)",
    "\u2065": f"{INVISIBLE} (found U+2065)",
    "\u034f": f"{INVISIBLE} (found U+034F COMBINING GRAPHEME JOINER)",
    "\u17b4": f"{INVISIBLE} (found U+17B4 KHMER VOWEL INHERENT AQ)",
    "\u00ad": f"{INVISIBLE} (found U+00AD SOFT HYPHEN)",
    "\u061c": f"{INVISIBLE} (found U+061C ARABIC LETTER MARK)",
    "\U0001bca0": f"{INVISIBLE} (found U+1BCA0 SHORTHAND FORMAT LETTER OVERLAP)",
    "\uffff": f"{UNKNOWN} (found U+FFFF)",
    "\ue000": f"{UNKNOWN} (found U+E000)",
    "\u0378": f"{UNKNOWN} (found U+0378)",
}
LEADING_MARK = ("\u0301alice", "must not start with a combining mark (found U+0301 COMBINING ACUTE ACCENT)")


def rich_status(error: grpc.aio.AioRpcError) -> tuple[ErrorInfo, list[str]]:
    """The ErrorInfo and the BadRequest's field names from the `grpc-status-details-bin` trailer,
    as any gRPC client reads them."""
    (raw,) = [value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    status = Status.FromString(raw)
    assert status.message == error.details()
    info, fields = ErrorInfo(), []
    for detail in status.details:
        if detail.Is(ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(BadRequest.DESCRIPTOR):
            bad_request = BadRequest()
            detail.Unpack(bad_request)
            fields = [violation.field for violation in bad_request.field_violations]
    return info, fields


def assert_invalid_field(error: grpc.aio.AioRpcError, field: str, message: str) -> None:
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    info, fields = rich_status(error)
    assert (info.domain, info.reason, fields) == ("discount.v1", "INVALID_FIELD", [field]), message


async def test_invisible_characters_and_a_leading_mark_are_refused_in_every_identity_field(
    server: ServerHandle,
) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    service = server.metadata(create_key(server.database_url, "service"))
    admin = server.metadata()
    values = {f"ali{ch}ce": about for ch, about in REFUSED_CHARACTERS.items()}
    values |= {ch: about for ch, about in REFUSED_CHARACTERS.items() if not ch.isspace()}  # the character alone
    values[LEADING_MARK[0]] = LEADING_MARK[1]
    channel, stub = server.aio_stub()
    async with channel:
        admin_stub = admin_grpc.AdminServiceStub(channel)
        for value, about in values.items():
            with pytest.raises(grpc.aio.AioRpcError) as claim:
                await stub.ClaimCode(
                    pb.ClaimCodeRequest(brand_id="acme", user_id=value, email="a@example.com"), metadata=service
                )
            assert_invalid_field(claim.value, "user_id", f"user_id {about}")

            with pytest.raises(grpc.aio.AioRpcError) as stats:
                await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id=value), metadata=admin)
            assert_invalid_field(stats.value, "brand_id", f"brand_id {about}")

            with pytest.raises(grpc.aio.AioRpcError) as generate:
                await stub.GenerateCodes(
                    pb.GenerateCodesRequest(brand_id="acme", count=1, request_id=value), metadata=admin
                )
            assert_invalid_field(generate.value, "request_id", f"request_id {about}")

            with pytest.raises(grpc.aio.AioRpcError) as create:
                await admin_stub.CreateBrand(
                    admin_pb.CreateBrandRequest(brand_id="globex", display_name=value), metadata=admin
                )
            assert_invalid_field(create.value, "display_name", f"display_name {about}")

        # A mark after its base, a Hangul syllable and a filler-free name stay what they are.
        for user_id in ("e\u0301lise", "\ud55c\uae00", "jos\u00e9"):
            reply = await stub.ClaimCode(
                pb.ClaimCodeRequest(brand_id="acme", user_id=user_id, email="a@example.com"), metadata=service
            )
            assert reply.newly_claimed
    # Nothing the refused calls asked for was done.
    assert sql(server.database_url, "SELECT user_id FROM claims ORDER BY sequence") == [
        ("\u00e9lise",),
        ("\ud55c\uae00",),
        ("jos\u00e9",),
    ]
    assert sql(server.database_url, "SELECT count(*) FROM code_batches") == [(1,)]  # generate_codes_sql's batch
    assert sql(server.database_url, "SELECT brand_id FROM brands") == [("acme",)]


@pytest.mark.parametrize(
    ("display_name", "message"),
    [
        ("\u202eAcme", f"display_name {INVISIBLE} (found U+202E RIGHT-TO-LEFT OVERRIDE)"),
        ("   ", "display_name must not be only whitespace"),
        ("\u3000", "display_name must not be only whitespace"),
        (" Acme", "display_name must not start or end with whitespace"),
        ("n" * 201, "display_name must be at most 200 characters"),
    ],
)
async def test_a_display_name_follows_the_identity_rules(server: ServerHandle, display_name: str, message: str) -> None:
    channel, _ = server.aio_stub()
    async with channel:
        admin = admin_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.CreateBrand(
                admin_pb.CreateBrandRequest(brand_id="globex", display_name=display_name), metadata=server.metadata()
            )
        assert_invalid_field(refused.value, "display_name", message)
        # Stored as people will read it: composed (NFC), like every identity.
        created = await admin.CreateBrand(
            admin_pb.CreateBrandRequest(brand_id="globex", display_name="Globe\u0301x"), metadata=server.metadata()
        )
    assert created.brand.display_name == "Glob\u00e9x"
    assert sql(server.database_url, "SELECT brand_id, name FROM brands") == [("globex", "Glob\u00e9x")]


@pytest.mark.parametrize(
    ("request_id", "message"),
    [
        ("\u202er1", f"request_id {INVISIBLE} (found U+202E RIGHT-TO-LEFT OVERRIDE)"),
        ("   ", "request_id must not be only whitespace"),
        ("r1 ", "request_id must not start or end with whitespace"),
        ("r" * 129, "request_id must be at most 128 characters"),
    ],
)
async def test_a_request_id_follows_the_identity_rules(server: ServerHandle, request_id: str, message: str) -> None:
    """A request_id comes back in the messages and metadata of later errors, so it is held to what a
    person can read there; an empty one still means 'no idempotency key'."""
    create_brand(server.database_url, "acme")
    channel, stub = server.aio_stub()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GenerateCodes(
                pb.GenerateCodesRequest(brand_id="acme", count=1, request_id=request_id), metadata=server.metadata()
            )
        assert_invalid_field(refused.value, "request_id", message)
        unkeyed = await stub.GenerateCodes(
            pb.GenerateCodesRequest(brand_id="acme", count=1), metadata=server.metadata()
        )
        assert unkeyed.generated == 1
    assert sql(server.database_url, "SELECT request_id FROM code_batches") == [(None,)]


ACCEPTED_EMAILS = [
    '"john doe"@example.com',  # a quoted local part may hold a space (RFC 5322 3.4.1)
    "o'brien+shop@example.com",
    "a" * 64 + "@example.com",  # the longest local part RFC 5321 4.5.3.1.1 allows
    "Alice@Example.COM",
]
REFUSED_EMAILS = [
    ".a@example.com",  # a dot-atom neither starts nor ends with a dot
    "a.@example.com",
    "a..b@example.com",  # nor holds two in a row
    "a@-example-.com",  # a domain label neither starts nor ends with a hyphen
    "a@example-.com",
    "a" * 65 + "@example.com",
    "a@example..com",
    "a@[127.0.0.1]",  # a shop's shopper has a domain, not an address literal
]


async def test_email_follows_the_standard_rules_and_is_stored_as_sent(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    service = server.metadata(create_key(server.database_url, "service"))
    channel, stub = server.aio_stub()
    async with channel:
        for email in REFUSED_EMAILS:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ClaimCode(pb.ClaimCodeRequest(brand_id="acme", user_id="u", email=email), metadata=service)
            message = f"email {email[:64]!r} is not a valid address (expected name@example.com)"
            assert_invalid_field(refused.value, "email", message)
        for n, email in enumerate(ACCEPTED_EMAILS):
            reply = await stub.ClaimCode(
                pb.ClaimCodeRequest(brand_id="acme", user_id=f"u{n}", email=email), metadata=service
            )
            assert (reply.newly_claimed, reply.claim.email) == (True, email)
    # The caller's spelling, not a rewritten one: the quotes and the domain's capitals are kept.
    stored = sql(server.database_url, "SELECT email FROM claims ORDER BY sequence")
    assert stored == [(email,) for email in ACCEPTED_EMAILS]


def _unauthenticated(error: grpc.aio.AioRpcError, message: str) -> None:
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)
    info, fields = rich_status(error)
    assert (info.domain, info.reason, fields) == ("discount.v1", "UNAUTHENTICATED", [])


async def test_two_api_keys_are_refused_not_one_picked(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    brand_key = create_key(server.database_url, "brand", "acme")
    # The first may be a brand key and the second an admin key, or both the same key: either way
    # the caller says two things about who it is.
    pairs = [(brand_key, server.admin_key), (server.admin_key, brand_key), (server.admin_key, server.admin_key)]
    channel, stub = server.aio_stub()
    async with channel:
        admin = admin_grpc.AdminServiceStub(channel)
        for first, second in pairs:
            md = (("x-api-key", first), ("x-api-key", second))
            calls: list[Any] = [
                stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=md),
                stub.GenerateCodes(pb.GenerateCodesRequest(brand_id="acme", count=1), metadata=md),
                admin.ListBrands(admin_pb.ListBrandsRequest(), metadata=md),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                _unauthenticated(refused.value, "send exactly one x-api-key")
            watch = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme"), metadata=md)
            with pytest.raises(grpc.aio.AioRpcError) as refused_watch:
                await watch.read()
            _unauthenticated(refused_watch.value, "send exactly one x-api-key")
        # One key still works, and the refused GenerateCodes calls made nothing.
        stats = await stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=server.metadata())
        assert stats.total == 10


JWT_SECRET = "input-edges-secret-0123456789abcdef"


async def test_two_bearer_tokens_are_refused_not_one_picked(database_url: str) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    async with in_process_server(database_url, jwt_secret=JWT_SECRET) as (_, server):
        alice = mint_token(JWT_SECRET, "alice", email="alice@example.com", ttl_seconds=60)
        mallory = mint_token(JWT_SECRET, "mallory", email="mallory@example.com", ttl_seconds=60)
        channel, stub = server.aio_stub()
        async with channel:
            request = pb.ClaimCodeRequest(brand_id="acme", user_id="alice", email="alice@example.com")
            md = (("authorization", f"Bearer {alice}"), ("authorization", f"Bearer {mallory}"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ClaimCode(request, metadata=md)
            _unauthenticated(refused.value, "send exactly one authorization")
            one = await stub.ClaimCode(request, metadata=(("authorization", f"Bearer {alice}"),))
            assert one.newly_claimed and one.claim.user_id == "alice"
    assert sql(database_url, "SELECT user_id FROM claims") == [("alice",)]
