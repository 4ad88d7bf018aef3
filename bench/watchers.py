"""WatchClaims clients: `python -m bench.watchers CONFIG_JSON`, run as their own process.

Opens N streams of one brand from `after_sequence`, prints `ready` once every stream has
received its first event (so every stream is known to be established), then reads one command on
stdin, `until SEQ`: waits until every stream has reached SEQ, then writes per-stream counts, gaps
and event latencies (receipt time minus the claim's claimed_at) to the JSON file named in the
config, and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array
from typing import Any

import grpc

from bench.common import child_main
from discount.v1 import discount_service_pb2 as pb

WATCH_METHOD = "/discount.v1.DiscountService/WatchClaims"


async def run(config: dict[str, Any]) -> dict[str, Any]:
    n = int(config["watchers"])
    n_channels = max(1, int(config.get("channels", 10)))
    metadata = (("x-api-key", config["api_key"]),)
    body = pb.WatchClaimsRequest(
        brand_id=config["brand"],
        after_sequence=int(config["after_sequence"]),
        max_claims_per_response=int(config.get("max_claims_per_response", 0)),
    ).SerializeToString()
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
        call = channels[i % n_channels].unary_stream(WATCH_METHOD)(body, metadata=metadata)
        try:
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
    target = None
    while target is None:
        line = (await reader.readline()).decode().split()
        if not line:
            break
        if line[0] == "until":
            target = int(line[1])
    deadline = time.monotonic() + float(config.get("drain_timeout", 120))
    while target is not None and min(last) < target and time.monotonic() < deadline:
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
        "target": target,
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
