"""The domain of AdminService: onboarding brands and managing API keys, for admin keys only.

No gRPC here and no SQL: admin_servicer.py translates protobuf to these calls, and the store runs
the statements. `discount brand ...` and `discount key ...` make these same calls on the database
directly, as the local operator (cli/operator.py); the first admin key can only be made that way.

Listings page in key order (brand_id, key_id) with a keyset cursor: a page costs one index range
scan however deep it is, and brands or keys created meanwhile never shift a later page. The page
token carries the cursor, signed with a secret of the database (server_secrets) so a token this
service did not issue is refused and any server of the database continues a listing
(docs/design.md, "AdminService").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from . import errors, validation
from .auth import new_api_key, require_admin
from .models import ApiKeyInfo, Brand, NewApiKey, Page, Principal, Role
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_KEY_ID = 64
# Far above any token this module issues (a 64-character cursor makes about 200 characters).
MAX_PAGE_TOKEN = 512

_TOKEN_VERSION = 1
_TOKEN_MAC_BYTES = 16  # 128-bit truncated HMAC-SHA256: forging one is a 2^-128 guess
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# Roles an API key can have; USER is a signed-in shopper, never a key.
KEY_ROLES = (Role.ADMIN, Role.BRAND, Role.SERVICE)


class PageTokens:
    """Issues and checks page tokens: urlsafe base64 (no padding) of a small JSON document
    {"v": version, "list": which listing, "scope": its filter, "after": the cursor} followed by
    its truncated HMAC-SHA256 under the database's page-token secret.

    A token is bound to its listing and filter, so a ListApiKeys token of one brand is refused for
    another brand or for ListBrands. Anything that does not verify is INVALID_ARGUMENT."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own for this purpose, so the stored secret can sign other things later.
        self._key = hmac.new(secret, b"discount.v1.AdminService page token", hashlib.sha256).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]

    def issue(self, listing: str, scope: str, after: str) -> str:
        body = json.dumps(
            {"v": _TOKEN_VERSION, "list": listing, "scope": scope, "after": after},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode("ascii")

    def cursor(self, token: str, listing: str, scope: str) -> str:
        """The cursor of a token this service issued for this listing and scope."""
        not_issued = errors.InvalidArgument(
            "page_token is not a token this service issued; send the next_page_token of the previous page, "
            "or none for the first page",
            field="page_token",
        )
        if len(token) > MAX_PAGE_TOKEN or not _TOKEN_PATTERN.fullmatch(token):
            raise not_issued
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise not_issued from None
        # Base64 ignores the unused low bits of the last character, so several strings decode to the
        # same bytes; only the one this service would issue is accepted.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise not_issued
        body, mac = raw[:-_TOKEN_MAC_BYTES], raw[-_TOKEN_MAC_BYTES:]
        if len(raw) <= _TOKEN_MAC_BYTES or not hmac.compare_digest(mac, self._mac(body)):
            raise not_issued
        try:
            fields: Any = json.loads(body)
        except ValueError:
            raise not_issued from None
        if (
            not isinstance(fields, dict)
            or fields.get("v") != _TOKEN_VERSION
            or not isinstance(fields.get("after"), str)
        ):
            raise not_issued
        if fields.get("list") != listing or fields.get("scope") != scope:
            raise errors.InvalidArgument(
                "page_token belongs to another listing; keep the request's other fields as they were for the "
                "first page",
                field="page_token",
            )
        return str(fields["after"])


def resolve_page_size(value: int) -> int:
    """The number of items a page holds: 0 means DEFAULT_PAGE_SIZE, at most MAX_PAGE_SIZE."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise errors.InvalidArgument(
            f"page_size must be at most {MAX_PAGE_SIZE:,} (0 means {DEFAULT_PAGE_SIZE}), got {value:,}",
            field="page_size",
        )
    return value


class AdminService:
    """Every call is for admin keys only, checked before anything else."""

    def __init__(self, store: Store, *, on_key_revoked: Callable[[str], None] | None = None) -> None:
        self._store = store
        # The authenticator's cache of this server, so a key revoked here is refused here at once.
        self._on_key_revoked = on_key_revoked
        self._tokens: PageTokens | None = None

    async def _page_tokens(self) -> PageTokens:
        if self._tokens is None:
            self._tokens = PageTokens(await self._store.page_token_secret())
        return self._tokens

    async def create_brand(self, principal: Principal, *, brand_id: str, display_name: str) -> Brand:
        require_admin(principal)
        brand_id = validation.new_brand_id(brand_id)
        name = validation.brand_name(display_name or brand_id)
        try:
            brand = await self._store.create_brand(brand_id, name)
        except errors.AlreadyExists:
            raise errors.AlreadyExists(f"brand {brand_id!r} already exists", metadata={"brand_id": brand_id}) from None
        log.info("created brand=%s by key=%s", brand.brand_id, principal.key_id)
        return brand

    async def list_brands(self, principal: Principal, *, page_size: int, page_token: str) -> Page[Brand]:
        require_admin(principal)
        size = resolve_page_size(page_size)
        tokens = await self._page_tokens()
        after = tokens.cursor(page_token, "brands", "") if page_token else ""
        brands = await self._store.brands_after(after, size + 1)  # one more: is there a next page?
        if len(brands) <= size:
            return Page(items=brands, next_page_token="")
        brands = brands[:size]
        return Page(items=brands, next_page_token=tokens.issue("brands", "", brands[-1].brand_id))

    async def create_api_key(self, principal: Principal, *, role: Role | None, brand_id: str) -> NewApiKey:
        """`role` None stands for a role the caller left unset or that this server does not know."""
        require_admin(principal)
        if role not in KEY_ROLES:
            raise errors.InvalidArgument("role must be ROLE_ADMIN, ROLE_BRAND or ROLE_SERVICE", field="role")
        assert role is not None
        if role is Role.BRAND:
            if not brand_id:
                raise errors.InvalidArgument("a ROLE_BRAND key needs the brand_id it acts for", field="brand_id")
            brand_id = validation.brand_id(brand_id)
        elif brand_id:
            raise errors.InvalidArgument(
                f"brand_id must be empty for a ROLE_{role.name} key (only ROLE_BRAND keys belong to a brand)",
                field="brand_id",
            )
        key_id, secret, key_hash = new_api_key()
        key = await self._store.insert_api_key(key_id, key_hash, role, brand_id or None)
        if key is None:
            raise errors.NotFound(f"brand {brand_id!r} does not exist", metadata={"brand_id": brand_id})
        log.info("created %s key=%s brand=%s by key=%s", role.value, key_id, brand_id or "-", principal.key_id)
        return NewApiKey(key=key, secret=secret)

    async def revoke_api_key(self, principal: Principal, *, key_id: str) -> ApiKeyInfo:
        require_admin(principal)
        if not key_id:
            raise errors.InvalidArgument("key_id is required", field="key_id")
        if len(key_id) > MAX_KEY_ID or not key_id.isprintable():
            raise errors.InvalidArgument(
                f"key_id must be at most {MAX_KEY_ID} printable characters (see ListApiKeys)", field="key_id"
            )
        key = await self._store.revoke_api_key_returning(key_id)
        if key is None:
            raise errors.NotFound(
                f"no API key {key_id!r}; see ListApiKeys", reason="API_KEY_NOT_FOUND", metadata={"key_id": key_id}
            )
        if self._on_key_revoked is not None:
            self._on_key_revoked(key.key_id)
        log.info("revoked key=%s by key=%s", key.key_id, principal.key_id)
        return key

    async def list_api_keys(
        self, principal: Principal, *, brand_id: str, page_size: int, page_token: str
    ) -> Page[ApiKeyInfo]:
        require_admin(principal)
        size = resolve_page_size(page_size)
        brand_key = None
        if brand_id:
            brand_id = validation.brand_id(brand_id)
            brand_key = await self._store.brand_key(brand_id)
            if brand_key is None:
                raise errors.NotFound(f"brand {brand_id!r} does not exist", metadata={"brand_id": brand_id})
        tokens = await self._page_tokens()
        after = tokens.cursor(page_token, "api_keys", brand_id) if page_token else ""
        keys = await self._store.api_keys_after(after, size + 1, brand_key=brand_key)
        if len(keys) <= size:
            return Page(items=keys, next_page_token="")
        keys = keys[:size]
        return Page(items=keys, next_page_token=tokens.issue("api_keys", brand_id, keys[-1].key_id))
