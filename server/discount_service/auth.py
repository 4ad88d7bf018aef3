"""API keys and signed-in shoppers: who is calling, and what they may do.

Keys are 256-bit random secrets. Only their SHA-256 digest is stored: a fast hash is right for
high-entropy secrets, and looking a digest up cannot leak the key by timing. Verified keys are
cached for `key_cache_seconds`, which bounds how long a revoked key keeps working.

Guessing keys must not cost the database: an unknown digest is remembered (bounded in count and
time), concurrent lookups of one digest share one query, and a host whose authentications keep
failing is refused RATE_LIMITED before any lookup, except with a key this server has seen valid,
so a flood from one host never locks out the legitimate callers it shares an address with.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from . import errors
from .models import Principal, Role
from .revocation import KeyRevocations

KEY_PREFIX = "dsk"
_CACHE_LIMIT = 10_000
# Digests that matched no key, the least recently seen dropped first. A key is a new random
# secret and a revocation is forever, so an unknown digest stays unknown: the time bound only
# keeps the memory of a long flood fresh.
UNKNOWN_KEYS_LIMIT = 10_000
UNKNOWN_KEY_SECONDS = 60.0
# Failed authentications per host: this many at once, then this many a second.
FAILED_AUTH_BURST = 20
FAILED_AUTH_PER_SECOND = 5.0
THROTTLED_HOSTS_LIMIT = 10_000


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
        key_revocations: KeyRevocations | None = None,
    ) -> None:
        self._lookup = lookup
        self._cache_seconds = cache_seconds
        # Keys found valid, the least recently used dropped first; an entry past its time is looked
        # up again, but its key still counts as seen valid for the throttle.
        self._cache: OrderedDict[bytes, tuple[Principal | None, float]] = OrderedDict()
        # Bumped by forget_key: a lookup that was in flight meanwhile may have read the key before
        # its revocation, so its result is used once but not cached.
        self._revocations = 0
        self._jwt_verifier = jwt_verifier
        self._unknown: OrderedDict[bytes, float] = OrderedDict()  # digest -> until when it is known unknown
        self._lookups: dict[bytes, asyncio.Task[Principal | None]] = {}  # one query per digest at a time
        self.failed_auth = FailedAuthThrottle()
        # What still acts on a key after the call that opened it (watch streams) hears of a
        # revocation through this server from forget_key, at once.
        self._key_revocations = key_revocations

    async def authenticate(self, api_key: str | None, authorization: str | None = None, *, peer: str = "") -> Principal:
        """The caller's principal. `peer` (the caller's host) is throttled after repeated failures:
        an API key this server has not seen valid takes one of the host's tokens before it is
        looked up, and gives it back if it turns out valid, so however many such calls a host has
        in flight, only as many as it has tokens reach the database. A key seen valid, a key whose
        lookup is in flight (the call shares it: no further query) and a bearer token (checked
        without the database) are checked whatever the throttle says; when they fail, they take a
        token all the same."""
        if not peer:
            return await self._verify(api_key, authorization)
        if self._costs_no_lookup(api_key) or (not api_key and authorization):
            try:
                return await self._verify(api_key, authorization)
            except errors.Unauthenticated:  # revoked since, or a token that does not verify
                self.failed_auth.take(peer)
                raise
        if not self.failed_auth.take(peer):
            raise errors.RateLimited(
                "too many failed authentications from your address; retry after the delay given",
                retry_after_seconds=self.failed_auth.retry_after(peer),
            )
        try:
            principal = await self._verify(api_key, authorization)
        except errors.Unauthenticated:
            raise
        except BaseException:  # not an authentication that failed (say the database is away)
            self.failed_auth.give_back(peer)
            raise
        self.failed_auth.give_back(peer)
        return principal

    def _costs_no_lookup(self, api_key: str | None) -> bool:
        """Whether `api_key` was seen valid here (cached, even past its time) or is being looked up now."""
        if not api_key:
            return False
        digest = hash_key(api_key)
        return digest in self._cache or digest in self._lookups

    async def _verify(self, api_key: str | None, authorization: str | None) -> Principal:
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
        if cached is not None and cached[1] > now and cached[0] is not None:
            self._cache.move_to_end(digest)
            principal: Principal | None = cached[0]
        elif self._unknown.get(digest, -1.0) > now:
            self._unknown.move_to_end(digest)
            principal = None
        else:
            principal = await self._look_up(digest)
        # Both the caches and the database compare SHA-256 digests, never the key itself, so the
        # time a guess takes says nothing about how much of a real key it matches.
        if principal is None:
            raise errors.Unauthenticated("unknown or revoked API key")
        return principal

    async def _look_up(self, digest: bytes) -> Principal | None:
        """One query per digest at a time: concurrent callers with the same key share it, and a
        caller that gives up does not cancel it for the others."""
        task = self._lookups.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._query(digest))
            self._lookups[digest] = task
            task.add_done_callback(lambda done: self._lookup_done(digest, done))
        return await asyncio.shield(task)

    def _lookup_done(self, digest: bytes, task: asyncio.Task[Principal | None]) -> None:
        self._lookups.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every caller that shared it may have gone

    async def _query(self, digest: bytes) -> Principal | None:
        revocations = self._revocations
        found = await self._lookup(digest)
        principal = None
        if found is not None:
            key_id, role, brand_id = found
            principal = Principal(role=role, key_id=key_id, brand_id=brand_id)
        if revocations == self._revocations:
            self._remember(digest, principal)
        return principal

    def _remember(self, digest: bytes, principal: Principal | None) -> None:
        now = time.monotonic()
        if principal is None:
            self._unknown[digest] = now + UNKNOWN_KEY_SECONDS
            self._unknown.move_to_end(digest)
            if len(self._unknown) > UNKNOWN_KEYS_LIMIT:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(digest, None)
        self._cache[digest] = (principal, now + self._cache_seconds)
        self._cache.move_to_end(digest)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.popitem(last=False)

    def forget_key(self, key_id: str) -> None:
        """Drops a key from this server's cache at once (it was just revoked here) and ends what
        acts on it here; other servers do both within `key_cache_seconds`."""
        self._revocations += 1
        for digest, (principal, _) in list(self._cache.items()):
            if principal is not None and principal.key_id == key_id:
                del self._cache[digest]
        if self._key_revocations is not None:
            self._key_revocations.revoked(key_id)


class FailedAuthThrottle:
    """Per caller host, a token bucket of failed authentications: FAILED_AUTH_BURST at once, then
    FAILED_AUTH_PER_SECOND. Hosts are kept least recently failed first, at most
    THROTTLED_HOSTS_LIMIT: a host dropped for room starts again with a full bucket."""

    def __init__(
        self,
        burst: int = FAILED_AUTH_BURST,
        per_second: float = FAILED_AUTH_PER_SECOND,
        hosts: int = THROTTLED_HOSTS_LIMIT,
    ) -> None:
        self._burst = float(burst)
        self._per_second = per_second
        self._hosts = hosts
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # host -> (tokens, at)

    def _tokens(self, host: str, now: float) -> float:
        tokens, at = self._buckets.get(host, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._per_second)

    def retry_after(self, host: str) -> float:
        """Seconds until the host has a token again, rounded up to hundredths (few distinct answers
        to encode) with a few milliseconds to spare: a caller that waits exactly this long finds one."""
        wait = (1.0 - self._tokens(host, time.monotonic())) / self._per_second
        return math.ceil((max(0.0, wait) + 0.005) * 100) / 100

    def take(self, host: str) -> bool:
        """Takes one of the host's tokens; False if it has none."""
        now = time.monotonic()
        tokens = self._tokens(host, now)
        if tokens < 1.0:
            return False
        self._buckets[host] = (tokens - 1.0, now)
        self._buckets.move_to_end(host)
        if len(self._buckets) > self._hosts:
            self._buckets.popitem(last=False)
        return True

    def give_back(self, host: str) -> None:
        """The call that took a token authenticated: it was no failure."""
        if (bucket := self._buckets.get(host)) is not None:
            self._buckets[host] = (min(self._burst, bucket[0] + 1.0), bucket[1])


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


def require_redeem_access(principal: Principal, brand_id: str) -> None:
    """A checkout redeems: a service key (the shop's backend) or admin for any brand, a brand key for
    its own brand. A shopper's token may not: the shop's backend, not the shopper, says an order was paid."""
    if principal.role in (Role.ADMIN, Role.SERVICE):
        return
    if principal.role is Role.BRAND:
        if principal.brand_id == brand_id:
            return
        raise errors.PermissionDenied("this brand key belongs to another brand")
    raise errors.PermissionDenied(
        f"a {principal.role.value} credential cannot redeem codes; use a service key, the brand's key or an admin key"
    )
