"""`discount serve` as a child process on a real port, alone or behind Envoy and the page.

`start_server_process` runs the installed `discount` command, as a user would; `running_stack` puts
Envoy's gRPC-Web bridge and the page server in front of it, on free ports, the way `discount
dev-stack` does. The tests and the benchmarks use the same ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev import processes
from discount_dev.postgres import create_key
from discount_dev.processes import free_port
from discount_dev.stack import DevStackError, EnvoyProcess, render_envoy_config, serve_page

__all__ = ["ServerHandle", "Stack", "running_stack", "start_server_process", "stop_process", "wait_until_serving"]

# The virtualenv's scripts, where `discount` is.
BIN = Path(sys.executable).parent


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
        return channel, pb_grpc.DiscountServiceStub(channel)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def stub(self) -> Iterator[pb_grpc.DiscountServiceStub]:
        with grpc.insecure_channel(self.address) as channel:
            yield pb_grpc.DiscountServiceStub(channel)  # type: ignore[no-untyped-call]

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


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
    """Sends `sig` (if the server still runs) and returns its exit status."""
    if handle.process is None:
        raise ValueError(f"the server at {handle.address} runs in this process, not in a child")
    if handle.process.poll() is None:
        handle.process.send_signal(sig)
    return handle.process.wait(timeout=timeout)


@dataclass
class Stack:
    server: ServerHandle
    envoy: EnvoyProcess
    envoy_url: str
    page_url: str
    origin: str
    database_url: str

    def service_key(self) -> str:
        return create_key(self.database_url, "service")


@contextlib.contextmanager
def running_stack(
    database_url: str, work_dir: Path, *, brand: str = "", jwt_secret: str | None = None
) -> Iterator[Stack]:
    """Server + Envoy + page server on free ports. The page's origin is the one Envoy allows; with
    `jwt_secret` the server also takes shopper tokens signed with it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    server = start_server_process(
        database_url,
        log_path=work_dir / "server.log",
        extra_env={
            "DISCOUNT_POOL_MIN_SIZE": "1",
            "DISCOUNT_POOL_MAX_SIZE": "6",
            "DISCOUNT_LOG_LEVEL": "WARNING",
            **({"DISCOUNT_JWT_SECRET": jwt_secret} if jwt_secret else {}),
        },
    )
    stack: Stack | None = None
    try:
        with contextlib.ExitStack() as cleanup:
            for attempt in range(3):
                # Free ports can be taken by another process between picking and binding: retry with new ones.
                envoy_port, admin_port = free_port(), free_port()
                envoy_url = f"http://127.0.0.1:{envoy_port}"
                _, page_port = cleanup.enter_context(serve_page(0, envoy_url, brand=brand))
                origin = f"http://127.0.0.1:{page_port}"
                config = work_dir / "envoy.yaml"
                config.write_text(
                    render_envoy_config(
                        listen_port=envoy_port,
                        admin_port=admin_port,
                        upstream_host="127.0.0.1",
                        upstream_port=int(server.address.rsplit(":", 1)[1]),
                        origins=[origin],
                    )
                )
                envoy = EnvoyProcess(config, envoy_port, admin_port, log_path=work_dir / "envoy.log")
                cleanup.callback(envoy.stop)
                try:
                    envoy.start()
                    break
                except DevStackError:
                    envoy.stop()
                    if attempt == 2:
                        raise
            stack = Stack(server, envoy, envoy_url, f"{origin}/", origin, database_url)
            yield stack
    finally:
        # A user may have replaced the server (restart tests): stop whichever is current, and the first.
        if stack is not None and stack.server is not server:
            stop_process(stack.server)
        stop_process(server)
