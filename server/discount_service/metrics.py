"""Prometheus metrics, served over HTTP when DISCOUNT_METRICS_LISTEN (HOST:PORT) is set.

- `discount_rpc_total{method,status}` and `discount_rpc_duration_seconds{method,status}`: every
  call, fed by the servicer's `observe(method, status, seconds)` callback;
- `discount_codes_available{brand_id}`: codes a user could claim now, per brand, read from the
  database at scrape time and cached for `cache_seconds`;
- `discount_watchers_connected`: open WatchClaims streams of this process;
- `discount_db_pool_*`: the connection pool (size, idle, max, waiting requests);
- `discount_calls_refused_total{reason}`: calls refused to protect the server, before any work
  (OVERLOADED: over its limit of calls in flight or open streams; RATE_LIMITED: a host's failed
  authentications), with `discount_calls_in_flight` and `discount_streams_open` against their limits.

The HTTP server runs in its own thread; the scrape reads the database through the server's event
loop, so the pool is never touched from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import errors
from .feed import ClaimFeed
from .limits import Capacity
from .operating_state import OperatingState

log = logging.getLogger(__name__)


class WebhookLag(Protocol):
    def lag(self) -> list[tuple[str, str, float]]: ...


class RelayLag(Protocol):
    leading: bool
    connected: bool

    def lag(self) -> int: ...


# Claims take about 1-50 ms; watch streams last up to hours.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 300.0, 3600.0)
SCRAPE_QUERY_SECONDS = 2.0


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class _StateCollector(Collector):
    """Gauges computed when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        available = GaugeMetricFamily(
            "discount_codes_available", "Codes of the brand that can be claimed now", labels=["brand_id"]
        )
        for brand_id, count in m.codes_available():
            available.add_metric([brand_id], count)
        yield available
        yield GaugeMetricFamily(
            "discount_watchers_connected", "Open WatchClaims streams in this process", value=m.feed.watcher_count
        )
        lag = GaugeMetricFamily(
            "discount_webhook_lag_seconds",
            "Age of the oldest claim a webhook delivered by this process has not had acknowledged (0: up to date)",
            labels=["webhook_id", "brand_id"],
        )
        for webhook_id, brand_id, seconds in m.webhooks.lag() if m.webhooks is not None else ():
            lag.add_metric([webhook_id, brand_id], seconds)
        yield lag
        if m.relay is not None:
            yield GaugeMetricFamily(
                "discount_relay_lag_claims",
                "Claims committed that JetStream has not acknowledged from the relay (0 unless this process relays)",
                value=m.relay.lag(),
            )
            yield GaugeMetricFamily(
                "discount_relay_active",
                "1 while this process holds the relay lock and is connected to NATS",
                value=int(m.relay.leading and m.relay.connected),
            )
        pool = m.state.pool()
        yield GaugeMetricFamily("discount_db_pool_size", "Database connections open in the pool", value=pool.size)
        yield GaugeMetricFamily("discount_db_pool_in_use", "Database connections lent to calls", value=pool.in_use)
        yield GaugeMetricFamily("discount_db_pool_idle", "Database connections idle in the pool", value=pool.idle)
        yield GaugeMetricFamily("discount_db_pool_max", "Most database connections the pool opens", value=pool.max_size)
        yield GaugeMetricFamily(
            "discount_db_pool_requests_waiting",
            "Calls waiting for a database connection",
            value=pool.waiting,
        )
        if m.capacity is not None:
            yield from _capacity_metrics(m.capacity)


def _capacity_metrics(capacity: Capacity) -> Iterable[Metric]:
    refused = CounterMetricFamily(
        "discount_calls_refused", "Calls refused before any work to protect the server, by reason", labels=["reason"]
    )
    for reason in ("OVERLOADED", "RATE_LIMITED"):
        refused.add_metric([reason], capacity.refused[reason])
    yield refused
    yield GaugeMetricFamily("discount_calls_in_flight", "Unary calls being handled", value=capacity.calls)
    yield GaugeMetricFamily("discount_calls_in_flight_max", "Most unary calls at once", value=capacity.max_calls)
    yield GaugeMetricFamily("discount_streams_open", "Streams open (WatchClaims)", value=capacity.streams)
    yield GaugeMetricFamily("discount_streams_open_max", "Streams open at once at most", value=capacity.max_streams)


class Metrics:
    def __init__(self, state: OperatingState, feed: ClaimFeed, *, cache_seconds: float = 5.0) -> None:
        self.state = state
        self.feed = feed
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "discount_rpc",
            "gRPC calls handled, by method and status code",
            ["method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "discount_rpc_duration_seconds",
            "Time to handle a gRPC call (a WatchClaims call lasts as long as its stream)",
            ["method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._webhook_attempts = Counter(
            "discount_webhook_deliveries",
            "Webhook delivery attempts, by result: success (2xx), failure (retried), gone (410, disabled)",
            ["result"],
            registry=self.registry,
        )
        self._webhook_retries = Counter(
            "discount_webhook_retries", "Webhook delivery attempts that repeated a failed one", registry=self.registry
        )
        self.webhooks: WebhookLag | None = None
        self.relay: RelayLag | None = None  # the NATS relay, when DISCOUNT_NATS_URL is set (app.py)
        self.capacity: Capacity | None = None  # the server's limits, once it has them (app.py)
        self.registry.register(_StateCollector(self))
        self._cache_seconds = cache_seconds
        self._available: list[tuple[str, int]] = []
        self._available_at = float("-inf")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def observe(self, method: str, status: str, seconds: float) -> None:
        """The servicer's CallObserver."""
        self._calls.labels(method, status).inc()
        self._latency.labels(method, status).observe(seconds)

    def watch_webhooks(self, deliverer: WebhookLag) -> None:
        """Reports the lag of the deliverer's webhooks (its attempts come through `attempt`)."""
        self.webhooks = deliverer

    def attempt(self, result: str, retry: bool) -> None:
        """A webhook delivery attempt (webhook_delivery.DeliveryObserver)."""
        self._webhook_attempts.labels(result).inc()
        if retry:
            self._webhook_retries.inc()

    def codes_available(self) -> list[tuple[str, int]]:
        """Per brand, cached for `cache_seconds`; on a database error, the last values."""
        with self._lock:
            if time.monotonic() - self._available_at < self._cache_seconds or self._loop is None:
                return self._available
            future = asyncio.run_coroutine_threadsafe(self.state.codes_available(), self._loop)
            try:
                self._available = future.result(timeout=SCRAPE_QUERY_SECONDS)
            except (errors.DiscountError, TimeoutError) as exc:
                future.cancel()
                log.warning("metrics: could not read codes available (%s); serving the last values", exc)
            self._available_at = time.monotonic()
            return self._available

    def start(self, listen: str) -> int:
        """Serves /metrics on HOST:PORT (port 0 picks one) from a thread; returns the port."""
        self._loop = asyncio.get_running_loop()
        host, port = parse_listen(listen)
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample, for tests and debugging."""
        for family in self.registry.collect():
            for sample in family.samples:
                yield sample.name, dict(sample.labels), float(sample.value)
