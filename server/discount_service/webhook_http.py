"""One webhook attempt over HTTP (aiohttp): the body, the Standard Webhooks signature, the retry
schedule, and the POST itself, which connects only to addresses whose check passed (webhooks.resolve)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from . import errors
from .models import Claim
from .webhooks import MAX_ERROR, check_url, resolve, resolve_host

MAX_WAIT_SECONDS = 3600.0
MAX_BODY_BYTES = 1024 * 1024  # a delivery holds fewer claims rather than a bigger body
RESPONSE_READ_LIMIT = 64 * 1024  # of an answer's body: read only so the connection can be reused


def retry_delay(failures: int, base: float) -> float:
    """After the n-th failure in a row: base * 2^(n-1) to 1.5 times that, at most an hour."""
    low = base * 2.0 ** min(failures - 1, 40)
    return min(random.uniform(low, 1.5 * low), MAX_WAIT_SECONDS)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now, at most an hour."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_WAIT_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_WAIT_SECONDS)


def signature(delivery_id: str, timestamp: int, body: bytes, keys: list[bytes]) -> str:
    """Standard Webhooks v1: one `v1,<base64 HMAC-SHA256>` per key, space-separated."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode() for k in keys)


def _json_timestamp(value: datetime) -> str:
    """google.protobuf.Timestamp's JSON form (RFC 3339 in UTC, 0, 3 or 6 fractional digits)."""
    utc = value.astimezone(UTC) if value.tzinfo is not None else value
    base = utc.replace(tzinfo=None, microsecond=0).isoformat()
    micro = utc.microsecond
    if micro == 0:
        return base + "Z"
    if micro % 1000 == 0:
        return f"{base}.{micro // 1000:03d}Z"
    return f"{base}.{micro:06d}Z"


def claim_json(claim: Claim) -> bytes:
    """What json_format.MessageToDict(claim_to_proto(claim), preserving_proto_field_name=True) gives,
    as JSON, made directly (a tenth of the time: tests/unit/test_webhook_rules.py compares the two):
    fields in number order, the uint64 sequence as a string, empty strings and 0 left out."""
    data: dict[str, str] = {}
    if claim.sequence:
        data["sequence"] = str(claim.sequence)
    for name in ("brand_id", "code", "user_id", "email"):
        if text := getattr(claim, name):
            data[name] = text
    data["claimed_at"] = _json_timestamp(claim.claimed_at)
    if claim.expires_at is not None:
        data["expires_at"] = _json_timestamp(claim.expires_at)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class ClaimJson:
    """Each claim's JSON made once, for every webhook of its brand (the feed shares Claim objects)."""

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._entries: dict[int, tuple[Claim, bytes]] = {}

    def __call__(self, claim: Claim) -> bytes:
        entry = self._entries.get(id(claim))
        if entry is not None and entry[0] is claim:
            return entry[1]
        encoded = claim_json(claim)
        if len(self._entries) >= self._size:
            for key in list(itertools.islice(self._entries, self._size // 4)):
                del self._entries[key]
        self._entries[id(claim)] = (claim, encoded)
        return encoded


def next_delivery(
    buffer: deque[Claim], most: int, encode: Callable[[Claim], bytes], max_bytes: int = MAX_BODY_BYTES
) -> list[Claim]:
    """The claims of the next delivery: the first `most` of the buffer, fewer if their JSON would
    pass `max_bytes` (one at least, whatever its size)."""
    batch: list[Claim] = []
    size = 0
    for claim in itertools.islice(buffer, most):
        size += len(encode(claim)) + 1
        if batch and size > max_bytes:
            break
        batch.append(claim)
    return batch


def body(brand_id: str, claims: list[bytes]) -> bytes:
    head = b'{"type":"claims.created","brand_id":' + json.dumps(brand_id, ensure_ascii=False).encode()
    return head + b',"claims":[' + b",".join(claims) + b"]}"


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer
    error: str
    retry_after: float | None
    seconds: float


class _CheckedResolver(AbstractResolver):
    """The connector's resolver: a host's addresses only if every one of them may be called
    (webhooks.resolve), so every connection goes to an address that was checked."""

    def __init__(self, allow_insecure: bool) -> None:
        self._allow_insecure = allow_insecure

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await resolve_host(host, port, allow_insecure=self._allow_insecure)
        except errors.InvalidArgument as exc:
            raise OSError(str(exc)) from None
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


class Poster:
    """POSTs to endpoints: the host is checked before every attempt, and a new connection goes to
    an address the check passed (the connector resolves through the same check, with no cache)."""

    def __init__(self, timeout: float, allow_insecure: bool) -> None:
        self._timeout = timeout
        self._allow_insecure = allow_insecure
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No proxy from the environment (it would connect instead of us, to an address not
            # checked); no DNS cache; no cap on connections, so hanging endpoints starve no one.
            connector = aiohttp.TCPConnector(
                resolver=_CheckedResolver(self._allow_insecure), use_dns_cache=False, limit=0
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, headers: dict[str, str], content: bytes) -> Answer:
        started = time.perf_counter()
        status, retry_after, error = 0, None, ""
        try:
            async with asyncio.timeout(self._timeout):
                target = check_url(url, allow_insecure=self._allow_insecure)
                await resolve(target, allow_insecure=self._allow_insecure)
                async with self._client().post(url, data=content, headers=headers, allow_redirects=False) as response:
                    status = response.status
                    retry_after = retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC))
                    await response.content.read(RESPONSE_READ_LIMIT)
        except TimeoutError:
            error = f"no answer within {self._timeout:g}s (DISCOUNT_WEBHOOK_TIMEOUT_SECONDS)"
        except errors.InvalidArgument as exc:
            error = str(exc)
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status and not error and not 200 <= status < 300:
            error = f"HTTP {status}" + (" Gone: the endpoint asked to stop" if status == 410 else "")
        elif status and error:
            error = f"HTTP {status}, then {error}"
        return Answer(status, error[:MAX_ERROR], retry_after, time.perf_counter() - started)
