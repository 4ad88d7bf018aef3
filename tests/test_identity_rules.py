"""One person, one identity: user_id and brand_id are compared and stored in Unicode NFC, and values a
person cannot tell apart from another (blank, padded with whitespace, holding control or invisible
format characters) are refused with INVALID_ARGUMENT naming the field; email gets the same
whitespace and character rules. Through the real grpcurl against a real server, a shopper token's
sub through the real gRPC port, and the real CLI."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from typing import Any

import grpc
import jwt
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount_service.tokens import mint_token
from tests.support import BIN, ServerHandle, create_brand, create_key, generate_codes_sql, in_process_server, sql
from tests.test_client_cli import client_env, discount
from tests.test_error_details import BAD_REQUEST, ERROR_INFO, grpcurl_error

NFC = unicodedata.normalize("NFC", "résumé")
NFD = unicodedata.normalize("NFD", "résumé")
JWT_SECRET = "identity-tests-secret-0123456789abcdef"


async def grpcurl_ok(server: ServerHandle, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """A ClaimCode through grpcurl with the body as raw UTF-8 JSON (not \\u escapes)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "grpcurl"),
        "-plaintext",
        "-H",
        f"x-api-key: {key}",
        "-d",
        json.dumps(body, ensure_ascii=False),
        server.address,
        "discount.v1.DiscountService/ClaimCode",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out))


async def test_nfc_and_nfd_of_one_name_are_one_user_with_one_code(server: ServerHandle) -> None:
    assert NFC != NFD and len(NFD) == len(NFC) + 2
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    key = create_key(server.database_url, "service")

    first = await grpcurl_ok(server, key, {"brand_id": "acme", "user_id": NFC, "email": "r@example.com"})
    again = await grpcurl_ok(server, key, {"brand_id": "acme", "user_id": NFD, "email": "r@example.com"})
    assert first["newly_claimed"] is True
    assert "newly_claimed" not in again  # false: the code the NFC spelling already holds
    assert again["claim"]["code"] == first["claim"]["code"]
    assert again["claim"]["user_id"] == first["claim"]["user_id"] == NFC
    assert sql(server.database_url, "SELECT user_id, code FROM claims") == [(NFC, first["claim"]["code"])]


CLAIM = {"brand_id": "acme", "user_id": "alice", "email": "alice@example.com"}
# (field, value) -> the message grpcurl shows
REFUSED = {
    ("user_id", ""): "user_id is required",
    ("user_id", "   "): "user_id must not be only whitespace",
    ("user_id", " alice"): "user_id must not start or end with whitespace",
    ("user_id", "alice\u00a0"): "user_id must not start or end with whitespace",
    ("user_id", "\u200b"): "user_id must not contain control or invisible format characters "
    "(found U+200B ZERO WIDTH SPACE)",
    ("user_id", "ali\u200bce"): "user_id must not contain control or invisible format characters "
    "(found U+200B ZERO WIDTH SPACE)",
    ("user_id", "\u202ealice"): "user_id must not contain control or invisible format characters "
    "(found U+202E RIGHT-TO-LEFT OVERRIDE)",
    ("user_id", "ali\nce"): "user_id must not contain control or invisible format characters (found U+000A)",
    ("brand_id", " acme"): "brand_id must not start or end with whitespace",
    ("brand_id", "acme\u200d"): "brand_id must not contain control or invisible format characters "
    "(found U+200D ZERO WIDTH JOINER)",
    ("brand_id", "\t"): "brand_id must not be only whitespace",
    ("email", "alice@example.com "): "email must not start or end with whitespace",
    ("email", "alice\u200b@example.com"): "email must not contain control or invisible format characters "
    "(found U+200B ZERO WIDTH SPACE)",
    ("email", "\u202ealice@example.com"): "email must not contain control or invisible format characters "
    "(found U+202E RIGHT-TO-LEFT OVERRIDE)",
}


async def test_invisible_or_padded_identities_are_refused_naming_the_field(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    key = create_key(server.database_url, "service")
    for (field, value), message in REFUSED.items():
        error = await grpcurl_error(server.address, "ClaimCode", {**CLAIM, field: value}, key)
        assert (error.code, error.message) == ("InvalidArgument", message), (field, value)
        info = error.detail(ERROR_INFO)
        assert (info["domain"], info["reason"]) == ("discount.v1", "INVALID_FIELD")
        assert [v["field"] for v in error.detail(BAD_REQUEST)["field_violations"]] == [field], (field, value)
    # The brand rules hold for every call that names a brand, not only claims.
    for method, body in [
        ("GetBrandStats", {"brand_id": "acme "}),
        ("GenerateCodes", {"brand_id": "acme ", "count": 1}),
        ("WatchClaims", {"brand_id": "acme "}),
    ]:
        error = await grpcurl_error(server.address, method, body, server.admin_key)
        assert (error.code, error.message) == ("InvalidArgument", "brand_id must not start or end with whitespace")
    assert sql(server.database_url, "SELECT count(*) FROM claims") == [(0,)]
    assert sql(server.database_url, "SELECT count(*) FROM code_batches") == [(1,)]  # generate_codes_sql's batch


async def test_a_token_sub_is_the_same_user_in_either_form_and_refused_when_invisible(database_url: str) -> None:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    async with in_process_server(database_url, jwt_secret=JWT_SECRET) as (_, server):
        channel, stub = server.aio_stub()
        async with channel:

            async def claim(sub: str, user_id: str) -> pb.ClaimCodeResponse:
                token = mint_token(JWT_SECRET, sub, email="r@example.com", ttl_seconds=60)
                reply: pb.ClaimCodeResponse = await stub.ClaimCode(
                    pb.ClaimCodeRequest(brand_id="acme", user_id=user_id, email="r@example.com"),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
                return reply

            first = await claim(NFD, NFC)  # a sign-in service that spells the name decomposed
            again = await claim(NFC, NFD)
            assert first.newly_claimed and not again.newly_claimed
            assert first.claim.code == again.claim.code and first.claim.user_id == NFC

            # A token from another sign-in service, with a zero-width space in its sub.
            hidden = jwt.encode({"sub": "r\u200b", "exp": 2**31}, JWT_SECRET, algorithm="HS256")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ClaimCode(
                    pb.ClaimCodeRequest(brand_id="acme", user_id="r\u200b", email="r@example.com"),
                    metadata=(("authorization", f"Bearer {hidden}"),),
                )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == (
        "the bearer token's sub claim is not a valid user_id: user_id must not contain control or invisible "
        "format characters (found U+200B ZERO WIDTH SPACE)"
    )
    assert sql(database_url, "SELECT user_id FROM claims") == [(NFC,)]


async def test_cli_claims_for_one_user_in_either_form_and_refuses_a_padded_brand(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 10)
    env = client_env(server.address, create_key(server.database_url, "service"))
    code, first, err = await discount("claim", "acme", NFD, "r@example.com", env=env)
    assert code == 0, err
    code, again, err = await discount("claim", "acme", NFC, "r@example.com", env=env)
    assert code == 0, err
    held = sql(server.database_url, "SELECT code FROM claims")
    assert held == [(first.split()[0],)]
    assert first == f"{held[0][0]}  (claimed by {NFC} <r@example.com>, sequence 1)\n"
    assert again == f"{held[0][0]}  (already held by {NFC} <r@example.com>, sequence 1)\n"

    code, out, err = await discount("claim", "acme", "   ", "r@example.com", env=env)
    assert (code, out, err) == (
        1,
        "",
        "discount: ClaimCode failed: INVALID_ARGUMENT: user_id must not be only whitespace\n",
    )


@pytest.mark.parametrize(
    ("brand_id", "message"),
    [
        (" acme", "brand_id must not start or end with whitespace"),
        (
            "acme\u200b",
            "brand_id must not contain control or invisible format characters (found U+200B ZERO WIDTH SPACE)",
        ),
        (
            "acmé",
            "brand_id must be 1..64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        ),
    ],
)
async def test_new_brand_ids_follow_the_same_rules(database_url: str, brand_id: str, message: str) -> None:
    env = {**client_env("127.0.0.1:1", None), "DISCOUNT_DATABASE_URL": database_url}
    code, out, err = await discount("brand", "create", brand_id, env=env)
    assert (code, out, err) == (1, "", f"discount: {message}\n")
    assert sql(database_url, "SELECT count(*) FROM brands") == [(0,)]
