"""The benchmark: `python -m bench` (full, ~10 minutes) or `python -m bench --smoke` (CI, seconds).

Everything runs on this machine, in separate processes: a private PostgreSQL 15 (database.py), the
server under test (`discount serve`, real child processes), the load generator (loadgen.py), the
WatchClaims clients (watchers.py), and the baselines: the echo server (echo.py), pgbench running
the claim function, and a raw psycopg COPY. Prints the target table with ratios to the same-run
baselines; writes the raw results to bench/raw/ and a summary and a PNG chart to bench/results/.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import phases, redemption, report, targets, webhooks
from bench.common import ROOT, log

RESULTS = ROOT / "bench" / "results"
RAW = ROOT / "bench" / "raw"  # ignored by git: samples and plans are megabytes per run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few-seconds version for CI (proves it works)")
    parser.add_argument(
        "--out", type=Path, help="folder for the summary and chart (default bench/results, or a temp dir with --smoke)"
    )
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
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else RESULTS)
    raw_dir = args.raw or (RAW if out_dir == RESULTS else out_dir / "raw")
    workdir = Path(tempfile.mkdtemp(prefix="bench-work-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log(f"profile {profile.name}; work files in {workdir}; results to {out_dir}, raw results to {raw_dir}")

    results: dict[str, Any] = {
        "profile": dataclasses.asdict(profile),
        "machine": report.machine(),
        "started_utc": stamp,
    }
    bench = phases.Bench.open(profile, workdir)
    try:
        results["echo"], results["workers_compare"] = phases.throughput(bench)
        # The main runs use the server's default, one process (DISCOUNT_WORKERS=1): across runs on
        # this machine a second process never paid off (docs/performance.md); the rows above show
        # this run's own comparison.
        workers = args.workers or 1
        results["claim"] = next(c for c in results["workers_compare"] if c["workers"] == workers)
        log(f"main runs use workers={workers}; this run: "
            + ", ".join(f"w{c['workers']} {c['rps']:.0f}/s" for c in results["workers_compare"]))  # fmt: skip
        results["pgbench"] = phases.pgbench(bench, "pgbench")
        results["pgbench_batch"] = phases.pgbench(bench, "pgbench16", batch=16)
        results["decay"], server = phases.decay(bench, workers)
        results["generate"] = phases.generation(bench, server)
        bench.stop_server(server)
        results["watch"] = phases.feed(bench, workers)
        results["cross_brand"] = phases.cross_brand(bench)
        results["many_watchers"] = phases.many_watchers(bench)
        results["single_claim_watchers"] = phases.single_claim_watchers(bench)
        results["idle"] = phases.idle(bench)
        results["webhooks"] = webhooks.run(bench)
        results["redemption"] = redemption.run(
            bench, seconds=bench.profile.duration / 3, rounds=3, concurrency=bench.profile.concurrency,
            codes=min(bench.profile.brand_codes, 60_000),
        )  # fmt: skip
    finally:
        bench.close()

    results["sanity"] = targets.sanity(results)
    results["targets"] = targets.build_targets(results)
    results["table"] = targets.table(results["targets"])
    print(results["table"], flush=True)
    written = report.write_results(results, out_dir, raw_dir)
    log("wrote " + ", ".join(str(p) for p in written))
    if results["sanity"]:
        log("SANITY FAILURES (the service misbehaved under load):\n  " + "\n  ".join(results["sanity"]))
        return 1
    return 0
