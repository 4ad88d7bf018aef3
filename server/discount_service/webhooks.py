"""The domain of WebhookService: which endpoints a brand may register, who may manage them, and
their signing secrets. No gRPC and no SQL here: webhook_servicer.py translates protobuf to these
calls, the store runs the statements, and webhook_delivery.py sends the claims.

- Where it may send: https only (http and private addresses with DISCOUNT_WEBHOOK_ALLOW_INSECURE=1,
  for development), no user name or password, at most 2,048 characters, and a host that resolves
  to public unicast addresses only, checked here when the webhook is created and again before every
  attempt (webhook_delivery.py connects to the address that was checked).
- Who: the brand's own key or an admin key; another brand's key or a service key is refused.
- Secrets: "whsec_" + base64 of 32 random bytes, stored AES-GCM encrypted under a key from the
  server's settings, so a database dump alone does not reveal them (docs/design.md, "Webhook
  delivery"); they are in the create and rotate responses only and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import errors, validation
from .admin_service import PageTokens, resolve_page_size
from .auth import require_brand_access
from .models import AttemptRow, Principal, Role, WebhookRow
from .store import Store

log = logging.getLogger(__name__)

MAX_URL = 2048
MAX_WEBHOOKS_PER_BRAND = 10
DEFAULT_CLAIMS_PER_DELIVERY = 100
MAX_CLAIMS_PER_DELIVERY = 1000
MAX_ERROR = 1000
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = 32
ROTATION_OVERLAP_SECONDS = 24 * 3600.0
WEBHOOK_ID_PREFIX = "wh_"
MAX_WEBHOOK_ID = 64
KEY_FILE_NAME = "webhook-secret-key"
_NONCE_BYTES = 12


def new_secret() -> tuple[str, bytes]:
    """(the secret as the brand sees it, its key bytes)."""
    raw = secrets.token_bytes(SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode("ascii"), raw


class SecretBox:
    """Encrypts webhook secrets for the database with AES-256-GCM; the webhook's id is the
    associated data, so a ciphertext copied onto another webhook does not decrypt."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the webhook secret key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, configured: str | None, data_dir: Path) -> SecretBox:
        """DISCOUNT_WEBHOOK_SECRET_KEY (base64 of 32 bytes) if set, otherwise a key file in the
        data directory, made on first use (fine for one machine; replicas on several machines
        must share DISCOUNT_WEBHOOK_SECRET_KEY)."""
        if configured:
            try:
                key = base64.b64decode(configured, validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise errors.FailedPrecondition(
                    "DISCOUNT_WEBHOOK_SECRET_KEY must be base64 of 32 bytes, e.g. the output of "
                    "`python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'`"
                )
            return cls(key)
        return cls(_key_file(data_dir / KEY_FILE_NAME))

    def seal(self, webhook_id: str, secret: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret, webhook_id.encode())

    def open(self, webhook_id: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], webhook_id.encode())
        except InvalidTag:
            raise errors.FailedPrecondition(
                f"the signing secret of webhook {webhook_id} was encrypted under another key than this "
                "server's DISCOUNT_WEBHOOK_SECRET_KEY; give every replica the same key"
            ) from None


def _key_file(path: Path) -> bytes:
    """The key in `path`, made (mode 0600, exclusively, so concurrent first runs agree) if absent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        log.warning("made a webhook secret key in %s; set DISCOUNT_WEBHOOK_SECRET_KEY on every replica instead", path)
    for _ in range(50):  # a concurrent first run may be writing it
        text = path.read_text().strip()
        if text:
            return base64.b64decode(text)
        time.sleep(0.01)
    raise errors.FailedPrecondition(f"{path} is empty; delete it or set DISCOUNT_WEBHOOK_SECRET_KEY")


@dataclass(frozen=True)
class Target:
    """A checked url: where to connect and what to call the host."""

    url: str
    parts: SplitResult = field(repr=False)

    @property
    def host(self) -> str:
        return self.parts.hostname or ""

    @property
    def port(self) -> int:
        return self.parts.port or (443 if self.parts.scheme == "https" else 80)


def check_url(url: str, *, allow_insecure: bool) -> Target:
    def bad(why: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"url {why}", field="url")

    if not url:
        raise bad("is required")
    if len(url) > MAX_URL:
        raise bad(f"must be at most {MAX_URL:,} characters, got {len(url):,}")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise bad("must be ASCII without spaces or control characters (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a valid URL: {exc}") from None
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes:
        hint = "" if allow_insecure else " (http:// needs DISCOUNT_WEBHOOK_ALLOW_INSECURE=1 on the server)"
        raise bad(f"must start with https://{hint}")
    if parts.username is not None or parts.password is not None:
        raise bad("must not hold a user name or password; authenticate the request by its signature")
    if not parts.hostname:
        raise bad("has no host")
    if port == 0:
        raise bad("has port 0")
    return Target(url=url, parts=parts)


def address_allowed(address: str, *, allow_insecure: bool) -> bool:
    """Public unicast only, unless the development switch is on."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if allow_insecure:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve_host(host: str, port: int, *, allow_insecure: bool) -> list[str]:
    """The host's addresses, every one of them allowed, or InvalidArgument (field url). An address
    literal is checked as it is, without a lookup."""
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise errors.InvalidArgument(f"url host {host!r} does not resolve: {exc}", field="url") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    refused = [a for a in addresses if not address_allowed(a, allow_insecure=allow_insecure)]
    if refused or not addresses:
        raise errors.InvalidArgument(
            f"url host {host!r} resolves to {', '.join(refused) or 'nothing'}, not a public unicast address "
            "(private, loopback and link-local addresses need DISCOUNT_WEBHOOK_ALLOW_INSECURE=1 on the server)",
            field="url",
        )
    return addresses


async def resolve(target: Target, *, allow_insecure: bool) -> list[str]:
    """The url's host's addresses, every one of them allowed, or InvalidArgument (field url)."""
    return await resolve_host(target.host, target.port, allow_insecure=allow_insecure)


@dataclass(frozen=True)
class NewWebhook:
    webhook: WebhookRow
    secret: str = field(repr=False)


@dataclass(frozen=True)
class AttemptPage:
    items: list[AttemptRow]
    next_page_token: str


def _webhook_id(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("webhook_id is required", field="webhook_id")
    if not value.startswith(WEBHOOK_ID_PREFIX) or len(value) > MAX_WEBHOOK_ID or not value.isprintable():
        raise errors.InvalidArgument(
            f"webhook_id must be an id this service issued ({WEBHOOK_ID_PREFIX}...); see ListWebhooks",
            field="webhook_id",
        )
    return value


def _require_manager(principal: Principal) -> None:
    """Brand and admin keys only, before anything is looked up."""
    if principal.role not in (Role.ADMIN, Role.BRAND):
        raise errors.PermissionDenied(
            f"a {principal.role.value} credential cannot manage webhooks; use the brand's key or an admin key"
        )


def _not_found(webhook_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"no webhook {webhook_id!r}; see ListWebhooks", reason="WEBHOOK_NOT_FOUND", metadata={"webhook_id": webhook_id}
    )


class WebhookService:
    def __init__(
        self,
        store: Store,
        box: Callable[[], SecretBox],
        *,
        allow_insecure: bool = False,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._box = box
        self._allow_insecure = allow_insecure
        # The local deliverer looks again at once instead of at its next scan.
        self._on_change = on_change or (lambda: None)
        self._tokens: PageTokens | None = None

    async def _brand_key(self, principal: Principal, brand_id: str) -> int:
        _require_manager(principal)
        validation.brand_id(brand_id)
        require_brand_access(principal, brand_id)
        key = await self._store.brand_key(brand_id)
        if key is None:
            raise errors.NotFound(f"brand {brand_id!r} does not exist", metadata={"brand_id": brand_id})
        return key

    async def _owned(self, principal: Principal, webhook_id: str) -> WebhookRow:
        _require_manager(principal)
        _webhook_id(webhook_id)
        found = await self._store.webhook(webhook_id)
        if found is None:
            raise _not_found(webhook_id)
        require_brand_access(principal, found.brand_id)
        return found

    async def _check_after(self, brand_key: int, after: int) -> None:
        head = (await self._store.feed_heads([brand_key])).get(brand_key, 0)
        if after > head:
            raise errors.InvalidArgument(
                f"after_sequence {after:,} is beyond the brand's last claim ({head:,})", field="after_sequence"
            )

    async def create(
        self, principal: Principal, *, brand_id: str, url: str, after_sequence: int | None, max_claims: int
    ) -> NewWebhook:
        brand_key = await self._brand_key(principal, brand_id)
        target = check_url(url, allow_insecure=self._allow_insecure)
        if max_claims == 0:
            max_claims = DEFAULT_CLAIMS_PER_DELIVERY
        if not 1 <= max_claims <= MAX_CLAIMS_PER_DELIVERY:
            raise errors.InvalidArgument(
                f"max_claims_per_delivery must be 1..{MAX_CLAIMS_PER_DELIVERY} (0 means "
                f"{DEFAULT_CLAIMS_PER_DELIVERY}), got {max_claims:,}",
                field="max_claims_per_delivery",
            )
        if after_sequence is not None:
            await self._check_after(brand_key, after_sequence)
        await resolve(target, allow_insecure=self._allow_insecure)
        webhook_id = WEBHOOK_ID_PREFIX + secrets.token_hex(16)
        shown, raw = new_secret()
        sealed = self._box().seal(webhook_id, raw)
        row = await self._store.insert_webhook(
            brand_id, brand_key, webhook_id, url, after_sequence, max_claims, sealed, MAX_WEBHOOKS_PER_BRAND
        )
        if row is None:
            raise errors.InvalidArgument(
                f"brand {brand_id!r} has {MAX_WEBHOOKS_PER_BRAND} webhooks, the most a brand can have; "
                "delete one first",
                field="brand_id",
                metadata={"brand_id": brand_id, "limit": str(MAX_WEBHOOKS_PER_BRAND)},
            )
        log.info("created webhook=%s brand=%s by key=%s", webhook_id, brand_id, principal.key_id)
        self._on_change()
        return NewWebhook(webhook=row, secret=shown)

    async def get(self, principal: Principal, *, webhook_id: str) -> WebhookRow:
        return await self._owned(principal, webhook_id)

    async def list(self, principal: Principal, *, brand_id: str) -> list[WebhookRow]:
        brand_key = await self._brand_key(principal, brand_id)
        return await self._store.webhooks_of(brand_id, brand_key)

    async def delete(self, principal: Principal, *, webhook_id: str) -> None:
        found = await self._owned(principal, webhook_id)
        if not await self._store.delete_webhook(found.brand_key, webhook_id):
            raise _not_found(webhook_id)
        log.info("deleted webhook=%s brand=%s by key=%s", webhook_id, found.brand_id, principal.key_id)
        self._on_change()

    async def replay(self, principal: Principal, *, webhook_id: str, after_sequence: int) -> WebhookRow:
        found = await self._owned(principal, webhook_id)
        await self._check_after(found.brand_key, after_sequence)
        row = await self._store.replay_webhook(found.brand_id, found.brand_key, webhook_id, after_sequence)
        if row is None:
            raise _not_found(webhook_id)
        log.info("replayed webhook=%s after=%d by key=%s", webhook_id, after_sequence, principal.key_id)
        self._on_change()
        return row

    async def rotate(self, principal: Principal, *, webhook_id: str) -> NewWebhook:
        found = await self._owned(principal, webhook_id)
        shown, raw = new_secret()
        sealed = self._box().seal(webhook_id, raw)
        row = await self._store.rotate_webhook_secret(
            found.brand_id, found.brand_key, webhook_id, sealed, ROTATION_OVERLAP_SECONDS
        )
        if row is None:
            raise _not_found(webhook_id)
        log.info("rotated the secret of webhook=%s by key=%s", webhook_id, principal.key_id)
        self._on_change()
        return NewWebhook(webhook=row, secret=shown)

    async def attempts(self, principal: Principal, *, webhook_id: str, page_size: int, page_token: str) -> AttemptPage:
        found = await self._owned(principal, webhook_id)
        size = resolve_page_size(page_size)
        if self._tokens is None:
            self._tokens = PageTokens(await self._store.page_token_secret())
        before = 2**62
        if page_token:
            before = int(self._tokens.cursor(page_token, "webhook_deliveries", webhook_id))
        rows = await self._store.webhook_attempts(found.brand_key, webhook_id, before, size + 1)
        if len(rows) <= size:
            return AttemptPage(items=rows, next_page_token="")
        rows = rows[:size]
        return AttemptPage(
            items=rows, next_page_token=self._tokens.issue("webhook_deliveries", webhook_id, str(rows[-1].number))
        )
