"""Signed-in shoppers: verify a JWT sent as `authorization: Bearer <token>` and turn it into a `user` Principal.

The token is checked against one configured key (an HS256 shared secret, or an RS256/ES256 public key in PEM),
with only that algorithm accepted, so a token cannot choose how it is verified (no `none`, no HS/RS confusion).
`exp` and `sub` are required; `exp` is honoured with DISCOUNT_JWT_LEEWAY_SECONDS of clock skew, and
`iss` and `aud` are checked when configured. `sub` is a user_id under the same rules as ClaimCode's
(validation.user_id, NFC), so a shopper may then only claim for themself (see `auth.require_claim_access`).
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import jwt

from . import errors, validation
from .models import Principal, Role
from .settings import Settings, SettingsError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
# An HS256 secret shorter than this is guessable offline from any token it signed.
MIN_SECRET_BYTES = 32
_MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True)
class JwtVerifier:
    """Verifies shopper tokens with one key and one algorithm."""

    key: Any
    algorithm: str
    issuer: str | None = None
    audience: str | None = None
    # Clock skew tolerated between the token issuer and this server (DISCOUNT_JWT_LEEWAY_SECONDS).
    leeway: float = Settings.jwt_leeway_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        algorithm = settings.jwt_algorithm.upper()
        if algorithm in HMAC_ALGORITHMS:
            if not settings.jwt_secret:
                raise SettingsError(f"DISCOUNT_JWT_ALGORITHM={algorithm} needs DISCOUNT_JWT_SECRET")
            if settings.jwt_public_key:
                raise SettingsError(
                    f"DISCOUNT_JWT_PUBLIC_KEY is set but DISCOUNT_JWT_ALGORITHM={algorithm} uses DISCOUNT_JWT_SECRET; "
                    "set DISCOUNT_JWT_ALGORITHM=RS256 (or ES256) to verify with the public key"
                )
            if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise SettingsError(f"DISCOUNT_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
            key: Any = settings.jwt_secret
        elif algorithm in PUBLIC_KEY_ALGORITHMS:
            if not settings.jwt_public_key:
                raise SettingsError(f"DISCOUNT_JWT_ALGORITHM={algorithm} needs DISCOUNT_JWT_PUBLIC_KEY (a PEM file)")
            if settings.jwt_secret:
                raise SettingsError(
                    f"DISCOUNT_JWT_SECRET is set but DISCOUNT_JWT_ALGORITHM={algorithm} verifies with "
                    "DISCOUNT_JWT_PUBLIC_KEY; unset one of them"
                )
            try:
                pem = settings.jwt_public_key.read_bytes()
            except OSError as exc:
                raise SettingsError(f"DISCOUNT_JWT_PUBLIC_KEY={settings.jwt_public_key}: {exc.strerror}") from None
            try:
                key = jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(pem)
            except Exception as exc:  # noqa: BLE001 - any parse failure is a bad setting
                raise SettingsError(
                    f"DISCOUNT_JWT_PUBLIC_KEY={settings.jwt_public_key} is not a {algorithm} public key in PEM: {exc}"
                ) from None
        else:
            supported = ", ".join(sorted(HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS))
            raise SettingsError(f"DISCOUNT_JWT_ALGORITHM={settings.jwt_algorithm!r} is not one of {supported}")
        return cls(
            key=key,
            algorithm=algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
        )

    def __call__(self, token: str) -> Principal:
        claims = self.decode(token)
        sub = claims["sub"]
        email = claims.get("email")
        if email is not None and not isinstance(email, str):
            raise errors.Unauthenticated("the token's email claim must be a string")
        return Principal(role=Role.USER, key_id=f"jwt:{sub}", user_id=sub, email=email or None)

    def decode(self, token: str) -> dict[str, Any]:
        """The token's verified claims, or Unauthenticated saying what is wrong (never echoing the token)."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise errors.Unauthenticated("the bearer token is too long")
        required = ["exp", "sub"]
        if self.issuer:
            required.append("iss")
        if self.audience:
            required.append("aud")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated("the bearer token has expired; sign in again") from None
        except jwt.InvalidSignatureError:
            raise errors.Unauthenticated("the bearer token's signature is not valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise errors.Unauthenticated(f"the bearer token has no '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise errors.Unauthenticated(f"the bearer token must be signed with {self.algorithm}") from None
        except jwt.InvalidIssuerError:
            raise errors.Unauthenticated("the bearer token was issued by someone else") from None
        except jwt.InvalidAudienceError:
            raise errors.Unauthenticated("the bearer token is meant for another audience") from None
        except jwt.ImmatureSignatureError:
            raise errors.Unauthenticated("the bearer token is not valid yet") from None
        except jwt.DecodeError:
            raise errors.Unauthenticated("the bearer token is malformed; expected a signed JWT") from None
        except jwt.InvalidTokenError as exc:
            raise errors.Unauthenticated(f"the bearer token is not valid: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise errors.Unauthenticated("the bearer token's sub claim must be a non-empty string")
        try:
            claims["sub"] = validation.user_id(sub)
        except errors.InvalidArgument as exc:
            raise errors.Unauthenticated(f"the bearer token's sub claim is not a valid user_id: {exc}") from None
        return claims


def mint_token(
    secret: str,
    user_id: str,
    *,
    email: str | None = None,
    ttl_seconds: int = 3600,
    algorithm: str = "HS256",
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 shopper token for local testing (`discount dev-token`); real tokens come from your sign-in."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": unicodedata.normalize("NFC", user_id), "iat": now, "exp": now + ttl_seconds}
    if email:
        claims["email"] = email
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)
