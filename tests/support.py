"""Shared test helpers: real databases, real servers on real ports, real processes.

Databases: the PostgreSQL at DISCOUNT_TEST_DATABASE_URL when set (CI uses the machine's), otherwise
an embedded one. Each test gets its own database cloned from a migrated template.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev import processes
from discount_dev.postgres import add_codes, execute
from discount_dev.postgres import create_brand as create_brand
from discount_dev.postgres import create_key as create_key
from discount_dev.postgres import with_database as with_database
from discount_dev.processes import free_port as free_port
from discount_service.settings import Settings
from discount_service.store import Store

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The setup helpers under the names the tests use: `sql` runs a query straight on the database, as
# a user checking the truth would; `generate_codes_sql` fills a brand with codes (GenerateCodes
# has its own tests).
sql = execute
generate_codes_sql = add_codes


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
    processes.wait_until_serving(handle.address, timeout, handle.process, log_path=handle.log_path)


def stop_process(handle: ServerHandle, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    assert handle.process is not None
    if handle.process.poll() is None:
        handle.process.send_signal(sig)
    return handle.process.wait(timeout=timeout)


def claim_request(brand: str, user: str, email: str | None = None) -> pb.ClaimCodeRequest:
    return pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=email or f"{user}@example.com")
