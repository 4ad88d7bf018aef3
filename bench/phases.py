"""What the phases of a run share: the profiles (the sizes of a full and a smoke run), `Bench` (the
profile, the database, the keys, the servers running now, and one load phase), and the summaries of
a load generator's or the watchers' raw results.

The phases themselves, each measuring the service and its same-run baseline and returning a summary
for the report: claim_phases.py (throughput, pgbench, decay, generation), watch_phases.py (WatchClaims
streams of one brand), brand_phases.py (many brands), and one module per issue's rows (expired.py,
floods.py, redemption.py, webhooks.py, relay.py); run.py lists them in the order a full run takes.

Comparisons run in alternated rounds (A, B, A, B) so that drift in the shared machine's load hits
both sides, with a CHECKPOINT before timed phases so one phase's WAL is not flushed during the next.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import log, percentile
from bench.database import Db, pg_cpu, start_postgres
from bench.processes import Server, run_loadgen
from discount_dev.postgres import PrivatePostgres
from discount_dev.processes import cpu_seconds, rss_bytes


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
    expired_codes: int = 500_000  # expired codes of the measured brand (expired.py; >= 10,000 for its vacuum)
    expired_live: int = 1_000  # live codes of each brand
    expired_calls: int = 1_000  # NO_CODES_LEFT and GetBrandStats calls per round
    expired_rounds: int = 4
    flood_seconds: float = 5.0  # each measured series of legitimate claims (floods.py)
    flood_claim_rate: float = 40.0  # legitimate claims a second
    flood_rate: float = 2000.0  # bad-key calls a second
    flood_rounds: int = 2  # alternated baseline and flood rounds
    relay_outage: float = 60.0  # seconds NATS is unreachable (relay.py)


FULL = Profile(
    name="full", duration=15.0, warmup=2.0, concurrency=32, brand_codes=120_000, million=1_000_000,
    generate=1_000_000, watchers=100, idle_streams=1000, paced_rates=(50.0, 500.0), rounds=2,
)  # fmt: skip
SMOKE = Profile(
    name="smoke", duration=2.0, warmup=0.5, concurrency=32, brand_codes=20_000, million=20_000,
    generate=50_000, watchers=10, idle_streams=50, paced_rates=(50.0,), many_brands=20, many_brand_codes=1000,
    stats_delay=0.0, idle_window=2.0, single_duration=2.0, expired_codes=12_000, expired_live=200,
    expired_calls=100, expired_rounds=2, flood_seconds=1.0, flood_rate=500.0, relay_outage=1.0,
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
