"""Throwaway databases for tests and benchmarks: one migrated template, a clone of it per user.

The server is the PostgreSQL at DISCOUNT_TEST_DATABASE_URL when set (CI uses the machine's),
otherwise an embedded one in the temp dir, started on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from discount_dev.postgres import with_database
from discount_service.store import Store

__all__ = ["Databases", "server_url"]

_embedded_url: str | None = None


def server_url() -> str:
    """URL of the PostgreSQL server to make databases on (its `postgres` maintenance database)."""
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
    """Creates a fresh database per user from a migrated template, and drops it afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.template = f"discount_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._created: list[str] = []

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement.encode())

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
