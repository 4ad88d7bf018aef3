"""How much Envoy's gRPC-Web hop adds to a ClaimCode: the same calls, one at a time, direct vs through Envoy.

    DISCOUNT_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m bench.envoy_overhead [CALLS]

Both clients keep one connection open (gRPC channel; HTTP/1.1 keep-alive, as a browser does). Prints p50/p99.
The stack (server, Envoy, page; discount_dev.servers) is the one the browser tests run, so the hop measured
is the one they test.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import percentile
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.databases import Databases, server_url
from discount_dev.grpc_web import frame, parse_frames
from discount_dev.postgres import add_codes, create_brand, create_key
from discount_dev.servers import running_stack


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = percentile(ordered, 50) * 1000, percentile(ordered, 99) * 1000
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, {len(ordered) / sum(ordered):.0f} calls/s"


def measure(calls: int) -> None:
    databases = Databases(server_url())
    databases.setup_template()
    url = databases.create()
    try:
        create_brand(url, "acme")
        add_codes(url, "acme", 2 * calls + 10)
        key = create_key(url, "service")
        with running_stack(url, Path(tempfile.mkdtemp(prefix="envoy-overhead-"))) as stack:
            direct: list[float] = []
            with grpc.insecure_channel(stack.server.address) as channel:
                stub = pb_grpc.DiscountServiceStub(channel)
                for i in range(calls):
                    request = pb.ClaimCodeRequest(brand_id="acme", user_id=f"d{i}", email=f"d{i}@example.com")
                    started = time.perf_counter()
                    stub.ClaimCode(request, metadata=(("x-api-key", key),), timeout=10)
                    direct.append(time.perf_counter() - started)
            via_envoy: list[float] = []
            port = int(stack.envoy_url.rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-api-key": key}
            for i in range(calls):
                request = pb.ClaimCodeRequest(brand_id="acme", user_id=f"e{i}", email=f"e{i}@example.com")
                started = time.perf_counter()
                conn.request("POST", "/discount.v1.DiscountService/ClaimCode", body=frame(request), headers=headers)
                response = conn.getresponse()
                _, trailers = parse_frames(response.read())
                via_envoy.append(time.perf_counter() - started)
                assert trailers.get("grpc-status") == "0", trailers
            conn.close()
        print(f"{calls} sequential ClaimCode calls")
        print(f"  direct gRPC        {summary(direct)}")
        print(f"  gRPC-Web via Envoy {summary(via_envoy)}")
    finally:
        databases.drop(url)
        databases.drop_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.envoy_overhead",
        description="ClaimCode latency direct over gRPC vs gRPC-Web through Envoy, one call at a time.",
        epilog="The database is DISCOUNT_TEST_DATABASE_URL's server (an embedded PostgreSQL when unset).",
    )
    parser.add_argument("calls", nargs="?", type=int, default=500, help="calls per path (default: 500)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("CALLS must be at least 1")
    measure(args.calls)


if __name__ == "__main__":
    main()
