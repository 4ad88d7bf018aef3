"""Shared test helpers: real databases, real servers on real ports, real processes.

Databases: the PostgreSQL at DISCOUNT_TEST_DATABASE_URL when set (CI uses the machine's), otherwise
an embedded one. Each test gets its own database cloned from a migrated template. The databases
and the server processes are discount_dev's (databases.py, servers.py), which the benchmarks share.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from discount.v1 import discount_service_pb2 as pb
from discount_dev.databases import Databases as Databases
from discount_dev.databases import server_url as server_url
from discount_dev.postgres import add_codes, execute
from discount_dev.postgres import create_brand as create_brand
from discount_dev.postgres import create_key as create_key
from discount_dev.postgres import with_database as with_database
from discount_dev.processes import free_port as free_port
from discount_dev.servers import ServerHandle as ServerHandle
from discount_dev.servers import start_server_process as start_server_process
from discount_dev.servers import stop_process as stop_process
from discount_dev.servers import wait_until_serving as wait_until_serving
from discount_service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The setup helpers under the names the tests use: `sql` runs a query straight on the database, as
# a user checking the truth would; `generate_codes_sql` fills a brand with codes (GenerateCodes
# has its own tests).
sql = execute
generate_codes_sql = add_codes
# How many of this database's backends wait on a lock another holds: for tests that hold a row
# and wait until the server's transactions queue behind it.
WAITING_ON_LOCKS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pg_blocking_pids(pid) <> '{}'"
)


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


def claim_request(brand: str, user: str, email: str | None = None) -> pb.ClaimCodeRequest:
    return pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=email or f"{user}@example.com")
