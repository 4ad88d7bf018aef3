"""The benchmark: `python -m bench` (full, about 30 minutes), `python -m bench --smoke` (CI, a few
seconds a phase), or some phases alone: `python -m bench --only expired --only floods`.

Everything runs on this machine, in separate processes: a private PostgreSQL 15 (database.py), the
server under test (`discount serve`, real child processes), the load generator (loadgen.py), the
WatchClaims clients (watchers.py), and the baselines: the echo server (echo.py), pgbench running
the claim function, and a raw psycopg COPY. Prints the target table with ratios to the same-run
baselines. A full run writes the raw results to bench/raw/ and a summary and a PNG chart to
bench/results/ (committed); a run of some phases writes all of it to bench/raw/ (ignored by git),
a smoke run to a temporary folder. The relay phase needs the NATS server at 127.0.0.1:4222
(scripts/setup.d/30-nats.sh). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    brand_phases,
    claim_phases,
    expired,
    floods,
    phases,
    redemption,
    relay,
    report,
    targets,
    watch_phases,
    webhooks,
)
from bench.common import ROOT, log
from bench.processes import Server

RESULTS = ROOT / "bench" / "results"  # committed: the summaries of full runs
RAW = ROOT / "bench" / "raw"  # ignored by git: samples and plans are megabytes per run


@dataclasses.dataclass
class Run:
    """What the phases of one run pass along: the worker processes of the main runs, and the server
    the decay phase leaves running for the generation phase."""

    workers: int
    server: Server | None = None


def _throughput(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    r["echo"], r["workers_compare"] = claim_phases.throughput(bench)
    # The main runs use the server's default, one process (DISCOUNT_WORKERS=1): across runs on this
    # machine a second process never paid off (docs/performance.md); these rows show this run's own
    # comparison.
    r["claim"] = next(c for c in r["workers_compare"] if c["workers"] == run.workers)
    log(f"main runs use workers={run.workers}; this run: "
        + ", ".join(f"w{c['workers']} {c['rps']:.0f}/s" for c in r["workers_compare"]))  # fmt: skip


def _pgbench(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    r["pgbench"] = claim_phases.pgbench(bench, "pgbench")
    r["pgbench_batch"] = claim_phases.pgbench(bench, "pgbench16", batch=16)


def _decay(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    r["decay"], run.server = claim_phases.decay(bench, run.workers)


def _generate(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    server = run.server or bench.start_server(run.workers)  # decay's, in a full run
    run.server = None
    r["generate"] = claim_phases.generation(bench, server)
    bench.stop_server(server)


def _redemption(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    p = bench.profile
    r["redemption"] = redemption.run(
        bench, seconds=p.duration / 3, rounds=3, concurrency=p.concurrency, codes=min(p.brand_codes, 60_000)
    )


def _expired(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    p = bench.profile
    r["expired"] = expired.run(
        bench, expired=p.expired_codes, live=p.expired_live, calls=p.expired_calls, rounds=p.expired_rounds
    )


def _floods(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    p = bench.profile
    r["floods"] = floods.run(
        bench, seconds=p.flood_seconds, rate=p.flood_claim_rate, flood_rate=p.flood_rate, rounds=p.flood_rounds,
        niceness=19,  # a flood from another machine takes none of this one's CPU (bench/floods.py)
    )  # fmt: skip


def _relay(bench: phases.Bench, r: dict[str, Any], run: Run) -> None:
    try:
        socket.create_connection((relay.NATS_HOST, relay.NATS_PORT), timeout=2).close()
    except OSError as error:
        raise RuntimeError(
            f"no NATS server at {relay.NATS_HOST}:{relay.NATS_PORT} ({error}): scripts/setup.d/30-nats.sh starts it"
        ) from error
    r["relay"] = relay.run(bench, bench.profile.relay_outage)


# Every phase, in the order a full run takes them: name -> what it adds to the results.
PHASES: dict[str, Callable[[phases.Bench, dict[str, Any], Run], None]] = {
    "throughput": _throughput,
    "pgbench": _pgbench,
    "decay": _decay,
    "generate": _generate,
    "watch": lambda bench, r, run: r.update(watch=watch_phases.feed(bench, run.workers)),
    "cross_brand": lambda bench, r, run: r.update(cross_brand=brand_phases.cross_brand(bench)),
    "many_watchers": lambda bench, r, run: r.update(many_watchers=brand_phases.many_watchers(bench)),
    "single_claim_watchers": lambda bench, r, run: r.update(
        single_claim_watchers=watch_phases.single_claim_watchers(bench)
    ),
    "idle": lambda bench, r, run: r.update(idle=watch_phases.idle(bench)),
    "webhooks": lambda bench, r, run: r.update(webhooks=webhooks.run(bench)),
    "redemption": _redemption,
    "expired": _expired,
    "floods": _floods,
    "relay": _relay,
}


# Left out of --smoke unless named with --only: it would add more than the ~15 s a smoke phase may
# take (smoke proves the harness works; the phase's code paths are the full run's).
SMOKE_SKIPS = {
    "relay": "about 22 s (a 1 s outage needs 6.4 s of paced load, plus two servers and NATS at 127.0.0.1:4222)",
}


def _stop_all(bench: phases.Bench) -> None:
    """After a phase failed: the servers it left running stopped, whatever their exit code."""
    for server in list(bench.servers):
        bench.servers.remove(server)
        with contextlib.suppress(Exception):
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few-seconds version for CI (proves it works)")
    parser.add_argument(
        "--only", action="append", choices=list(PHASES), metavar="PHASE",
        help=f"run this phase (repeatable; default: all of them, in this order: {', '.join(PHASES)})",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="folder for the summary and chart (default bench/results for a full run of every "
        "phase, bench/raw with --only, a temp dir with --smoke)",
    )  # fmt: skip
    parser.add_argument("--raw", type=Path, help="folder for the raw results (default bench/raw, or OUT/raw)")
    parser.add_argument("--duration", type=float, help="seconds per load phase")
    parser.add_argument(
        "--workers", type=int, help="worker processes for the main runs (default 1, the server's default)"
    )
    args = parser.parse_args(argv)
    profile = phases.SMOKE if args.smoke else phases.FULL
    if args.duration:
        profile = dataclasses.replace(profile, duration=args.duration)
    if args.workers and args.workers not in profile.workers:
        profile = dataclasses.replace(profile, workers=(*profile.workers, args.workers))
    chosen = [name for name in PHASES if name in (args.only or PHASES)]
    if args.smoke and not args.only:
        for name, why in SMOKE_SKIPS.items():
            log(f"smoke: phase {name} left out ({why}); `--smoke --only {name}` runs it")
        chosen = [name for name in chosen if name not in SMOKE_SKIPS]
    default_out = RAW if args.only else RESULTS
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else default_out)
    raw_dir = args.raw or (RAW if out_dir in (RESULTS, RAW) else out_dir / "raw")
    workdir = Path(tempfile.mkdtemp(prefix="bench-work-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log(f"profile {profile.name}, phases {', '.join(chosen)}; work files in {workdir}; results to {out_dir}, "
        f"raw results to {raw_dir}")  # fmt: skip

    results: dict[str, Any] = {
        "profile": dataclasses.asdict(profile),
        "machine": report.machine(),
        "started_utc": stamp,
        "phases": chosen,
        "phase_seconds": {},
        "failed": {},
    }
    if args.only:
        results["only"] = chosen
    run = Run(workers=args.workers or 1)
    bench = phases.Bench.open(profile, workdir)
    try:
        for i, name in enumerate(chosen):
            started = time.perf_counter()
            try:
                PHASES[name](bench, results, run)
            except Exception:
                # One phase failing does not lose the others' figures: it is reported, and fails the run.
                results["failed"][name] = traceback.format_exc(limit=8)
                log(f"phase {name} FAILED:\n{results['failed'][name]}")
                _stop_all(bench)
                run.server = None
            if run.server is not None and chosen[i + 1 : i + 2] != ["generate"]:  # decay's, not needed
                bench.stop_server(run.server)
                run.server = None
            results["phase_seconds"][name] = round(time.perf_counter() - started, 1)
            log(f"phase {name}: {results['phase_seconds'][name]:.0f} s")
    finally:
        bench.close()

    results["sanity"] = targets.sanity(results)
    results["targets"] = targets.build_targets(results)
    results["table"] = targets.table(results["targets"])
    print(results["table"], flush=True)
    written = report.write_results(results, out_dir, raw_dir)
    log("wrote " + ", ".join(str(p) for p in written))
    log("seconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in results["phase_seconds"].items()))
    if results["sanity"]:
        log("SANITY FAILURES (the service misbehaved under load, or a phase failed):\n  "
            + "\n  ".join(results["sanity"]))  # fmt: skip
        return 1
    return 0
