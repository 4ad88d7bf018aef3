"""Legitimate claims during a flood of bad keys: `python -m bench.floods [--seconds S] [--rate R] [--flood-rate F]`.

Row, against its same-run baseline (the same claims with no flood; target: ratio <= 2 x): the p50
and p99 latency of claims sent at a steady `--rate` by this process with a valid service key,
while another process sends `--flood-rate` calls a second, each with a new random key that
matches nothing (the issue's flood: 6,000 bad-key calls in 3 s). Both come from 127.0.0.1, so
the failed-authentication throttle sees one host: what is measured is that it refuses the flood
cheaply (RATE_LIMITED, no lookup) without refusing or slowing the valid calls. The flood process
runs at the lowest CPU priority by default (`--flood-niceness 19`): a flood from another machine
takes none of this one's CPU, and on a 2-core machine a flooding client at full priority measures
mostly its own CPU. Rounds alternate baseline and flood so that neither always runs first on a
machine whose load drifts. The flood's outcomes and achieved rate, and the server's CPU in each
kind of round, are reported with the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from bench.common import ROOT, log, percentile
from bench.phases import FULL, Bench
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.processes import cpu_seconds

BRAND = "flooded"
FLOOD_IN_FLIGHT = 256  # the flood's calls in flight at most: enough to reach its rate, not a queue of its own


async def _claims(address: str, key: str, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Claims at a steady rate, each its own call (no waiting on the one before): their latencies
    and outcomes."""
    latencies: list[float] = []
    slowest: list[tuple[float, float]] = []  # (seconds into the series, latency) of every call, cut to the slowest
    outcomes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DiscountServiceStub(channel)
        metadata = (("x-api-key", key),)
        await stub.ClaimCode(  # the key is known to the server before the measured calls
            pb.ClaimCodeRequest(brand_id=BRAND, user_id=f"warm-{tag}", email="warm@example.com"), metadata=metadata
        )

        async def one(i: int) -> None:
            request = pb.ClaimCodeRequest(brand_id=BRAND, user_id=f"{tag}-{i}", email=f"{tag}-{i}@example.com")
            started = time.perf_counter()
            try:
                await stub.ClaimCode(request, metadata=metadata, timeout=30)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
            latencies.append(time.perf_counter() - started)
            slowest.append((round(started - series_started, 3), round(latencies[-1] * 1000, 1)))

        tasks = []
        series_started = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, series_started + i / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    slowest.sort(key=lambda call: -call[1])
    return {"latencies": latencies, "outcomes": dict(outcomes), "slowest": slowest[:5]}


async def _flood(address: str, rate: float, seconds: float) -> dict[str, Any]:
    """Bad-key calls at `rate` a second (at most FLOOD_IN_FLIGHT in flight), each with a new key."""
    outcomes: Counter[str] = Counter()
    in_flight = asyncio.Semaphore(FLOOD_IN_FLIGHT)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DiscountServiceStub(channel)

        async def one() -> None:
            key = f"dsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
            try:
                await stub.GetBrandStats(
                    pb.GetBrandStatsRequest(brand_id=BRAND), metadata=(("x-api-key", key),), timeout=30
                )
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
            finally:
                in_flight.release()

        tasks = []
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            await in_flight.acquire()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    return {"calls": sum(outcomes.values()), "rps": round(sum(outcomes.values()) / wall, 1), "outcomes": dict(outcomes)}


def _flood_process(address: str, rate: float, seconds: float, niceness: int, results: Any) -> None:
    os.nice(niceness)
    results.put(asyncio.run(_flood(address, rate, seconds)))


def _summary(latencies: list[float], outcomes: dict[str, int]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "claims": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "outcomes": outcomes,
    }


def run(bench: Bench, *, seconds: float, rate: float, flood_rate: float, rounds: int, niceness: int) -> dict[str, Any]:
    bench.db.brand(BRAND, int(rate * seconds * rounds * 2) + 100)
    server = bench.start_server(1)
    context = multiprocessing.get_context("spawn")
    series: dict[str, dict[str, Any]] = {
        kind: {"latencies": [], "outcomes": Counter(), "cpu": 0.0, "wall": 0.0} for kind in ("baseline", "flood")
    }
    floods = []
    try:
        for round_ in range(rounds):
            for kind in ("baseline", "flood") if round_ % 2 == 0 else ("flood", "baseline"):
                flooder = None
                cpu, wall = cpu_seconds(server.pid), time.perf_counter()
                if kind == "flood":
                    results = context.Queue()
                    flooder = context.Process(
                        target=_flood_process, args=(server.address, flood_rate, seconds + 1.0, niceness, results)
                    )
                    flooder.start()
                    time.sleep(1.0)  # the flood is under way (and its process started) before the claims
                claims = asyncio.run(_claims(server.address, bench.service_key, rate, seconds, f"{kind}-{round_}"))
                if flooder is not None:
                    floods.append(results.get(timeout=120))
                    flooder.join()
                series[kind]["cpu"] += cpu_seconds(server.pid) - cpu
                series[kind]["wall"] += time.perf_counter() - wall
                series[kind]["latencies"] += claims["latencies"]
                series[kind]["outcomes"].update(claims["outcomes"])
                log(f"round {round_} {kind}: {_summary(claims['latencies'], claims['outcomes'])}")
                log(f"  slowest (s into the series, ms): {claims['slowest']}")
    finally:
        bench.stop_server(server)
    # What the flood adds to the server's CPU, per flood call: the flood rounds' CPU a second over
    # the baseline rounds', over the flood's calls a second.
    share = {kind: series[kind]["cpu"] / series[kind]["wall"] for kind in series}
    flood_rps = sum(f["rps"] for f in floods) / max(1, len(floods))
    return {
        "server_cpu_ms_per_flood_call": round((share["flood"] - share["baseline"]) / flood_rps * 1000, 3),
        "server_cpu_cores": {kind: round(value, 2) for kind, value in share.items()},
        "seconds": seconds,
        "rate": rate,
        "flood_rate": flood_rate,
        "flood_niceness": niceness,
        "rounds": rounds,
        "baseline": _summary(series["baseline"]["latencies"], dict(series["baseline"]["outcomes"])),
        "flood": _summary(series["flood"]["latencies"], dict(series["flood"]["outcomes"])),
        "flood_calls": floods,
    }


def rows(result: dict[str, Any]) -> list[str]:
    """The rows for docs/performance.md: figure, baseline, ratio, target, verdict."""
    flood, base = result["flood"], result["baseline"]
    achieved = sum(f["rps"] for f in result["flood_calls"]) / max(1, len(result["flood_calls"]))
    label = f"claims at {result['rate']:.0f}/s during {achieved:,.0f} bad-key calls/s"

    def row(what: str, value: float, baseline: float) -> str:
        ratio = value / baseline
        verdict = "PASS" if ratio <= 2.0 else "MISS"
        return f"| {what}, {label} | {value:.2f} ms | {baseline:.2f} ms | {ratio:.2f} x | <= 2 x | {verdict} |"

    return [row("claim p50", flood["p50_ms"], base["p50_ms"]), row("claim p99", flood["p99_ms"], base["p99_ms"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floods", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured series")
    parser.add_argument("--rate", type=float, default=40.0, help="legitimate claims a second")
    parser.add_argument("--flood-rate", type=float, default=2000.0, help="bad-key calls a second")
    parser.add_argument("--rounds", type=int, default=2, help="alternated baseline and flood rounds")
    parser.add_argument(
        "--flood-niceness",
        type=int,
        default=19,
        help="CPU niceness of the flood process (19, the lowest priority, stands for a flood from another machine, "
        "which takes none of this machine's CPU; 0 for one that competes with the server)",
    )
    args = parser.parse_args(argv)
    bench = Bench.open(FULL, Path(tempfile.mkdtemp(prefix="bench-floods-")))
    try:
        result = run(
            bench,
            seconds=args.seconds,
            rate=args.rate,
            flood_rate=args.flood_rate,
            rounds=args.rounds,
            niceness=args.flood_niceness,
        )
    finally:
        bench.close()
    # bench/raw is ignored by git: bench/results holds the committed full runs of `python -m bench`.
    out = ROOT / "bench" / "raw" / f"floods-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n".join(rows(result)))
    for flood in result["flood_calls"]:
        print(f"-- flood: {flood['calls']} calls at {flood['rps']}/s: {flood['outcomes']}")
    print(f"-- legitimate claims: baseline {result['baseline']['outcomes']}, flood {result['flood']['outcomes']}")
    cpu = result["server_cpu_cores"]
    print(f"-- server CPU (cores): {cpu}; {result['server_cpu_ms_per_flood_call']} ms per flood call")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
