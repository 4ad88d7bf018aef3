"""A private PostgreSQL cluster, and the setup that tests and benchmarks put into a database.

`PrivatePostgres` runs a throwaway cluster of the machine's PostgreSQL binaries (DISCOUNT_PG_BIN,
default /usr/lib/postgresql/15/bin) in a temp dir on a free port: a test can stop and restart it, and
a benchmark can size it, without touching the machine's shared server. As root, the cluster runs as
the `postgres` system user, since PostgreSQL refuses to run as root.

The setup helpers create brands and keys through the service's own named queries; only the bulk
code fill is SQL of its own (a million random codes made inside the database in one statement).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import sql

from discount_dev.processes import free_port
from discount_service.auth import new_api_key
from discount_service.models import Role
from discount_service.store import QUERIES

__all__ = ["PG_BIN", "PrivatePostgres", "add_codes", "create_brand", "create_key", "execute", "with_database"]

PG_BIN = Path(os.environ.get("DISCOUNT_PG_BIN", "/usr/lib/postgresql/15/bin"))


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


class PrivatePostgres:
    """A PostgreSQL cluster of one's own: `start()` (initdb on first use), `stop()`, `cleanup()`.

    `settings` are passed as `-c name=value` server options. As a context manager it starts the
    cluster and removes it afterwards."""

    def __init__(
        self, *, port: int | None = None, settings: Mapping[str, str] | None = None, prefix: str = "discount-pg-"
    ) -> None:
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o755)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        """The `postgres` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip

    def start(self) -> Self:
        """Starts the server (after initdb, the first time) and waits until it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self.init()
        options = " ".join(
            [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {name}={value}" for name, value in self.settings.items()]
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode`; raises if the server was not running."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        """Stops the server if it runs and deletes the cluster."""
        try:
            self.stop("immediate")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        """The server's main process, or None when it is not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def execute(url: str, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs one statement in its own autocommit connection; returns its rows (none for a command)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def create_brand(url: str, brand_id: str, name: str = "") -> int:
    """A brand with its feed head (the service's `create_brand` query); returns its brand_key."""
    rows = execute(url, QUERIES["create_brand"], {"brand_id": brand_id, "name": name or brand_id})
    return int(rows[0][0])


def create_key(url: str, role: str, brand_id: str | None = None) -> str:
    """An API key of `role` (for `brand_id` when the role is brand); returns the secret key."""
    key_id, key, key_hash = new_api_key()
    brands = execute(url, QUERIES["get_brand_key"], {"brand_id": brand_id}) if brand_id is not None else []
    execute(
        url,
        QUERIES["admin_insert_api_key"],
        {
            "key_id": key_id,
            "key_hash": key_hash,
            "role": Role(role).value,
            "brand_key": brands[0][0] if brands else None,
            "brand_id": brand_id,
        },
    )
    return key


# Random 12-character codes made inside the database. Duplicates are skipped rather than
# retried, so a very large fill may come out a code or two short; the count returned is exact.
# Three statements in one transaction rather than one chain of CTEs, which Citus cannot run (no
# subquery in RETURNING, the batch's key needed by the codes' INSERT ... SELECT).
_ADD_BATCH = """
INSERT INTO code_batches (batch_id, brand_key, generated, code_length, prefix, expires_at)
VALUES (gen_random_uuid(), %(brand_key)s, %(count)s, 12, %(prefix)s, {expires})
RETURNING batch_key
"""
_ADD_CODES = """
WITH ins AS (
    INSERT INTO codes (brand_key, batch_key, expires_at, code)
    SELECT %(brand_key)s, %(batch_key)s, {expires},
           %(prefix)s || upper(substr(md5(random()::text || g::text), 1, 12))
    FROM generate_series(1, %(count)s) g
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"""


def add_codes(url: str, brand_id: str, count: int, *, prefix: str = "T-", expires_sql: str = "NULL") -> int:
    """Puts `count` free codes into a brand in one transaction, as setup (GenerateCodes has its own
    tests); `expires_sql` is an SQL expression such as `now() + interval '1 day'`. Returns how
    many went in."""
    expires = sql.SQL(expires_sql)
    with psycopg.connect(url) as conn:
        row = conn.execute(QUERIES["get_brand_key"], {"brand_id": brand_id}).fetchone()
        if row is None:
            raise LookupError(f"no brand {brand_id!r}")
        params = {"brand_key": row[0], "count": count, "prefix": prefix}
        batch = conn.execute(sql.SQL(_ADD_BATCH).format(expires=expires), params).fetchone()
        assert batch is not None
        added = conn.execute(sql.SQL(_ADD_CODES).format(expires=expires), {**params, "batch_key": batch[0]}).fetchone()
        assert added is not None
        conn.execute(QUERIES["add_total_codes"], {"count": added[0], "brand_key": row[0]})
    return int(added[0])
