"""Wiring: `create_server(settings) -> (server, port)`, shared by `discount serve` and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from discount.v1 import admin_service_pb2 as admin_pb
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import webhook_service_pb2 as webhook_pb

from .admin_service import AdminService
from .admin_servicer import ADMIN_SERVICE_NAME, AdminServicer, add_admin_to_server
from .auth import Authenticator
from .call_handling import CallHandling, CallObserver
from .expiry_sweep import ExpirySweep
from .feed import ClaimFeed
from .jetstream import check_stream_at_start
from .limits import Capacity
from .metrics import Metrics
from .operating_state import OperatingState
from .relay import ClaimRelay
from .revocation import KeyRevocations
from .service import CodeService
from .servicer import SERVICE_NAME, DiscountServicer, add_to_server
from .settings import Settings
from .store import Store
from .webhook_delivery import WebhookDeliverer
from .webhook_servicer import WEBHOOK_SERVICE_NAME, WebhookServicer, add_webhooks_to_server
from .webhooks import SecretBox, WebhookService

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CallHandling)

HEALTH_CHECK_SECONDS = 1.0
# On SIGTERM, how long the server keeps serving (reporting NOT_SERVING) before it stops accepting calls.
SHUTDOWN_DRAIN_SECONDS = 0.5


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from .embedded import embedded_database_url

    return embedded_database_url(settings.data_dir)


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    root = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )


@dataclass
class ServerApp:
    """The gRPC server plus what it owns: the store, the claim feed and the health reporter."""

    grpc_server: grpc.aio.Server
    store: Store
    feed: ClaimFeed
    service: CodeService
    health: health_aio.HealthServicer
    settings: Settings
    metrics: Metrics | None = None
    webhooks: WebhookDeliverer | None = None
    relay: ClaimRelay | None = None
    # Takes expired codes out of the claim path (made on start when not given).
    expiry_sweep: ExpirySweep | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _on_stop: list[Callable[[], object]] = field(default_factory=list)

    async def start(self) -> None:
        await self.feed.start()
        if self.expiry_sweep is None:
            self.expiry_sweep = ExpirySweep(self.store)
        self.expiry_sweep.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        if self.relay is not None:
            await self.relay.start()
        await self.grpc_server.start()
        if self.metrics is not None and self.settings.metrics_listen:
            self.metrics.start(self.settings.metrics_listen)
            self._on_stop.append(self.metrics.stop)
        self._tasks.append(asyncio.get_running_loop().create_task(self._report_health()))

    async def _report_health(self) -> None:
        serving: bool | None = None
        while True:
            # Any statement that succeeded since the last check proves the database answers (on a
            # busy server, or one whose feed polls), so the check adds a transaction only when idle.
            ok = await self.store.ping(timeout=HEALTH_CHECK_SECONDS, unless_answered_within=HEALTH_CHECK_SECONDS)
            if ok != serving:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                await self.health.set("", status)
                await self.health.set(SERVICE_NAME, status)
                await self.health.set(ADMIN_SERVICE_NAME, status)
                await self.health.set(WEBHOOK_SERVICE_NAME, status)
                log.info(
                    "database %s: health %s", "reachable" if ok else "unreachable", "SERVING" if ok else "NOT_SERVING"
                )
                serving = ok
            await asyncio.sleep(HEALTH_CHECK_SECONDS)

    async def stop(self, grace: float | None = None, drain: float = 0.0) -> None:
        """Graceful stop: refuse new calls, end watch streams, let in-flight calls finish.

        `drain` (SIGTERM uses SHUTDOWN_DRAIN_SECONDS): report NOT_SERVING but keep serving that long
        first, so calls the transport already received get a handler (gRPC core cancels received
        but not yet started calls when the server stops) and load balancers route elsewhere."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(min(drain, grace / 2))
        for task in self._tasks:
            task.cancel()
        if self.expiry_sweep is not None:
            await self.expiry_sweep.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.relay is not None:
            await self.relay.stop()
        await self.feed.stop()
        await self.grpc_server.stop(grace)
        for hook in self._on_stop:
            hook()
        await self.store.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    settings: Settings,
    *,
    database_url: str | None = None,
    observe: CallObserver | None = None,
) -> tuple[ServerApp, int]:
    """Builds a ready-to-start server bound to `settings.listen` (port 0 picks a free port).

    Opens the pool and migrates the schema first, so a server that starts can serve.
    """
    # Before anything opens: a stream that cannot take the relay's subjects stops the start (one line).
    await check_stream_at_start(settings)
    url = database_url or resolve_database_url(settings)
    store = Store(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.db_timeout_seconds,
    )
    await store.migrate()
    await store.open(wait=True)
    feed = ClaimFeed(store, poll_seconds=settings.feed_poll_seconds)
    key_revocations = KeyRevocations(store.active_key_ids, check_seconds=settings.key_cache_seconds)
    expiry_sweep = ExpirySweep(store)
    service = CodeService(store, feed, key_revocations, on_batch_expiring=expiry_sweep.batch_expires)
    metrics = None
    if settings.metrics_listen:
        metrics = Metrics(OperatingState(store), feed)
        observe = metrics.observe if observe is None else _observe_both(observe, metrics.observe)
    observe = _counting_refused_calls(store, observe)
    capacity = Capacity(settings.max_inflight_calls, settings.max_open_streams)
    if metrics is not None:
        metrics.capacity = capacity

    jwt_verifier = None
    if settings.jwt_secret or settings.jwt_public_key:
        from .tokens import JwtVerifier

        jwt_verifier = JwtVerifier.from_settings(settings)
    authenticator = Authenticator(
        store.find_api_key,
        cache_seconds=settings.key_cache_seconds,
        jwt_verifier=jwt_verifier,
        key_revocations=key_revocations,
    )

    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        # Keep idle watch streams alive through proxies and notice dead peers.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Calls the transport has received but no handler has taken yet. Past 1,000 of them gRPC
        # core drops calls at random (CANCELLED, before any handler, log or metric sees them), and
        # 2,000 streams opened at once lost 7-10% that way. Room for everything the limits admit:
        # past those, the servicer refuses with OVERLOADED and a retry delay, counted and logged.
        ("grpc.server.max_pending_requests", settings.max_inflight_calls + settings.max_open_streams),
        ("grpc.server.max_pending_requests_hard_limit", 2 * (settings.max_inflight_calls + settings.max_open_streams)),
    ]
    server = grpc.aio.server(options=options)
    _sharing(capacity, add_to_server)(
        DiscountServicer(
            service,
            authenticator,
            default_timeout=settings.default_call_timeout_seconds,
            observe=observe,
            max_message_bytes=settings.max_message_bytes,
        ),
        server,
    )
    _sharing(capacity, add_admin_to_server)(
        AdminServicer(
            AdminService(store, on_key_revoked=authenticator.forget_key),
            authenticator,
            default_timeout=settings.default_call_timeout_seconds,
            observe=observe,
        ),
        server,
    )
    secret_box: list[SecretBox] = []

    def box() -> SecretBox:  # made on first use: a server without webhooks needs no key
        if not secret_box:
            secret_box.append(SecretBox.from_settings(settings.webhook_secret_key, settings.data_dir))
        return secret_box[0]

    deliverer = WebhookDeliverer(store, feed, settings, box)
    if metrics is not None:
        metrics.watch_webhooks(deliverer)
        deliverer.observer = metrics
    _sharing(capacity, add_webhooks_to_server)(
        WebhookServicer(
            WebhookService(store, box, allow_insecure=settings.webhook_allow_insecure, on_change=deliverer.poke),
            authenticator,
            default_timeout=settings.default_call_timeout_seconds,
            observe=observe,
        ),
        server,
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            pb.DESCRIPTOR.services_by_name["DiscountService"].full_name,
            admin_pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
            webhook_pb.DESCRIPTOR.services_by_name["WebhookService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = _server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        with contextlib.suppress(Exception):
            await store.close()
        raise OSError(f"could not listen on {settings.listen}; is another server using it?")
    relay = ClaimRelay(store, feed, settings) if settings.nats_url else None
    if metrics is not None:
        metrics.relay = relay
    discount_server = ServerApp(
        server,
        store,
        feed,
        service,
        health_servicer,
        settings,
        metrics,
        deliverer,
        relay=relay,
        expiry_sweep=expiry_sweep,
    )
    return discount_server, port


def _observe_both(first: CallObserver, second: CallObserver) -> CallObserver:
    def observe(method: str, status: str, seconds: float) -> None:
        first(method, status, seconds)
        second(method, status, seconds)

    return observe


def _counting_refused_calls(store: Store, observe: CallObserver | None) -> CallObserver:
    """The store counts the calls answered UNAVAILABLE during an outage, for the log line that ends it."""

    def observed(method: str, status: str, seconds: float) -> None:
        if status == "UNAVAILABLE":
            store.count_refused_call()
        if observe is not None:
            observe(method, status, seconds)

    return observed


def _sharing(capacity: Capacity, add: Callable[[S, grpc.aio.Server], None]) -> Callable[[S, grpc.aio.Server], None]:
    """`add` (a servicer's registration) with the servicer counted against the server's one capacity."""

    def add_sharing(servicer: S, server: grpc.aio.Server) -> None:
        servicer.share_capacity(capacity)
        add(servicer, server)

    return add_sharing
