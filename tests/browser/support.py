"""The browser path for tests: a real `discount serve`, a real Envoy in front of it, the built page on a
static server, a gRPC-Web client speaking plain HTTP, and headless Chromium driven by playwright-core."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from discount.v1 import discount_service_pb2 as pb
from discount_dev import servers
from discount_dev.grpc_web import frame as frame
from discount_dev.grpc_web import parse_frames as parse_frames
from discount_dev.servers import Stack as Stack
from discount_dev.stack import WEB_DIST
from discount_service.tokens import mint_token
from tests.support import ROOT

JWT_SECRET = "browser-tests-secret-0123456789abcdef"
WEB = ROOT / "web"
DRIVER = WEB / "tests" / "driver.mjs"
CHROMIUM = "/usr/bin/chromium"
SERVICE = "discount.v1.DiscountService"


def token(user_id: str, email: str | None = None, ttl: int = 600, secret: str = JWT_SECRET) -> str:
    return mint_token(secret, user_id, email=email, ttl_seconds=ttl)


def running_stack(database_url: str, work_dir: Path, *, brand: str = "") -> contextlib.AbstractContextManager[Stack]:
    """Server + Envoy + page on free ports (discount_dev.servers), taking shopper tokens signed with JWT_SECRET."""
    return servers.running_stack(database_url, work_dir, brand=brand, jwt_secret=JWT_SECRET)


# -- gRPC-Web over plain HTTP, as a browser (or curl) sends it --------------------------------------


@dataclass
class GrpcWebReply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def grpc_status(self) -> int:
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def grpc_message(self) -> str:
        return urllib.parse.unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))


def grpc_web_call(
    envoy_url: str,
    method: str,
    request: Message,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> GrpcWebReply:
    """One gRPC-Web call through Envoy with urllib: a real HTTP/1.1 POST, like the page's fetch."""
    http = urllib.request.Request(  # noqa: S310 - the test's own Envoy
        f"{envoy_url}/{SERVICE}/{method}",
        data=frame(request),
        method="POST",
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(http, timeout=timeout) as response:  # noqa: S310
            status, head, body = response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        status, head, body = exc.code, dict(exc.headers.items()), exc.read()
    messages, trailers = parse_frames(body)
    return GrpcWebReply(status, {k.lower(): v for k, v in head.items()}, messages, trailers)


def claim_via_envoy(envoy_url: str, brand: str, user: str, email: str, headers: dict[str, str]) -> GrpcWebReply:
    return grpc_web_call(
        envoy_url, "ClaimCode", pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=email), headers=headers
    )


# -- headless Chromium ------------------------------------------------------------------------------


class Browser:
    """Chromium (Debian's /usr/bin/chromium, headless) under playwright-core, via web/tests/driver.mjs."""

    def __init__(self, log_path: Path, chromium: str = CHROMIUM) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; scripts/setup.d/40-browser.sh needs it")
        if not (WEB / "node_modules" / "playwright-core").exists():
            raise RuntimeError("web/node_modules is missing: run scripts/setup.d/40-browser.sh")
        if not (WEB_DIST / "app.js").exists():
            raise RuntimeError("the page is not built: run scripts/setup.d/40-browser.sh")
        self._log = log_path.open("w")
        self._proc = subprocess.Popen(
            [node, str(DRIVER)],
            cwd=WEB,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={"CHROMIUM": chromium, "PATH": "/usr/bin:/bin"},
        )
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next_id = 0
        try:
            hello = self._wait(0, 60)
        except Exception:
            self.close()
            raise
        if not hello.get("ok"):
            self.close()
            raise RuntimeError(f"could not start Chromium: {hello.get('error')}")
        self.version = str(hello.get("version"))

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def _wait(self, call_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"browser driver gave no reply within {timeout}s") from None
            if reply is None:
                raise RuntimeError(f"browser driver exited ({self._proc.poll()})")
            if reply.get("id") == call_id:
                return reply

    def call(self, cmd: str, reply_timeout: float = 30.0, **params: Any) -> Any:
        self._next_id += 1
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": self._next_id, "cmd": cmd, **params}) + "\n")
        self._proc.stdin.flush()
        reply = self._wait(self._next_id, reply_timeout + 5)
        if not reply.get("ok"):
            console = "" if cmd == "console" else "\npage console:\n" + "\n".join(self.console())
            raise AssertionError(f"browser {cmd} {params}: {reply.get('error')}{console}")
        return reply.get("value")

    def console(self) -> list[str]:
        return list(self.call("console"))

    def goto(self, url: str) -> None:
        self.call("goto", url=url)

    def fill(self, selector: str, value: str) -> None:
        self.call("fill", selector=selector, value=value)

    def click(self, selector: str) -> None:
        self.call("click", selector=selector)

    def text(self, selector: str) -> str:
        return str(self.call("text", selector=selector) or "")

    def wait_visible(self, selector: str, timeout: float = 15.0) -> None:
        self.call("waitVisible", reply_timeout=timeout, selector=selector, timeout=int(timeout * 1000))

    def wait_for(self, body: str, arg: Any = None, timeout: float = 20.0) -> Any:
        """Waits until the JS function body (given `arg`) returns something truthy, in the page."""
        return self.call("waitFunction", reply_timeout=timeout, body=body, arg=arg, timeout=int(timeout * 1000))

    def evaluate(self, body: str, arg: Any = None) -> Any:
        return self.call("eval", body=body, arg=arg)

    def screenshot(self, path: Path) -> None:
        self.call("screenshot", path=str(path))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc.poll() is None:
                self.call("close", reply_timeout=10)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()


def table_sequences(browser: Browser) -> list[int]:
    """The sequences shown in the live table, top to bottom."""
    values = browser.evaluate(
        "return [...document.querySelectorAll('#live-table tbody tr')].map(tr => Number(tr.dataset.sequence));"
    )
    return [int(v) for v in values]


def table_codes(browser: Browser) -> list[str]:
    values = browser.evaluate(
        "return [...document.querySelectorAll('#live-table tbody tr')].map(tr => tr.cells[4].textContent);"
    )
    return [str(v) for v in values]


@contextlib.contextmanager
def module_stack(databases: Any, name: str) -> Iterator[Stack]:
    """One stack shared by a test module, over its own database."""
    url = databases.create()
    try:
        with running_stack(url, ROOT / "test-output" / name) as stack:
            yield stack
    finally:
        databases.drop(url)


STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
