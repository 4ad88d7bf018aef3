"""WatchClaims clients: `python -m bench.watchers CONFIG_JSON`, run as their own process.

Opens N streams of one brand from `after_sequence` (or, with `brands`, stream i watches
brands[i % len(brands)]), prints `ready` once every stream has received its first event (or, with
`ready_on_headers`, its response headers: the server sends them as soon as the stream is open),
then reads one command on stdin: `until SEQ` (every stream has reached SEQ) or `until-each FILE`
(a JSON object brand -> last sequence); waits for it, then writes per-stream counts, gaps and event
latencies (receipt time minus the claim's claimed_at) to the JSON file named in the config, and
exits. With `record_events`, also every event's brand (index in `brands`), sequence and wall-clock
receipt time, to match with the load generator's reply times.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import grpc

from bench.common import child_main
from discount.v1 import discount_service_pb2 as pb

WATCH_METHOD = "/discount.v1.DiscountService/WatchClaims"


async def run(config: dict[str, Any]) -> dict[str, Any]:
    n = int(config["watchers"])
    n_channels = max(1, int(config.get("channels", 10)))
    metadata = (("x-api-key", config["api_key"]),)
    brands = list(config.get("brands") or [config["brand"]])
    bodies = [
        pb.WatchClaimsRequest(
            brand_id=brand,
            after_sequence=int(config["after_sequence"]),
            max_claims_per_response=int(config.get("max_claims_per_response", 0)),
        ).SerializeToString()
        for brand in brands
    ]
    on_headers = bool(config.get("ready_on_headers"))
    record_events = bool(config.get("record_events"))
    event_brand = array("i")
    event_sequence = array("q")
    event_at = array("d")
    channels = [
        grpc.aio.insecure_channel(config["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n_channels)
    ]
    counts = [0] * n
    last = [int(config["after_sequence"])] * n
    gaps = [0] * n
    responses = [0] * n
    latency = array("d")
    # Latency is recorded on every `latency_every`-th stream, for each of its events: the streams get
    # the same events at the same moments, and reading the timestamps of all 100 streams' events
    # took more of the shared CPU than the server's fan-out did. Every stream checks every sequence.
    every = max(1, int(config.get("latency_every", 1)))
    timed = [bool(config.get("record_latency", True)) and i % every == 0 for i in range(n)]
    first_event = [asyncio.Event() for _ in range(n)]
    progress = asyncio.Event()
    errors: list[str] = []

    async def watch(i: int) -> None:
        brand = i % len(brands)
        call = channels[i % n_channels].unary_stream(WATCH_METHOD)(bodies[brand], metadata=metadata)
        try:
            if on_headers:
                await call.initial_metadata()
                first_event[i].set()
            async for raw in call:
                now = time.time()
                response = pb.WatchClaimsResponse.FromString(raw)
                responses[i] += 1
                claims = response.claims or (response.claim,)
                # Every sequence is checked, in one pass: a run must carry exactly the next ones.
                expected_first = last[i] + 1
                sequences = [claim.sequence for claim in claims]
                if sequences != list(range(expected_first, expected_first + len(sequences))):
                    gaps[i] += 1
                last[i] = sequences[-1]
                counts[i] += len(sequences)
                if timed[i]:
                    latency.extend([now - c.claimed_at.seconds - c.claimed_at.nanos * 1e-9 for c in claims])
                if record_events:
                    event_brand.extend([brand] * len(sequences))
                    event_sequence.extend(sequences)
                    event_at.extend([now] * len(sequences))
                if counts[i] >= 1:
                    first_event[i].set()
                progress.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                errors.append(exc.code().name)
            first_event[i].set()

    tasks = [asyncio.create_task(watch(i)) for i in range(n)]
    await asyncio.gather(*(e.wait() for e in first_event))
    print("ready", flush=True)
    latency_start = len(latency)  # the probe events are not part of the measurement

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    targets: list[int] | None = None
    while targets is None:
        line = (await reader.readline()).decode().split()
        if not line:
            break
        if line[0] == "until":
            targets = [int(line[1])] * n
        elif line[0] == "until-each":
            last_of = json.loads(Path(line[1]).read_text())
            targets = [int(last_of.get(brands[i % len(brands)], 0)) for i in range(n)]
    deadline = time.monotonic() + float(config.get("drain_timeout", 120))

    def behind() -> bool:
        return targets is not None and any(seen < want for seen, want in zip(last, targets, strict=True))

    while behind() and time.monotonic() < deadline:
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), 1.0)
        except TimeoutError:
            pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return {
        "watchers": n,
        "targets": targets,
        "events": {"brand": list(event_brand), "sequence": list(event_sequence), "at": list(event_at)},
        "counts": counts,
        "last": last,
        "gaps": gaps,
        "errors": errors,
        "latency": list(latency[latency_start:]),
        "client_cpu_s": time.process_time(),
        "messages": sum(responses),
        "claims_received": sum(counts),
        "max_claims_per_response": int(config.get("max_claims_per_response", 0)),
    }


if __name__ == "__main__":
    child_main(run)
