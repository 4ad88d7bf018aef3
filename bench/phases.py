"""The phases of a run. Each one measures the service and its same-run baseline and returns a summary
for the report; `Bench` holds what they share (the profile, the database, the keys, the servers).

Comparisons run in alternated rounds (A, B, A, B) so that drift in the shared machine's load hits
both sides, with a CHECKPOINT before timed phases so one phase's WAL is not flushed during the next.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench.common import log, percentile
from bench.database import Db, pg_cpu, start_postgres
from bench.processes import WATCH_CLAIMS_PER_RESPONSE, Server, Watchers, echo_server, probe_claim, run_loadgen
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.postgres import PG_BIN, PrivatePostgres
from discount_dev.processes import cpu_seconds, rss_bytes
from discount_service import codes as codegen


@dataclass(frozen=True, kw_only=True)
class Profile:
    """The sizes of a run."""

    name: str
    duration: float  # measured seconds per load phase
    warmup: float
    concurrency: int  # calls in flight
    brand_codes: int  # free codes per load-phase brand
    million: int  # claims piled up before the decay phase
    generate: int  # GenerateCodes / raw COPY size
    watchers: int
    idle_streams: int
    paced_rates: tuple[float, ...]  # claims/s for the paced event-latency phases
    rounds: int = 1  # alternated repetitions of the comparisons
    workers: tuple[int, ...] = (1, 2)  # server processes compared in the throughput phase
    many_brands: int = 1000  # brands of the cross-brand and many-watchers phases
    many_brand_codes: int = 300  # free codes per brand of those phases
    stats_delay: float = 11.0  # seconds after the last work before reading pg_stat_database
    idle_window: float = 20.0  # seconds over which an idle server's transactions are counted
    single_duration: float = 8.0  # measured seconds of the one-claim-per-message phase (its backlog)


FULL = Profile(
    name="full", duration=15.0, warmup=2.0, concurrency=32, brand_codes=120_000, million=1_000_000,
    generate=1_000_000, watchers=100, idle_streams=1000, paced_rates=(50.0, 500.0), rounds=2,
)  # fmt: skip
SMOKE = Profile(
    name="smoke", duration=2.0, warmup=0.5, concurrency=32, brand_codes=20_000, million=20_000,
    generate=50_000, watchers=10, idle_streams=50, paced_rates=(50.0,), many_brands=20, many_brand_codes=1000,
    stats_delay=0.0, idle_window=2.0, single_duration=2.0,
)  # fmt: skip


@dataclass
class Bench:
    """What the phases share: a private PostgreSQL with the migrated database, an admin and a
    service key, a folder for the child processes' files, and the servers running now."""

    profile: Profile
    workdir: Path
    pg: PrivatePostgres
    db: Db
    admin_key: str
    service_key: str
    servers: list[Server] = field(default_factory=list)

    @classmethod
    def open(cls, profile: Profile, workdir: Path) -> Bench:
        pg = start_postgres()
        log(f"private PostgreSQL on port {pg.port}")
        try:
            db = Db(pg)
            return cls(profile=profile, workdir=workdir, pg=pg, db=db, admin_key=db.key("admin"),
                       service_key=db.key("service"))  # fmt: skip
        except BaseException:
            pg.cleanup()
            raise

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()
        self.pg.cleanup()

    def start_server(self, workers: int) -> Server:
        server = Server(self.db.url, workers, self.workdir)
        self.servers.append(server)
        return server

    def stop_server(self, server: Server) -> None:
        """SIGTERM; a server that does not exit 0 fails the run."""
        code = server.stop()
        self.servers.remove(server)
        if code != 0:
            raise RuntimeError(f"server exited {code} on SIGTERM: {server.log_path.read_text()[-3000:]}")

    def load(
        self,
        name: str,
        brand: str,
        *,
        server: Server | None = None,
        target: str | None = None,
        method: str = "claim",
        rate: float = 0.0,
        brands: list[str] | None = None,
        duration: float | None = None,
        record_replies: bool = False,
    ) -> dict[str, Any]:
        """One load phase against `server` (its CPU and PostgreSQL's measured too) or a bare
        `target`, in a load-generator process; returns its summary. With `brands`, each call is
        for a random one of them; `record_replies` keeps each new claim's reply time."""
        profile = self.profile
        config = {
            "target": server.address if server else target,
            "method": method,
            "api_key": self.service_key,
            "brand": brand,
            "brands": brands,
            "record_replies": record_replies,
            "concurrency": profile.concurrency,
            "channels": 4,
            "warmup": profile.warmup,
            "duration": duration or profile.duration,
            "rate": rate,
            "user_prefix": f"{name}-{os.getpid()}",
            "out": str(self.workdir / f"load-{name}.json"),
        }
        cpu_before = cpu_seconds(server.pid, children=True) if server else 0.0
        pg_before = pg_cpu(self.pg) if server else 0.0
        started = time.perf_counter()
        data = run_loadgen(config)
        summary = summarize_load(name, data)
        if record_replies:
            summary["_replies"] = data["replies"]
        elapsed = time.perf_counter() - started
        if server:
            summary["server_cpu_s"] = round(cpu_seconds(server.pid, children=True) - cpu_before, 2)
            summary["postgres_cpu_s"] = round(pg_cpu(self.pg) - pg_before, 2)
        summary["wall_s"] = round(elapsed, 2)
        log(
            f"{name}: {summary['rps']:.0f}/s, p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, "
            f"errors {summary['errors']}"
        )
        return summary


# -- summaries ------------------------------------------------------------------------------------


def _sample(sorted_seconds: list[float]) -> list[float]:
    """At most about 5,000 evenly spread values, in ms: enough for a distribution chart."""
    return [round(x * 1000, 3) for x in sorted_seconds[:: max(1, len(sorted_seconds) // 5000)]]


def summarize_load(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """A load generator's raw result: throughput and latency over the measured window (warm-up
    excluded), and completions per second over the whole run."""
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
        "latency_sample_ms": _sample(window),
        "_window": window,  # every call's latency in the window; not written to the JSON
    }


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Alternated rounds of one phase: mean throughput, latency percentiles over all their calls,
    the first round's time series."""
    merged = dict(runs[0])
    merged["rps"] = sum(r["rps"] for r in runs) / len(runs)
    window = sorted(x for r in runs for x in r["_window"])
    merged["_window"] = window
    for q in (50, 90, 99):
        merged[f"p{q}_ms"] = percentile(window, q) * 1000
    merged["latency_sample_ms"] = _sample(window)
    merged["calls"] = sum(r["calls"] for r in runs)
    merged["errors"] = {k: v for r in runs for k, v in r["errors"].items()}
    merged["repeats"] = sum(r["repeats"] for r in runs)
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_s", "postgres_cpu_s")
    merged["rounds"] = [{k: r.get(k) for k in keys} for r in runs]
    return merged


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
        "latency_sample_ms": _sample(lat),
    }


# -- the phases -----------------------------------------------------------------------------------


def throughput(bench: Bench) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The RPC ceiling (echo: the same load generator, concurrency and duration) and ClaimCode on a
    fresh brand with each number of worker processes, in alternated rounds. Returns the echo
    summary and one ClaimCode summary per number of workers."""
    profile = bench.profile
    echo_runs: list[dict[str, Any]] = []
    claim_runs: dict[int, list[dict[str, Any]]] = {w: [] for w in profile.workers}
    for r in range(profile.rounds):
        with echo_server(bench.workdir) as echo_address:
            echo_runs.append(bench.load(f"echo-{r}", "echo", target=echo_address, method="echo"))
        for w in profile.workers:
            brand = f"hot-w{w}-{r}"
            bench.db.brand(brand, profile.brand_codes)
            server = bench.start_server(w)
            claim_runs[w].append(bench.load(f"claim-w{w}-{r}", brand, server=server))
            bench.stop_server(server)
    return merge_rounds(echo_runs), [{**merge_rounds(claim_runs[w]), "workers": w} for w in profile.workers]


def pgbench(bench: Bench, brand: str, *, batch: int = 1) -> dict[str, Any]:
    """The claim transaction the service runs, straight from pgbench, 32 clients, prepared.

    Each transaction is one call of `discount_claim_many`, the function the service calls on one
    PostgreSQL: batch=1 with one claim (its path when a brand is idle), batch>1 with that many users
    of the brand (its path under load).
    Each client keeps its own hint from its last claim, as each server process does, and claims
    for distinct users (client id + a per-client counter)."""
    profile, db, pg = bench.profile, bench.db, bench.pg
    # pgbench claims faster than the service: in a full run its brand is big enough not to run dry.
    codes = profile.brand_codes
    if profile.name == "full":
        codes = max(codes, 250_000 if batch == 1 else 500_000)
    db.brand(brand, codes)
    script = bench.workdir / f"claim-{batch}.pgbench"
    tag = f"pgb{os.getpid()}b{batch}"
    user = f"'{tag}-' || :client_id || '-' || :n"
    users = ", ".join(f"{user} || '-{i}'" for i in range(batch))
    emails = ", ".join(f"{user} || '-{i}@example.com'" for i in range(batch))
    brands, hints = f"array_fill('{brand}'::text, ARRAY[{batch}])", f"array_fill(:hint::bigint, ARRAY[{batch}])"
    call = f"discount_claim_many({brands}, ARRAY[{users}], ARRAY[{emails}], {hints})"
    script.write_text(f"\\set n :n + 1\nSELECT coalesce(max(code_key), :hint) AS hint FROM {call}\n\\gset\n")
    duration = int(max(1, round(profile.duration)))
    cmd = [
        str(PG_BIN / "pgbench"), "-n", "-M", "prepared", "-c", str(profile.concurrency), "-j", "2",
        "-T", str(duration), "-D", "hint=0", "-D", "n=0", "-f", str(script), "-r",
        "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", db.name,
    ]  # fmt: skip
    before = db.last_sequence(brand)
    cpu_before = pg_cpu(pg)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    tps_match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if tps_match is None:
        raise RuntimeError(f"no tps in the pgbench output: {proc.stdout[-2000:]}")
    tps = float(tps_match.group(1))
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


def decay(bench: Bench, workers: int) -> tuple[dict[str, Any], Server]:
    """ClaimCode on a fresh brand vs one with `million` claims piled up (bulk SQL, then real
    claims), in alternated rounds, each on a new server process (no hint of its own yet: the worst
    case); with the EXPLAINs of the code pick at each point. Returns the summary and the server of
    the last round, still running, for the generation phase."""
    profile, db = bench.profile, bench.db
    n = profile.brand_codes
    fresh_key = db.brand("fresh", n)
    million_key = db.brand("million", profile.million + n)
    explain_fresh = db.explain_claim(fresh_key, 0)
    explain_fresh_call = db.explain_claim_call("fresh", 0)
    pile_seconds = db.pile_up_claims(million_key, profile.million)
    log(f"piled up {profile.million} claims in {pile_seconds:.1f}s")
    explain_million_hint = db.explain_claim(million_key, db.claim_hint(million_key))
    explain_million_cold = db.explain_claim(million_key, 0)
    explain_million_call = db.explain_claim_call("million", 0)
    db.sql("CHECKPOINT")  # the pile-up's WAL is flushed before anything is timed
    fresh_runs: list[dict[str, Any]] = []
    after_runs: list[dict[str, Any]] = []
    server: Server | None = None
    for r in range(profile.rounds):
        brand = "fresh" if r == 0 else f"fresh{r}"
        if r:
            db.brand(brand, n)
        server = bench.start_server(workers)
        fresh_runs.append(bench.load(f"fresh-{r}", brand, server=server))
        bench.stop_server(server)
        db.sql("CHECKPOINT")
        server = bench.start_server(workers)
        after_runs.append(bench.load(f"after-million-{r}", "million", server=server))
        if r + 1 < profile.rounds:
            bench.stop_server(server)
            db.sql("CHECKPOINT")
    assert server is not None
    summary = {
        "piled_up_claims": profile.million,
        "pile_up_seconds": pile_seconds,
        "method": "bulk SQL mimicking claims (Db.pile_up_claims in bench/database.py), then real ClaimCode calls",
        "fresh": merge_rounds(fresh_runs),
        "after": merge_rounds(after_runs),
        "explain_fresh": explain_fresh,
        "explain_fresh_function_call_hint_0": explain_fresh_call,
        "explain_after_million_function_call_hint_0": explain_million_call,
        "explain_after_million_with_hint": explain_million_hint,
        "explain_after_million_hint_0": explain_million_cold,
        "explain_after_million_and_the_run": db.explain_claim(million_key, db.claim_hint(million_key)),
    }
    return summary, server


def raw_copy(db: Db, count: int) -> dict[str, Any]:
    """`count` random codes made and COPYed with psycopg into a table shaped like `codes`, with the
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


@contextlib.contextmanager
def peak_rss(pid: int, *, interval: float) -> Iterator[list[int]]:
    """Samples the RSS of `pid` and its children every `interval` seconds while the block runs;
    yields a one-item list that holds the peak seen (read it after the block)."""
    peak = [rss_bytes(pid, children=True)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(pid, children=True))
            time.sleep(interval)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def generate_codes(bench: Bench, server: Server, brand: str, count: int) -> dict[str, Any]:
    """One GenerateCodes call of `count` codes: its time and the server's peak RSS growth."""
    bench.db.sql("CHECKPOINT")
    time.sleep(0.5)
    rss_before = rss_bytes(server.pid, children=True)
    started = time.perf_counter()
    with peak_rss(server.pid, interval=0.02) as peak:
        with grpc.insecure_channel(server.address) as ch:
            reply = pb_grpc.DiscountServiceStub(ch).GenerateCodes(
                pb.GenerateCodesRequest(brand_id=brand, count=count),
                metadata=(("x-api-key", bench.admin_key),),
                timeout=600,
            )
        seconds = time.perf_counter() - started
    rss_after = rss_bytes(server.pid, children=True)
    log(f"GenerateCodes {count}: {seconds:.2f}s, RSS +{(peak[0] - rss_before) / 2**20:.0f} MB")
    return {
        "seconds": seconds,
        "generated": reply.generated,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": peak[0] / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_growth_mb": (peak[0] - rss_before) / 2**20,
    }


def generation(bench: Bench, server: Server) -> dict[str, Any]:
    """The raw COPY baseline and GenerateCodes of the same size in one call, alternated."""
    count = bench.profile.generate
    raws, rpcs = [], []
    for r in range(bench.profile.rounds):
        raws.append(raw_copy(bench.db, count))
        bench.db.brand(f"gen{r}", 0)
        rpcs.append(generate_codes(bench, server, f"gen{r}", count))
    return {
        "count": count,
        "raw_copy": {"seconds": sum(x["seconds"] for x in raws) / len(raws), "rounds": raws},
        "rpc": {
            "seconds": sum(x["seconds"] for x in rpcs) / len(rpcs),
            "rss_growth_mb": max(x["rss_growth_mb"] for x in rpcs),
            "generated": min(x["generated"] for x in rpcs),
            "rounds": rpcs,
        },
    }


def watched_phase(
    bench: Bench,
    server: Server,
    name: str,
    count: int,
    *,
    rate: float = 0.0,
    per_response: int = WATCH_CLAIMS_PER_RESPONSE,
) -> tuple[dict[str, Any], tuple[dict[str, Any], int]]:
    """Claims on a new brand (closed loop, or `rate` claims/s) while `count` watchers stream every
    event: the load summary, and the watchers' raw result with the last sequence they had to reach
    (for summarize_watch, alone or with other rounds)."""
    db = bench.db
    db.brand(name, bench.profile.brand_codes)
    db.sql("CHECKPOINT")  # the previous phase's WAL is flushed before this one is timed
    group = Watchers(bench.workdir, name, server.address, bench.admin_key, name, count, per_response=per_response)
    probe_claim(server.address, bench.service_key, name, "probe")
    group.wait_ready()
    load = bench.load(name, name, server=server, rate=rate)
    expected = db.last_sequence(name)
    raw = (group.finish(expected), expected)
    events = summarize_watch([raw])
    log(f"{name}: {count} watchers, event latency p50 {events['latency_p50_ms']:.1f} ms, p99 "
        f"{events['latency_p99_ms']:.1f} ms, all events: {events['every_watcher_got_every_event']}")  # fmt: skip
    return load, raw


def feed(bench: Bench, workers: int) -> dict[str, Any]:
    """Claim throughput without watchers and with N watchers streaming every event, alternated in
    rounds on one server; then event latency at the paced rates, and with a tenth of the watchers."""
    profile, db = bench.profile, bench.db
    server = bench.start_server(workers)
    without_runs, with_runs, with_raw = [], [], []
    for r in range(profile.rounds):
        db.brand(f"nowatch{r}", profile.brand_codes)
        db.sql("CHECKPOINT")
        without_runs.append(bench.load(f"no-watchers-{r}", f"nowatch{r}", server=server))
        load, raw = watched_phase(bench, server, f"watched{r}", profile.watchers)
        with_runs.append(load)
        with_raw.append(raw)
    paced: dict[str, Any] = {}
    for rate in profile.paced_rates:
        load, raw = watched_phase(bench, server, f"paced{rate:.0f}", profile.watchers, rate=rate)
        paced[f"{rate:.0f}"] = {"rate": rate, "load": load, "events": summarize_watch([raw])}
    few = max(1, profile.watchers // 10)  # where the knee is: the same closed loop with a tenth of them
    with_few, few_raw = watched_phase(bench, server, "watched-few", few)
    bench.stop_server(server)
    return {
        "without_watchers": merge_rounds(without_runs),
        "with_watchers": merge_rounds(with_runs),
        "with_watchers_events": summarize_watch(with_raw),
        "paced": paced,
        "with_few_watchers": with_few,
        "few_watchers_events": summarize_watch([few_raw]),
        "max_claims_per_response": WATCH_CLAIMS_PER_RESPONSE,
    }


def idle(bench: Bench) -> dict[str, Any]:
    """`idle_streams` WatchClaims streams on one server process: its RSS and its LISTEN connections."""
    profile, db = bench.profile, bench.db
    server = bench.start_server(1)
    db.brand("idle", 100)
    time.sleep(1.0)
    rss_before = rss_bytes(server.pid, children=True)
    streams = Watchers(bench.workdir, "idle", server.address, bench.admin_key, "idle", profile.idle_streams,
                       record=False)  # fmt: skip
    probe_claim(server.address, bench.service_key, "idle", "probe")  # every stream gets one event, then idles
    streams.wait_ready(timeout=300)
    time.sleep(2.0)
    rss_idle = rss_bytes(server.pid, children=True)
    listen = db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'discount-service-listen'")
    connections = db.sql(
        "SELECT application_name, state, query FROM pg_stat_activity WHERE application_name LIKE 'discount%%'"
    )
    idle_data = streams.finish(1)
    bench.stop_server(server)
    summary = {
        "streams": profile.idle_streams,
        "streams_with_probe_event": sum(1 for c in idle_data["counts"] if c == 1),
        "rss_before_mb": rss_before / 2**20,
        "rss_mb": rss_idle / 2**20,
        "listen_connections": int(listen[0][0]),
        "connections": [list(map(str, row)) for row in connections],
    }
    log(f"idle: {summary['streams']} streams, RSS {summary['rss_mb']:.0f} MB, "
        f"LISTEN connections {summary['listen_connections']}")  # fmt: skip
    return summary


# -- many brands ----------------------------------------------------------------------------------


def idle_transactions(bench: Bench) -> dict[str, Any]:
    """Transactions per second of the benchmark database while nothing but the server runs, read
    `stats_delay` seconds after the last work, over `idle_window` seconds, two ways at once: from
    pg_stat_database (xact_commit + xact_rollback; idle backends report late, in bursts) and
    exactly, from PostgreSQL's statement log (Db.statements)."""
    profile = bench.profile
    time.sleep(profile.stats_delay)
    before, started = bench.db.transactions(), time.perf_counter()
    statements = bench.db.statements(profile.idle_window)
    elapsed = time.perf_counter() - started
    return {
        "per_second": sum(statements.values()) / profile.idle_window,
        "statements": statements,
        "pg_stat_database_per_second": (bench.db.transactions() - before) / elapsed,
    }


def cross_brand(bench: Bench) -> dict[str, Any]:
    """Claims each for a random one of `many_brands` brands against claims for one hot brand, on
    one server, alternated in rounds; then the transactions/s of that server once the load stopped
    (nothing watched)."""
    profile, db = bench.profile, bench.db
    brands = db.brands("cross", profile.many_brands, profile.many_brand_codes)
    server = bench.start_server(1)
    hot_runs: list[dict[str, Any]] = []
    cross_runs: list[dict[str, Any]] = []
    for r in range(profile.rounds):
        db.brand(f"hot-x{r}", profile.brand_codes)
        db.sql("CHECKPOINT")
        hot_runs.append(bench.load(f"hot-brand-{r}", f"hot-x{r}", server=server))
        db.sql("CHECKPOINT")
        cross_runs.append(bench.load(f"cross-brand-{r}", brands[0], brands=brands, server=server))
    after = idle_transactions(bench)
    bench.stop_server(server)
    log(f"cross-brand: {profile.many_brands} brands; idle after the load: {after['per_second']:.2f} transactions/s "
        f"({after['pg_stat_database_per_second']:.2f} by pg_stat_database) {after['statements']}")  # fmt: skip
    return {
        "brands": profile.many_brands,
        "hot": merge_rounds(hot_runs),
        "cross": merge_rounds(cross_runs),
        "idle_after": after,
    }


def reply_to_event(replies: dict[str, list[Any]], events: dict[str, list[Any]]) -> list[float]:
    """For every claim both sides saw, the seconds from its ClaimCode reply reaching the load
    generator to its event reaching its watcher (both processes on this machine's clock)."""
    replied = {(b, s): t for b, s, t in zip(replies["brand"], replies["sequence"], replies["at"], strict=True)}
    return sorted(
        t - replied[(b, s)]
        for b, s, t in zip(events["brand"], events["sequence"], events["at"], strict=True)
        if (b, s) in replied
    )


def many_watchers(bench: Bench) -> dict[str, Any]:
    """`many_brands` brands with one watcher each (asking for runs, like discount_client), all in one
    watcher process: the idle server's transactions/s with none and with all of them watched;
    claims for a random brand with and without watchers (other brands), alternated; then the
    ClaimCode reply -> event latency at half the unwatched rate; then the alternated pair again with
    the watcher process at the lowest CPU priority; and whether every watcher got exactly its
    brand's claims."""
    profile, db = bench.profile, bench.db
    n = profile.many_brands
    watched = db.brands("watched", n, profile.many_brand_codes)
    unwatched = db.brands("unwatched", n, profile.many_brand_codes)
    server = bench.start_server(1)
    idle_none = idle_transactions(bench)
    group = Watchers(bench.workdir, "many", server.address, bench.admin_key, watched[0], n, brands=watched,
                     record=False)  # fmt: skip
    group.wait_ready(timeout=300)
    idle_watched = idle_transactions(bench)
    log(f"idle server: {idle_none['per_second']:.2f} transactions/s with no brand watched "
        f"({idle_none['pg_stat_database_per_second']:.2f} by pg_stat_database), {idle_watched['per_second']:.2f} "
        f"with {n} ({idle_watched['pg_stat_database_per_second']:.2f}): {idle_watched['statements']}")  # fmt: skip

    def alternated(label: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Unwatched and watched brands alternated for `rounds`; each load also records the watcher
        process's CPU seconds, so the table can split the cost of a message between server and client."""
        runs: dict[str, list[dict[str, Any]]] = {"unwatched": [], "watched": []}
        for r in range(profile.rounds):
            for kind, brands in (("unwatched", unwatched), ("watched", watched)):
                db.sql("CHECKPOINT")
                claims_before, cpu_before = sum(db.last_sequences(brands).values()), group.cpu_seconds()
                run = bench.load(f"many-{kind}{label}-{r}", brands[0], brands=brands, server=server)
                run["watchers_cpu_s"] = round(group.cpu_seconds() - cpu_before, 2)
                # Claims over the same span as the CPU figures, warm-up included.
                run["claims"] = sum(db.last_sequences(brands).values()) - claims_before
                runs[kind].append(run)
        merged = merge_rounds(runs["unwatched"]), merge_rounds(runs["watched"])
        for m, rs in zip(merged, (runs["unwatched"], runs["watched"]), strict=True):
            for key in ("server_cpu_s", "postgres_cpu_s", "watchers_cpu_s", "claims"):
                m[key] = round(sum(r[key] for r in rs), 2)
        return merged

    # The watchers stand for brand systems on other machines, but here they share the two cores with
    # the server, PostgreSQL and the load generator, and a Python gRPC client spends more CPU per
    # message than the server does. So the comparison runs twice: with the watcher process at the
    # same priority as everything else, then at the lowest, where it runs on what the others leave.
    without, with_ = alternated("")
    half = without["rps"] / 2
    db.sql("CHECKPOINT")
    paced = bench.load("many-watched-half", watched[0], brands=watched, server=server, rate=half, record_replies=True)
    # Last: only a privileged user may give the process its priority back.
    group.set_priority(19)
    without_low, with_low = alternated("-low-priority")
    last_of = db.last_sequences(watched)
    raw = group.finish_each(last_of)
    bench.stop_server(server)
    latency = reply_to_event(paced["_replies"], raw["events"])
    complete = all(
        raw["last"][i] == last_of[watched[i]] and raw["counts"][i] == last_of[watched[i]] and raw["gaps"][i] == 0
        for i in range(n)
    )
    log(f"{n} watchers: {with_['rps'] / without['rps']:.2f} x unwatched, {with_low['rps'] / without_low['rps']:.2f} x "
        f"with the watcher process at the lowest CPU priority; at {paced['rps']:.0f}/s reply -> event "
        f"p50 {percentile(latency, 50) * 1000:.1f} ms, p99 {percentile(latency, 99) * 1000:.1f} ms; "
        f"every watcher got exactly its brand's claims: {complete}")  # fmt: skip
    return {
        "brands": n,
        "idle_none_watched": idle_none,
        "idle_all_watched": idle_watched,
        "without_watchers": without,
        "with_watchers": with_,
        "without_watchers_low_priority": without_low,
        "with_watchers_low_priority": with_low,
        "half_load": paced,
        "reply_to_event_p50_ms": percentile(latency, 50) * 1000,
        "reply_to_event_p99_ms": percentile(latency, 99) * 1000,
        "reply_to_event_samples": len(latency),
        "claims": sum(last_of.values()),
        "every_watcher_got_exactly_its_brands_claims": complete,
        "errors": raw["errors"],
        "client_cpu_s": raw["client_cpu_s"],
        "messages": raw["messages"],
    }


def single_claim_watchers(bench: Bench) -> dict[str, Any]:
    """`watchers` streams of one hot brand asking one claim per message (the contract's default,
    what grpcurl and generated stubs do) under the closed loop, against the same load unwatched,
    for `single_duration` seconds each; then how long after the load stopped every watcher had
    every claim, in order, and the server's peak RSS over the phase."""
    profile, db = bench.profile, bench.db
    server = bench.start_server(1)
    duration = profile.single_duration
    db.brand("single-alone", profile.brand_codes)
    db.sql("CHECKPOINT")
    alone = bench.load("single-unwatched", "single-alone", server=server, duration=duration)
    db.brand("single", profile.brand_codes)
    db.sql("CHECKPOINT")
    group = Watchers(bench.workdir, "single", server.address, bench.admin_key, "single", profile.watchers,
                     per_response=0)  # fmt: skip
    probe_claim(server.address, bench.service_key, "single", "probe")
    group.wait_ready()
    rss_before = rss_bytes(server.pid, children=True)
    with peak_rss(server.pid, interval=0.1) as peak:
        watched = bench.load("single-watched", "single", server=server, duration=duration)
        load_stopped = time.perf_counter()
        server_cpu, watchers_cpu = cpu_seconds(server.pid, children=True), group.cpu_seconds()
        expected = db.last_sequence("single")
        raw = group.finish(expected)
        caught_up = time.perf_counter() - load_stopped
        server_cpu = cpu_seconds(server.pid, children=True) - server_cpu
        watchers_cpu = raw["client_cpu_s"] - watchers_cpu  # its own count at exit
    bench.stop_server(server)
    events = summarize_watch([(raw, expected)])
    log(f"{profile.watchers} one-claim watchers: {watched['rps'] / alone['rps']:.2f} x unwatched; every watcher had "
        f"all {expected} claims {caught_up:.1f} s after the load stopped ({events['messages']:,} messages; CPU "
        f"meanwhile: server {server_cpu:.1f} s, watcher process {watchers_cpu:.1f} s); "
        f"RSS {rss_before / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MB")  # fmt: skip
    return {
        "watchers": profile.watchers,
        "duration": duration,
        "without_watchers": alone,
        "with_watchers": watched,
        "events": events,
        "caught_up_seconds_after_load": caught_up,
        "catch_up_server_cpu_s": server_cpu,
        "catch_up_watchers_cpu_s": watchers_cpu,
        "claims": expected,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": peak[0] / 2**20,
    }
