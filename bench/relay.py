"""The NATS relay under load: `python -m bench.relay [--duration S] [--rounds N] [--outage S]` (also a phase).

Rows, each with its same-run baseline:
- claims/s of the hot brand, closed loop, with the relay on / off (target >= 0.85);
- claim -> JetStream p99 with the hot brand at half its claim rate with the relay off (target <= 1 s): from the
  ClaimCode reply reaching the load generator to the message reaching a JetStream consumer of the stream,
  which sees it only once it is stored (so after the server could have had its PubAck);
- a relay cut off from NATS for `--outage` seconds (60 in the full run) while claims go on at that half rate:
  the backlog over the time from NATS being back to the last of the backlog stored (target >= 5 x the claim
  rate; the time includes the relay's reconnection).

Needs the NATS server with JetStream at 127.0.0.1:4222 (scripts/setup.d/30-nats.sh). The outage is a TCP
forwarder in this process between the server and NATS that drops every connection and refuses new ones.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import nats

from bench.common import ROOT, log, percentile
from bench.phases import FULL, Bench, merge_rounds
from bench.processes import Server

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
FULL_OUTAGE_SECONDS = 60.0


class NatsSide:
    """In a thread with its own event loop: a JetStream consumer of the relay's stream that records
    when each (brand, sequence) arrived, and a forwarder to NATS that can be cut off."""

    def __init__(self, stream: str, prefix: str) -> None:
        self.stream, self.prefix = stream, prefix
        self.arrived: dict[tuple[str, int], float] = {}
        self.forwarding = True
        self.forward_port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="nats-side")
        self._client: Any = None
        self._subscription: Any = None

    def start(self) -> NatsSide:
        self._thread.start()
        self.call(self._start())
        return self

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    async def _start(self) -> None:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.forward_port = int(server.sockets[0].getsockname()[1])
        self._client = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
        js = self._client.jetstream()
        await js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])

        async def received(message: Any) -> None:
            headers = message.headers or {}
            key = (headers["Discount-Brand-Id"], int(headers["Discount-Sequence"]))
            self.arrived.setdefault(key, time.time())

        self._subscription = await js.subscribe(f"{self.prefix}.>", cb=received, ordered_consumer=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.forwarding:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(NATS_HOST, NATS_PORT)
        self._writers |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            self._loop.create_task(self._pipe(source, sink))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    def cut(self) -> None:
        """NATS unreachable through the forwarder: open connections dropped, new ones refused."""

        def cut_now() -> None:
            self.forwarding = False
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(cut_now)

    def restore_at(self, moment: float) -> None:
        """NATS reachable again through the forwarder at wall-clock `moment`."""

        def restore() -> None:
            self.forwarding = True

        self._loop.call_soon_threadsafe(lambda: self._loop.call_later(max(moment - time.time(), 0), restore))

    def wait_for(self, heads: dict[str, int], timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((brand, last) in self.arrived for brand, last in heads.items() if last > 0):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        async def close() -> None:
            if self._subscription is not None:
                await self._subscription.unsubscribe()
            if self._client is not None:
                await self._client.jetstream().delete_stream(self.stream)
                await self._client.close()

        self.call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)


def relay_env(side: NatsSide, *, through_forwarder: bool = False) -> dict[str, str]:
    port = side.forward_port if through_forwarder else NATS_PORT
    return {
        "DISCOUNT_NATS_URL": f"nats://127.0.0.1:{port}",
        "DISCOUNT_NATS_STREAM": side.stream,
        "DISCOUNT_NATS_SUBJECT_PREFIX": side.prefix,
    }


def claim_latencies(replies: dict[str, list[Any]], brand: str, side: NatsSide) -> list[float]:
    return sorted(
        side.arrived[(brand, s)] - t
        for s, t in zip(replies["sequence"], replies["at"], strict=True)
        if (brand, s) in side.arrived
    )


def run(bench: Bench, outage: float = FULL_OUTAGE_SECONDS) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    side = NatsSide(f"BENCH_{tag}", f"bench{tag}.claims").start()
    try:
        return _run(bench, side, outage)
    finally:
        side.close()


def _server(bench: Bench, env: dict[str, str] | None = None) -> Server:
    server = Server(bench.db.url, 1, bench.workdir, extra_env=env)
    bench.servers.append(server)
    return server


def _run(bench: Bench, side: NatsSide, outage: float) -> dict[str, Any]:
    profile, db = bench.profile, bench.db
    without_runs, with_runs = [], []
    for r in range(profile.rounds):
        db.brand(f"relayoff{r}", profile.brand_codes)
        db.brand(f"relayon{r}", profile.brand_codes)
        server = _server(bench)
        db.sql("CHECKPOINT")
        without_runs.append(bench.load(f"relay-off-{r}", f"relayoff{r}", server=server))
        bench.stop_server(server)
        server = _server(bench, relay_env(side))
        # The relay catches up on the claims made without it first, outside the measured load.
        side.wait_for(db.last_sequences([f"relayoff{i}" for i in range(r + 1)]))
        db.sql("CHECKPOINT")
        with_runs.append(bench.load(f"relay-on-{r}", f"relayon{r}", server=server))
        side.wait_for({f"relayon{r}": db.last_sequence(f"relayon{r}")})
        bench.stop_server(server)
    # On a shared machine the claims/s follow the CPU the server is given; its CPU per claim says what the
    # relay itself costs.
    seconds = profile.warmup + profile.duration
    cpu_per_claim = {
        side: 1000 * sum(r["server_cpu_s"] for r in runs) / sum(r["rps"] * seconds for r in runs)
        for side, runs in (("without", without_runs), ("with", with_runs))
    }
    without, with_relay = merge_rounds(without_runs), merge_rounds(with_runs)
    ratio = with_relay["rps"] / without["rps"]
    log(
        f"relay: closed loop {with_relay['rps']:.0f}/s with the relay vs {without['rps']:.0f}/s ({ratio:.2f} x); "
        f"server CPU per claim {cpu_per_claim['with']:.2f} ms vs {cpu_per_claim['without']:.2f} ms"
    )

    rate = without["rps"] / 2
    server = _server(bench, relay_env(side, through_forwarder=True))
    db.brand("relaypaced", profile.brand_codes)
    db.sql("CHECKPOINT")
    paced_load = bench.load("relay-paced", "relaypaced", server=server, rate=rate, record_replies=True)
    complete = side.wait_for({"relaypaced": db.last_sequence("relaypaced")})
    latencies = claim_latencies(paced_load.pop("_replies"), "relaypaced", side)
    paced = {
        "rate": rate,
        "claims": len(paced_load["_window"]),
        "stored": len(latencies),
        "every_claim_stored": complete,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": latencies[-1] * 1000,
    }
    log(f"relay: at {rate:.0f} claims/s, claim -> JetStream p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms")

    # The outage: claims go on at `rate` while NATS is unreachable, and after it comes back.
    db.brand("relayout", max(profile.brand_codes, int(rate * (outage * 1.5 + 10))))
    db.sql("CHECKPOINT")
    side.cut()
    back_at = time.time() + profile.warmup + outage
    side.restore_at(back_at)
    out_load = bench.load(
        "relay-outage", "relayout", server=server, rate=rate, duration=outage * 1.4 + 5, record_replies=True
    )
    complete = side.wait_for({"relayout": db.last_sequence("relayout")})
    replies = out_load.pop("_replies")
    backlog = [s for s, t in zip(replies["sequence"], replies["at"], strict=True) if t < back_at]
    last_of_backlog = max(backlog)
    stored_at = side.arrived.get(("relayout", last_of_backlog), float("nan"))
    backlog_rate = len(backlog) / (back_at - min(replies["at"]))
    catch_up_seconds = stored_at - back_at
    catch_up_rate = len(backlog) / catch_up_seconds
    caught = {
        "outage_s": outage,
        "claim_rate": backlog_rate,
        "backlog": len(backlog),
        "catch_up_s": catch_up_seconds,
        "catch_up_rate": catch_up_rate,
        "ratio": catch_up_rate / backlog_rate,
        "every_claim_stored": complete,
    }
    log(
        f"relay: {len(backlog)} claims behind after {outage:.0f} s away, caught up in {catch_up_seconds:.1f} s "
        f"({catch_up_rate:.0f}/s, {caught['ratio']:.1f} x the claim rate)"
    )
    bench.stop_server(server)
    for summary in (without, with_relay, paced_load, out_load):
        for key in [k for k in summary if k.startswith("_")]:
            summary.pop(key)
    return {
        "without_relay": without,
        "with_relay": with_relay,
        "ratio": ratio,
        "cpu_ms_per_claim": cpu_per_claim,
        "paced": paced,
        "outage": caught,
    }


def rows(result: dict[str, Any]) -> list[str]:
    """The rows for docs/performance.md: figure, baseline, ratio, target."""
    w, wo, paced, out = result["with_relay"], result["without_relay"], result["paced"], result["outage"]
    cpu = result["cpu_ms_per_claim"]
    return [
        f"| claims/s, hot brand, NATS relay on | {w['rps']:.0f}/s | {wo['rps']:.0f}/s relay off | "
        f"{result['ratio']:.2f} x | >= 0.85 x | {'PASS' if result['ratio'] >= 0.85 else 'MISS'} |",
        f"| server CPU per claim, NATS relay on (context for the row above) | {cpu['with']:.2f} ms | "
        f"{cpu['without']:.2f} ms relay off | {cpu['without'] / cpu['with']:.2f} x | - | - |",
        f"| claim -> JetStream p99 at {paced['rate']:.0f}/s (half the relay-off rate) | "
        f"{paced['p99_ms']:.0f} ms (p50 {paced['p50_ms']:.0f}) | - | - | <= 1 s | "
        f"{'PASS' if paced['p99_ms'] <= 1000 and paced['every_claim_stored'] else 'MISS'} |",
        f"| relay catch-up after {out['outage_s']:.0f} s without NATS ({out['backlog']} claims, "
        f"claims going on) | {out['catch_up_rate']:.0f}/s in {out['catch_up_s']:.1f} s | "
        f"{out['claim_rate']:.0f}/s claim rate | {out['ratio']:.1f} x | >= 5 x | "
        f"{'PASS' if out['ratio'] >= 5 and out['every_claim_stored'] else 'MISS'} |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=FULL.duration, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=FULL.rounds, help="alternated rounds of the comparison")
    parser.add_argument("--outage", type=float, default=FULL_OUTAGE_SECONDS, help="seconds NATS is unreachable")
    args = parser.parse_args(argv)
    profile = dataclasses.replace(FULL, duration=args.duration, rounds=args.rounds)
    bench = Bench.open(profile, Path(tempfile.mkdtemp(prefix="bench-relay-")))
    try:
        result = run(bench, args.outage)
    finally:
        bench.close()
    # bench/raw is ignored by git: bench/results holds the committed full runs of `python -m bench`.
    out = ROOT / "bench" / "raw" / f"relay-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"profile": dataclasses.asdict(profile), **result}, indent=1, default=str))
    print("\n".join(rows(result)))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
