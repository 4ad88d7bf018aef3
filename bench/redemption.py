"""RedeemCode against ClaimCode on a hot brand: `python -m bench.redemption [--duration S] [--rounds N]`.

Rows, each against its same-run baseline:
- RedeemCode/s on one hot brand against ClaimCode/s on one hot brand (target >= 0.8 x), and RedeemCode's
  p99 against ClaimCode's (target <= 2 x): the same callers (`--concurrency` in flight, closed loop),
  rounds of claims and of redemptions alternated so a machine whose load drifts slows both alike;
- RedeemCode/s of distinct codes on one brand against the same spread over 16 brands (target >= 0.8 x):
  a brand-wide lock would hold one brand's redemptions to one at a time and show here; the backends seen
  waiting on a lock during the one-brand series are counted too.

Each redemption is of a distinct code its user holds, on a new order id, typed in lower case (the
server upper-cases it). The claims behind the redemptions are put in the database first (they are not
what is measured). Calls come from this process (grpc.aio over a few HTTP/2 connections) to a
`discount serve` child process over the benchmark's private PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench.common import ROOT, log, percentile
from bench.phases import FULL, Bench
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc

CLAIM_BRAND = "claim-hot"
REDEEM_BRAND = "redeem-hot"
SPREAD_BRANDS = 16
CHANNELS = 4

# The codes of a brand, each made claimed by a user of its own ('r-<sequence>'), and the feed head
# moved past those claims, as if ClaimCode had handed them out.
_CLAIM_ALL = """
WITH picked AS (
    SELECT code, row_number() OVER (ORDER BY code_key) AS sequence FROM codes WHERE brand_key = %(brand_key)s
)
INSERT INTO claims (brand_key, sequence, code, user_id, email, claimed_at)
SELECT %(brand_key)s, sequence, code, 'r-' || sequence, 'r@example.com', now() FROM picked
"""


def _claimed_codes(bench: Bench, brand_id: str, count: int) -> list[tuple[str, str]]:
    """A brand with `count` codes, every one claimed; returns (user_id, code) of each."""
    brand_key = bench.db.brand(brand_id, count)
    bench.db.sql(_CLAIM_ALL, {"brand_key": brand_key})
    bench.db.sql("UPDATE codes SET claimed = true WHERE brand_key = %s", (brand_key,))
    bench.db.sql(
        "UPDATE brand_feed_heads SET last_sequence = (SELECT count(*) FROM claims WHERE brand_key = %(k)s)"
        " WHERE brand_key = %(k)s",
        {"k": brand_key},
    )
    rows = bench.db.sql("SELECT user_id, code FROM claims WHERE brand_key = %s ORDER BY sequence", (brand_key,))
    return [(str(user), str(code)) for user, code in rows]


class Series:
    """One measured series: each call's seconds, its outcomes and the wall time."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.wall = 0.0

    def add(self, other: Series) -> None:
        self.seconds += other.seconds
        self.wall += other.wall
        for outcome, count in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        ok = self.outcomes.get("OK", 0)
        return {
            "calls": len(ordered),
            "rps": round(ok / self.wall, 1) if self.wall else 0.0,
            "p50_ms": round(percentile(ordered, 50) * 1000, 3) if ordered else 0.0,
            "p99_ms": round(percentile(ordered, 99) * 1000, 3) if ordered else 0.0,
            "outcomes": dict(self.outcomes),
        }


async def _closed_loop(seconds: float, concurrency: int, one: Callable[[int], Awaitable[str]]) -> Series:
    """`concurrency` callers, each calling `one` again as soon as it answers, for `seconds`."""
    series = Series()
    counter = itertools.count()
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            outcome = await one(next(counter))
            series.seconds.append(time.perf_counter() - started)
            series.outcomes[outcome] = series.outcomes.get(outcome, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    series.wall = time.perf_counter() - started
    return series


class Client:
    def __init__(self, address: str, service_key: str) -> None:
        self._channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(CHANNELS)
        ]
        self._stubs = [pb_grpc.DiscountServiceStub(channel) for channel in self._channels]
        self._metadata = (("x-api-key", service_key),)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def _call(self, i: int, method: str, request: Any) -> str:
        try:
            await getattr(self._stubs[i % CHANNELS], method)(request, metadata=self._metadata, timeout=30)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    async def claim(self, i: int, user: str) -> str:
        request = pb.ClaimCodeRequest(brand_id=CLAIM_BRAND, user_id=user, email=f"{user}@example.com")
        return await self._call(i, "ClaimCode", request)

    async def redeem(self, i: int, brand: str, user: str, code: str, order: str) -> str:
        request = pb.RedeemCodeRequest(brand_id=brand, code=code.lower(), user_id=user, order_id=order)
        return await self._call(i, "RedeemCode", request)


class LockWaits:
    """Samples, every 20 ms, how many backends wait on a lock (pg_stat_activity), while it runs."""

    def __init__(self, bench: Bench) -> None:
        self._bench = bench
        self._stop = threading.Event()
        self.samples = 0
        self.waiting = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self._bench.db.url, autocommit=True) as conn:
            while not self._stop.wait(0.02):
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
                self.samples += 1
                self.waiting += int(row[0]) if row else 0

    def __enter__(self) -> LockWaits:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _pairs(claimed: dict[str, list[tuple[str, str]]]) -> Iterator[tuple[str, str, str]]:
    """(brand, user, code) taking the brands in turn."""
    lists = [[(brand, user, code) for user, code in pairs] for brand, pairs in claimed.items()]
    for group in zip(*lists, strict=False):
        yield from group


async def _measure(
    bench: Bench, address: str, seconds: float, rounds: int, concurrency: int, claimed: dict[str, Any]
) -> dict[str, Any]:
    client = Client(address, bench.service_key)
    hot = _pairs({REDEEM_BRAND: claimed[REDEEM_BRAND]})
    spread = _pairs(claimed["spread"])
    parts = {name: Series() for name in ("claim", "redeem", "redeem_spread")}
    waits = {name: {"samples": 0, "waiting": 0} for name in ("redeem", "redeem_spread")}

    def redeem_next(pairs: Iterator[tuple[str, str, str]], label: str) -> Callable[[int], Awaitable[str]]:
        def one(i: int) -> Awaitable[str]:
            brand, user, code = next(pairs)
            return client.redeem(i, brand, user, code, f"{label}-order-{i}")

        return one

    try:
        # Warm-up: connections, the server's caches and the plpgsql plans.
        await _closed_loop(1.0, concurrency, lambda i: client.claim(i, f"warm-{i}"))
        await _closed_loop(1.0, concurrency, redeem_next(spread, "warm"))
        for round_ in range(rounds):
            claims = await _closed_loop(seconds, concurrency, lambda i, r=round_: client.claim(i, f"c-{r}-{i}"))
            with LockWaits(bench) as sampled:
                redeems = await _closed_loop(seconds, concurrency, redeem_next(hot, f"hot-{round_}"))
            with LockWaits(bench) as sampled_spread:
                spread_redeems = await _closed_loop(seconds, concurrency, redeem_next(spread, f"spread-{round_}"))
            for name, series in (("claim", claims), ("redeem", redeems), ("redeem_spread", spread_redeems)):
                parts[name].add(series)
            for key, sample in (("redeem", sampled), ("redeem_spread", sampled_spread)):
                waits[key]["samples"] += sample.samples
                waits[key]["waiting"] += sample.waiting
            log(
                f"round {round_}: claims {claims.summary()['rps']}/s, redemptions {redeems.summary()['rps']}/s, "
                f"spread over {SPREAD_BRANDS} brands {spread_redeems.summary()['rps']}/s"
            )
    finally:
        await client.close()
    return {name: series.summary() for name, series in parts.items()} | {"lock_waits": waits}


def run(bench: Bench, *, seconds: float, rounds: int, concurrency: int, codes: int) -> dict[str, Any]:
    bench.db.brand(CLAIM_BRAND, codes)
    claimed = {
        REDEEM_BRAND: _claimed_codes(bench, REDEEM_BRAND, codes),
        "spread": {
            f"redeem-{i:02d}": _claimed_codes(bench, f"redeem-{i:02d}", codes // SPREAD_BRANDS + 1)
            for i in range(SPREAD_BRANDS)
        },
    }
    bench.db.sql("VACUUM ANALYZE")
    server = bench.start_server(1)
    try:
        result = asyncio.run(_measure(bench, server.address, seconds, rounds, concurrency, claimed))
    finally:
        bench.stop_server(server)
    standing = bench.db.sql("SELECT count(*) FROM redemptions WHERE cancelled_at IS NULL")[0][0]
    counted = bench.db.sql("SELECT coalesce(sum(standing), 0) FROM redemption_counts")[0][0]
    redeemed_ok = result["redeem"]["outcomes"].get("OK", 0) + result["redeem_spread"]["outcomes"].get("OK", 0)
    return result | {
        "seconds": seconds,
        "rounds": rounds,
        "concurrency": concurrency,
        # Every OK answer is one standing redemption (and the warm-up's), and the counters agree.
        "standing_redemptions": int(standing),
        "counted_redemptions": int(counted),
        "measured_ok": redeemed_ok,
    }


def rows(result: dict[str, Any], command: str) -> list[str]:
    """The rows for docs/performance.md: what, figure, baseline, ratio, target, verdict, command."""
    claim, redeem, spread = result["claim"], result["redeem"], result["redeem_spread"]

    def row(what: str, value: float, base: float, unit: str, ratio: float, target: str, ok: bool) -> str:
        verdict = "PASS" if ok else "MISS"
        return (
            f"| {what} | {value:.1f} {unit} | {base:.1f} {unit} | {ratio:.2f} x | {target} | {verdict} | `{command}` |"
        )

    rate = redeem["rps"] / claim["rps"]
    p99 = redeem["p99_ms"] / claim["p99_ms"]
    scale = redeem["rps"] / spread["rps"]
    waits = {name: w["waiting"] / w["samples"] if w["samples"] else 0.0 for name, w in result["lock_waits"].items()}
    return [
        row("RedeemCode/s, hot brand (vs ClaimCode/s)", redeem["rps"], claim["rps"], "/s", rate, ">= 0.8 x",
            rate >= 0.8),
        row("RedeemCode p99, hot brand (vs ClaimCode p99)", redeem["p99_ms"], claim["p99_ms"], "ms", p99, "<= 2 x",
            p99 <= 2),
        row(f"RedeemCode/s, one brand (vs {SPREAD_BRANDS} brands); backends waiting on a lock: "
            f"{waits['redeem']:.2f} (vs {waits['redeem_spread']:.2f})",
            redeem["rps"], spread["rps"], "/s", scale, ">= 0.8 x", scale >= 0.8),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redemption", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each series in a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of claims, then redemptions, alternated")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--codes", type=int, default=100_000, help="codes of each hot brand")
    args = parser.parse_args(argv)
    bench = Bench.open(FULL, Path(tempfile.mkdtemp(prefix="bench-redemption-")))
    try:
        result = run(bench, seconds=args.duration, rounds=args.rounds, concurrency=args.concurrency, codes=args.codes)
    finally:
        bench.close()
    command = "python -m bench.redemption " + " ".join(argv if argv is not None else sys.argv[1:])
    # bench/raw is ignored by git: bench/results holds the committed full runs of `python -m bench`.
    out = ROOT / "bench" / "raw" / f"redemption-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("\n".join(rows(result, command.strip())))
    log(f"wrote {out}")
    if result["standing_redemptions"] != result["counted_redemptions"]:
        standing, counted = result["standing_redemptions"], result["counted_redemptions"]
        log(f"SANITY: {standing} standing redemptions, but the counters say {counted}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
