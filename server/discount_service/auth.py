"""API keys and signed-in shoppers: who is calling, and what they may do.

Keys are 256-bit random secrets. Only their SHA-256 digest is stored: a fast hash is right for
high-entropy secrets, and looking a digest up cannot leak the key by timing. Verified keys are
cached for `key_cache_seconds`, which bounds how long a revoked key keeps working.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable

from . import errors
from .models import Principal, Role

KEY_PREFIX = "dsk"
_CACHE_LIMIT = 10_000
# Unknown keys are remembered briefly too, so guessing keys cannot hammer the database.
_NEGATIVE_CACHE_SECONDS = 1.0


def new_api_key() -> tuple[str, str, bytes]:
    """Returns (key_id, key, key_hash). The key is shown once; key_id names it for revocation."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, hash_key(key)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


KeyLookup = Callable[[bytes], Awaitable[tuple[str, Role, str | None] | None]]


class Authenticator:
    def __init__(
        self,
        lookup: KeyLookup,
        *,
        cache_seconds: float = 5.0,
        jwt_verifier: Callable[[str], Principal] | None = None,
    ) -> None:
        self._lookup = lookup
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}
        # Bumped by forget_key: a lookup that was in flight meanwhile may have read the key before
        # its revocation, so its result is used once but not cached.
        self._revocations = 0
        self._jwt_verifier = jwt_verifier

    async def authenticate(self, api_key: str | None, authorization: str | None = None) -> Principal:
        if api_key:
            return await self._from_api_key(api_key)
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated("authorization must be 'Bearer <token>'")
            if self._jwt_verifier is None:
                raise errors.Unauthenticated("user tokens are not enabled on this server; send an x-api-key")
            return self._jwt_verifier(token.strip())
        raise errors.Unauthenticated("missing credentials: send your API key in the x-api-key metadata")

    async def _from_api_key(self, api_key: str) -> Principal:
        digest = hash_key(api_key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            revocations = self._revocations
            found = await self._lookup(digest)
            principal = None
            if found is not None:
                key_id, role, brand_id = found
                principal = Principal(role=role, key_id=key_id, brand_id=brand_id)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            ttl = self._cache_seconds if principal else min(self._cache_seconds, _NEGATIVE_CACHE_SECONDS)
            if revocations == self._revocations:
                self._cache[digest] = (principal, now + ttl)
        # Both the cache and the database compare SHA-256 digests, never the key itself, so the
        # time a guess takes says nothing about how much of a real key it matches.
        if principal is None:
            raise errors.Unauthenticated("unknown or revoked API key")
        return principal

    def forget_key(self, key_id: str) -> None:
        """Drops a key from this server's cache at once (it was just revoked here); other servers
        drop it within `key_cache_seconds`."""
        self._revocations += 1
        for digest, (principal, _) in list(self._cache.items()):
            if principal is not None and principal.key_id == key_id:
                del self._cache[digest]


def require_admin(principal: Principal) -> None:
    """Admin keys only (AdminService)."""
    if principal.role is not Role.ADMIN:
        raise errors.PermissionDenied(f"a {principal.role.value} credential cannot do this; use an admin key")


def require_brand_access(principal: Principal, brand_id: str) -> None:
    """Admin, or a brand key bound to this brand."""
    if principal.role is Role.ADMIN:
        return
    if principal.role is Role.BRAND and principal.brand_id == brand_id:
        return
    if principal.role is Role.BRAND:
        raise errors.PermissionDenied("this brand key belongs to another brand")
    raise errors.PermissionDenied(f"a {principal.role.value} credential cannot do this; use a brand or admin key")


def require_claim_access(principal: Principal, user_id: str, email: str) -> None:
    """Admin or service keys claim for anyone; a signed-in shopper only for themself."""
    if principal.role in (Role.ADMIN, Role.SERVICE):
        return
    if principal.role is Role.USER:
        if principal.user_id != user_id:
            raise errors.PermissionDenied("a user token may only claim for its own user_id (the token's sub)")
        if principal.email and principal.email.lower() != email.lower():
            raise errors.PermissionDenied("email does not match the signed-in user's email")
        return
    raise errors.PermissionDenied("a brand key cannot claim codes; use a service key")
