"""A real HTTP receiver for the webhook tests: aiohttp on 127.0.0.1 and a free port. It records
every request exactly as it arrived (headers and raw body) and answers each path as the test
scripted it: a queue of answers first (status, extra headers, a delay), 200 afterwards."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from standardwebhooks import Webhook

from discount.v1 import discount_service_pb2 as dpb
from discount.v1 import discount_service_pb2_grpc as discount_grpc
from discount.v1 import webhook_service_pb2 as wpb
from discount.v1 import webhook_service_pb2_grpc as webhook_grpc
from tests.grpc_errors import Refusal, refusal
from tests.support import ServerHandle, create_brand, create_key, generate_codes_sql


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def sequences(self) -> list[int]:
        return [int(c["sequence"]) for c in self.payload["claims"]]

    def verify(self, secret: str) -> dict[str, Any]:
        """What a brand's receiver does: standardwebhooks verifies the signature and the timestamp."""
        return dict(Webhook(secret).verify(self.body, self.headers))


@dataclass
class Receiver:
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, deque[tuple[int, dict[str, str], float]]] = field(default_factory=lambda: defaultdict(deque))
    hang: set[str] = field(default_factory=set)
    slow: dict[str, float] = field(default_factory=dict)  # path -> seconds every answer takes
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: tuple[int, dict[str, str], float]) -> None:
        self.scripts[path].extend(answers)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.in_flight[path] += 1
        self.most_in_flight[path] = max(self.most_in_flight[path], self.in_flight[path])
        try:
            body = await request.read()
            self.requests.append(Received(path, dict(request.headers), body, time.time()))
            self._arrived.set()
            if path in self.hang:
                await asyncio.sleep(3600)
            status, headers, delay = self.scripts[path].popleft() if self.scripts[path] else (200, {}, 0.0)
            delay = delay or self.slow.get(path, 0.0)
            if delay:
                await asyncio.sleep(delay)
            return web.Response(status=status, headers=headers, text="ok")
        finally:
            self.in_flight[path] -= 1

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, path: str, last_sequence: int, timeout: float = 20.0) -> list[Received]:
        """The requests at `path` once one carried `last_sequence` (and answered, so 2xx or not)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.at(path)
            if any(last_sequence in r.sequences for r in got):
                return got
            if time.monotonic() > deadline:
                seen = [r.sequences[-1] for r in got if r.sequences]
                raise AssertionError(f"{path}: no delivery of sequence {last_sequence} in {timeout}s; got {seen}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), 0.2)
            except TimeoutError:
                pass


# -- calling the server as a brand's engineer would --------------------------------------------

WEBHOOK_KEY = base64.b64encode(b"webhook tests key, 32 bytes long").decode()
FAST_ENV = {
    "DISCOUNT_WEBHOOK_ALLOW_INSECURE": "1",
    "DISCOUNT_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "DISCOUNT_WEBHOOK_SECRET_KEY": WEBHOOK_KEY,
}
FAST = {
    "webhook_allow_insecure": True,
    "webhook_retry_base_seconds": 0.05,
    "webhook_secret_key": WEBHOOK_KEY,
}


class Api:
    """WebhookService and ClaimCode over a real channel, with one key."""

    def __init__(self, address: str, key: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.webhooks = webhook_grpc.WebhookServiceStub(self.channel)
        self.discount = discount_grpc.DiscountServiceStub(self.channel)
        self.metadata = (("x-api-key", key),)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.webhooks, method)(request, metadata=self.metadata, timeout=10)

    async def fails(self, method: str, request: Any) -> Refusal:
        try:
            await self.call(method, request)
        except grpc.aio.AioRpcError as exc:
            return refusal(exc)
        raise AssertionError(f"{method} succeeded")

    async def create(self, brand_id: str, url: str, **fields: Any) -> wpb.CreateWebhookResponse:
        return await self.call("CreateWebhook", wpb.CreateWebhookRequest(brand_id=brand_id, url=url, **fields))

    async def get(self, webhook_id: str) -> wpb.Webhook:
        return (await self.call("GetWebhook", wpb.GetWebhookRequest(webhook_id=webhook_id))).webhook

    async def deliveries(self, webhook_id: str, **fields: Any) -> wpb.ListWebhookDeliveriesResponse:
        request = wpb.ListWebhookDeliveriesRequest(webhook_id=webhook_id, **fields)
        return await self.call("ListWebhookDeliveries", request)

    async def claim(self, brand_id: str, user: str) -> int:
        request = dpb.ClaimCodeRequest(brand_id=brand_id, user_id=user, email=f"{user}@example.com")
        reply = await self.discount.ClaimCode(request, metadata=self.metadata, timeout=10)
        return int(reply.claim.sequence)

    async def close(self) -> None:
        await self.channel.close()


async def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s (last: {value!r})")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def owner_and_shop(server: ServerHandle, brand_id: str, codes: int = 5) -> AsyncIterator[tuple[Api, Api]]:
    """Brand `brand_id` with `codes` codes; an Api with its brand key (the owner, who manages the
    webhooks) and one with a service key (the shop, who claims), closed afterwards."""
    create_brand(server.database_url, brand_id)
    generate_codes_sql(server.database_url, brand_id, codes)
    owner = Api(server.address, create_key(server.database_url, "brand", brand_id))
    shop = Api(server.address, create_key(server.database_url, "service"))
    try:
        yield owner, shop
    finally:
        await owner.close()
        await shop.close()
