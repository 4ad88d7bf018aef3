"""The harness's child processes: the server under test, the echo baseline, the load generator and
the WatchClaims clients, each a real process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.common import BIN, PY, ROOT
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_client._common import WATCH_CLAIMS_PER_RESPONSE as WATCH_CLAIMS_PER_RESPONSE
from discount_dev.processes import NotServingError, cpu_seconds, free_port, wait_until_serving


class Server:
    """`discount serve` as a child process (or N worker processes behind one port)."""

    def __init__(self, db_url: str, workers: int, logdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        env = {
            **os.environ,
            "DISCOUNT_DATABASE_URL": db_url,
            "DISCOUNT_LISTEN": self.address,
            "DISCOUNT_WORKERS": str(workers),
            "DISCOUNT_LOG_LEVEL": "WARNING",
            "DISCOUNT_SHUTDOWN_GRACE_SECONDS": "3",
            **(extra_env or {}),
        }
        self.log_path = logdir / f"server-{self.port}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "discount"), "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Each check is a new connection, which the kernel hands to any of the workers sharing the
        # port: after 3 per worker, probably every worker is serving.
        try:
            for _ in range(3 * workers):
                wait_until_serving(self.address, 60.0, self.process, log_path=self.log_path)
        except NotServingError:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


@contextlib.contextmanager
def echo_server(logdir: Path) -> Iterator[str]:
    """The RPC-layer baseline (echo.py) on a free port; yields its address."""
    port = free_port()
    with (logdir / "echo.log").open("ab") as out:
        proc = subprocess.Popen([PY, "-m", "bench.echo", str(port)], stdout=subprocess.PIPE, stderr=out, cwd=ROOT)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("echo server did not start")
        try:
            yield f"127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def run_loadgen(config: dict[str, Any]) -> dict[str, Any]:
    """One run of the load generator (loadgen.py) in its own process; returns its raw result."""
    subprocess.run([PY, "-m", "bench.loadgen", json.dumps(config)], check=True, cwd=ROOT)
    return dict(json.loads(Path(config["out"]).read_text()))


class Watchers:
    """A watchers.py process with N WatchClaims streams of one brand, or one stream per brand of
    `brands` (ready once their headers came, every event's receipt time recorded)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        target: str,
        api_key: str,
        brand: str,
        n: int,
        *,
        record: bool = True,
        per_response: int = WATCH_CLAIMS_PER_RESPONSE,
        brands: list[str] | None = None,
    ) -> None:
        self.out = workdir / f"watch-{name}.json"
        config = {
            "target": target,
            "api_key": api_key,
            "brand": brand,
            "brands": brands,
            "ready_on_headers": brands is not None,
            "record_events": brands is not None,
            "watchers": n,
            "channels": max(1, n // 10),
            "after_sequence": 0,
            "record_latency": record,
            "latency_every": max(1, n // 10),
            "max_claims_per_response": per_response,
            "drain_timeout": 600,
            "out": str(self.out),
        }
        self.process = subprocess.Popen(
            [PY, "-m", "bench.watchers", json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )

    def wait_ready(self, timeout: float = 120) -> None:
        line = self._readline(timeout)
        if line != "ready":
            raise RuntimeError(f"watchers not ready: {line!r}")

    def _readline(self, timeout: float) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(stdout.readline().decode().strip()))
        t.start()
        t.join(timeout)
        if not result:
            raise TimeoutError("watchers did not answer")
        return result[0]

    def set_priority(self, niceness: int) -> None:
        """Sets the CPU priority of every thread of the watcher process (gRPC's threads too; threads
        it starts later inherit it). 19 is the lowest: the process then runs on what the server,
        PostgreSQL and the load generator leave, as clients on other machines would."""
        for tid in os.listdir(f"/proc/{self.process.pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid, children=True)

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def finish(self, until: int, timeout: float = 700) -> dict[str, Any]:
        """Waits until every stream has reached sequence `until`; returns the raw result."""
        self._send(f"until {until}")
        self.process.wait(timeout=timeout)
        return dict(json.loads(self.out.read_text()))

    def finish_each(self, last_of: dict[str, int], timeout: float = 700) -> dict[str, Any]:
        """Waits until every stream has reached its brand's last sequence; returns the raw result."""
        path = self.out.with_suffix(".until.json")
        path.write_text(json.dumps(last_of))
        self._send(f"until-each {path}")
        self.process.wait(timeout=timeout)
        return dict(json.loads(self.out.read_text()))


def probe_claim(address: str, key: str, brand: str, user: str) -> pb.ClaimCodeResponse:
    with grpc.insecure_channel(address) as ch:
        return pb_grpc.DiscountServiceStub(ch).ClaimCode(
            pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=f"{user}@example.com"),
            metadata=(("x-api-key", key),),
            timeout=30,
        )
