"""Processes on this machine: free ports, a process tree's memory and CPU, and waiting for a server.

Linux only: memory and CPU time are read from /proc.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["NotServingError", "cpu_seconds", "free_port", "process_tree", "rss_bytes", "wait_until_serving"]


class NotServingError(RuntimeError):
    """A server did not become SERVING: its process exited, or the time ran out."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    found = [pid]
    i = 0
    while i < len(found):
        try:
            for task in Path(f"/proc/{found[i]}/task").iterdir():
                found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:  # the process ended while we looked
            pass
        i += 1
    return found


def _rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def rss_bytes(pid: int, *, children: bool = False) -> int:
    """Resident memory of `pid` (and, with `children`, of its live descendants: a server's worker
    processes), in bytes.

    Raises ProcessLookupError if `pid` itself is gone: a memory figure of 0 for a process that died
    would read as "no growth"."""
    try:
        total = _rss_of(pid)
    except OSError as exc:
        raise ProcessLookupError(f"process {pid} is gone") from exc
    if children:
        for child in process_tree(pid)[1:]:
            try:
                total += _rss_of(child)
            except OSError:  # it ended meanwhile
                pass
    return total


def _cpu_of(pid: int, *, reaped: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if reaped:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children it has waited for
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time used so far by `pid`; 0 for a process that is gone.

    With `children`, also by its descendants: the live ones, and those that have exited and been
    waited for (a PostgreSQL backend that ended during a measurement still counts)."""
    if not children:
        return _cpu_of(pid, reaped=False)
    return sum(_cpu_of(p, reaped=True) for p in process_tree(pid))


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return "\n" + path.read_text(errors="replace")[-chars:]


def wait_until_serving(
    target: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    *,
    log_path: Path | None = None,
) -> None:
    """Polls the gRPC health service at `target` (host:port) until it answers SERVING.

    Raises NotServingError if `process` exits first or `timeout` seconds pass; the message ends with
    the tail of `log_path` when one is given. Each poll opens its own connection, so behind a port
    shared by several worker processes successive calls may reach different workers."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise NotServingError(f"server for {target} exited with {process.returncode}{_tail(log_path)}")
        try:
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = None
        except grpc.RpcError as exc:
            last = exc
        if time.monotonic() >= deadline:
            why = f" (last error: {last.code().name})" if isinstance(last, grpc.Call) else ""
            raise NotServingError(f"server at {target} not SERVING after {timeout:g}s{why}{_tail(log_path)}")
        time.sleep(0.1)
