"""What the hostile-input tests share: one real `discount serve` with a key of every role, kept
small and quiet so the attack, not the pool or the log, is what is measured, and the check that
it came through the attack unhurt."""

from __future__ import annotations

import contextlib
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event

from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import Databases, ServerHandle, create_key, start_server_process, stop_process

QUIET_SMALL_SERVER = {"DISCOUNT_POOL_MIN_SIZE": "1", "DISCOUNT_POOL_MAX_SIZE": "4", "DISCOUNT_LOG_LEVEL": "WARNING"}


@dataclass
class HostileTarget:
    """The server under attack, a channel and a stub to it, and a key of every role."""

    handle: ServerHandle
    channel: grpc.Channel
    stub: pb_grpc.DiscountServiceStub
    keys: dict[str, str]


def keys_of_every_role(url: str, brand: str, other_brand: str) -> dict[str, str]:
    return {
        "admin": create_key(url, "admin"),
        "service": create_key(url, "service"),
        "brand": create_key(url, "brand", brand),
        "other-brand": create_key(url, "brand", other_brand),
    }


@contextlib.contextmanager
def hostile_target(
    databases: Databases, url: str, log: Path, keys: dict[str, str]
) -> Iterator[tuple[ServerHandle, grpc.Channel]]:
    """The server over `url` and a channel to it; afterwards the server must stop with exit 0, and
    the database is dropped."""
    handle = start_server_process(url, log_path=log, admin_key=keys["admin"], extra_env=QUIET_SMALL_SERVER)
    channel = grpc.insecure_channel(handle.address)
    try:
        yield handle, channel
    finally:
        channel.close()
        assert stop_process(handle) == 0
        databases.drop(url)


def assert_serving_without_traceback(channel: grpc.Channel, handle: ServerHandle) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    log = handle.log_text()
    assert "Traceback" not in log and "internal error" not in log.lower(), log[-3000:]


def send_raw_body(
    target: HostileTarget,
    method: str,
    body: bytes,
    metadata: tuple[tuple[str, str], ...],
    allowed: Container[grpc.StatusCode],
) -> bytes | None:
    """`body` as the request of DiscountService's `method`: the reply's bytes, or None for a
    refusal whose status is one of `allowed`."""
    try:
        reply: bytes = target.channel.unary_unary(f"/discount.v1.DiscountService/{method}")(
            body, metadata=metadata, timeout=10
        )
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        event(f"{method} {code.name}")
        assert code in allowed, f"{code} {exc.details()}"  # type: ignore[attr-defined]
        return None
    event(f"{method} OK")
    return reply
