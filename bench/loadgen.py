"""The load generator: `python -m bench.loadgen CONFIG_JSON`, run as its own process.

N calls in flight (closed loop, or paced at a fixed rate), spread over a few HTTP/2 connections
(so SO_REUSEPORT workers all get some), every call with a distinct user of one hot brand, or of a
random one of `brands`. The very same loop drives the echo baseline: only the method path differs.
Writes, per call, when it completed and how long it took, to the JSON file named in the config;
with `record_replies`, also each new claim's brand (index in `brands`), sequence and the wall-clock
time its reply arrived, to match with the time a watcher received it.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from typing import Any

import grpc

from bench.common import child_main
from discount.v1 import discount_service_pb2 as pb

CLAIM_METHOD = "/discount.v1.DiscountService/ClaimCode"
ECHO_METHOD = "/bench.Echo/Echo"


async def run(config: dict[str, Any]) -> dict[str, Any]:
    method_path = ECHO_METHOD if config["method"] == "echo" else CLAIM_METHOD
    concurrency = int(config["concurrency"])
    n_channels = max(1, int(config.get("channels", 4)))
    warmup = float(config.get("warmup", 1.0))
    duration = float(config["duration"])
    rate = float(config.get("rate", 0) or 0)
    prefix = config["user_prefix"]
    brands = list(config.get("brands") or [config["brand"]])
    record = bool(config.get("record_replies"))
    metadata = (("x-api-key", config["api_key"]),)
    check = config["method"] != "echo"

    channels = [
        # A local subchannel pool per channel: each is its own TCP connection.
        grpc.aio.insecure_channel(config["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n_channels)
    ]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    calls = [ch.unary_unary(method_path) for ch in channels]  # raw bytes in and out

    done_at = array("d")
    latency = array("d")
    errors: dict[str, int] = {}
    repeats = 0
    reply_brand = array("i")
    reply_sequence = array("q")
    reply_at = array("d")
    t0 = time.perf_counter()
    wall0 = time.time()
    end = t0 + warmup + duration

    async def worker(i: int) -> None:
        nonlocal repeats
        call = calls[i % n_channels]
        pick = random.Random(i)
        k = 0
        while True:
            if rate:
                due = t0 + (k * concurrency + i) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            start = time.perf_counter()
            if start >= end:
                return
            user = f"{prefix}-{i}-{k}"
            k += 1
            b = pick.randrange(len(brands))
            request = pb.ClaimCodeRequest(brand_id=brands[b], user_id=user, email=f"{user}@example.com")
            body = request.SerializeToString()
            try:
                reply = await call(body, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            finished = time.perf_counter()
            if check:
                response = pb.ClaimCodeResponse.FromString(reply)
                if not response.newly_claimed:
                    repeats += 1
                elif record:
                    reply_brand.append(b)
                    reply_sequence.append(response.claim.sequence)
                    reply_at.append(time.time())
            done_at.append(finished - t0)
            latency.append(finished - start)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for ch in channels:
        await ch.close()
    return {
        "wall_start": wall0,
        "warmup": warmup,
        "duration": duration,
        "done_at": list(done_at),
        "latency": list(latency),
        "errors": errors,
        "repeats": repeats,
        "replies": {"brand": list(reply_brand), "sequence": list(reply_sequence), "at": list(reply_at)},
    }


if __name__ == "__main__":
    child_main(run)
