"""One webhook attempt over HTTP: the Standard Webhooks signature, the retry schedule, and the POST
itself, made to the address whose check passed (webhooks.resolve), never to one looked up again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from . import errors
from .webhooks import MAX_ERROR, Target, check_url, resolve

MAX_WAIT_SECONDS = 3600.0
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


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer
    error: str
    retry_after: float | None
    seconds: float


class Poster:
    """POSTs to an endpoint after checking where its host resolves, to the address checked."""

    def __init__(self, timeout: float, allow_insecure: bool) -> None:
        self._timeout = timeout
        self._allow_insecure = allow_insecure
        # No proxy from the environment (it would connect instead of us, to an address not checked);
        # no redirects; no cap on connections, so hanging endpoints cannot starve the others.
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _send_to_first(
        self, target: Target, addresses: list[str], headers: dict[str, str], content: bytes
    ) -> httpx.Response:
        """Sends to the first of the checked addresses that accepts a connection (a host may have
        an IPv6 address the endpoint does not listen on), with the url's host as Host and TLS name."""
        port = f":{target.parts.port}" if target.parts.port else ""
        extensions = {"sni_hostname": target.host} if target.parts.scheme == "https" else {}
        for index, address in enumerate(addresses):
            host = f"[{address}]" if ":" in address else address
            request = self._client.build_request(
                "POST",
                target.parts._replace(netloc=host + port).geturl(),
                content=content,
                headers={**headers, "host": target.parts.netloc},
                extensions=extensions,
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError:
                if index + 1 == len(addresses):
                    raise
        raise AssertionError("resolve returns at least one address")

    async def post(self, url: str, headers: dict[str, str], content: bytes) -> Answer:
        started = time.perf_counter()
        status, retry_after, error = 0, None, ""
        try:
            async with asyncio.timeout(self._timeout):
                target = check_url(url, allow_insecure=self._allow_insecure)
                addresses = await resolve(target, allow_insecure=self._allow_insecure)
                response = await self._send_to_first(target, addresses, headers, content)
                status = response.status_code
                retry_after = retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC))
                try:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read > RESPONSE_READ_LIMIT:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            error = f"no answer within {self._timeout:g}s (DISCOUNT_WEBHOOK_TIMEOUT_SECONDS)"
        except errors.InvalidArgument as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if status and not error and not 200 <= status < 300:
            error = f"HTTP {status}" + (" Gone: the endpoint asked to stop" if status == 410 else "")
        elif status and error:
            error = f"HTTP {status}, then {error}"
        return Answer(status, error[:MAX_ERROR], retry_after, time.perf_counter() - started)
