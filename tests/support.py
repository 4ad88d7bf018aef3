"""Shared test helpers: real databases, real servers on real ports, real processes.

Databases: the PostgreSQL at DISCOUNT_TEST_DATABASE_URL when set (CI uses the machine's), otherwise
an embedded one. Each test gets its own database cloned from a migrated template.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_service.auth import new_api_key
from discount_service.models import Role
from discount_service.settings import Settings
from discount_service.store import Store

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


_embedded_url: str | None = None


def server_url() -> str:
    """URL of the PostgreSQL server the tests use (the `postgres` maintenance database)."""
    global _embedded_url
    url = os.environ.get("DISCOUNT_TEST_DATABASE_URL")
    if url:
        return url
    if _embedded_url is None:
        from discount_service.embedded import embedded_database_url

        data_dir = Path(tempfile.gettempdir()) / "discount-test-embedded"
        _embedded_url = embedded_database_url(data_dir)
    return _embedded_url


class Databases:
    """Creates a fresh database per test from a migrated template, and drops it afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.template = f"discount_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._created: list[str] = []

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def setup_template(self) -> None:
        self._admin(f'CREATE DATABASE "{self.template}"')
        asyncio.run(Store(with_database(self.url, self.template)).migrate())

    def create(self) -> str:
        name = f"discount_t_{uuid.uuid4().hex[:12]}"
        for attempt in range(20):
            try:
                self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                break
            except psycopg.errors.ObjectInUse:  # someone still connected to the template
                time.sleep(0.1 * (attempt + 1))
        self._created.append(name)
        return with_database(self.url, name)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with contextlib.suppress(psycopg.Error):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        for name in [*self._created, self.template]:
            with contextlib.suppress(psycopg.Error):
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs a query straight on the database, as a user checking the truth would."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def create_brand(url: str, brand_id: str, name: str = "") -> None:
    """Test setup straight in SQL (the `discount brand create` command has its own test)."""
    sql(
        url,
        "WITH b AS (INSERT INTO brands (brand_id, name) VALUES (%s, %s) RETURNING brand_key) "
        "INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM b",
        (brand_id, name or brand_id),
    )


def create_key(url: str, role: str, brand_id: str | None = None) -> str:
    key_id, key, key_hash = new_api_key()
    sql(
        url,
        "INSERT INTO api_keys (key_id, key_hash, role, brand_key) "
        "VALUES (%s, %s, %s, (SELECT brand_key FROM brands WHERE brand_id = %s))",
        (key_id, key_hash, Role(role).value, brand_id),
    )
    return key


def generate_codes_sql(url: str, brand_id: str, count: int, *, expires_sql: str = "NULL") -> None:
    """Inserts `count` codes directly (test setup only; the RPC is tested on its own)."""
    sql(
        url,
        f"""
        WITH b AS (SELECT brand_key FROM brands WHERE brand_id = %(brand)s),
        batch AS (
            INSERT INTO code_batches (batch_id, brand_key, generated, code_length, prefix, expires_at)
            SELECT gen_random_uuid(), brand_key, %(count)s, 12, 'T-', {expires_sql} FROM b
            RETURNING batch_key, brand_key
        ), ins AS (
            INSERT INTO codes (brand_key, batch_key, expires_at, code)
            SELECT batch.brand_key, batch.batch_key, {expires_sql},
                   'T-' || upper(substr(md5(random()::text || g::text), 1, 12))
            FROM batch, generate_series(1, %(count)s) g
            RETURNING 1
        )
        UPDATE brand_feed_heads SET total_codes = total_codes + (SELECT count(*) FROM ins)
        WHERE brand_key = (SELECT brand_key FROM b)
        """,
        {"brand": brand_id, "count": count},
    )


@dataclass
class ServerHandle:
    """A server on a real port, in-process or in a child process."""

    address: str
    database_url: str
    admin_key: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def metadata(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", key or self.admin_key),)

    def aio_stub(self) -> tuple[grpc.aio.Channel, pb_grpc.DiscountServiceStub]:
        channel = grpc.aio.insecure_channel(self.address)
        return channel, pb_grpc.DiscountServiceStub(channel)

    @contextlib.contextmanager
    def stub(self) -> Iterator[pb_grpc.DiscountServiceStub]:
        with grpc.insecure_channel(self.address) as channel:
            yield pb_grpc.DiscountServiceStub(channel)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def server_settings(**overrides: Any) -> Settings:
    import dataclasses

    base = Settings(listen="127.0.0.1:0", pool_min_size=2, pool_max_size=16, shutdown_grace_seconds=5.0)
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def in_process_server(database_url: str, **overrides: Any) -> AsyncIterator[tuple[Any, ServerHandle]]:
    """A real server on a real (free) port inside the test's event loop."""
    from discount_service.app import create_server

    server, port = await create_server(server_settings(**overrides), database_url=database_url)
    await server.start()
    admin_key = await asyncio.to_thread(create_key, database_url, "admin")
    try:
        yield server, ServerHandle(address=f"127.0.0.1:{port}", database_url=database_url, admin_key=admin_key)
    finally:
        await server.stop(grace=1.0)


def start_server_process(
    database_url: str,
    port: int | None = None,
    *,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    admin_key: str | None = None,
    wait: bool = True,
) -> ServerHandle:
    """`discount serve` as a child process, in its own session so signals reach only it."""
    port = port or free_port()
    env = {
        **os.environ,
        "DISCOUNT_DATABASE_URL": database_url,
        "DISCOUNT_LISTEN": f"127.0.0.1:{port}",
        "DISCOUNT_SHUTDOWN_GRACE_SECONDS": "5",
        **(extra_env or {}),
    }
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [str(BIN / "discount"), "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle = ServerHandle(
        address=f"127.0.0.1:{port}",
        database_url=database_url,
        admin_key=admin_key or create_key(database_url, "admin"),
        process=process,
        log_path=log_path,
        env=env,
    )
    if wait:
        wait_until_serving(handle)
    return handle


def wait_until_serving(handle: ServerHandle, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if handle.process is not None and handle.process.poll() is not None:
            raise RuntimeError(f"server exited with {handle.process.returncode}:\n{handle.log_text()}")
        try:
            with grpc.insecure_channel(handle.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"server at {handle.address} not SERVING after {timeout}s ({last}):\n{handle.log_text()}")


def stop_process(handle: ServerHandle, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    assert handle.process is not None
    if handle.process.poll() is None:
        handle.process.send_signal(sig)
    return handle.process.wait(timeout=timeout)


def claim_request(brand: str, user: str, email: str | None = None) -> pb.ClaimCodeRequest:
    return pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=email or f"{user}@example.com")
