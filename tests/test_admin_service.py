"""discount.v1.AdminService through real servers on real ports, the real grpcurl (by reflection) and
discount_client: the contract and health, the auth matrix of every RPC, and every bad input.
Listings and page tokens are in test_admin_listings.py; revocation across servers, secrets in logs,
the `discount brand|key` commands and docs/admin.md's commands in test_admin_operator.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discount_client import (
    AlreadyExists,
    ApiKey,
    AsyncDiscountClient,
    Brand,
    DiscountClient,
    DiscountError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Role,
    Unauthenticated,
)
from discount_service.tokens import mint_token
from tests.admin_support import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    JWT_SECRET,
    NOT_FOUND,
    PERMISSION_DENIED,
    RPCS,
    UNAUTHENTICATED,
    counts,
    grpcurl,
    key_id,
    key_material,
    reason,
    violation_field,
)
from tests.support import BIN, ServerHandle, create_brand, create_key, generate_codes_sql, in_process_server, sql

# -- contract, health, reflection ------------------------------------------------------------


async def test_grpcurl_sees_the_service_by_reflection_and_health_reports_it(server: ServerHandle) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "grpcurl"), "-plaintext", server.address, "describe", "discount.v1.AdminService",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    for rpc in RPCS:
        assert f"rpc {rpc} ( .discount.v1.{rpc}Request ) returns ( .discount.v1.{rpc}Response );" in out.decode()
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "discount.v1.DiscountService", "discount.v1.AdminService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


# -- the auth matrix -------------------------------------------------------------------------

# What each credential gets from every RPC: only an admin key is let through.
REFUSED = {
    "brand key": PERMISSION_DENIED,
    "service key": PERMISSION_DENIED,
    "shopper JWT": PERMISSION_DENIED,
    "no key": UNAUTHENTICATED,
    "unknown key": UNAUTHENTICATED,
    "revoked admin key": UNAUTHENTICATED,
}


@dataclass(frozen=True)
class Matrix:
    server: ServerHandle
    credentials: dict[str, dict[str, str]]  # who -> grpcurl's credential arguments
    victim: str  # the key id a refused RevokeApiKey would revoke


@pytest.fixture
async def matrix(database_url: str) -> AsyncIterator[Matrix]:
    """A server that accepts shoppers' JWTs, brand acme, and one credential of each kind."""
    async with in_process_server(database_url, jwt_secret=JWT_SECRET) as (_, server):
        url = server.database_url
        create_brand(url, "acme")
        credentials = {
            "brand key": {"key": create_key(url, "brand", "acme")},
            "service key": {"key": create_key(url, "service")},
            "shopper JWT": {"bearer": mint_token(JWT_SECRET, "alice", email="alice@example.com")},
            "no key": {},
            "unknown key": {"key": f"dsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"},
            "revoked admin key": {"key": create_key(url, "admin")},
        }
        revoked = key_id(credentials["revoked admin key"]["key"])
        sql(url, "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s", (revoked,))
        yield Matrix(server, credentials, victim=key_id(create_key(url, "service")))


async def test_every_rpc_refuses_all_but_admin_keys_through_grpcurl(matrix: Matrix) -> None:
    """Each RPC with each credential: a brand key, a service key and a shopper's JWT are
    PERMISSION_DENIED; no key, an unknown key and a revoked admin key are UNAUTHENTICATED. A refused
    call changes nothing."""

    def body(rpc: str, who: str) -> dict[str, Any]:
        return {
            "CreateBrand": {"brand_id": f"new-{who.replace(' ', '-')}"},
            "ListBrands": {},
            "CreateApiKey": {"role": "ROLE_SERVICE"},
            "RevokeApiKey": {"key_id": matrix.victim},
            "ListApiKeys": {"brand_id": "acme"},
        }[rpc]

    before = counts(matrix.server.database_url)
    asked = [(rpc, who) for rpc in RPCS for who in matrix.credentials]
    refused = await asyncio.gather(
        *(grpcurl(matrix.server.address, rpc, body(rpc, who), **matrix.credentials[who]) for rpc, who in asked)
    )
    for (rpc, who), (code, error) in zip(asked, refused, strict=True):
        assert code == REFUSED[who], (rpc, who, error)
        assert reason(error) == ("PERMISSION_DENIED" if code == PERMISSION_DENIED else "UNAUTHENTICATED")
    assert counts(matrix.server.database_url) == before, "a refused call changed something"


async def test_every_rpc_refuses_all_but_admin_keys_through_both_clients(matrix: Matrix) -> None:
    """The same through the Python client, which sends API keys only: async with every key, sync with
    the brand key."""
    before = counts(matrix.server.database_url)
    for who, credential in matrix.credentials.items():
        if "key" not in credential:
            continue
        async with AsyncDiscountClient(matrix.server.address, credential["key"]) as client:
            calls = {
                "CreateBrand": lambda c=client, w=who: c.create_brand(f"client-{w.replace(' ', '-')}"),
                "ListBrands": lambda c=client: c.list_brands(),
                "CreateApiKey": lambda c=client: c.create_api_key(Role.SERVICE),
                "RevokeApiKey": lambda c=client: c.revoke_api_key(matrix.victim),
                "ListApiKeys": lambda c=client: c.list_api_keys("acme"),
            }
            for rpc, call in calls.items():
                with pytest.raises(DiscountError) as raised:
                    await call()
                assert raised.value.method == rpc
                expected = PermissionDenied if REFUSED[who] == PERMISSION_DENIED else Unauthenticated
                assert type(raised.value) is expected, (rpc, who)

    def sync_refusals() -> list[type[DiscountError]]:
        seen = []
        with DiscountClient(matrix.server.address, matrix.credentials["brand key"]["key"]) as client:
            for call in (
                lambda: client.create_brand("sync-brand"),
                client.list_brands,
                lambda: client.create_api_key("admin"),
                lambda: client.revoke_api_key(matrix.victim),
                client.list_api_keys,
            ):
                with pytest.raises(DiscountError) as raised:
                    call()
                seen.append(type(raised.value))
        return seen

    assert await asyncio.to_thread(sync_refusals) == [PermissionDenied] * 5
    assert counts(matrix.server.database_url) == before, "a refused call changed something"


async def _admin_by_grpcurl(matrix: Matrix) -> None:
    admin = {"key": matrix.server.admin_key}
    address = matrix.server.address
    code, created = await grpcurl(address, "CreateBrand", {"brand_id": "by-grpcurl"}, **admin)
    assert code == 0 and created["brand"]["display_name"] == "by-grpcurl"
    code, listed = await grpcurl(address, "ListBrands", {}, **admin)
    assert code == 0 and [b["brand_id"] for b in listed["brands"]] == ["acme", "by-grpcurl"]
    code, new_key = await grpcurl(address, "CreateApiKey", {"role": "ROLE_SERVICE"}, **admin)
    assert code == 0 and new_key["key"]["role"] == "ROLE_SERVICE" and new_key["secret"].startswith("dsk_")
    code, revoked = await grpcurl(address, "RevokeApiKey", {"key_id": matrix.victim}, **admin)
    assert code == 0 and revoked["key"]["key_id"] == matrix.victim and revoked["key"]["revoked_at"]
    code, keys = await grpcurl(address, "ListApiKeys", {"brand_id": "acme"}, **admin)
    assert code == 0 and [k["key_id"] for k in keys["keys"]] == [key_id(matrix.credentials["brand key"]["key"])]


async def _admin_by_async_client(matrix: Matrix) -> None:
    async with AsyncDiscountClient(matrix.server.address, matrix.server.admin_key) as client:
        brand = await client.create_brand("by-async-client")
        assert brand.brand_id == "by-async-client" and brand.display_name == "by-async-client"
        assert [b.brand_id for b in (await client.list_brands()).brands] == ["acme", "by-async-client"]
        made = await client.create_api_key("brand", "acme")
        assert (made.key.role, made.key.brand_id, made.key.revoked_at) == (Role.BRAND, "acme", None)
        assert (await client.revoke_api_key(made.key.key_id)).revoked_at is not None
        assert made.key.key_id in [k.key_id async for k in client.iter_api_keys("acme")]


async def _admin_by_sync_client(matrix: Matrix) -> None:
    def calls() -> tuple[Brand, ApiKey, list[str]]:
        with DiscountClient(matrix.server.address, matrix.server.admin_key) as client:
            brand = client.create_brand("by-sync-client", "By the sync client")
            made = client.create_api_key(Role.ADMIN)
            gone = client.revoke_api_key(made.key.key_id)
            return brand, gone, [k.key_id for k in client.iter_api_keys()]

    brand, gone, all_keys = await asyncio.to_thread(calls)
    assert brand.display_name == "By the sync client"
    assert gone.role is Role.ADMIN and gone.brand_id is None and gone.revoked_at is not None
    assert gone.key_id in all_keys and all_keys == sorted(all_keys)


@pytest.mark.parametrize(
    "admin_calls", [_admin_by_grpcurl, _admin_by_async_client, _admin_by_sync_client], ids=lambda f: f.__name__[1:]
)
async def test_an_admin_key_makes_every_call(matrix: Matrix, admin_calls: Callable[[Matrix], Awaitable[None]]) -> None:
    await admin_calls(matrix)


# -- bad input ----------------------------------------------------------------------------------


async def test_create_brand_refuses_bad_ids_names_and_existing_brands(server: ServerHandle) -> None:
    admin = {"key": server.admin_key}
    for bad in ("", " acme", "-acme", "acme!", "a" * 65, "acme\x00", "ácme", "acme\n"):
        code, error = await grpcurl(server.address, "CreateBrand", {"brand_id": bad}, **admin)
        assert (code, violation_field(error)) == (INVALID_ARGUMENT, "brand_id"), bad
    for bad_name in ("n" * 201, "Acme\x07", "Acme\nInc."):
        code, error = await grpcurl(
            server.address, "CreateBrand", {"brand_id": "acme", "display_name": bad_name}, **admin
        )
        assert (code, violation_field(error)) == (INVALID_ARGUMENT, "display_name"), bad_name
    assert sql(server.database_url, "SELECT count(*) FROM brands") == [(0,)]

    code, created = await grpcurl(server.address, "CreateBrand", {"brand_id": "Acme.Shop_1-x"}, **admin)
    assert code == 0
    assert created["brand"]["display_name"] == "Acme.Shop_1-x"  # defaults to the id
    code, error = await grpcurl(
        server.address, "CreateBrand", {"brand_id": "Acme.Shop_1-x", "display_name": "Other"}, **admin
    )
    assert (code, reason(error)) == (ALREADY_EXISTS, "BRAND_ALREADY_EXISTS")
    rows = sql(
        server.database_url,
        "SELECT b.brand_id, b.name, h.last_sequence FROM brands b JOIN brand_feed_heads h USING (brand_key)",
    )
    assert rows == [("Acme.Shop_1-x", "Acme.Shop_1-x", 0)]  # the first one, with its feed head

    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        with pytest.raises(AlreadyExists) as exists:
            await client.create_brand("Acme.Shop_1-x")
        assert exists.value.reason == "BRAND_ALREADY_EXISTS"
        with pytest.raises(InvalidArgument) as invalid:
            await client.create_brand("no spaces allowed")
        assert invalid.value.field == "brand_id"
        named = await client.create_brand("globex", "Globex Corp. — ünïcode")
        assert named.display_name == "Globex Corp. — ünïcode"

    # The brand made over RPC is a real brand: codes, keys and claims work on it.
    generate_codes_sql(server.database_url, "globex", 1)
    async with AsyncDiscountClient(server.address, create_key(server.database_url, "service")) as client:
        assert (await client.claim_code("globex", "u1", "u1@example.com")).newly_claimed


async def test_create_api_key_checks_role_and_brand(server: ServerHandle) -> None:
    admin = {"key": server.admin_key}
    create_brand(server.database_url, "acme")
    before = counts(server.database_url)
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({}, INVALID_ARGUMENT, "role"),
        ({"role": "ROLE_UNSPECIFIED"}, INVALID_ARGUMENT, "role"),
        ({"role": 7}, INVALID_ARGUMENT, "role"),  # a value the contract does not define
        ({"role": "ROLE_UNSPECIFIED", "brand_id": "acme"}, INVALID_ARGUMENT, "role"),
        ({"role": "ROLE_BRAND"}, INVALID_ARGUMENT, "brand_id"),
        ({"role": "ROLE_BRAND", "brand_id": "acme\x00"}, INVALID_ARGUMENT, "brand_id"),
        ({"role": "ROLE_BRAND", "brand_id": "x" * 65}, INVALID_ARGUMENT, "brand_id"),
        ({"role": "ROLE_ADMIN", "brand_id": "acme"}, INVALID_ARGUMENT, "brand_id"),
        ({"role": "ROLE_SERVICE", "brand_id": "acme"}, INVALID_ARGUMENT, "brand_id"),
    ]
    for body, expected_code, field in bad:
        code, error = await grpcurl(server.address, "CreateApiKey", body, **admin)
        assert (code, violation_field(error)) == (expected_code, field), body
    code, error = await grpcurl(server.address, "CreateApiKey", {"role": "ROLE_BRAND", "brand_id": "nope"}, **admin)
    assert (code, reason(error)) == (NOT_FOUND, "BRAND_NOT_FOUND")
    assert "nope" in error["message"]
    assert counts(server.database_url) == before, "a refused CreateApiKey stored a key"

    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        with pytest.raises(NotFound) as missing:
            await client.create_api_key("brand", "nope")
        assert missing.value.reason == "BRAND_NOT_FOUND"
        with pytest.raises(InvalidArgument) as invalid:
            await client.create_api_key("user")  # not a key role; refused by the client itself
        assert invalid.value.field == "role"
        with pytest.raises(InvalidArgument) as invalid:
            await client.create_api_key(Role.UNKNOWN)
        assert invalid.value.field == "role"
        made = {
            role: await client.create_api_key(role, "acme" if role is Role.BRAND else None)
            for role in (Role.ADMIN, Role.BRAND, Role.SERVICE)
        }

    # Each new key is stored as a digest only and does what its role allows.
    for role, new in made.items():
        assert new.secret.startswith(f"dsk_{new.key.key_id}_") and len(new.secret.split("_", 2)[2]) >= 43
        assert repr(new).count(new.secret.split("_", 2)[2]) == 0, "the secret shows in repr"
        assert sql(server.database_url, "SELECT key_hash, role FROM api_keys WHERE key_id = %s", (new.key.key_id,)) == [
            (hashlib.sha256(new.secret.encode()).digest(), role.value)
        ]
    generate_codes_sql(server.database_url, "acme", 5)
    async with AsyncDiscountClient(server.address, made[Role.SERVICE].secret) as service:
        assert (await service.claim_code("acme", "u1", "u1@example.com")).newly_claimed
        with pytest.raises(PermissionDenied):
            await service.get_brand_stats("acme")
    async with AsyncDiscountClient(server.address, made[Role.BRAND].secret) as brand:
        assert (await brand.get_brand_stats("acme")).claimed == 1
        with pytest.raises(PermissionDenied):
            await brand.list_api_keys()
    async with AsyncDiscountClient(server.address, made[Role.ADMIN].secret) as new_admin:
        assert len([k async for k in new_admin.iter_api_keys()]) == before[1] + 3


async def test_revoke_api_key_unknown_twice_and_bad_ids(server: ServerHandle) -> None:
    admin = {"key": server.admin_key}
    create_brand(server.database_url, "acme")
    target = create_key(server.database_url, "brand", "acme")
    for bad in ("", "k" * 65, "abc\x00def", "abc\ndef"):
        code, error = await grpcurl(server.address, "RevokeApiKey", {"key_id": bad}, **admin)
        assert (code, violation_field(error)) == (INVALID_ARGUMENT, "key_id"), bad
    code, error = await grpcurl(server.address, "RevokeApiKey", {"key_id": "000000000000"}, **admin)
    assert (code, reason(error)) == (NOT_FOUND, "API_KEY_NOT_FOUND")

    code, first = await grpcurl(server.address, "RevokeApiKey", {"key_id": key_id(target)}, **admin)
    assert code == 0
    assert first["key"]["key_id"] == key_id(target) and first["key"]["brand_id"] == "acme"
    assert first["key"]["role"] == "ROLE_BRAND" and first["key"]["revoked_at"] and "secret" not in json.dumps(first)
    await asyncio.sleep(0.05)
    code, second = await grpcurl(server.address, "RevokeApiKey", {"key_id": key_id(target)}, **admin)
    assert code == 0 and second == first  # revoked at the first revocation's time
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        again = await client.revoke_api_key(key_id(target))
        with pytest.raises(NotFound) as missing:
            await client.revoke_api_key("ffffffffffff")
        assert missing.value.reason == "API_KEY_NOT_FOUND"
    (stored,) = sql(server.database_url, "SELECT revoked_at FROM api_keys WHERE key_id = %s", (key_id(target),))
    assert again.revoked_at == stored[0] == datetime.fromisoformat(first["key"]["revoked_at"])


async def test_list_api_keys_filters_by_brand_pages_by_key_id_and_never_shows_secrets(server: ServerHandle) -> None:
    url = server.database_url
    for brand in ("acme", "globex", "idle"):
        create_brand(url, brand)
    made = {
        "acme": [create_key(url, "brand", "acme") for _ in range(23)],
        "globex": [create_key(url, "brand", "globex") for _ in range(4)],
    }
    others = [create_key(url, "service"), server.admin_key]
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        new = await client.create_api_key("brand", "acme")
        made["acme"].append(new.secret)
        everything: list[ApiKey] = []
        token = ""
        while True:
            page = await client.list_api_keys(page_size=7, page_token=token)
            assert len(page.keys) == 7 or not page.next_page_token
            everything += page.keys
            token = page.next_page_token
            if not token:
                break
        acme = [k async for k in client.iter_api_keys("acme", page_size=5)]
        assert (await client.list_api_keys("idle")).keys == ()
        assert (await client.list_api_keys("idle")).next_page_token == ""
        with pytest.raises(NotFound) as missing:
            await client.list_api_keys("nope")
        assert missing.value.reason == "BRAND_NOT_FOUND"
        for bad in ("x" * 65, "ac\x00me"):
            with pytest.raises(InvalidArgument) as invalid:
                await client.list_api_keys(bad)
            assert invalid.value.field == "brand_id"
        with pytest.raises(InvalidArgument) as invalid:
            await client.list_api_keys(page_size=1001)
        assert invalid.value.field == "page_size"
        # A token is bound to its brand filter.
        acme_token = (await client.list_api_keys("acme", page_size=2)).next_page_token
        for brand_id in ("globex", None):
            with pytest.raises(InvalidArgument) as invalid:
                await client.list_api_keys(brand_id, page_token=acme_token)
            assert invalid.value.field == "page_token"
        with pytest.raises(InvalidArgument) as invalid:
            await client.list_brands(page_token=acme_token)
        assert invalid.value.field == "page_token"

    all_ids = [key_id(k) for k in made["acme"] + made["globex"] + others]
    assert [k.key_id for k in everything] == sorted(all_ids)
    assert [k.key_id for k in acme] == sorted(key_id(k) for k in made["acme"])
    assert {k.brand_id for k in acme} == {"acme"} and {k.role for k in acme} == {Role.BRAND}
    # The listing over the wire holds no secret and no digest of any key.
    code, listed = await grpcurl(server.address, "ListApiKeys", {"page_size": 1000}, key=server.admin_key)
    assert code == 0 and len(listed["keys"]) == len(all_ids)
    wire = json.dumps(listed)
    for secret in made["acme"] + made["globex"] + others:
        for leak in key_material(secret):
            assert leak not in wire
    assert set(listed["keys"][0]) <= {"key_id", "role", "brand_id", "created_at", "revoked_at"}


async def test_unparsable_bodies_are_invalid_argument_for_every_rpc(server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        for rpc in RPCS:
            call = channel.unary_unary(f"/discount.v1.AdminService/{rpc}")
            for body in (b"\xff\xff\xff", b"\x0a\x05ab"):  # not protobuf; a string cut short
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(body, metadata=server.metadata(), timeout=5)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (rpc, refused.value)
