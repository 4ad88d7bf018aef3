"""A throwaway Citus cluster on this machine: one coordinator and N workers, for tests and benchmarks.

Each node is a `PrivatePostgres` (a server of the machine's PostgreSQL binaries in a temp dir, on a
free port) with `shared_preload_libraries = 'citus'`. Citus must be installed into that PostgreSQL
(`scripts/setup.d/50-citus.sh` builds it).

    with CitusCluster() as cluster:
        url = cluster.create_database("app")   # the database on every node, workers registered
        ...
        cluster.kill_worker(0)                 # SIGKILL, as when its machine dies
        cluster.start_worker(0)

A database of a Citus cluster exists once per node: the coordinator's copy holds the metadata (which
node has which shard), each worker's copy holds shards. `create_database(name, template=...)` clones
the template on every node, which gives an identical cluster database: the metadata names nodes by
host and port, never by database, and connections between nodes use the database they run in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from discount_dev.postgres import PG_BIN, PrivatePostgres
from discount_service.store import Store

__all__ = ["CITUS_SETTINGS", "CitusCluster", "CitusDatabases", "CitusError", "citus_installed"]

HOST = "127.0.0.1"
# Settings of a disposable test cluster: durability off (a crashed run is thrown away, and a
# SIGKILLed worker still recovers from its WAL), prepared transactions on for the two-phase commit
# of transactions that write on several nodes, enough connections for the coordinator's to workers.
CITUS_SETTINGS = {
    "shared_preload_libraries": "citus",
    "max_prepared_transactions": "200",
    "max_connections": "300",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "citus.enable_statistics_collection": "off",  # no call home from test clusters
    "track_functions": "pl",  # per-node call counts: which node ran a claim function
}


class CitusError(RuntimeError):
    """The cluster could not be started or changed."""


def citus_installed(bindir: Path = PG_BIN) -> bool:
    """True when the Citus extension is installed into the PostgreSQL of `bindir`."""
    lib = bindir.parent / "lib" / "citus.so"
    control = Path("/usr/share/postgresql") / bindir.parent.name / "extension" / "citus.control"
    return lib.exists() and control.exists()


class CitusCluster:
    """A coordinator and `workers` workers; `start()` or `with` starts them, `stop()` removes them."""

    def __init__(self, workers: int = 2, *, settings: dict[str, str] | None = None) -> None:
        """`settings` are added to CITUS_SETTINGS on every node (e.g. `citus.shard_count`)."""
        if not citus_installed():
            raise CitusError(f"Citus is not installed into the PostgreSQL of {PG_BIN}: run scripts/setup.d/50-citus.sh")
        self._settings = {**CITUS_SETTINGS, **(settings or {})}
        self._n_workers = workers
        self.coordinator: PrivatePostgres | None = None
        self.workers: list[PrivatePostgres] = []
        self.startup_seconds = 0.0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def nodes(self) -> list[PrivatePostgres]:
        return ([self.coordinator] if self.coordinator else []) + self.workers

    def start(self) -> None:
        """Makes and starts every node; `startup_seconds` says how long it took."""
        started = time.monotonic()
        self.coordinator = PrivatePostgres(settings=self._settings, prefix="discount-citus-coordinator-")
        self.workers = [
            PrivatePostgres(settings=self._settings, prefix=f"discount-citus-worker{i}-")
            for i in range(self._n_workers)
        ]
        try:
            # One initdb, copied: initdb is seconds of CPU, a copy of its result is a fraction of one.
            self.coordinator.init()
            for worker in self.workers:
                subprocess.run(["cp", "-a", str(self.coordinator.data), str(worker.data)], check=True)
            _on_each(self.nodes, lambda node: node.start())
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stops every node and deletes its files."""
        for node in self.nodes:
            node.cleanup()
        self.coordinator, self.workers = None, []

    # -- one worker: crash and recovery ------------------------------------------------------

    def kill_worker(self, index: int) -> None:
        """SIGKILL to one worker's postmaster and every backend, as when its machine dies."""
        node = self.workers[index]
        pid = node.postmaster_pid()
        if pid is None:
            raise CitusError(f"worker {index} is not running")
        # The backends first, so that none outlives the postmaster and keeps serving a session.
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        # postmaster.pid stays behind; the next start sees that its process is gone.

    def start_worker(self, index: int) -> None:
        """Starts a killed worker again; PostgreSQL first replays its WAL."""
        self.workers[index].start()

    # -- databases ---------------------------------------------------------------------------

    def _coordinator(self) -> PrivatePostgres:
        if self.coordinator is None:
            raise CitusError("the cluster is not running")
        return self.coordinator

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Creates database `name` on every node and returns its URL on the coordinator.

        Without `template`: the citus extension on every node and the workers registered, an empty
        cluster database. With `template` (a database made by this method): a clone of it on every
        node, distributed tables included. Cloning needs a template nobody is connected to, and
        Citus keeps sessions open in every database it is loaded in (its maintenance daemon, cached
        connections between nodes), so the template is closed to connections from then on."""
        coordinator = self._coordinator()
        if template is not None:
            _on_each(self.nodes, lambda node: _close_database(node.url, template))
        clause = f' TEMPLATE "{template}"' if template else ""
        _on_each(self.nodes, lambda node: _admin(node.url, f'CREATE DATABASE "{name}"{clause}'))
        if template is None:
            _on_each(self.nodes, lambda node: _admin(node.url_for(name), "CREATE EXTENSION citus"))
            with psycopg.connect(coordinator.url_for(name), autocommit=True) as conn:
                conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (HOST, coordinator.port))
                for worker in self.workers:
                    conn.execute("SELECT citus_add_node(%s, %s)", (HOST, worker.port))
        return coordinator.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drops database `name` on every node that runs, whoever is connected."""

        def drop(node: PrivatePostgres) -> None:
            with contextlib.suppress(psycopg.OperationalError):  # a stopped node
                _admin(node.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        _on_each(self.nodes, drop)


class CitusDatabases:
    """A fresh cluster database per test: one template migrated (and so distributed) by the service's
    own Store.migrate, cloned on every node for each test. The same interface as the tests'
    `Databases` for a single PostgreSQL."""

    def __init__(self, cluster: CitusCluster) -> None:
        self.cluster = cluster
        self.template = f"discount_citus_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._created: list[str] = []

    def setup_template(self) -> None:
        url = self.cluster.create_database(self.template)
        asyncio.run(Store(url).migrate())

    def create(self) -> str:
        name = f"discount_citus_{uuid.uuid4().hex[:12]}"
        self._created.append(name)
        return self.cluster.create_database(name, template=self.template)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        self.cluster.drop_database(str(name))

    def drop_all(self) -> None:
        for name in [*self._created, self.template]:
            self.cluster.drop_database(name)


def _admin(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement.encode())


def _close_database(url: str, name: str) -> None:
    """No new sessions in database `name`, and the open ones ended."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'.encode())
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def _on_each(nodes: list[PrivatePostgres], action: Callable[[PrivatePostgres], object]) -> None:
    """`action` on every node at once (each mostly waits on its server); re-raises the first failure."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for future in [pool.submit(action, node) for node in nodes]:
            future.result()


def _children(pid: int) -> Iterator[int]:
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            yield from (int(child) for child in (task / "children").read_text().split())


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise CitusError(f"process {pid} still runs {timeout:.0f} s after SIGKILL")
