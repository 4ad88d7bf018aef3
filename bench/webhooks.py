"""Webhooks under load: `python -m bench.webhooks [--duration S] [--rounds N]` (also a phase of the full run).

Rows, each with its same-run baseline:
- claims/s of the hot brand, closed loop, with one webhook receiving every claim / without (target >= 0.85);
- claim -> webhook receipt p99 with the hot brand at half its unwatched claim rate (target <= 1 s), from the
  ClaimCode reply reaching the load generator to the request reaching the receiver (one machine, one clock);
- 100 brands with one webhook each, 10 of them at endpoints that never answer (each attempt times out):
  claim -> receipt p99 at the other 90 (target <= 1 s).

The receiver is an aiohttp server in a thread of this process (the load generator and the server are
processes of their own); it records when each claim arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from bench.common import ROOT, log, percentile
from bench.phases import FULL, Bench, merge_rounds
from bench.processes import Server
from discount.v1 import webhook_service_pb2 as wpb
from discount.v1 import webhook_service_pb2_grpc as wpb_grpc

HANGING_TIMEOUT_SECONDS = 2.0  # DISCOUNT_WEBHOOK_TIMEOUT_SECONDS of the bench server: hangs time out often
MANY = 100
HANGING = 10
MANY_RATE = 100.0  # claims/s over the 100 brands: one a second each
SERVER_ENV = {
    "DISCOUNT_WEBHOOK_ALLOW_INSECURE": "1",
    "DISCOUNT_WEBHOOK_SECRET_KEY": base64.b64encode(os.urandom(32)).decode(),
    "DISCOUNT_WEBHOOK_TIMEOUT_SECONDS": str(HANGING_TIMEOUT_SECONDS),
}


class ThreadReceiver:
    """An HTTP receiver on 127.0.0.1 in its own thread and event loop: (brand, sequence) -> arrival."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, int], float] = {}
        self.requests: dict[str, int] = defaultdict(int)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="webhook-receiver")

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/hang/"):
            await asyncio.sleep(3600)
        body = await request.read()
        now = time.time()
        event = json.loads(body)
        self.requests[event["brand_id"]] += 1
        for claim in event["claims"]:
            self.arrived.setdefault((event["brand_id"], int(claim["sequence"])), now)
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> ThreadReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, expected: dict[str, int], timeout: float = 60.0) -> bool:
        """Whether every brand's claims up to its expected sequence arrived within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((brand, last) in self.arrived for brand, last in expected.items() if last > 0):
                return True
            time.sleep(0.1)
        return False


def create_webhook(address: str, admin_key: str, brand: str, url: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = wpb_grpc.WebhookServiceStub(channel)
        reply = stub.CreateWebhook(
            wpb.CreateWebhookRequest(brand_id=brand, url=url), metadata=(("x-api-key", admin_key),), timeout=10
        )
        return str(reply.webhook.webhook_id)


def receipt_latency(replies: dict[str, list[Any]], brands: list[str], receiver: ThreadReceiver) -> list[float]:
    """Seconds from each new claim's reply at the load generator to its arrival at the receiver."""
    return sorted(
        receiver.arrived[(brands[b], s)] - t
        for b, s, t in zip(replies["brand"], replies["sequence"], replies["at"], strict=True)
        if (brands[b], s) in receiver.arrived
    )


def latency_summary(latencies: list[float], claims: int) -> dict[str, Any]:
    return {
        "claims": claims,
        "received": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }


def run(bench: Bench) -> dict[str, Any]:
    profile, db = bench.profile, bench.db
    receiver = ThreadReceiver().start()
    server = Server(db.url, 1, bench.workdir, extra_env=SERVER_ENV)
    bench.servers.append(server)
    without_runs, with_runs = [], []
    for r in range(profile.rounds):
        db.brand(f"whoff{r}", profile.brand_codes)
        db.sql("CHECKPOINT")
        without_runs.append(bench.load(f"webhook-off-{r}", f"whoff{r}", server=server, record_replies=True))
        db.brand(f"whon{r}", profile.brand_codes)
        create_webhook(server.address, bench.admin_key, f"whon{r}", receiver.url(f"/on{r}"))
        db.sql("CHECKPOINT")
        with_runs.append(bench.load(f"webhook-on-{r}", f"whon{r}", server=server, record_replies=True))
        receiver.wait_for({f"whon{r}": db.last_sequence(f"whon{r}")})
    without, with_webhook = merge_rounds(without_runs), merge_rounds(with_runs)
    # On a shared machine the closed-loop rate swings with the neighbours' load; the server's CPU
    # per claim moves much less, so it is reported beside the ratio.
    for merged, runs in ((without, without_runs), (with_webhook, with_runs)):
        merged["server_cpu_ms_per_claim"] = (
            1000 * sum(r["server_cpu_s"] for r in runs) / sum(sum(r["per_second"]) for r in runs)
        )
    ratio = with_webhook["rps"] / without["rps"]
    log(f"webhooks: closed loop {with_webhook['rps']:.0f}/s with one webhook vs {without['rps']:.0f}/s ({ratio:.2f} x)")

    rate = without["rps"] / 2
    db.brand("whpaced", profile.brand_codes)
    create_webhook(server.address, bench.admin_key, "whpaced", receiver.url("/paced"))
    db.sql("CHECKPOINT")
    paced_load = bench.load("webhook-paced", "whpaced", server=server, rate=rate, record_replies=True)
    complete = receiver.wait_for({"whpaced": db.last_sequence("whpaced")})
    paced = latency_summary(
        receipt_latency(paced_load.pop("_replies"), ["whpaced"], receiver), len(paced_load["_window"])
    )
    paced.update(rate=rate, every_claim_received=complete)
    log(
        f"webhooks: at {rate:.0f} claims/s, claim -> receipt p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms"
    )

    brands = db.brands("whmany", MANY, 2000)
    for i, brand in enumerate(brands):
        path = f"/hang/{brand}" if i < HANGING else f"/ok/{brand}"
        create_webhook(server.address, bench.admin_key, brand, receiver.url(path))
    db.sql("CHECKPOINT")
    many_rate = min(rate, MANY_RATE)
    many_load = bench.load("webhook-many", brands[0], server=server, rate=many_rate, brands=brands, record_replies=True)
    healthy = brands[HANGING:]
    complete = receiver.wait_for({b: db.last_sequence(b) for b in healthy})
    replies = many_load.pop("_replies")
    latencies = [
        lat
        for b, s, t in zip(replies["brand"], replies["sequence"], replies["at"], strict=True)
        if b >= HANGING and (brands[b], s) in receiver.arrived
        for lat in [receiver.arrived[(brands[b], s)] - t]
    ]
    many = latency_summary(sorted(latencies), sum(1 for b in replies["brand"] if b >= HANGING))
    many.update(rate=many_rate, every_claim_received=complete, hanging=HANGING, webhooks=MANY)
    log(f"webhooks: 100 webhooks, 10 hanging: the 90 others p99 {many['p99_ms']:.1f} ms")
    bench.stop_server(server)
    for summary in (without, with_webhook, paced_load, many_load):
        for key in [k for k in summary if k.startswith("_")]:
            summary.pop(key)
    return {
        "without_webhook": without,
        "with_webhook": with_webhook,
        "ratio": ratio,
        "paced": paced,
        "many": many,
        "hanging_timeout_seconds": HANGING_TIMEOUT_SECONDS,
    }


def rows(result: dict[str, Any]) -> list[str]:
    """The rows for docs/performance.md: figure, baseline, ratio, target."""
    w, wo, paced, many = result["with_webhook"], result["without_webhook"], result["paced"], result["many"]
    cpu = w["server_cpu_ms_per_claim"] / wo["server_cpu_ms_per_claim"]
    return [
        f"| server CPU per claim, hot brand, one webhook | {w['server_cpu_ms_per_claim']:.3f} ms | "
        f"{wo['server_cpu_ms_per_claim']:.3f} ms without | {cpu:.2f} x | - | - |",
        f"| claims/s, hot brand, one webhook | {w['rps']:.0f}/s | {wo['rps']:.0f}/s without | "
        f"{result['ratio']:.2f} x | >= 0.85 x | {'PASS' if result['ratio'] >= 0.85 else 'MISS'} |",
        f"| claim -> webhook receipt p99 at {paced['rate']:.0f}/s (half the unwatched rate) | "
        f"{paced['p99_ms']:.0f} ms (p50 {paced['p50_ms']:.0f}) | - | - | <= 1 s | "
        f"{'PASS' if paced['p99_ms'] <= 1000 and paced['every_claim_received'] else 'MISS'} |",
        f"| 100 webhooks, 10 hanging: the 90 others' claim -> receipt p99 at {many['rate']:.0f}/s | "
        f"{many['p99_ms']:.0f} ms (p50 {many['p50_ms']:.0f}) | - | - | <= 1 s | "
        f"{'PASS' if many['p99_ms'] <= 1000 and many['every_claim_received'] else 'MISS'} |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=FULL.duration, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=FULL.rounds, help="alternated rounds of the comparison")
    args = parser.parse_args(argv)
    profile = dataclasses.replace(FULL, duration=args.duration, rounds=args.rounds)
    bench = Bench.open(profile, Path(tempfile.mkdtemp(prefix="bench-webhooks-")))
    try:
        result = run(bench)
    finally:
        bench.close()
    # bench/raw is ignored by git: bench/results holds the committed full runs of `python -m bench`.
    out = ROOT / "bench" / "raw" / f"webhooks-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"profile": dataclasses.asdict(profile), **result}, indent=1, default=str))
    print("\n".join(rows(result)))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
