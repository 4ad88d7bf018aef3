"""Helpers shared by the harness processes: ports, process memory, percentiles, a private Postgres."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from discount_service.eventloop import run as run_loop

PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
# The machine's PostgreSQL settings (see `SHOW ALL` on 127.0.0.1:5432), mirrored so the numbers
# transfer; only max_connections is bigger (1,000 watchers, pgbench -c 32 and the pools at once).
PG_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "autovacuum": "off",
    "fsync": "on",
    "synchronous_commit": "on",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "300",
}


def child_main(run: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Entry point of a harness child process: config JSON in argv[1], result JSON to config["out"]."""
    config = json.loads(sys.argv[1])
    result = run_loop(run(config))
    with open(config["out"], "w") as f:
        json.dump(result, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    found = [pid]
    i = 0
    while i < len(found):
        task_dir = Path(f"/proc/{found[i]}/task")
        try:
            for task in task_dir.iterdir():
                children = (task / "children").read_text().split()
                found.extend(int(c) for c in children)
        except OSError:
            pass
        i += 1
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants, in bytes."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of `pid` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError):
            pass
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster in a temp dir, on a free port, just for the benchmark.

    It does not compete with the test databases on the machine's server (max_connections=100),
    and it is deleted afterwards. As root, the server runs as the `postgres` system user.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="discount-bench-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.dir.chmod(0o755)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PrivatePostgres:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = " ".join(
            [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {k}={v}" for k, v in PG_SETTINGS.items()]
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"
        )
        return self

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
