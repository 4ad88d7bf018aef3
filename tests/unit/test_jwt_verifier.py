"""Shopper tokens checked without a server (tokens.JwtVerifier): how DISCOUNT_JWT_* settings become a
verifier or stop the start, and what a token's holder is told when it is refused. The same rules
through the gRPC port and Envoy are in tests/test_jwt.py."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

import jwt
import pytest

from discount_service.errors import Unauthenticated
from discount_service.models import Role
from discount_service.settings import Settings, SettingsError
from discount_service.tokens import JwtVerifier, mint_token

JWT_SECRET = "unit-tests-secret-0123456789abcdef"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DISCOUNT_JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"DISCOUNT_JWT_ALGORITHM": "RS256", "DISCOUNT_JWT_SECRET": JWT_SECRET}, "DISCOUNT_JWT_PUBLIC_KEY"),
        ({"DISCOUNT_JWT_ALGORITHM": "none", "DISCOUNT_JWT_SECRET": JWT_SECRET}, "is not one of"),
        ({"DISCOUNT_JWT_ALGORITHM": "RS256", "DISCOUNT_JWT_PUBLIC_KEY": "/nonexistent.pem"}, "/nonexistent.pem"),
    ],
)
def test_bad_jwt_settings_fail_fast_with_a_clear_message(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        JwtVerifier.from_settings(Settings.from_env(env))


def test_the_leeway_setting_reaches_the_verifier() -> None:
    assert JwtVerifier.from_settings(Settings.from_env({"DISCOUNT_JWT_SECRET": JWT_SECRET})).leeway == 5
    custom = Settings.from_env({"DISCOUNT_JWT_SECRET": JWT_SECRET, "DISCOUNT_JWT_LEEWAY_SECONDS": "1.5"})
    assert JwtVerifier.from_settings(custom).leeway == 1.5


def test_a_file_that_is_not_a_public_key_stops_the_start(tmp_path: Path) -> None:
    not_a_key = tmp_path / "jwt.pem"
    not_a_key.write_text("-----BEGIN NONSENSE-----\n")
    settings = Settings.from_env({"DISCOUNT_JWT_ALGORITHM": "ES256", "DISCOUNT_JWT_PUBLIC_KEY": str(not_a_key)})
    with pytest.raises(SettingsError, match=f"DISCOUNT_JWT_PUBLIC_KEY={not_a_key} is not a ES256 public key in PEM"):
        JwtVerifier.from_settings(settings)


def verifier(**settings: str) -> JwtVerifier:
    return JwtVerifier.from_settings(Settings.from_env({"DISCOUNT_JWT_SECRET": JWT_SECRET, **settings}))


def refusal(check: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as refused:
        check(token)
    return str(refused.value)


def test_a_minted_token_signs_in_its_user_in_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "José")
    principal = verifier()(mint_token(JWT_SECRET, decomposed, email="jose@example.com", ttl_seconds=60))
    assert (principal.role, principal.user_id, principal.email) == (Role.USER, "José", "jose@example.com")
    assert principal.key_id == "jwt:José"


def test_a_token_signed_by_the_sign_in_service_decomposed_is_the_same_user() -> None:
    token = jwt.encode({"sub": unicodedata.normalize("NFD", "José"), "exp": int(time.time()) + 60}, JWT_SECRET)
    assert verifier()(token).user_id == "José"


def expired(seconds_ago: int) -> str:
    return jwt.encode({"sub": "ann", "exp": int(time.time()) - seconds_ago}, JWT_SECRET, algorithm="HS256")


def test_an_expired_token_is_accepted_only_within_the_leeway() -> None:
    assert verifier()(expired(2)).user_id == "ann"
    assert refusal(verifier(), expired(30)) == "the bearer token has expired; sign in again"
    assert refusal(verifier(DISCOUNT_JWT_LEEWAY_SECONDS="0"), expired(2)) == (
        "the bearer token has expired; sign in again"
    )


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "ann"}, "the bearer token has no 'exp' claim"),
        ({"exp": 2**31}, "the bearer token has no 'sub' claim"),
        ({"sub": "  ", "exp": 2**31}, "the bearer token's sub claim must be a non-empty string"),
        ({"sub": "ann", "exp": 2**31, "email": ["a@example.com"]}, "the token's email claim must be a string"),
        ({"sub": "ann", "exp": 2**31, "nbf": 2**31}, "the bearer token is not valid yet"),
    ],
)
def test_tokens_with_bad_claims_are_refused_saying_which(claims: dict[str, object], message: str) -> None:
    assert refusal(verifier(), jwt.encode(claims, JWT_SECRET, algorithm="HS256")) == message


def test_a_sub_that_is_not_a_valid_user_id_is_refused_saying_why() -> None:
    token = jwt.encode({"sub": "ann ", "exp": 2**31}, JWT_SECRET, algorithm="HS256")
    assert refusal(verifier(), token) == (
        "the bearer token's sub claim is not a valid user_id: user_id must not start or end with whitespace"
    )


def test_forged_unsigned_and_other_algorithm_tokens_are_refused() -> None:
    check = verifier()
    forged = jwt.encode({"sub": "ann", "exp": 2**31}, "another-secret-0123456789abcdef012", algorithm="HS256")
    assert refusal(check, forged) == "the bearer token's signature is not valid"
    unsigned = jwt.encode({"sub": "ann", "exp": 2**31}, key=None, algorithm="none")
    assert refusal(check, unsigned) == "the bearer token must be signed with HS256"
    other = jwt.encode({"sub": "ann", "exp": 2**31}, JWT_SECRET + JWT_SECRET, algorithm="HS512")
    assert refusal(check, other) == "the bearer token must be signed with HS256"
    assert refusal(check, "not-a-jwt") == "the bearer token is malformed; expected a signed JWT"
    assert refusal(check, "x" * 8193) == "the bearer token is too long"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    check = verifier(DISCOUNT_JWT_ISSUER="https://login.example", DISCOUNT_JWT_AUDIENCE="discount")
    good = {"sub": "ann", "exp": 2**31, "iss": "https://login.example", "aud": "discount"}
    assert check(jwt.encode(good, JWT_SECRET)).user_id == "ann"
    assert refusal(check, jwt.encode({**good, "iss": "https://evil.example"}, JWT_SECRET)) == (
        "the bearer token was issued by someone else"
    )
    assert refusal(check, jwt.encode({**good, "aud": "another-app"}, JWT_SECRET)) == (
        "the bearer token is meant for another audience"
    )
    assert refusal(check, jwt.encode({"sub": "ann", "exp": 2**31, "aud": "discount"}, JWT_SECRET)) == (
        "the bearer token has no 'iss' claim"
    )
