"""Shopper sign-in: a JWT in `authorization: Bearer …` may only ClaimCode for its own sub (and email).

Every rule is checked on both doors: the gRPC port, and Envoy's gRPC-Web listener that browsers use.
How the settings make a verifier, and the verifier alone, are in tests/unit/test_jwt_verifier.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.browser.support import JWT_SECRET, STATUS_NAMES, Stack, grpc_web_call, module_stack, token
from tests.support import BIN, ServerHandle, create_brand, generate_codes_sql, in_process_server, sql


@pytest.fixture(scope="module")
def stack(databases: Any) -> Iterator[Stack]:
    with module_stack(databases, "test_jwt") as running:
        create_brand(running.database_url, "acme")
        generate_codes_sql(running.database_url, "acme", 200)
        yield running


def call(stack: Stack, door: str, method: str, request: Any, headers: dict[str, str]) -> tuple[str, str, Any]:
    """(status name, message, response) of one call through `door`: "grpc" direct, or "envoy" gRPC-Web."""
    response_type = {
        "ClaimCode": pb.ClaimCodeResponse,
        "GetBrandStats": pb.GetBrandStatsResponse,
        "GenerateCodes": pb.GenerateCodesResponse,
        "WatchClaims": pb.WatchClaimsResponse,
    }[method]
    if door == "grpc":
        with grpc.insecure_channel(stack.server.address) as channel:
            rpc = getattr(pb_grpc.DiscountServiceStub(channel), method)
            try:
                if method == "WatchClaims":
                    reply = next(iter(rpc(request, metadata=tuple(headers.items()), timeout=3)))
                else:
                    reply = rpc(request, metadata=tuple(headers.items()), timeout=10)
            except grpc.RpcError as exc:
                return exc.code().name, exc.details() or "", None
            return "OK", "", reply
    web = grpc_web_call(stack.envoy_url, method, request, headers=headers)
    assert web.http_status == 200, web
    reply = response_type.FromString(web.messages[0]) if web.messages else None
    return STATUS_NAMES[web.grpc_status], web.grpc_message, reply


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def claim(brand: str, user: str, email: str) -> pb.ClaimCodeRequest:
    return pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=email)


def claims_of(stack: Stack, user: str) -> list[tuple[str]]:
    return sql(stack.database_url, "SELECT code FROM claims WHERE user_id = %s", (user,))


DOORS = ["grpc", "envoy"]


@pytest.mark.parametrize("door", DOORS)
def test_valid_token_claims_for_its_own_user(stack: Stack, door: str):
    user = f"own-{door}"
    status, _, reply = call(
        stack, door, "ClaimCode", claim("acme", user, f"{user}@example.com"), bearer(token(user, f"{user}@example.com"))
    )
    assert status == "OK"
    assert reply.claim.user_id == user
    assert claims_of(stack, user) == [(reply.claim.code,)]
    # Email case differs only: same mailbox, allowed; the same code again.
    status, _, again = call(
        stack,
        door,
        "ClaimCode",
        claim("acme", user, f"{user.upper()}@EXAMPLE.COM"),
        bearer(token(user, f"{user}@example.com")),
    )
    assert status == "OK" and again.claim.code == reply.claim.code and not again.newly_claimed


@pytest.mark.parametrize("door", DOORS)
def test_token_without_email_claim_may_give_any_email(stack: Stack, door: str):
    user = f"noemail-{door}"
    status, _, reply = call(stack, door, "ClaimCode", claim("acme", user, "whatever@example.com"), bearer(token(user)))
    assert status == "OK"
    assert reply.claim.email == "whatever@example.com"


def forged(user: str) -> str:
    return token(user, f"{user}@example.com", secret="not-the-server-secret-0123456789abcdef")


def tampered(user: str) -> str:
    """A real token whose payload was edited to another sub, keeping the original signature."""
    head, _, sig = token("someone-else", f"{user}@example.com").split(".")
    payload = base64.urlsafe_b64encode(
        json.dumps({"sub": user, "email": f"{user}@example.com", "exp": int(time.time()) + 600}).encode()
    ).rstrip(b"=")
    return f"{head}.{payload.decode()}.{sig}"


def unsigned(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, key=None, algorithm="none")


# case -> (headers for a ClaimCode by user u with email u@example.com, expected status, words in the message)
CASES = {
    "other_user": (lambda u: bearer(token("somebody-else", f"{u}@example.com")), "PERMISSION_DENIED", "own user_id"),
    "email_mismatch": (lambda u: bearer(token(u, "other@example.com")), "PERMISSION_DENIED", "email"),
    "expired": (lambda u: bearer(token(u, f"{u}@example.com", ttl=-120)), "UNAUTHENTICATED", "expired"),
    "forged_signature": (lambda u: bearer(forged(u)), "UNAUTHENTICATED", "signature"),
    "tampered_payload": (lambda u: bearer(tampered(u)), "UNAUTHENTICATED", "signature"),
    "alg_none": (lambda u: bearer(unsigned(u)), "UNAUTHENTICATED", "HS256"),
    "malformed": (lambda u: bearer("not-a-jwt"), "UNAUTHENTICATED", "malformed"),
    "not_bearer": (lambda u: {"authorization": f"Basic {token(u)}"}, "UNAUTHENTICATED", "Bearer"),
    "no_exp": (lambda u: bearer(jwt.encode({"sub": u}, JWT_SECRET, algorithm="HS256")), "UNAUTHENTICATED", "exp"),
    "no_sub": (
        lambda u: bearer(jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")),
        "UNAUTHENTICATED",
        "sub",
    ),
}


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", list(CASES))
def test_refused_tokens(stack: Stack, door: str, case: str):
    user = f"{case}-{door}"
    make_headers, expected, words = CASES[case]
    status, message, _ = call(stack, door, "ClaimCode", claim("acme", user, f"{user}@example.com"), make_headers(user))
    assert (status, words in message) == (expected, True), message
    assert claims_of(stack, user) == []
    assert claims_of(stack, "somebody-else") == []


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetBrandStats", pb.GetBrandStatsRequest(brand_id="acme")),
        ("GenerateCodes", pb.GenerateCodesRequest(brand_id="acme", count=5)),
        ("WatchClaims", pb.WatchClaimsRequest(brand_id="acme")),
    ],
)
def test_user_token_may_do_nothing_but_claim(stack: Stack, door: str, method: str, request_: Any):
    status, message, _ = call(stack, door, method, request_, bearer(token("shopper", "shopper@example.com")))
    assert status == "PERMISSION_DENIED", message


# -- configuration: RS256, issuer/audience, no JWT configured ------------------------------------


def rsa_pair(tmp_path: Any) -> tuple[Any, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "jwt.pub.pem"
    path.write_bytes(pem)
    return private, path


async def claim_status(handle: ServerHandle, user: str, headers: dict[str, str]) -> tuple[str, str]:
    channel, stub = handle.aio_stub()
    async with channel:
        try:
            await stub.ClaimCode(
                claim("acme", user, f"{user}@example.com"), metadata=tuple(headers.items()), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", ""


async def test_rs256_with_a_public_key_and_issuer_audience(database_url: str, tmp_path: Any):
    private, public_path = rsa_pair(tmp_path)
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    settings = {
        "jwt_algorithm": "RS256",
        "jwt_public_key": public_path,
        "jwt_issuer": "https://login.example",
        "jwt_audience": "discount",
    }

    def signed(user: str, **extra: Any) -> str:
        claims = {"sub": user, "exp": int(time.time()) + 60, "iss": "https://login.example", "aud": "discount", **extra}
        return jwt.encode(claims, private, algorithm="RS256")

    async with in_process_server(database_url, **settings) as (_, handle):
        assert await claim_status(handle, "rs-user", bearer(signed("rs-user"))) == ("OK", "")
        status, message = await claim_status(handle, "aud-user", bearer(signed("aud-user", aud="another-app")))
        assert (status, "audience" in message) == ("UNAUTHENTICATED", True)
        status, message = await claim_status(handle, "iss-user", bearer(signed("iss-user", iss="https://evil.example")))
        assert (status, "issued by someone else" in message) == ("UNAUTHENTICATED", True)
        # Algorithm confusion: an HS256 token "signed" with the public key as the secret is refused.
        confused = _hs256_with_key_bytes(public_path.read_bytes())
        assert (await claim_status(handle, "hs-user", bearer(confused)))[0] == "UNAUTHENTICATED"
    assert sql(database_url, "SELECT user_id FROM claims") == [("rs-user",)]


def _hs256_with_key_bytes(key: bytes) -> str:
    """HS256 over the public key bytes, built by hand (PyJWT itself refuses to use a PEM as an HMAC secret)."""
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(
        json.dumps(
            {"sub": "hs-user", "exp": int(time.time()) + 60, "iss": "https://login.example", "aud": "discount"}
        ).encode()
    )
    sig = b64(hmac.new(key, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


async def test_bearer_token_without_jwt_configured_is_unauthenticated(database_url: str):
    create_brand(database_url, "acme")
    async with in_process_server(database_url) as (_, handle):
        status, message = await claim_status(handle, "u", bearer(token("u")))
    assert status == "UNAUTHENTICATED"
    assert "not enabled" in message


def test_bad_jwt_settings_stop_discount_serve(database_url: str):
    env = {
        **os.environ,
        "DISCOUNT_DATABASE_URL": database_url,
        "DISCOUNT_LISTEN": "127.0.0.1:0",
        "DISCOUNT_JWT_SECRET": "short",
    }
    done = subprocess.run([str(BIN / "discount"), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "DISCOUNT_JWT_SECRET must be at least 32 bytes" in done.stderr


def test_dev_token_mints_a_token_the_server_accepts(stack: Stack):
    env = {**os.environ, "DISCOUNT_JWT_SECRET": JWT_SECRET}
    done = subprocess.run(
        [str(BIN / "discount"), "dev-token", "cli-shopper", "--email", "cli@example.com", "--ttl", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    minted = done.stdout.strip()
    claims = jwt.decode(minted, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "cli-shopper" and claims["email"] == "cli@example.com"
    assert 100 <= claims["exp"] - time.time() <= 121
    status, _, reply = call(
        stack, "envoy", "ClaimCode", claim("acme", "cli-shopper", "cli@example.com"), bearer(minted)
    )
    assert status == "OK" and reply.claim.user_id == "cli-shopper"


# -- clock-skew leeway (DISCOUNT_JWT_LEEWAY_SECONDS, default 5 s) ---------------------------------


def expired_token(user: str, seconds_ago: int) -> str:
    """A token made with a 1 s ttl that expired `seconds_ago` seconds ago."""
    exp = int(time.time()) - seconds_ago
    return jwt.encode({"sub": user, "iat": exp - 1, "exp": exp}, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize("door", DOORS)
def test_an_expired_token_works_only_within_the_default_leeway(stack: Stack, door: str):
    user = f"leeway-{door}"
    request = claim("acme", user, f"{user}@example.com")
    status, message, _ = call(stack, door, "ClaimCode", request, bearer(expired_token(user, 7)))
    assert (status, message) == ("UNAUTHENTICATED", "the bearer token has expired; sign in again")
    assert claims_of(stack, user) == []
    status, _, reply = call(stack, door, "ClaimCode", request, bearer(expired_token(user, 2)))
    assert status == "OK" and reply.claim.user_id == user


def test_a_dev_token_with_ttl_1_is_refused_7_seconds_after_it_expired(stack: Stack):
    env = {**os.environ, "DISCOUNT_JWT_SECRET": JWT_SECRET}
    minted = subprocess.run(
        [str(BIN / "discount"), "dev-token", "ttl-shopper", "--ttl", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    exp = jwt.decode(minted, JWT_SECRET, algorithms=["HS256"], options={"verify_exp": False})["exp"]
    request = claim("acme", "ttl-shopper", "ttl@example.com")

    time.sleep(max(0.0, exp + 2 - time.time()))  # expired 2 s ago: within the 5 s leeway
    status, message, reply = call(stack, "grpc", "ClaimCode", request, bearer(minted))
    assert status == "OK", message
    assert time.time() - exp < 5
    time.sleep(max(0.0, exp + 7 - time.time()))
    status, message, _ = call(stack, "grpc", "ClaimCode", request, bearer(minted))
    assert (status, message) == ("UNAUTHENTICATED", "the bearer token has expired; sign in again")
    assert claims_of(stack, "ttl-shopper") == [(reply.claim.code,)]


async def test_leeway_0_refuses_a_token_the_second_it_expires(database_url: str):
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    async with in_process_server(database_url, jwt_secret=JWT_SECRET, jwt_leeway_seconds=0.0) as (_, handle):
        status, message = await claim_status(handle, "strict", bearer(expired_token("strict", 1)))
        assert (status, message) == ("UNAUTHENTICATED", "the bearer token has expired; sign in again")
        assert await claim_status(handle, "strict", bearer(token("strict", "strict@example.com"))) == ("OK", "")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("soon", "DISCOUNT_JWT_LEEWAY_SECONDS='soon' is not a number of seconds"),
        ("-1", "DISCOUNT_JWT_LEEWAY_SECONDS=-1 must be between 0 and 300 seconds"),
        ("301", "DISCOUNT_JWT_LEEWAY_SECONDS=301 must be between 0 and 300 seconds"),
        ("nan", "DISCOUNT_JWT_LEEWAY_SECONDS=nan must be between 0 and 300 seconds"),
    ],
)
def test_a_bad_leeway_stops_discount_serve(database_url: str, raw: str, message: str):
    env = {
        **os.environ,
        "DISCOUNT_DATABASE_URL": database_url,
        "DISCOUNT_LISTEN": "127.0.0.1:0",
        "DISCOUNT_JWT_SECRET": JWT_SECRET,
        "DISCOUNT_JWT_LEEWAY_SECONDS": raw,
    }
    done = subprocess.run([str(BIN / "discount"), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (1, f"discount: {message}\n")
