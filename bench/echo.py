"""The RPC-layer baseline: a bare grpc.aio server whose one unary method returns its request.

`python -m bench.echo PORT` serves `/bench.Echo/Echo` on 127.0.0.1:PORT until SIGTERM. Request
and response stay raw bytes: no parsing, no auth, no database, the least a grpc.aio server can do.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from discount_service.eventloop import run as run_loop

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    run_loop(serve(int(sys.argv[1])))
