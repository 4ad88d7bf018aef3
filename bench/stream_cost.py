"""What one server-streaming gRPC message costs in CPU, with no service around it.

    .venv/bin/python -m bench.stream_cost [--streams 1000] [--connections 100] [--rate 600]

A bare grpc.aio server (uvloop, as `discount serve` runs) holds N open streams from a grpc.aio
client process (its channels set up as bench/watchers.py sets them up), over C connections, and
sends each message to a random stream: the shape of the many-brands watchers, one claim per brand
now and then. Two runs at the same message rate:

- isolated: one message per event-loop turn, as claims for different brands arrive one by one;
- grouped (the baseline): `--group` messages back to back per turn.

Prints the CPU per message of the server process and of the client process (read from /proc, every
thread counted), the TCP segments per message on loopback, and each run's ratio to the baseline. It
is the floor under the many-watchers rows of `python -m bench` (docs/performance.md):
whatever the feed does, each watched claim costs at least this much on each end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bench.common import PY, ROOT, log
from discount_dev.processes import cpu_seconds
from discount_service.eventloop import run as run_loop

METHOD = "/bench.Stream/Watch"
# About the size of a WatchClaimsResponse that carries one claim.
PAYLOAD = b"\n\x5a" + b"x" * 90


async def serve() -> None:
    """The server child: prints its port, then per `send RATE GROUP COUNT` line on stdin sends COUNT
    messages to random streams, GROUP back to back every GROUP/RATE seconds, and prints `sent`."""
    streams: list[asyncio.Queue[bytes]] = []

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # type: ignore[type-arg]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        streams.append(queue)
        await context.send_initial_metadata(())
        while True:
            yield await queue.get()

    server = grpc.aio.server()
    methods = {"Watch": grpc.unary_stream_rpc_method_handler(handler)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Stream", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    pick = random.Random(1)
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        rate, group, count = float(line[1]), int(line[2]), int(line[3])
        due = loop.time()
        for first in range(0, count, group):
            for _ in range(min(group, count - first)):
                pick.choice(streams).put_nowait(PAYLOAD)
            due += group / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
        print("sent", flush=True)
    await server.stop(1)


async def watch(port: int, streams: int, connections: int) -> None:
    """The client child: opens the streams, prints `ready` once every one has its headers, then
    answers each line on stdin with the number of messages received so far."""
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    received = 0
    opened = 0

    async def stream(i: int) -> None:
        nonlocal received, opened
        call = channels[i % connections].unary_stream(METHOD)(b"")
        await call.initial_metadata()
        opened += 1
        async for _ in call:
            received += 1

    tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
    while opened < streams:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(received, flush=True)
    for task in tasks:
        task.cancel()


def tcp_segments_sent() -> int:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def ask(process: subprocess.Popen[str], line: str) -> str:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def spawn(*args: str) -> subprocess.Popen[str]:
    """This module as a child process that talks in lines on stdin and stdout."""
    command = [PY, "-m", "bench.stream_cost", "--child", *args]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def measure(args: argparse.Namespace) -> None:
    server = spawn("server")
    assert server.stdout is not None
    port = int(server.stdout.readline())
    sizes = ("--streams", str(args.streams), "--connections", str(args.connections))
    client = spawn("client", "--port", str(port), *sizes)
    try:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the client did not open its streams")
        count = int(args.rate * args.seconds)
        results: dict[str, tuple[float, float, float]] = {}
        for name, group in (("grouped", args.group), ("isolated", 1), ("grouped again", args.group)):
            before = int(ask(client, "count"))
            server_cpu, client_cpu, segments = cpu_seconds(server.pid), cpu_seconds(client.pid), tcp_segments_sent()
            if ask(server, f"send {args.rate} {group} {count}") != "sent":
                raise RuntimeError("the server stopped")
            deadline = time.monotonic() + 60
            while int(ask(client, "count")) < before + count:
                if time.monotonic() > deadline:
                    raise RuntimeError("the client did not receive every message")
                time.sleep(0.05)
            results[name] = (
                (cpu_seconds(server.pid) - server_cpu) / count * 1e6,
                (cpu_seconds(client.pid) - client_cpu) / count * 1e6,
                (tcp_segments_sent() - segments) / count,
            )
            server_us, client_us, per_message = results[name]
            log(f"{name} ({group} per loop turn, {args.rate:.0f} messages/s, {count} messages over {args.streams} "
                f"streams on {args.connections} connections): server {server_us:.0f} us/message, client "
                f"{client_us:.0f} us/message, {per_message:.2f} TCP segments/message")  # fmt: skip
        base = [(a + b) / 2 for a, b in zip(results["grouped"], results["grouped again"], strict=True)]
        isolated = results["isolated"]
        log(f"isolated / grouped (mean of the two grouped runs): server {isolated[0] / base[0]:.2f} x, "
            f"client {isolated[1] / base[1]:.2f} x")  # fmt: skip
    finally:
        for process in (client, server):
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_cost", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rate", type=float, default=600.0, help="messages/s (default about the watched claims/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--group", type=int, default=30, help="messages per loop turn in the grouped baseline")
    parser.add_argument("--child", choices=("server", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "server":
        run_loop(serve())
    elif args.child == "client":
        run_loop(watch(args.port, args.streams, args.connections))
    else:
        measure(args)


if __name__ == "__main__":
    main()
