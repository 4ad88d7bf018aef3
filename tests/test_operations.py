"""The `discount` command and the server process: admin commands, restarts, migrations."""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from discount.v1 import discount_service_pb2 as pb
from tests.support import (
    BIN,
    Databases,
    claim_request,
    free_port,
    sql,
    start_server_process,
    stop_process,
    wait_until_serving,
)


def discount(*args: str, url: str | None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOUNT_")}
    if url:
        env["DISCOUNT_DATABASE_URL"] = url
    env.update(extra_env or {})
    return subprocess.run([str(BIN / "discount"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_admin_commands_create_brands_and_keys_that_work(database_url: str, tmp_path: Path) -> None:
    created = discount("brand", "create", "acme", "--name", "Acme Inc.", url=database_url)
    assert created.returncode == 0, created.stderr
    duplicate = discount("brand", "create", "acme", url=database_url)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    bad = discount("brand", "create", "no spaces", url=database_url)
    assert bad.returncode == 1 and "brand_id" in bad.stderr

    key_run = discount("key", "create", "--role", "brand", "--brand", "acme", url=database_url)
    assert key_run.returncode == 0, key_run.stderr
    brand_key = key_run.stdout.strip().splitlines()[-1]
    assert brand_key.startswith("dsk_") and len(brand_key) > 40
    missing_brand = discount("key", "create", "--role", "brand", url=database_url)
    assert missing_brand.returncode == 1 and "--brand" in missing_brand.stderr
    unknown_brand = discount("key", "create", "--role", "brand", "--brand", "nope", url=database_url)
    assert unknown_brand.returncode == 1 and "does not exist" in unknown_brand.stderr

    # Only a digest is stored.
    stored = sql(database_url, "SELECT key_hash FROM api_keys")
    assert all(brand_key.encode() not in bytes(row[0]) for row in stored)

    listing = discount("brand", "list", url=database_url)
    assert "acme" in listing.stdout and "Acme Inc." in listing.stdout
    keys = discount("key", "list", url=database_url)
    key_id = brand_key.split("_")[1]
    assert key_id in keys.stdout and brand_key not in keys.stdout

    handle = start_server_process(database_url, log_path=tmp_path / "server.log")
    try:
        with handle.stub() as stub:
            reply = stub.GenerateCodes(
                pb.GenerateCodesRequest(brand_id="acme", count=3), metadata=(("x-api-key", brand_key),), timeout=10
            )
            assert reply.generated == 3
        revoked = discount("key", "revoke", key_id, url=database_url)
        assert revoked.returncode == 0, revoked.stderr
    finally:
        stop_process(handle)
    assert brand_key not in handle.log_text()


def test_state_survives_a_restart_and_sigterm_exits_zero(database_url: str, tmp_path: Path) -> None:
    assert discount("brand", "create", "acme", url=database_url).returncode == 0
    port = free_port()
    first = start_server_process(database_url, port, log_path=tmp_path / "first.log")
    with first.stub() as stub:
        stub.GenerateCodes(pb.GenerateCodesRequest(brand_id="acme", count=10), metadata=first.metadata(), timeout=10)
        claimed = stub.ClaimCode(claim_request("acme", "alice"), metadata=first.metadata(), timeout=10)
    assert stop_process(first, signal.SIGTERM) == 0

    second = start_server_process(database_url, port, log_path=tmp_path / "second.log", admin_key=first.admin_key)
    try:
        with second.stub() as stub:
            again = stub.ClaimCode(claim_request("acme", "alice"), metadata=second.metadata(), timeout=10)
            stats = stub.GetBrandStats(pb.GetBrandStatsRequest(brand_id="acme"), metadata=second.metadata(), timeout=10)
            feed = stub.WatchClaims(pb.WatchClaimsRequest(brand_id="acme"), metadata=second.metadata(), timeout=5)
            first_event = next(iter(feed))
            feed.cancel()
    finally:
        assert stop_process(second, signal.SIGTERM) == 0
    assert (again.claim.code, again.newly_claimed) == (claimed.claim.code, False)
    assert (stats.total, stats.claimed, stats.available) == (10, 1, 9)
    assert (first_event.claim.sequence, first_event.claim.code) == (1, claimed.claim.code)


def test_concurrent_starts_migrate_once(databases: Databases) -> None:
    """Several processes starting at once on an empty database: one migrates, all succeed."""
    url = databases.create()
    try:
        # Empty the migrated clone whatever the migrations made, so the test needs no list of objects.
        sql(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: discount("migrate", url=url), range(6)))
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        applied = sum(r.stdout.startswith("applied") for r in results)
        assert applied == 1, [r.stdout for r in results]
        versions = sql(url, "SELECT version FROM schema_migrations ORDER BY version")
        on_disk = sorted(
            p.stem for p in (Path(__file__).parent.parent / "server/discount_service/migrations").glob("*.sql")
        )
        assert [v[0] for v in versions] == on_disk
    finally:
        databases.drop(url)


def test_embedded_database_when_no_url_is_configured(tmp_path: Path) -> None:
    """No DISCOUNT_DATABASE_URL: `serve` and the admin commands share an embedded PostgreSQL."""
    env = {"DISCOUNT_DATA_DIR": str(tmp_path / "data")}
    made = discount("brand", "create", "acme", url=None, extra_env=env)
    assert made.returncode == 0, made.stderr
    key = discount("key", "create", "--role", "admin", url=None, extra_env=env).stdout.strip().splitlines()[-1]
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOUNT_")}
    server_env.update(env, DISCOUNT_LISTEN=f"127.0.0.1:{port}")
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "discount"), "serve"], env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    from tests.support import ServerHandle

    handle = ServerHandle(
        address=f"127.0.0.1:{port}", database_url="", admin_key=key, process=process, log_path=tmp_path / "server.log"
    )
    try:
        wait_until_serving(handle, timeout=60)
        with handle.stub() as stub:
            reply = stub.GenerateCodes(pb.GenerateCodesRequest(brand_id="acme", count=2), metadata=handle.metadata())
            claim = stub.ClaimCode(claim_request("acme", "u"), metadata=handle.metadata())
        assert reply.generated == 2 and claim.newly_claimed
        assert (tmp_path / "data" / "pgdata" / "PG_VERSION").exists()
    finally:
        assert stop_process(handle, signal.SIGTERM) == 0
    try:
        with grpc.insecure_channel(handle.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=1)
        raise AssertionError("the server still accepts connections after SIGTERM")
    except grpc.FutureTimeoutError:
        pass
