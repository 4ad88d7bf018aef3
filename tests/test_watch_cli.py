"""`discount watch` says in words why its stream stopped, as a real process against a real
`discount serve` that is stopped and started again on the same port."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from tests.support import (
    BIN,
    ServerHandle,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
    start_server_process,
    stop_process,
)

# What the watch must never show a person for these everyday events.
JARGON = ("OK:", "UNAVAILABLE", "StatusCode", "failed to connect", "ipv4:", "Traceback", "RpcError")


class Lines:
    """A pipe read line by line on a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.all: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._queue.put(raw.decode().rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line matching {pattern!r} in {timeout}s; got {self.all}"
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"the stream ended before a line matching {pattern!r}; got {self.all}"
            self.all.append(line)
            if re.search(pattern, line):
                return line


def client_env(address: str, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOUNT_")}
    return {**env, "DISCOUNT_ADDRESS": address, "DISCOUNT_API_KEY": key}


def claim(env: dict[str, str], user: str) -> None:
    done = subprocess.run(
        [str(BIN / "discount"), "claim", "acme", user, f"{user}@example.com"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def acme_with_codes(database_url: str) -> tuple[str, int, str, dict[str, str]]:
    """Brand acme with 10 codes, an admin key, a free port: (key, port, address, the CLI's env)."""
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    key = create_key(database_url, "admin")
    port = free_port()
    address = f"127.0.0.1:{port}"
    return key, port, address, client_env(address, key)


def start_watch(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Lines, Lines]:
    """`discount watch acme` as a process, with its stdout and stderr read line by line."""
    watch = subprocess.Popen(
        [str(BIN / "discount"), "watch", "acme"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert watch.stdout is not None and watch.stderr is not None
    return watch, Lines(watch.stdout), Lines(watch.stderr)


def serve(database_url: str, port: int, log_path: Path, admin_key: str) -> ServerHandle:
    return start_server_process(
        database_url, port, log_path=log_path, admin_key=admin_key, extra_env={"DISCOUNT_POOL_MIN_SIZE": "1"}
    )


def test_watch_says_the_server_closed_the_stream_and_cannot_be_reached_until_it_is_back(
    database_url: str, tmp_path: Path
) -> None:
    key, port, address, env = acme_with_codes(database_url)
    server = serve(database_url, port, tmp_path / "server-1.log", key)
    watch, out, err = start_watch(env)
    try:
        claim(env, "u1")
        claim(env, "u2")
        out.until(r"^2\t")

        # The server stops (SIGTERM, as systemd or Ctrl-C would): it ends the stream on its way out,
        # and then nothing listens on the port for a while.
        assert stop_process(server) == 0
        for marker, what in (
            (r"closed", r"the server closed the stream \(it may be restarting\)"),
            (r"cannot reach", rf"cannot reach the server at {re.escape(address)}"),
            (r"still", rf"still cannot reach the server at {re.escape(address)}"),
        ):
            line = err.until(marker)
            assert re.fullmatch(
                rf"discount: watch: {what}; reconnecting in \d+\.\ds, resuming after sequence 2…", line
            ), line

        # Back on the same port: the watch picks up after sequence 2, with nothing missed.
        server = serve(database_url, port, tmp_path / "server-2.log", key)
        claim(env, "u3")
        assert out.until(r"^\d+\t").startswith("3\t"), out.all
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=15)
        if server.process is not None and server.process.poll() is None:
            stop_process(server)
    time.sleep(0.2)  # the reader threads catch the last lines
    text = "\n".join(err.all)
    assert not [word for word in JARGON if word in text], text
    assert [line.split("\t")[0] for line in out.all] == ["1", "2", "3"]


def test_watch_says_it_lost_the_connection_when_the_server_dies(database_url: str, tmp_path: Path) -> None:
    key, port, address, env = acme_with_codes(database_url)
    server = serve(database_url, port, tmp_path / "server.log", key)
    watch, out, err = start_watch(env)
    try:
        claim(env, "u1")
        out.until(r"^1\t")
        # No goodbye this time: the process is killed, the connection just drops.
        assert stop_process(server, signal.SIGKILL) == -signal.SIGKILL
        first = err.until(r"discount: watch:")
        assert re.fullmatch(
            rf"discount: watch: lost the connection to the server at {re.escape(address)}; "
            r"reconnecting in \d+\.\ds, resuming after sequence 1…",
            first,
        ), first
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=15)
    time.sleep(0.2)
    text = "\n".join(err.all)
    assert not [word for word in JARGON if word in text], text
