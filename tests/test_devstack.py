"""`discount dev-stack` as a real process when its Envoy ends: it says which process ended and how,
starts Envoy again without touching the server, and stops the whole stack, saying why, when Envoy
keeps dying."""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from discount.v1 import discount_service_pb2 as pb
from tests.browser.support import STATUS_NAMES, grpc_web_call
from tests.support import BIN, create_brand, create_key, free_port, generate_codes_sql


@dataclass
class DevStack:
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int
    envoy_port: int
    web_port: int
    admin_port: int
    admin_key: str

    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            assert self.process.poll() is None or re.search(pattern, self.text()), (
                f"dev-stack exited ({self.process.returncode}) before {pattern!r}:\n{self.text()}"
            )
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text()}")

    def quit_envoy(self) -> None:
        """Envoy's own admin endpoint: it shuts down and exits with status 0."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/quitquitquit", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 - the test's own Envoy
            assert reply.status == 200

    def stats_through_envoy(self) -> int:
        reply = grpc_web_call(
            self.envoy_url,
            "GetBrandStats",
            pb.GetBrandStatsRequest(brand_id="acme"),
            headers={"x-api-key": self.admin_key},
        )
        assert STATUS_NAMES[reply.grpc_status] == "OK", reply
        return pb.GetBrandStatsResponse.FromString(reply.messages[0]).total


@pytest.fixture
def dev_stack(database_url: str, tmp_path: Path) -> Iterator[DevStack]:
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 5)
    ports = [free_port() for _ in range(4)]
    env = {**os.environ, "DISCOUNT_DATABASE_URL": database_url, "DISCOUNT_POOL_MIN_SIZE": "1"}
    log_path = tmp_path / "dev-stack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "discount"), "dev-stack", "--grpc-port", str(ports[0]), "--envoy-port", str(ports[1]),
             "--web-port", str(ports[2]), "--admin-port", str(ports[3])],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack = DevStack(process, log_path, *ports, admin_key=create_key(database_url, "admin"))
        try:
            stack.wait_for("dev stack is up")
            yield stack
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


def wait_until(predicate: Callable[[], bool], stack: DevStack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, stack.text()
        assert stack.process.poll() is None, stack.text()
        time.sleep(0.1)


def ports_closed(stack: DevStack) -> list[int]:
    still_open = []
    for port in (stack.grpc_port, stack.envoy_port, stack.web_port, stack.admin_port):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                still_open.append(port)
    return still_open


def test_envoy_that_exits_is_restarted_and_the_server_keeps_running(dev_stack: DevStack) -> None:
    assert dev_stack.stats_through_envoy() == 5
    dev_stack.quit_envoy()

    gone = dev_stack.wait_for(r"dev-stack: envoy \(pid (\d+)\) exited with status 0 .*\n")
    assert gone.group(0) == (
        f"dev-stack: envoy (pid {gone.group(1)}) exited with status 0 — the browser bridge is gone; "
        f"restarting it on {dev_stack.envoy_url}…\n"
    )
    back = dev_stack.wait_for(r"dev-stack: envoy is back \(pid (\d+)\).*\n")
    assert back.group(0) == f"dev-stack: envoy is back (pid {back.group(1)}); the page reconnects by itself\n"
    assert back.group(1) != gone.group(1)

    # The browser path works again, and the server was never restarted: it said "listening" once.
    assert dev_stack.stats_through_envoy() == 5
    assert dev_stack.process.poll() is None
    assert dev_stack.text().count("discount service listening on") == 1, dev_stack.text()
    assert "envoy exited with" not in dev_stack.text()

    dev_stack.process.send_signal(signal.SIGINT)
    assert dev_stack.process.wait(timeout=60) == 0, dev_stack.text()
    assert dev_stack.text().rstrip().endswith("dev stack stopped")


def test_envoy_that_keeps_dying_stops_the_stack_and_says_why(dev_stack: DevStack) -> None:
    # Ended four times within a minute: by its admin endpoint, then killed three times.
    def back() -> list[str]:
        return re.findall(r"envoy is back \(pid (\d+)\)", dev_stack.text())

    kill: Callable[[], None] = dev_stack.quit_envoy
    for restarts in range(1, 4):
        kill()
        wait_until(lambda want=restarts: len(back()) == want, dev_stack)
        kill = functools.partial(os.kill, int(back()[-1]), signal.SIGKILL)
    pids = back()
    kill()
    assert dev_stack.process.wait(timeout=60) == 1, dev_stack.text()
    text = dev_stack.text()
    assert (
        f"discount: envoy (pid {pids[-1]}) was killed by SIGKILL — it ended 4 times within 60s, so the stack "
        "stops rather than restart it again (the server and the page too); Envoy's output is above\n"
    ) in text, text
    assert "dev stack stopped" in text
    assert "Traceback" not in text
    assert ports_closed(dev_stack) == [], text
