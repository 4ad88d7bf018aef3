"""The benchmark: `python -m bench` (full, ~10 minutes) or `python -m bench --smoke` (CI, seconds).

Everything runs on this machine, in separate processes: a private PostgreSQL 15 (common.py), the
server under test (`discount serve`, real child processes), the load generator (loadgen.py), the
WatchClaims clients (watchers.py), and the baselines: the echo server (echo.py), pgbench running
the claim function, and a raw psycopg COPY. Prints the target table with ratios to the same-run
baselines, writes a JSON file and a PNG chart. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import PG_BIN, PG_SETTINGS, PrivatePostgres, cpu_seconds, free_port, percentile, rss_bytes
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_service import codes as codegen
from discount_service.auth import new_api_key

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PY = sys.executable


@dataclass
class Profile:
    name: str
    duration: float  # measured seconds per load phase
    warmup: float
    concurrency: int
    brand_codes: int  # free codes per load-phase brand
    million: int  # claims piled up before the decay phase
    generate: int  # GenerateCodes / raw COPY size
    watchers: int
    idle_streams: int
    paced_rates: list[float]  # claims/s for the paced event-latency phases
    rounds: int = 1  # alternated repetitions of the decay and generation comparisons
    workers: list[int] = field(default_factory=lambda: [1, 2])


FULL = Profile("full", 15.0, 2.0, 32, 120_000, 1_000_000, 1_000_000, 100, 1000, [50.0, 500.0], rounds=2)
SMOKE = Profile("smoke", 2.0, 0.5, 32, 20_000, 20_000, 50_000, 10, 50, [50.0])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- database setup -------------------------------------------------------------------------------


class Db:
    def __init__(self, url: str) -> None:
        self.url = url

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def brand(self, brand_id: str, codes: int) -> int:
        """A brand with `codes` free codes, inserted in bulk SQL (setup, not measured)."""
        rows = self.sql(
            "WITH b AS (INSERT INTO brands (brand_id, name) VALUES (%s, %s) RETURNING brand_key) "
            "INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM b RETURNING brand_key",
            (brand_id, brand_id),
        )
        key = int(rows[0][0])
        if codes:
            with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
                batch = conn.execute(
                    "INSERT INTO code_batches (batch_id, brand_key, generated, code_length, prefix) "
                    "VALUES (gen_random_uuid(), %s, %s, 12, 'B-') RETURNING batch_key",
                    (key, codes),
                ).fetchone()
                assert batch is not None
                conn.execute(
                    "INSERT INTO codes (brand_key, batch_key, code) "
                    "SELECT %s, %s, 'B-' || upper(substr(md5(g::text || random()::text), 1, 12)) "
                    "FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
                    (key, batch[0], codes),
                )
                conn.execute("UPDATE brand_feed_heads SET total_codes = %s WHERE brand_key = %s", (codes, key))
        return key

    def key(self, role: str, brand_id: str | None = None) -> str:
        key_id, key, key_hash = new_api_key()
        self.sql(
            "INSERT INTO api_keys (key_id, key_hash, role, brand_key) "
            "VALUES (%s, %s, %s, (SELECT brand_key FROM brands WHERE brand_id = %s))",
            (key_id, key_hash, role, brand_id),
        )
        return key

    def pile_up_claims(self, brand_key: int, total: int, chunk: int = 100_000) -> float:
        """Mimics `total` claims in bulk SQL: the same row changes a claim makes (codes.claimed
        flipped, so dead entries pile up in codes_free with autovacuum off; one claims row per
        claim; the feed head bumped). Returns the seconds it took."""
        started = time.perf_counter()
        done = 0
        while done < total:
            n = min(chunk, total - done)
            with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
                conn.execute(
                    """
                    WITH picked AS (
                        UPDATE codes SET claimed = true
                        WHERE ctid = ANY (ARRAY(
                            SELECT ctid FROM codes
                            WHERE brand_key = %(b)s AND NOT claimed AND code_key > 0
                            ORDER BY code_key LIMIT %(n)s))
                        RETURNING code, expires_at, code_key
                    )
                    INSERT INTO claims (brand_key, sequence, code, user_id, email, claimed_at, expires_at)
                    SELECT %(b)s, %(base)s + row_number() OVER (ORDER BY code_key), code,
                           'bulk-' || code_key, 'bulk-' || code_key || '@example.com', now(), expires_at
                    FROM picked
                    """,
                    {"b": brand_key, "n": n, "base": done},
                )
                conn.execute(
                    "UPDATE brand_feed_heads SET last_sequence = last_sequence + %s WHERE brand_key = %s",
                    (n, brand_key),
                )
            done += n
        return time.perf_counter() - started

    def claim_hint(self, brand_key: int) -> int:
        """The code_key a long-running server would pass as its hint: the highest one claimed."""
        rows = self.sql(
            "SELECT coalesce(max(code_key), 0) FROM codes WHERE brand_key = %s AND claimed",
            (brand_key,),
        )
        return int(rows[0][0])

    def explain_claim(self, brand_key: int, hint: int) -> str:
        """EXPLAIN (ANALYZE, BUFFERS) of the claim query (the code pick inside discount_claim),
        with the same parameters the function gets, rolled back."""
        with psycopg.connect(self.url) as conn:
            conn.execute("PREPARE pick(integer, bigint) AS " + CLAIM_PICK_SQL)
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE pick({int(brand_key)}, {int(hint)})").fetchall()
            conn.rollback()
        return "\n".join(r[0] for r in rows)

    def explain_claim_call(self, brand_id: str, hint: int) -> str:
        """The real discount_claim() call, with auto_explain printing (ANALYZE, BUFFERS) of every
        statement inside it, rolled back so the brand is unchanged."""
        notices: list[str] = []
        with psycopg.connect(self.url) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            for setting in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_analyze = on",
                "SET auto_explain.log_buffers = on",
                "SET auto_explain.log_nested_statements = on",
                "SET auto_explain.log_level = notice",
            ):
                conn.execute(setting)  # type: ignore[arg-type]
            conn.execute(
                "SELECT * FROM discount_claim(%s, 'explain-user', 'explain@example.com', %s)", (brand_id, hint)
            ).fetchall()
            conn.rollback()
        return "\n\n".join(notices)

    def last_sequence(self, brand_id: str) -> int:
        rows = self.sql(
            "SELECT h.last_sequence FROM brand_feed_heads h JOIN brands b USING (brand_key) WHERE b.brand_id = %s",
            (brand_id,),
        )
        return int(rows[0][0])


# The code pick inside discount_claim (migrations/0003_claim_cold_hint.sql), as a statement.
CLAIM_PICK_SQL = """
SELECT f.ctid, f.code, f.expires_at, f.code_key
FROM codes f
WHERE f.brand_key = $1 AND NOT f.claimed AND f.code_key > $2
  AND (f.expires_at IS NULL OR f.expires_at > now())
ORDER BY f.code_key LIMIT 1
FOR UPDATE SKIP LOCKED
"""


# -- processes ------------------------------------------------------------------------------------


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
        self._wait_serving()

    def _wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        serving = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                with grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        serving += 1
                        if serving >= 3 * self.workers:  # probably every worker, by then
                            return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING: {self.log_path.read_text()[-3000:]}")

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


def run_load(
    workdir: Path,
    name: str,
    *,
    target: str,
    method: str,
    api_key: str,
    brand: str,
    profile: Profile,
    server_pid: int | None = None,
    pg: PrivatePostgres | None = None,
    rate: float = 0.0,
    duration: float | None = None,
) -> dict[str, Any]:
    """One load phase in a separate load-generator process; returns its summary."""
    out = workdir / f"load-{name}.json"
    config = {
        "target": target,
        "method": method,
        "api_key": api_key,
        "brand": brand,
        "concurrency": profile.concurrency,
        "channels": 4,
        "warmup": profile.warmup,
        "duration": duration or profile.duration,
        "rate": rate,
        "user_prefix": f"{name}-{os.getpid()}",
        "out": str(out),
    }
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    pg_cpu_before = pg_cpu(pg) if pg else 0.0
    started = time.perf_counter()
    subprocess.run([PY, "-m", "bench.loadgen", json.dumps(config)], check=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    data = json.loads(out.read_text())
    summary = summarize_load(name, data)
    if server_pid:
        summary["server_cpu_s"] = round(cpu_seconds(server_pid) - cpu_before, 2)
    if pg:
        summary["postgres_cpu_s"] = round(pg_cpu(pg) - pg_cpu_before, 2)
    summary["wall_s"] = round(elapsed, 2)
    log(
        f"{name}: {summary['rps']:.0f}/s, p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, "
        f"errors {summary['errors']}"
    )
    return summary


def pg_cpu(pg: PrivatePostgres) -> float:
    try:
        pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    except OSError:
        return 0.0
    return cpu_seconds(pid)


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Alternated rounds of one phase: mean throughput, latency percentiles over all their calls,
    the first round's time series."""
    merged = dict(runs[0])
    merged["rps"] = sum(r["rps"] for r in runs) / len(runs)
    window = sorted(x for r in runs for x in r["_window"])
    merged["_window"] = window
    for q in (50, 90, 99):
        merged[f"p{q}_ms"] = percentile(window, q) * 1000
    merged["latency_sample_ms"] = [round(x * 1000, 3) for x in window[:: max(1, len(window) // 5000)]]
    merged["calls"] = sum(r["calls"] for r in runs)
    merged["errors"] = {k: v for r in runs for k, v in r["errors"].items()}
    merged["repeats"] = sum(r["repeats"] for r in runs)
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_s", "postgres_cpu_s")
    merged["rounds"] = [{k: r.get(k) for k in keys} for r in runs]
    return merged


def summarize_load(name: str, data: dict[str, Any]) -> dict[str, Any]:
    warmup, duration = data["warmup"], data["duration"]
    done_at, latency = data["done_at"], data["latency"]
    window = sorted(lat for t, lat in zip(done_at, latency, strict=True) if warmup <= t < warmup + duration)
    per_second: dict[int, int] = {}
    for t in done_at:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    seconds = max(per_second) + 1 if per_second else 0
    return {
        "name": name,
        "rps": len(window) / duration,
        "calls": len(window),
        "p50_ms": percentile(window, 50) * 1000,
        "p90_ms": percentile(window, 90) * 1000,
        "p99_ms": percentile(window, 99) * 1000,
        "max_ms": (window[-1] * 1000) if window else float("nan"),
        "errors": data["errors"],
        "repeats": data["repeats"],
        "per_second": [per_second.get(s, 0) for s in range(seconds)],
        "latency_sample_ms": [round(x * 1000, 3) for x in window[:: max(1, len(window) // 5000)]],
        "_window": window,  # every call's latency in the window; not written to the JSON
    }


# What discount_client asks for: runs of up to this many claims per WatchClaims message.
WATCH_CLAIMS_PER_RESPONSE = 256


class Watchers:
    """A watchers.py process with N WatchClaims streams."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        target: str,
        api_key: str,
        brand: str,
        n: int,
        record: bool = True,
        per_response: int = WATCH_CLAIMS_PER_RESPONSE,
    ) -> None:
        self.out = workdir / f"watch-{name}.json"
        config = {
            "target": target,
            "api_key": api_key,
            "brand": brand,
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
        assert self.process.stdout is not None
        line = self._readline(timeout)
        if line != "ready":
            raise RuntimeError(f"watchers not ready: {line!r}")

    def _readline(self, timeout: float) -> str:
        assert self.process.stdout is not None
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(self.process.stdout.readline().decode().strip()))  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        if not result:
            raise TimeoutError("watchers did not answer")
        return result[0]

    def mark(self) -> None:
        self._send("mark")
        if self._readline(30) != "ok":
            raise RuntimeError("watchers did not ack")

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def finish(self, until: int, timeout: float = 700) -> dict[str, Any]:
        self._send(f"until {until}")
        self.process.wait(timeout=timeout)
        return dict(json.loads(self.out.read_text()))


def probe_claim(address: str, key: str, brand: str, user: str) -> pb.ClaimCodeResponse:
    with grpc.insecure_channel(address) as ch:
        return pb_grpc.DiscountServiceStub(ch).ClaimCode(
            pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=f"{user}@example.com"),
            metadata=(("x-api-key", key),),
            timeout=30,
        )


# -- phases ---------------------------------------------------------------------------------------


def phase_pgbench(
    db: Db, workdir: Path, pg: PrivatePostgres, brand: str, profile: Profile, batch: int = 1
) -> dict[str, Any]:
    """The claim transaction the service runs, straight from pgbench, 32 clients, prepared.

    batch=1: one `discount_claim` per transaction (the service's path when a brand is idle);
    batch>1: `discount_claim_batch` with that many users per transaction (its path under load).
    Each client keeps its own hint from its last claim, as each server process does, and claims
    for distinct users (client id + a per-client counter)."""
    script = workdir / f"claim-{batch}.pgbench"
    tag = f"pgb{os.getpid()}b{batch}"
    user = f"'{tag}-' || :client_id || '-' || :n"
    if batch == 1:
        call = f"discount_claim('{brand}', {user}, {user} || '@example.com', :hint)"
        select = "coalesce(code_key, :hint)"
    else:
        users = ", ".join(f"{user} || '-{i}'" for i in range(batch))
        emails = ", ".join(f"{user} || '-{i}@example.com'" for i in range(batch))
        call = f"discount_claim_batch('{brand}', ARRAY[{users}], ARRAY[{emails}], :hint)"
        select = "coalesce(max(code_key), :hint)"
    script.write_text(f"\\set n :n + 1\nSELECT {select} AS hint FROM {call}\n\\gset\n")
    duration = int(max(1, round(profile.duration)))
    cmd = [
        str(PG_BIN / "pgbench"), "-n", "-M", "prepared", "-c", str(profile.concurrency), "-j", "2",
        "-T", str(duration), "-D", "hint=0", "-D", "n=0", "-f", str(script), "-r",
        "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", db_name(db.url),
    ]  # fmt: skip
    before = db.last_sequence(brand)
    cpu_before = pg_cpu(pg)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout).group(1))  # type: ignore[union-attr]
    lat = re.search(r"latency average = ([\d.]+) ms", proc.stdout)
    claimed = db.last_sequence(brand) - before
    log(f"pgbench batch={batch}: {tps:.0f} tps = {tps * batch:.0f} claims/s ({claimed} claims)")
    return {
        "batch": batch,
        "tps": tps,
        "claims_per_second": tps * batch,
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "claims": claimed,
        "postgres_cpu_s": round(pg_cpu(pg) - cpu_before, 2),
        "command": " ".join(cmd),
        "script": script.read_text(),
        "output": proc.stdout[-2000:],
    }


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def phase_raw_copy(db: Db, count: int) -> dict[str, Any]:
    """1M random codes made and COPYed with psycopg into a table shaped like `codes`, with the
    same unique (primary) key and partial index, in one transaction: the generation ceiling."""
    db.sql("DROP TABLE IF EXISTS raw_copy_codes")
    db.sql("CREATE TABLE raw_copy_codes (LIKE codes INCLUDING ALL)")
    db.sql("CHECKPOINT")
    started = time.perf_counter()
    with psycopg.connect(db.url) as conn:
        with conn.cursor().copy("COPY raw_copy_codes (brand_key, batch_key, expires_at, code) FROM STDIN") as copy:
            done = 0
            while done < count:
                n = min(50_000, count - done)
                copy.write("".join(f"1\t1\t\\N\t{c}\n" for c in codegen.make_codes(n, 12)))
                done += n
        conn.commit()
    seconds = time.perf_counter() - started
    rows = db.sql("SELECT count(*) FROM raw_copy_codes")[0][0]
    db.sql("DROP TABLE raw_copy_codes")
    log(f"raw COPY of {count} codes: {seconds:.2f}s")
    return {"seconds": seconds, "rows": rows}


def phase_generate(db: Db, server: Server, admin_key: str, brand: str, count: int) -> dict[str, Any]:
    db.sql("CHECKPOINT")
    time.sleep(0.5)
    rss_before = rss_bytes(server.pid)
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(server.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with grpc.insecure_channel(server.address) as ch:
        reply = pb_grpc.DiscountServiceStub(ch).GenerateCodes(
            pb.GenerateCodesRequest(brand_id=brand, count=count), metadata=(("x-api-key", admin_key),), timeout=600
        )
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    rss_after = rss_bytes(server.pid)
    log(f"GenerateCodes {count}: {seconds:.2f}s, RSS +{(peak[0] - rss_before) / 2**20:.0f} MB")
    return {
        "seconds": seconds,
        "generated": reply.generated,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": peak[0] / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_growth_mb": (peak[0] - rss_before) / 2**20,
    }


def watched_phase(
    workdir: Path,
    db: Db,
    server: Server,
    keys: tuple[str, str],
    name: str,
    count: int,
    profile: Profile,
    pg: PrivatePostgres,
    *,
    rate: float = 0.0,
    per_response: int = WATCH_CLAIMS_PER_RESPONSE,
) -> tuple[dict[str, Any], tuple[dict[str, Any], int]]:
    """Claims on a new brand (closed loop, or `rate` claims/s) while `count` watchers stream every
    event: the load summary, and the watchers' raw result with the last sequence they had to reach
    (for summarize_watch, alone or with other rounds)."""
    admin_key, service_key = keys
    db.brand(name, profile.brand_codes)
    db.sql("CHECKPOINT")  # the previous phase's WAL is flushed before this one is timed
    group = Watchers(workdir, name, server.address, admin_key, name, count, per_response=per_response)
    probe_claim(server.address, service_key, name, "probe")
    group.wait_ready()
    load = run_load(workdir, name, target=server.address, method="claim", api_key=service_key, brand=name,
                    profile=profile, server_pid=server.pid, pg=pg, rate=rate)  # fmt: skip
    expected = db.last_sequence(name)
    raw = (group.finish(expected), expected)
    events = summarize_watch([raw])
    log(f"{name}: {count} watchers, event latency p50 {events['latency_p50_ms']:.1f} ms, p99 "
        f"{events['latency_p99_ms']:.1f} ms, all events: {events['every_watcher_got_every_event']}")  # fmt: skip
    return load, raw


def summarize_watch(rounds: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    """One watchers.py result (or several, of alternated rounds) against the last sequence expected."""
    lat = sorted(x for data, _ in rounds for x in data["latency"])
    counts = [c for data, _ in rounds for c in data["counts"]]
    return {
        "watchers": rounds[0][0]["watchers"],
        "expected_events_each": rounds[0][1],
        "every_watcher_got_every_event": all(
            all(c == expected for c in data["counts"])
            and all(g == 0 for g in data["gaps"])
            and all(last == expected for last in data["last"])
            for data, expected in rounds
        ),
        "min_events": min(counts),
        "max_events": max(counts),
        "gaps": sum(g for data, _ in rounds for g in data["gaps"]),
        "errors": [e for data, _ in rounds for e in data["errors"]],
        "latency_p50_ms": percentile(lat, 50) * 1000,
        "latency_p99_ms": percentile(lat, 99) * 1000,
        "latency_max_ms": (lat[-1] * 1000) if lat else float("nan"),
        "latency_samples": len(lat),
        "messages": sum(data.get("messages") or 0 for data, _ in rounds),
        "client_cpu_s": sum(data.get("client_cpu_s") or 0 for data, _ in rounds),
        "latency_sample_ms": [round(x * 1000, 3) for x in lat[:: max(1, len(lat) // 5000)]],
    }


# -- machine and report ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    pg_version = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "psycopg": psycopg.__version__,
        "postgres": pg_version.strip(),
        "postgres_settings": PG_SETTINGS,
        "load_average_at_start": os.getloadavg(),
        "git_commit": commit.strip(),
        "note": "load generator, server, Postgres and other engineers' test runs all share these cores",
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def build_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    echo = r["echo"]["rps"]
    main = r["claim"]
    t: list[dict[str, Any]] = []

    def row(what: str, value: str, baseline: str, ratio: float | None, target: str, ok: bool | None) -> None:
        t.append({"what": what, "value": value, "baseline": baseline, "ratio": ratio, "target": target, "ok": ok})

    row(
        f"ClaimCode throughput, {r['profile']['concurrency']} in flight (workers={main['workers']})",
        f"{main['rps']:.0f}/s",
        f"echo {echo:.0f}/s",
        main["rps"] / echo,
        ">= 0.45 x echo",
        main["rps"] / echo >= 0.45,
    )
    row(
        "ClaimCode latency p50 / p99 at that load",
        f"{main['p50_ms']:.1f} / {main['p99_ms']:.1f} ms",
        f"echo {r['echo']['p50_ms']:.1f} / {r['echo']['p99_ms']:.1f} ms",
        None,
        "p99 <= 40 ms",
        main["p99_ms"] <= 40,
    )
    pgb = r["pgbench"]["tps"]
    row("ClaimCode throughput vs pgbench, discount_claim per transaction", f"{main['rps']:.0f}/s",
        f"pgbench {pgb:.0f} tps", main["rps"] / pgb, "(reference)", None)  # fmt: skip
    pgb16 = r["pgbench_batch"]["claims_per_second"]
    row("ClaimCode throughput vs pgbench, discount_claim_batch of 16", f"{main['rps']:.0f}/s",
        f"pgbench {pgb16:.0f} claims/s", main["rps"] / pgb16, "(reference)", None)  # fmt: skip
    for w in r["workers_compare"]:
        row(f"ClaimCode throughput, workers={w['workers']}", f"{w['rps']:.0f}/s", f"echo {echo:.0f}/s",
            w["rps"] / echo, "(1 vs N)", None)  # fmt: skip
    d = r["decay"]
    row(
        f"ClaimCode throughput after {d['piled_up_claims']:,} claims vs fresh brand",
        f"{d['after']['rps']:.0f}/s",
        f"fresh {d['fresh']['rps']:.0f}/s",
        d["after"]["rps"] / d["fresh"]["rps"],
        ">= 0.9",
        d["after"]["rps"] / d["fresh"]["rps"] >= 0.9,
    )
    g = r["generate"]
    row(
        f"GenerateCodes of {g['count']:,} codes in one call",
        f"{g['rpc']['seconds']:.2f} s",
        f"raw COPY {g['raw_copy']['seconds']:.2f} s",
        g["rpc"]["seconds"] / g["raw_copy"]["seconds"],
        "<= 1.3 x raw COPY",
        g["rpc"]["seconds"] / g["raw_copy"]["seconds"] <= 1.3,
    )
    row("GenerateCodes server RSS growth", f"{g['rpc']['rss_growth_mb']:.0f} MB", "", None, "<= 300 MB",
        g["rpc"]["rss_growth_mb"] <= 300)  # fmt: skip
    w = r["watch"]
    ev = w["with_watchers_events"]
    # The issue names no claim rate for the latency target, so it is checked at every rate measured.
    for paced in w["paced"].values():
        pe = paced["events"]
        row(
            f"claim -> WatchClaims event latency p50 / p99, {pe['watchers']} watchers, "
            f"paced {paced['rate']:.0f} claims/s (got {paced['load']['rps']:.0f}/s)",
            f"{pe['latency_p50_ms']:.1f} / {pe['latency_p99_ms']:.1f} ms",
            "",
            None,
            "p50 <= 5, p99 <= 25 ms",
            pe["latency_p50_ms"] <= 5 and pe["latency_p99_ms"] <= 25,
        )
    row(
        f"  same, closed loop of {r['profile']['concurrency']} in flight (saturated; runs of <= "
        f"{w.get('max_claims_per_response', 1)} per message)",
        f"{ev['latency_p50_ms']:.1f} / {ev['latency_p99_ms']:.1f} ms",
        "",
        None,
        "p50 <= 5, p99 <= 25 ms",
        ev["latency_p50_ms"] <= 5 and ev["latency_p99_ms"] <= 25,
    )
    fe = w["few_watchers_events"]
    row(
        f"  same, {fe['watchers']} watchers, {r['profile']['concurrency']} in flight: latency p50 / p99",
        f"{fe['latency_p50_ms']:.1f} / {fe['latency_p99_ms']:.1f} ms",
        "",
        None,
        "(reference)",
        None,
    )
    row(
        f"  claim throughput with {fe['watchers']} watchers vs none",
        f"{w['with_few_watchers']['rps']:.0f}/s",
        f"none {w['without_watchers']['rps']:.0f}/s",
        w["with_few_watchers"]["rps"] / w["without_watchers"]["rps"],
        "(reference)",
        None,
    )
    ratio = w["with_watchers"]["rps"] / w["without_watchers"]["rps"]
    row(
        f"claim throughput with {ev['watchers']} watchers streaming every event vs none",
        f"{w['with_watchers']['rps']:.0f}/s",
        f"none {w['without_watchers']['rps']:.0f}/s",
        ratio,
        ">= 0.85",
        ratio >= 0.85,
    )
    se = w["single_events"]
    row(
        f"  reference: {se['watchers']} watchers asking one claim per message: throughput vs none",
        f"{w['with_watchers_single']['rps']:.0f}/s",
        f"none {w['without_watchers']['rps']:.0f}/s",
        w["with_watchers_single"]["rps"] / w["without_watchers"]["rps"],
        "(reference)",
        None,
    )
    row(
        "  reference: the same, event latency p50 / p99",
        f"{se['latency_p50_ms']:.1f} / {se['latency_p99_ms']:.1f} ms",
        "",
        None,
        "(reference)",
        None,
    )
    row(
        f"  every watcher received every event ({ev['expected_events_each']:,} each)",
        "yes" if ev["every_watcher_got_every_event"] else f"NO (min {ev['min_events']}, gaps {ev['gaps']})",
        "",
        None,
        "all",
        bool(
            ev["every_watcher_got_every_event"]
            and all(paced["events"]["every_watcher_got_every_event"] for paced in w["paced"].values())
        ),
    )
    i = r["idle"]
    row(
        f"{i['streams']:,} idle WatchClaims streams on one process: RSS",
        f"{i['rss_mb']:.0f} MB",
        f"{i['rss_before_mb']:.0f} MB before",
        None,
        "<= 300 MB",
        i["rss_mb"] <= 300,
    )
    row("  LISTEN connections", str(i["listen_connections"]), "", None, "exactly 1", i["listen_connections"] == 1)
    return t


def print_table(targets: list[dict[str, Any]]) -> str:
    lines = [f"{'what':<78} {'value':>16} {'baseline':>22} {'ratio':>6} {'target':>22}  verdict", "-" * 158]
    for t in targets:
        ratio = f"{t['ratio']:.2f}" if t["ratio"] is not None else ""
        lines.append(
            f"{t['what']:<78} {t['value']:>16} {t['baseline']:>22} {ratio:>6} {t['target']:>22}  {verdict(t['ok'])}"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few-seconds version for CI (proves it works)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, or a temp dir with --smoke)")
    parser.add_argument("--duration", type=float, help="seconds per load phase")
    parser.add_argument(
        "--workers", type=int, help="worker processes for the main runs (default 1, the server's default)"
    )
    args = parser.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    if args.duration:
        profile.duration = args.duration
    if args.workers and args.workers not in profile.workers:
        profile.workers.append(args.workers)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-work-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log(f"profile {profile.name}; work files in {workdir}; results to {out_dir}")

    results: dict[str, Any] = {"profile": profile.__dict__, "machine": machine(), "started_utc": stamp}
    pg = PrivatePostgres().start()
    log(f"private PostgreSQL on port {pg.port}")
    servers: list[Server] = []

    def start_server(workers: int) -> Server:
        s = Server(db.url, workers, workdir)
        servers.append(s)
        return s

    def stop_server(s: Server) -> None:
        code = s.stop()
        servers.remove(s)
        if code != 0:
            raise RuntimeError(f"server exited {code} on SIGTERM: {s.log_path.read_text()[-3000:]}")

    try:
        Db(pg.url).sql("CREATE DATABASE discount_bench")
        db = Db(pg.url_for("discount_bench"))
        subprocess.run(
            [str(BIN / "discount"), "migrate"], env={**os.environ, "DISCOUNT_DATABASE_URL": db.url}, check=True
        )
        admin = db.key("admin")
        service = db.key("service")
        n = profile.brand_codes

        # 1+2. the RPC ceiling (echo: same load generator, concurrency and duration) and ClaimCode with
        # 1 vs N worker processes, each on a fresh brand; alternated in rounds so that drift in the
        # machine's load hits all of them.
        echo_runs: list[dict[str, Any]] = []
        claim_runs: dict[int, list[dict[str, Any]]] = {w: [] for w in profile.workers}
        for r in range(profile.rounds):
            with echo_server(workdir) as echo_addr:
                echo_runs.append(run_load(workdir, f"echo-{r}", target=echo_addr, method="echo", api_key=service,
                                          brand="echo", profile=profile))  # fmt: skip
            for w in profile.workers:
                db.brand(f"hot-w{w}-{r}", n)
                s = start_server(w)
                claim_runs[w].append(run_load(workdir, f"claim-w{w}-{r}", target=s.address, method="claim",
                                              api_key=service, brand=f"hot-w{w}-{r}", profile=profile,
                                              server_pid=s.pid, pg=pg))  # fmt: skip
                stop_server(s)
        results["echo"] = merge_rounds(echo_runs)
        compare = []
        for w in profile.workers:
            summary = merge_rounds(claim_runs[w])
            summary["workers"] = w
            compare.append(summary)
        results["workers_compare"] = compare
        # The main runs use the server's default, one process (DISCOUNT_WORKERS=1): across runs on
        # this machine a second process never paid off (docs/performance.md); the rows above show
        # this run's own comparison.
        workers = args.workers or 1
        results["claim"] = next(c for c in compare if c["workers"] == workers)
        log(
            f"main runs use workers={workers}; this run: "
            + ", ".join(f"w{c['workers']} {c['rps']:.0f}/s" for c in compare)
        )

        # 3. the database ceiling: pgbench running the same claim function.
        db.brand("pgbench", max(n, 250_000) if profile.name == "full" else n)
        results["pgbench"] = phase_pgbench(db, workdir, pg, "pgbench", profile)
        db.brand("pgbench16", max(n, 500_000) if profile.name == "full" else n)
        results["pgbench_batch"] = phase_pgbench(db, workdir, pg, "pgbench16", profile, batch=16)

        # 4. decay: a fresh brand vs one with `million` claims piled up (bulk SQL, then real claims).
        fresh_key = db.brand("fresh", n)
        million_key = db.brand("million", profile.million + n)
        explain_fresh = db.explain_claim(fresh_key, 0)
        explain_fresh_call = db.explain_claim_call("fresh", 0)
        pile_seconds = db.pile_up_claims(million_key, profile.million)
        log(f"piled up {profile.million} claims in {pile_seconds:.1f}s")
        hint = db.claim_hint(million_key)
        explain_million_hint = db.explain_claim(million_key, hint)
        explain_million_cold = db.explain_claim(million_key, 0)
        explain_million_call = db.explain_claim_call("million", 0)
        db.sql("CHECKPOINT")  # the pile-up's WAL is flushed before anything is timed
        fresh_runs: list[dict[str, Any]] = []
        after_runs: list[dict[str, Any]] = []
        for r in range(profile.rounds):  # alternated, so drift in the machine's load hits both
            brand = "fresh" if r == 0 else f"fresh{r}"
            if r:
                db.brand(brand, n)
            s = start_server(workers)
            fresh_runs.append(run_load(workdir, f"fresh-{r}", target=s.address, method="claim", api_key=service,
                                       brand=brand, profile=profile, server_pid=s.pid, pg=pg))  # fmt: skip
            stop_server(s)
            db.sql("CHECKPOINT")
            s = start_server(workers)  # a new process: no hint of its own yet, the worst case
            after_runs.append(run_load(workdir, f"after-million-{r}", target=s.address, method="claim",
                                       api_key=service, brand="million", profile=profile, server_pid=s.pid,
                                       pg=pg))  # fmt: skip
            if r + 1 < profile.rounds:
                stop_server(s)
                db.sql("CHECKPOINT")
        explain_after_run = db.explain_claim(million_key, db.claim_hint(million_key))
        results["decay"] = {
            "piled_up_claims": profile.million,
            "pile_up_seconds": pile_seconds,
            "method": "bulk SQL mimicking claims (pile_up_claims in bench/run.py), then real ClaimCode calls",
            "fresh": merge_rounds(fresh_runs),
            "after": merge_rounds(after_runs),
            "explain_fresh": explain_fresh,
            "explain_fresh_function_call_hint_0": explain_fresh_call,
            "explain_after_million_function_call_hint_0": explain_million_call,
            "explain_after_million_with_hint": explain_million_hint,
            "explain_after_million_hint_0": explain_million_cold,
            "explain_after_million_and_the_run": explain_after_run,
        }

        # 5. generation: raw COPY baseline and GenerateCodes of the same size in one call, alternated.
        raws, rpcs = [], []
        for r in range(profile.rounds):
            raws.append(phase_raw_copy(db, profile.generate))
            db.brand(f"gen{r}", 0)
            rpcs.append(phase_generate(db, s, admin, f"gen{r}", profile.generate))
        results["generate"] = {
            "count": profile.generate,
            "raw_copy": {"seconds": sum(x["seconds"] for x in raws) / len(raws), "rounds": raws},
            "rpc": {
                "seconds": sum(x["seconds"] for x in rpcs) / len(rpcs),
                "rss_growth_mb": max(x["rss_growth_mb"] for x in rpcs),
                "generated": min(x["generated"] for x in rpcs),
                "rounds": rpcs,
            },
        }
        stop_server(s)

        # 6. the feed: claim throughput without watchers and with 100 watchers streaming every event,
        # alternated in rounds (the machine's drift hits both); then event latency at paced rates.
        s = start_server(workers)

        def watched(name: str, count: int, **options: Any) -> tuple[dict[str, Any], tuple[dict[str, Any], int]]:
            return watched_phase(workdir, db, s, (admin, service), name, count, profile, pg, **options)

        without_runs, with_runs, with_raw = [], [], []
        for r in range(profile.rounds):
            db.brand(f"nowatch{r}", n)
            db.sql("CHECKPOINT")
            without_runs.append(run_load(workdir, f"no-watchers-{r}", target=s.address, method="claim",
                                         api_key=service, brand=f"nowatch{r}", profile=profile, server_pid=s.pid,
                                         pg=pg))  # fmt: skip
            load, raw = watched(f"watched{r}", profile.watchers)
            with_runs.append(load)
            with_raw.append(raw)
        paced: dict[str, Any] = {}
        for rate in profile.paced_rates:
            load, raw = watched(f"paced{rate:.0f}", profile.watchers, rate=rate)
            paced[f"{rate:.0f}"] = {"rate": rate, "load": load, "events": summarize_watch([raw])}
        few = max(1, profile.watchers // 10)  # where the knee is: the same closed loop with a tenth of them
        with_few, few_raw = watched("watched-few", few)
        # Reference: the same watchers asking for one claim per message (the contract's default).
        with_single, single_raw = watched("watched-single", profile.watchers, per_response=0)
        results["watch"] = {
            "without_watchers": merge_rounds(without_runs),
            "with_watchers": merge_rounds(with_runs),
            "with_watchers_events": summarize_watch(with_raw),
            "paced": paced,
            "with_few_watchers": with_few,
            "few_watchers_events": summarize_watch([few_raw]),
            "max_claims_per_response": WATCH_CLAIMS_PER_RESPONSE,
            "with_watchers_single": with_single,
            "single_events": summarize_watch([single_raw]),
        }
        stop_server(s)

        # 7. 1,000 idle streams on one process: its RSS and its LISTEN connections.
        s = start_server(1)
        db.brand("idle", 100)
        time.sleep(1.0)
        rss_before = rss_bytes(s.pid)
        idle = Watchers(workdir, "idle", s.address, admin, "idle", profile.idle_streams, record=False)
        probe_claim(s.address, service, "idle", "probe")  # every stream gets one event, then idles
        idle.wait_ready(timeout=300)
        time.sleep(2.0)
        rss_idle = rss_bytes(s.pid)
        listen = db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'discount-service-listen'")[0][
            0
        ]
        listen_apps = db.sql(
            "SELECT application_name, state, query FROM pg_stat_activity WHERE application_name LIKE 'discount%%'"
        )
        idle_data = idle.finish(1)
        results["idle"] = {
            "streams": profile.idle_streams,
            "streams_with_probe_event": sum(1 for c in idle_data["counts"] if c == 1),
            "rss_before_mb": rss_before / 2**20,
            "rss_mb": rss_idle / 2**20,
            "listen_connections": int(listen),
            "connections": [list(map(str, row)) for row in listen_apps],
        }
        log(f"idle: {profile.idle_streams} streams, RSS {rss_idle / 2**20:.0f} MB, LISTEN connections {listen}")
        stop_server(s)
    finally:
        for s in list(servers):
            with contextlib.suppress(Exception):
                s.stop()
        pg.stop()

    results["sanity"] = sanity(results)
    results["targets"] = build_targets(results)
    results["table"] = print_table(results["targets"])
    name = f"bench-{profile.name}-{stamp}"
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(strip_private(results), indent=1, default=str))
    from bench.chart import chart

    png_path = out_dir / f"{name}.png"
    chart(results, png_path)
    log(f"wrote {json_path} and {png_path}")
    if results["sanity"]:
        log("SANITY FAILURES (the service misbehaved under load):\n  " + "\n  ".join(results["sanity"]))
        return 1
    return 0


def strip_private(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [strip_private(v) for v in value]
    return value


def sanity(r: dict[str, Any]) -> list[str]:
    """Correctness under load, checked in every run (targets are reported, not enforced)."""
    problems = []
    phases = [r["echo"], *r["workers_compare"], r["decay"]["fresh"], r["decay"]["after"]]
    phases += [r["watch"]["without_watchers"], r["watch"]["with_watchers"]]
    phases += [paced["load"] for paced in r["watch"]["paced"].values()]
    phases += [r["watch"]["with_few_watchers"], r["watch"]["with_watchers_single"]]
    for p in phases:
        if p["errors"] or p["repeats"]:
            problems.append(f"{p['name']}: errors {p['errors']}, repeated users {p['repeats']}")
        if p["calls"] == 0:
            problems.append(f"{p['name']}: no calls completed")
    watched = [(name, r["watch"][name]) for name in ("with_watchers_events", "few_watchers_events", "single_events")]
    watched += [(f"paced {rate}", paced["events"]) for rate, paced in r["watch"]["paced"].items()]
    for name, ev in watched:
        if not ev["every_watcher_got_every_event"]:
            problems.append(f"{name}: not every watcher got every event: {ev['min_events']}..{ev['max_events']}")
    if r["idle"]["listen_connections"] != 1:
        problems.append(f"idle: {r['idle']['listen_connections']} LISTEN connections")
    if r["idle"]["streams_with_probe_event"] != r["idle"]["streams"]:
        problems.append("idle: not every stream got its event")
    if r["generate"]["rpc"]["generated"] != r["generate"]["count"]:
        problems.append("generate: wrong count")
    return problems
