"""discount.v1.AdminService through real servers on real ports, the real grpcurl (by reflection) and
discount_client: the auth matrix of every RPC, every bad input, pagination over 2,500 brands, page
tokens that were not issued, revoked keys refused, secrets never logged, and the commands of docs/admin.md."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
from datetime import datetime
from pathlib import Path
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
from discount_service.admin_service import PageTokens
from discount_service.tokens import mint_token
from tests.readme_support import README_ADDRESS, code_blocks, readme_section
from tests.support import (
    BIN,
    ServerHandle,
    create_brand,
    create_key,
    generate_codes_sql,
    in_process_server,
    sql,
    start_server_process,
    stop_process,
)

JWT_SECRET = "an-hs256-secret-of-at-least-32-bytes!"
RPCS = ("CreateBrand", "ListBrands", "CreateApiKey", "RevokeApiKey", "ListApiKeys")


# -- helpers ---------------------------------------------------------------------------------


async def grpcurl(
    address: str, method: str, body: dict[str, Any] | None = None, *, key: str | None = None, bearer: str = ""
) -> tuple[int, dict[str, Any]]:
    """Calls `discount.v1.AdminService/<method>` with the real grpcurl (schema by reflection).
    Returns (gRPC status code, the reply, or the error status with its details as grpcurl prints it)."""
    args = [str(BIN / "grpcurl"), "-plaintext", "-format-error"]
    if key is not None:
        args += ["-H", f"x-api-key: {key}"]
    if bearer:
        args += ["-H", f"authorization: Bearer {bearer}"]
    args += ["-d", json.dumps(body or {}), address, f"discount.v1.AdminService/{method}"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode == 0:
        return 0, dict(json.loads(out))
    error = dict(json.loads(err))  # -format-error: the status as JSON, exit status 64 + code
    assert proc.returncode == 64 + error["code"], (proc.returncode, error)
    return int(error["code"]), error


def violation_field(error: dict[str, Any]) -> str:
    """The field a grpcurl-printed INVALID_ARGUMENT names in its BadRequest detail."""
    (bad_request,) = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    (violation,) = bad_request["field_violations"]
    return str(violation["field"])


def reason(error: dict[str, Any]) -> str:
    (info,) = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["domain"] == "discount.v1"
    return str(info["reason"])


INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


def add_brands(url: str, count: int, prefix: str = "b-") -> list[str]:
    """`count` brands (with their feed heads) in one statement, as setup; returns their ids."""
    sql(
        url,
        """WITH b AS (
               INSERT INTO brands (brand_id, name)
               SELECT %(prefix)s || lpad(g::text, 5, '0'), 'Brand ' || g FROM generate_series(1, %(count)s) g
               RETURNING brand_key)
           INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM b""",
        {"prefix": prefix, "count": count},
    )
    return [f"{prefix}{i:05d}" for i in range(1, count + 1)]


def brands_in_database_order(url: str) -> list[str]:
    return [row[0] for row in sql(url, "SELECT brand_id FROM brands ORDER BY brand_id")]


def key_id(secret: str) -> str:
    return secret.split("_")[1]


def key_material(secret: str) -> list[str]:
    """The key, its secret part, and both in the encodings a leak could use."""
    tail = secret.split("_", 2)[2]
    return [
        secret,
        tail,
        secret.encode().hex(),
        tail.encode().hex(),
        tail[:16],
        hashlib.sha256(secret.encode()).hexdigest(),
    ]


def counts(url: str) -> tuple[int, int, int]:
    """Brands, keys and revoked keys: what a refused call must leave unchanged."""
    (row,) = sql(url, "SELECT (SELECT count(*) FROM brands), count(*), count(revoked_at) FROM api_keys")
    return int(row[0]), int(row[1]), int(row[2])


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


async def test_every_rpc_is_for_admin_keys_only(database_url: str) -> None:
    """Each RPC with each credential, through grpcurl and through the client: an admin key works; a
    brand key, a service key and a shopper's JWT are PERMISSION_DENIED; no key, an unknown key and a
    revoked admin key are UNAUTHENTICATED. A refused call changes nothing."""
    async with in_process_server(database_url, jwt_secret=JWT_SECRET) as (_, server):
        url = server.database_url
        create_brand(url, "acme")
        credentials: dict[str, dict[str, Any]] = {
            "brand key": {"key": create_key(url, "brand", "acme")},
            "service key": {"key": create_key(url, "service")},
            "shopper JWT": {"bearer": mint_token(JWT_SECRET, "alice", email="alice@example.com")},
            "no key": {},
            "unknown key": {"key": f"dsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"},
            "revoked admin key": {"key": create_key(url, "admin")},
        }
        sql(
            url,
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s",
            (key_id(credentials["revoked admin key"]["key"]),),
        )
        expected = {
            "brand key": PERMISSION_DENIED,
            "service key": PERMISSION_DENIED,
            "shopper JWT": PERMISSION_DENIED,
            "no key": UNAUTHENTICATED,
            "unknown key": UNAUTHENTICATED,
            "revoked admin key": UNAUTHENTICATED,
        }
        victim = key_id(create_key(url, "service"))  # what a refused RevokeApiKey would revoke

        def body(rpc: str, who: str) -> dict[str, Any]:
            slug = who.replace(" ", "-")
            return {
                "CreateBrand": {"brand_id": f"new-{slug}"},
                "ListBrands": {},
                "CreateApiKey": {"role": "ROLE_SERVICE"},
                "RevokeApiKey": {"key_id": victim},
                "ListApiKeys": {"brand_id": "acme"},
            }[rpc]

        before = counts(url)
        refused = await asyncio.gather(
            *(grpcurl(server.address, rpc, body(rpc, who), **cred) for rpc in RPCS for who, cred in credentials.items())
        )
        outcomes = iter(refused)
        for rpc in RPCS:
            for who in credentials:
                code, error = next(outcomes)
                assert code == expected[who], (rpc, who, error)
                assert reason(error) == ("PERMISSION_DENIED" if code == PERMISSION_DENIED else "UNAUTHENTICATED")

        # The Python client (API keys only: it sends x-api-key), sync and async.
        async_errors: list[tuple[str, str, type[DiscountError]]] = []
        for who, cred in credentials.items():
            if "key" not in cred:
                continue
            async with AsyncDiscountClient(server.address, cred["key"]) as client:
                calls = {
                    "CreateBrand": lambda c=client, w=who: c.create_brand(f"client-{w.replace(' ', '-')}"),
                    "ListBrands": lambda c=client: c.list_brands(),
                    "CreateApiKey": lambda c=client: c.create_api_key(Role.SERVICE),
                    "RevokeApiKey": lambda c=client: c.revoke_api_key(victim),
                    "ListApiKeys": lambda c=client: c.list_api_keys("acme"),
                }
                for rpc, call in calls.items():
                    with pytest.raises(DiscountError) as raised:
                        await call()
                    async_errors.append((rpc, who, type(raised.value)))
                    assert raised.value.method == rpc
        for rpc, who, cls in async_errors:
            assert cls is (PermissionDenied if expected[who] == PERMISSION_DENIED else Unauthenticated), (rpc, who)

        def sync_refusals() -> list[type[DiscountError]]:
            seen = []
            with DiscountClient(server.address, credentials["brand key"]["key"]) as client:
                for call in (
                    lambda: client.create_brand("sync-brand"),
                    client.list_brands,
                    lambda: client.create_api_key("admin"),
                    lambda: client.revoke_api_key(victim),
                    client.list_api_keys,
                ):
                    with pytest.raises(DiscountError) as raised:
                        call()
                    seen.append(type(raised.value))
            return seen

        assert await asyncio.to_thread(sync_refusals) == [PermissionDenied] * 5
        assert counts(url) == before, "a refused call changed something"

        # And the admin key does all five, through grpcurl and both clients.
        admin = {"key": server.admin_key}
        code, created = await grpcurl(server.address, "CreateBrand", {"brand_id": "by-grpcurl"}, **admin)
        assert code == 0 and created["brand"]["display_name"] == "by-grpcurl"
        code, listed = await grpcurl(server.address, "ListBrands", {}, **admin)
        assert code == 0 and [b["brand_id"] for b in listed["brands"]] == ["acme", "by-grpcurl"]
        code, new_key = await grpcurl(server.address, "CreateApiKey", {"role": "ROLE_SERVICE"}, **admin)
        assert code == 0 and new_key["key"]["role"] == "ROLE_SERVICE" and new_key["secret"].startswith("dsk_")
        code, revoked = await grpcurl(server.address, "RevokeApiKey", {"key_id": victim}, **admin)
        assert code == 0 and revoked["key"]["key_id"] == victim and revoked["key"]["revoked_at"]
        code, keys = await grpcurl(server.address, "ListApiKeys", {"brand_id": "acme"}, **admin)
        assert code == 0 and [k["key_id"] for k in keys["keys"]] == [key_id(credentials["brand key"]["key"])]

        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            brand = await client.create_brand("by-async-client")
            assert brand.brand_id == "by-async-client" and brand.display_name == "by-async-client"
            assert "by-async-client" in [b.brand_id for b in (await client.list_brands()).brands]
            made = await client.create_api_key("brand", "acme")
            assert (made.key.role, made.key.brand_id, made.key.revoked_at) == (Role.BRAND, "acme", None)
            assert (await client.revoke_api_key(made.key.key_id)).revoked_at is not None
            assert made.key.key_id in [k.key_id async for k in client.iter_api_keys("acme")]

        def sync_admin() -> tuple[Brand, ApiKey, list[str]]:
            with DiscountClient(server.address, server.admin_key) as client:
                brand = client.create_brand("by-sync-client", "By the sync client")
                made = client.create_api_key(Role.ADMIN)
                gone = client.revoke_api_key(made.key.key_id)
                return brand, gone, [k.key_id for k in client.iter_api_keys()]

        brand, gone, all_keys = await asyncio.to_thread(sync_admin)
        assert brand.display_name == "By the sync client"
        assert gone.role is Role.ADMIN and gone.brand_id is None and gone.revoked_at is not None
        assert gone.key_id in all_keys and all_keys == sorted(all_keys)


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


# -- pagination ------------------------------------------------------------------------------


async def test_list_brands_pages_through_2500_brands(server: ServerHandle) -> None:
    url = server.database_url
    ids = add_brands(url, 2500)
    assert brands_in_database_order(url) == ids == sorted(ids)

    def walk(page_size: int) -> tuple[list[str], list[int]]:
        seen: list[str] = []
        sizes: list[int] = []
        with DiscountClient(server.address, server.admin_key) as client:
            token = ""
            while True:
                page = client.list_brands(page_size, token)
                seen += [b.brand_id for b in page.brands]
                sizes.append(len(page.brands))
                token = page.next_page_token
                if not token:
                    return seen, sizes

    for page_size, full in ((0, 100), (1000, 1000), (7, 7)):
        seen, sizes = await asyncio.to_thread(walk, page_size)
        assert seen == ids, f"page_size {page_size}: not every brand once, in brand_id order"
        assert len(set(seen)) == len(seen) == 2500
        pages = -(-2500 // full)
        assert sizes == [full] * (pages - 1) + [2500 - full * (pages - 1)], page_size  # no empty last page

    # The async iterator, and the names and creation times as stored.
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        brands = [b async for b in client.iter_brands(page_size=1000)]
    stored = {r[0]: (r[1], r[2]) for r in sql(url, "SELECT brand_id, name, created_at FROM brands")}
    assert [b.brand_id for b in brands] == ids
    assert all((b.display_name, b.created_at) == stored[b.brand_id] for b in brands)

    # grpcurl, page by page, with the token as JSON carries it.
    seen = []
    body: dict[str, Any] = {"page_size": 1000}
    while True:
        code, reply = await grpcurl(server.address, "ListBrands", body, key=server.admin_key)
        assert code == 0, reply
        seen += [b["brand_id"] for b in reply["brands"]]
        if "next_page_token" not in reply:  # empty: left out of the JSON
            break
        body["page_token"] = reply["next_page_token"]
    assert seen == ids

    # page_size 0 is 100; more than 1,000 is refused.
    code, reply = await grpcurl(server.address, "ListBrands", {}, key=server.admin_key)
    assert len(reply["brands"]) == 100
    code, reply = await grpcurl(server.address, "ListBrands", {"page_size": 1000}, key=server.admin_key)
    assert len(reply["brands"]) == 1000
    for too_many in (1001, 2**32 - 1):
        code, error = await grpcurl(server.address, "ListBrands", {"page_size": too_many}, key=server.admin_key)
        assert (code, violation_field(error)) == (INVALID_ARGUMENT, "page_size")


async def test_brands_created_during_a_listing_never_shift_or_repeat_a_page(server: ServerHandle) -> None:
    url = server.database_url
    ids = add_brands(url, 50)
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        first = await client.list_brands(20)
        await client.create_brand("a-before-the-cursor")  # sorts before every page seen
        await client.create_brand("b-00020x")  # right after the first page's last brand
        await client.create_brand("z-after-everything")
        rest = [b.brand_id async for b in _pages(client, 20, first.next_page_token)]
    assert [b.brand_id for b in first.brands] == ids[:20]
    assert rest == ["b-00020x", *ids[20:], "z-after-everything"]


async def _pages(client: AsyncDiscountClient, page_size: int, token: str) -> Any:
    while token:
        page = await client.list_brands(page_size, token)
        for brand in page.brands:
            yield brand
        token = page.next_page_token


async def test_page_tokens_that_were_not_issued_are_invalid_argument(database_url: str) -> None:
    add_brands(database_url, 30)
    async with in_process_server(database_url) as (_, server), in_process_server(database_url) as (_, replica):
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            real = (await client.list_brands(10)).next_page_token
            keys_token = (await client.list_api_keys(page_size=1, page_token="")).next_page_token
        assert real
        raw = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4))
        body = raw[:-16]
        assert json.loads(body) == {"v": 1, "list": "brands", "scope": "", "after": "b-00010"}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        made_up = json.dumps(
            {"v": 1, "list": "brands", "scope": "", "after": "b-00020"}, separators=(",", ":")
        ).encode()
        flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
        forged = {
            "garbage": "abc",
            "not base64": "!!not-a-token!!",
            "padded": real + "==",
            "one character changed": flipped,
            "cursor edited, old MAC": b64(body.replace(b"b-00010", b"b-00020") + raw[-16:]),
            "made-up JSON, no MAC": b64(made_up),
            "made-up JSON, zero MAC": b64(made_up + bytes(16)),
            "signed with another secret": PageTokens(b"another database's secret, 32 b!").issue(
                "brands", "", "b-00020"
            ),
            "MAC only": b64(raw[-16:]),
            "huge": "A" * 100_000,
            "non-ASCII": "töken",
        }
        assert keys_token
        refused = [("ListBrands", name, token) for name, token in forged.items()]
        refused += [("ListApiKeys", name, token) for name, token in forged.items() if name != "one character changed"]
        refused += [("ListBrands", "a ListApiKeys token", keys_token), ("ListApiKeys", "a ListBrands token", real)]
        for rpc, name, token in refused:
            code, error = await grpcurl(server.address, rpc, {"page_token": token}, key=server.admin_key)
            assert (code, violation_field(error)) == (INVALID_ARGUMENT, "page_token"), (rpc, name)
            assert "page_token" in error["message"]

        # A real token works on every server of the database: a listing may cross replicas.
        async with AsyncDiscountClient(replica.address, server.admin_key) as other:
            page = await other.list_brands(10, real)
        assert [b.brand_id for b in page.brands] == [f"b-{i:05d}" for i in range(11, 21)]


# -- revocation ------------------------------------------------------------------------------


async def test_a_key_revoked_over_rpc_is_refused_at_once_here_and_within_the_cache_time_elsewhere(
    database_url: str,
) -> None:
    """Server A revokes; A's key cache is long (60 s) but drops the key at once. Server B, on the
    same database with DISCOUNT_KEY_CACHE_SECONDS=1, had the key cached and refuses it within 1 s."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 1000)
    async with (
        in_process_server(database_url, key_cache_seconds=60.0) as (_, a),
        in_process_server(database_url, key_cache_seconds=1.0) as (_, b),
    ):
        async with AsyncDiscountClient(a.address, a.admin_key) as admin:
            service_key = (await admin.create_api_key("service")).secret
        users = iter(range(10**6))

        async def claim(address: str) -> str:
            n = next(users)
            try:
                async with AsyncDiscountClient(address, service_key, retry=None) as client:
                    await client.claim_code("acme", f"u{n}", f"u{n}@example.com")
                return "OK"
            except DiscountError as exc:
                return exc.code

        assert await claim(a.address) == "OK" and await claim(b.address) == "OK"  # cached on both
        cached_on_b = asyncio.get_running_loop().time()
        async with AsyncDiscountClient(a.address, a.admin_key) as admin:
            revoked = await admin.revoke_api_key(key_id(service_key))
        assert revoked.revoked_at is not None
        assert await claim(a.address) == "UNAUTHENTICATED"  # at once, despite A's 60 s cache
        while (status := await claim(b.address)) == "OK":
            assert asyncio.get_running_loop().time() - cached_on_b < 1.0 + 0.5, "B kept a revoked key"
            await asyncio.sleep(0.05)
        assert status == "UNAUTHENTICATED"
        for address in (a.address, b.address, a.address):
            assert await claim(address) == "UNAUTHENTICATED"

        # An admin that revokes its own key is refused on its next call.
        async with AsyncDiscountClient(a.address, a.admin_key) as admin:
            await admin.revoke_api_key(key_id(a.admin_key))
            with pytest.raises(Unauthenticated):
                await admin.list_brands()


# -- secrets never logged, CLI alongside -----------------------------------------------------


def discount_cli(url: str, *args: str) -> str:
    env = {**os.environ, "DISCOUNT_DATABASE_URL": url}
    result = subprocess.run(
        [str(BIN / "discount"), *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


async def test_secrets_never_reach_the_server_log_and_the_cli_sees_the_same_keys(
    database_url: str, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        extra_env={"DISCOUNT_LOG_LEVEL": "DEBUG", "DISCOUNT_KEY_CACHE_SECONDS": "1"},
    )
    secrets_made: list[str] = []
    try:
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            await client.create_brand("acme", "Acme")
            for role in ("admin", "service", "brand"):
                made = await client.create_api_key(role, "acme" if role == "brand" else None)
                secrets_made.append(made.secret)
            with pytest.raises(InvalidArgument):
                await client.create_api_key("service", "acme")
            listed = [k async for k in client.iter_api_keys(page_size=1)]
            await client.revoke_api_key(key_id(secrets_made[1]))
        code, reply = await grpcurl(server.address, "CreateApiKey", {"role": "ROLE_SERVICE"}, key=server.admin_key)
        assert code == 0
        secrets_made.append(reply["secret"])
        # A revoked, an unknown and a new key sent as credentials.
        for key in (secrets_made[1], secrets_made[3] + "x", secrets_made[2]):
            await grpcurl(server.address, "ListBrands", {}, key=key)
        assert len(listed) == 4

        # The CLI works on the same keys and brands, directly on the database.
        brands = await asyncio.to_thread(discount_cli, database_url, "brand", "list")
        assert "acme" in brands and "Acme" in brands
        keys = await asyncio.to_thread(discount_cli, database_url, "key", "list")
        for secret in secrets_made:
            assert key_id(secret) in keys
        revoked = await asyncio.to_thread(discount_cli, database_url, "key", "revoke", key_id(secrets_made[3]))
        assert f"revoked key {key_id(secrets_made[3])}" in revoked
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            (key,) = [k for k in (await client.list_api_keys()).keys if k.key_id == key_id(secrets_made[3])]
            assert key.revoked_at is not None
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0

    log = server.log_text()
    assert "DEBUG" in log and "CreateApiKey OK" in log  # the verbose log, with the calls in it
    assert f"revoked key={key_id(secrets_made[1])}" in log
    for secret in secrets_made + [server.admin_key]:
        for leak in key_material(secret):
            assert leak not in log, "key material in the server log"


# -- the README ------------------------------------------------------------------------------


def readme_onboarding() -> tuple[str, str]:
    section = readme_section("Onboarding over RPC (AdminService)")
    (commands,) = code_blocks(section, "sh")
    (python,) = code_blocks(section, "python")
    return commands, python


async def test_the_readme_onboarding_commands_work_as_written(server: ServerHandle, tmp_path: Path) -> None:
    """The shell block runs as one script, as a reader pastes it: KEY_ID comes from CreateApiKey's reply."""
    commands, python = readme_onboarding()
    calls = re.findall(r"AdminService/(\w+)", commands)
    assert calls == ["CreateBrand", "CreateApiKey", "ListBrands", "ListApiKeys", "RevokeApiKey"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ADMIN_KEY": server.admin_key}
    env.pop("KEY_ID", None)

    create_brand(server.database_url, "acme")
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", "set -euo pipefail\n" + commands.replace(README_ADDRESS, server.address), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    printed: list[dict[str, Any]] = []
    decoder, text = json.JSONDecoder(), out.decode().strip()
    while text:
        value, end = decoder.raw_decode(text)
        printed.append(value)
        text = text[end:].strip()
    results = dict(zip(calls, printed, strict=True))
    assert results["CreateBrand"]["brand"]["display_name"] == "Globex Corp."
    secret = results["CreateApiKey"]["secret"]
    key_id = results["CreateApiKey"]["key"]["key_id"]
    assert results["CreateApiKey"]["key"]["brand_id"] == "globex"
    assert [b["brand_id"] for b in results["ListBrands"]["brands"]] == ["acme", "globex"]
    assert [k["key_id"] for k in results["ListApiKeys"]["keys"]] == [key_id]
    assert results["RevokeApiKey"]["key"]["key_id"] == key_id
    assert results["RevokeApiKey"]["key"]["revoked_at"]
    async with AsyncDiscountClient(server.address, secret) as brand:
        with pytest.raises(Unauthenticated):
            await brand.get_brand_stats("globex")

    script = tmp_path / "onboarding.py"
    script.write_text(python.replace(README_ADDRESS, server.address))
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "python"), str(script), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("brand key: dsk_")
    assert lines[1:4] == ["acme acme", "globex Globex Corp.", "initech Initech"]
    (key_line,) = lines[4:]
    assert key_line.endswith(" brand None")
    assert sql(
        server.database_url,
        "SELECT count(revoked_at) FROM api_keys k JOIN brands b USING (brand_key) WHERE b.brand_id = 'initech'",
    ) == [(1,)]
