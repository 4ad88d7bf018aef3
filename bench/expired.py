"""Expired codes out of the claim path: `python -m bench.expired [--expired N] [--live N] [--calls N]`.

Rows, each against its same-run baseline, a brand with the same live codes and no expired ones
(target: ratio <= 1.2 x):
- claims/s and claim p50/p99 while the brand's live codes last;
- NO_CODES_LEFT p50/p99 once they are gone;
- GetBrandStats p50/p99.

The expired codes go in with an expiry a few seconds ahead (or already past, when their insertion takes
longer), then the server starts and its expiry sweep (expiry_sweep.py) takes them out of the claim path,
at their expiry or on its first round; the run reports how long that took, and EXPLAIN (ANALYZE,
BUFFERS) of the claim's code pick (pick_free_code, from the start of the brand's codes: a process with
no hint yet, and the pick behind a NO_CODES_LEFT) and of brand stats on both brands. Calls come from
this process (grpc.aio, `CONCURRENCY` in flight) to a `discount serve` child process over the
benchmark's private PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.common import ROOT, log, percentile
from bench.phases import FULL, Bench
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.postgres import add_codes
from discount_service.store import QUERIES

EXPIRED_BRAND = "expired-many"
BASELINE_BRAND = "expired-none"
CONCURRENCY = 8
EXPIRY_LEAD_SECONDS = 5.0  # the expired codes' expires_at, after their insertion starts
SWEEP_WAIT_SECONDS = 600.0
WINDOW_CALLS = 100  # NO_CODES_LEFT per brand while the sweep runs


@dataclasses.dataclass
class Calls:
    """One measured series of calls: each call's seconds and its outcome."""

    seconds: list[float] = dataclasses.field(default_factory=list)
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    wall: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        return {
            "calls": len(ordered),
            "rps": round(len(ordered) / self.wall, 1) if self.wall else 0.0,
            "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0,
            "p50_ms": round(percentile(ordered, 50) * 1000, 3),
            "p99_ms": round(percentile(ordered, 99) * 1000, 3),
            "outcomes": dict(self.outcomes),
        }


async def _measure(calls: int, one: Callable[[int], Awaitable[str]], concurrency: int = CONCURRENCY) -> Calls:
    """`calls` calls of `one`, `concurrency` in flight: their latencies and outcomes, and the wall time."""
    return (await _interleaved(calls, {"": one}, concurrency))[""]


async def _interleaved(
    calls: int, ones: dict[str, Callable[[int], Awaitable[str]]], concurrency: int = CONCURRENCY
) -> dict[str, Calls]:
    """`calls` calls of each of `ones`, taken in turn (call i goes to the (i mod n)th), in one series:
    a machine whose load drifts slows both brands alike, which two series one after the other do not."""
    names = list(ones)
    results = {name: Calls() for name in names}
    queue = iter(range(calls * len(names)))

    async def worker() -> None:
        for i in queue:
            name = names[i % len(names)]
            started = time.perf_counter()
            outcome = await ones[name](i // len(names))
            result = results[name]
            result.seconds.append(time.perf_counter() - started)
            result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for result in results.values():
        result.wall = time.perf_counter() - started
    return results


class Client:
    """Claims with the service key, stats with the admin key (a service key may not read stats)."""

    def __init__(self, address: str, service_key: str, admin_key: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.DiscountServiceStub(self._channel)
        self._metadata = (("x-api-key", service_key),)
        self._admin = (("x-api-key", admin_key),)

    async def close(self) -> None:
        await self._channel.close()

    async def claim(self, brand: str, user: str) -> str:
        request = pb.ClaimCodeRequest(brand_id=brand, user_id=user, email=f"{user}@example.com")
        try:
            await self._stub.ClaimCode(request, metadata=self._metadata, timeout=30)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    async def stats(self, brand: str) -> str:
        request = pb.GetBrandStatsRequest(brand_id=brand)
        await self._stub.GetBrandStats(request, metadata=self._admin, timeout=30)
        return "OK"


def _plan(bench: Bench, statement: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement in a transaction rolled back: buffers, time, plan text."""
    rows = bench.db.sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}")
    plan = rows[0][0] if not isinstance(rows[0][0], str) else json.loads(rows[0][0])
    top = plan[0]["Plan"]
    text = bench.db.sql(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}")
    return {
        "buffers": int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"]),
        "execution_ms": round(float(plan[0]["Execution Time"]), 3),
        "text": "\n".join(r[0] for r in text),
    }


def _plans(bench: Bench, brand_key: int, brand_id: str) -> dict[str, Any]:
    # FOR UPDATE in an EXPLAIN ANALYZE locks the row until the autocommit statement ends: harmless here.
    pick = QUERIES["pick_free_code"].replace("$1", f"{brand_key}::integer").replace("$2", "0::bigint")
    stats = QUERIES["brand_stats"].replace("%(brand_id)s", f"'{brand_id}'")
    return {"pick": _plan(bench, pick), "stats": _plan(bench, stats)}


def _unswept(bench: Bench, brand_key: int) -> int:
    rows = bench.db.sql(
        "SELECT count(*) FROM codes WHERE brand_key = %s AND NOT claimed AND NOT expired AND expires_at <= now()",
        (brand_key,),
    )
    return int(rows[0][0])


def _vacuums(bench: Bench) -> int:
    rows = bench.db.sql("SELECT vacuum_count + autovacuum_count FROM pg_stat_user_tables WHERE relname = 'codes'")
    return int(rows[0][0])


def _wait_for_sweep(bench: Bench, brand_key: int, expires_at: float, vacuums_before: int) -> dict[str, float]:
    """Seconds from the codes' expiry until the sweep had marked them all, and until codes was vacuumed."""
    while time.time() < expires_at:
        time.sleep(0.1)
    swept_s = vacuumed_s = None
    deadline = time.monotonic() + SWEEP_WAIT_SECONDS
    while (swept_s is None or vacuumed_s is None) and time.monotonic() < deadline:
        if swept_s is None and _unswept(bench, brand_key) == 0:
            swept_s = time.time() - expires_at
        if swept_s is not None and vacuumed_s is None and _vacuums(bench) > vacuums_before:
            vacuumed_s = time.time() - expires_at
        time.sleep(0.2)
    if swept_s is None or vacuumed_s is None:
        raise RuntimeError(f"the sweep did not finish within {SWEEP_WAIT_SECONDS:.0f}s")
    return {"swept_after_expiry_s": round(swept_s, 2), "vacuumed_after_expiry_s": round(vacuumed_s, 2)}


async def _series(client: Client, live: int, calls: int, rounds: int) -> dict[str, Any]:
    """Claims while the live codes last (two rounds, half of them each), then `rounds` rounds of
    NO_CODES_LEFT and of stats; in each round the two brands' calls interleaved, the brand that goes
    first alternated. `rps` is then of both brands together; a brand's own claim rate is the one its
    closed loop of CONCURRENCY callers would reach, CONCURRENCY / mean latency (rows())."""
    brands = (EXPIRED_BRAND, BASELINE_BRAND)
    parts: dict[tuple[str, str], list[Calls]] = {}

    def order(round_: int) -> tuple[str, ...]:
        return brands if round_ % 2 == 0 else brands[::-1]

    for round_ in range(2):
        claims = await _interleaved(
            live // 2, {b: (lambda i, b=b, r=round_: client.claim(b, f"claim-{b}-{r}-{i}")) for b in order(round_)}
        )
        for brand in brands:
            parts.setdefault((brand, "claims"), []).append(claims[brand])
    for round_ in range(rounds):
        refused = await _interleaved(
            calls, {b: (lambda i, b=b, r=round_: client.claim(b, f"late-{b}-{r}-{i}")) for b in order(round_)}
        )
        stats = await _interleaved(calls, {b: (lambda i, b=b: client.stats(b)) for b in order(round_)}, concurrency=1)
        for brand in brands:
            parts.setdefault((brand, "no_codes_left"), []).append(refused[brand])
            parts.setdefault((brand, "stats"), []).append(stats[brand])
    out: dict[str, Any] = {brand: {} for brand in brands}
    for (brand, name), series in parts.items():
        merged = Calls()
        for part in series:
            merged.seconds += part.seconds
            merged.wall += part.wall
            for outcome, count in part.outcomes.items():
                merged.outcomes[outcome] = merged.outcomes.get(outcome, 0) + count
        out[brand][name] = merged.summary()
    return out


def _window(bench: Bench, address: str, brand_key: int) -> dict[str, Any]:
    """NO_CODES_LEFT on both brands (neither has a live code yet) while the sweep works through the
    expired codes: what a caller pays until it is through. The unswept count before and after says
    how much of the window the series saw."""
    unswept_before = _unswept(bench, brand_key)

    async def measure() -> dict[str, Calls]:
        client = Client(address, bench.service_key, bench.admin_key)
        try:
            ones = {b: (lambda i, b=b: client.claim(b, f"window-{b}-{i}")) for b in (EXPIRED_BRAND, BASELINE_BRAND)}
            return await _interleaved(WINDOW_CALLS, ones, concurrency=4)
        finally:
            await client.close()

    calls = asyncio.run(measure())
    return {
        "unswept_before": unswept_before,
        "unswept_after": _unswept(bench, brand_key),
        **{brand: series.summary() for brand, series in calls.items()},
    }


def run(bench: Bench, *, expired: int, live: int, calls: int, rounds: int) -> dict[str, Any]:
    db = bench.db
    big_key = db.brand(EXPIRED_BRAND, 0)
    base_key = db.brand(BASELINE_BRAND, 0)
    vacuums_before = _vacuums(bench)
    started = time.time()
    add_codes(db.url, EXPIRED_BRAND, expired, prefix="X-", expires_sql=f"now() + interval '{EXPIRY_LEAD_SECONDS} s'")
    took = time.time() - started
    log(f"{expired} codes expiring {EXPIRY_LEAD_SECONDS:.0f}s after their insertion started (took {took:.1f}s)")
    # The server starts once the batch is in: the codes went in behind its back (not by GenerateCodes, which
    # wakes the sweep), and a sweep that knows of no batch sleeps up to MAX_IDLE_SECONDS (60 s) before it
    # looks. Started now, its first round sweeps them, or sleeps until they expire.
    server = bench.start_server(1)
    while time.time() < started + EXPIRY_LEAD_SECONDS:
        time.sleep(0.1)
    window = _window(bench, server.address, big_key)
    sweep = _wait_for_sweep(bench, big_key, started + EXPIRY_LEAD_SECONDS, vacuums_before)
    log(f"sweep: {sweep}")
    for brand in (EXPIRED_BRAND, BASELINE_BRAND):
        add_codes(db.url, brand, live, prefix="L-")
    plans_before = {
        EXPIRED_BRAND: _plans(bench, big_key, EXPIRED_BRAND),
        BASELINE_BRAND: _plans(bench, base_key, BASELINE_BRAND),
    }

    async def measure() -> dict[str, Any]:
        client = Client(server.address, bench.service_key, bench.admin_key)
        try:
            return await _series(client, live, calls, rounds)
        finally:
            await client.close()

    series = asyncio.run(measure())
    plans_after = {
        EXPIRED_BRAND: _plans(bench, big_key, EXPIRED_BRAND),
        BASELINE_BRAND: _plans(bench, base_key, BASELINE_BRAND),
    }
    bench.stop_server(server)
    return {
        "expired": expired,
        "live": live,
        "calls": calls,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "sweep": sweep,
        "window": window,
        "series": series,
        "plans_with_live_codes": plans_before,
        "plans_after_no_codes_left": plans_after,
    }


def rows(result: dict[str, Any]) -> list[str]:
    """The rows for docs/performance.md: figure, baseline, ratio, target, verdict."""
    big, base = result["series"][EXPIRED_BRAND], result["series"][BASELINE_BRAND]
    label = f"{result['expired']:,} expired + {result['live']:,} live codes"

    def row(
        what: str, value: float, baseline: float, unit: str, higher_is_better: bool = False, target: bool = True
    ) -> str:
        ratio = baseline / value if higher_is_better else value / baseline
        goal, verdict = ("<= 1.2 x", "PASS" if ratio <= 1.2 else "MISS") if target else ("-", "(no target)")
        return f"| {what}, {label} | {value:.2f} {unit} | {baseline:.2f} {unit} | {ratio:.2f} x | {goal} | {verdict} |"

    window = result["window"]
    during = (
        f"NO_CODES_LEFT p50 while the sweep runs ({window['unswept_before']:,} -> {window['unswept_after']:,} unswept)"
    )
    return [
        row(during, window[EXPIRED_BRAND]["p50_ms"], window[BASELINE_BRAND]["p50_ms"], "ms", target=False),
        row(
            f"claims/s ({CONCURRENCY} callers / mean latency)",
            CONCURRENCY / big["claims"]["mean_ms"] * 1000,
            CONCURRENCY / base["claims"]["mean_ms"] * 1000,
            "/s",
            higher_is_better=True,
        ),
        row("claim p50", big["claims"]["p50_ms"], base["claims"]["p50_ms"], "ms"),
        row("NO_CODES_LEFT p50", big["no_codes_left"]["p50_ms"], base["no_codes_left"]["p50_ms"], "ms"),
        row("NO_CODES_LEFT p99", big["no_codes_left"]["p99_ms"], base["no_codes_left"]["p99_ms"], "ms"),
        row("GetBrandStats p50", big["stats"]["p50_ms"], base["stats"]["p50_ms"], "ms"),
        row("GetBrandStats p99", big["stats"]["p99_ms"], base["stats"]["p99_ms"], "ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.expired", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--expired", type=int, default=500_000, help="expired codes of the measured brand")
    parser.add_argument("--live", type=int, default=1_000, help="live codes of each brand")
    parser.add_argument("--calls", type=int, default=1_000, help="NO_CODES_LEFT and GetBrandStats calls per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds of NO_CODES_LEFT and GetBrandStats")
    args = parser.parse_args(argv)
    bench = Bench.open(FULL, Path(tempfile.mkdtemp(prefix="bench-expired-")))
    try:
        result = run(bench, expired=args.expired, live=args.live, calls=args.calls, rounds=args.rounds)
    finally:
        bench.close()
    # bench/raw is ignored by git: bench/results holds the committed full runs of `python -m bench`.
    out = ROOT / "bench" / "raw" / f"expired-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n".join(rows(result)))
    for when in ("plans_with_live_codes", "plans_after_no_codes_left"):
        for brand, plans in result[when].items():
            for name, plan in plans.items():
                print(f"-- {when} {brand} {name}: {plan['buffers']} buffers, {plan['execution_ms']} ms")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
