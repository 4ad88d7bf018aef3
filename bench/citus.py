"""Claims across brands on Citus against plain PostgreSQL, in one run:
`python -m bench.citus [--duration 15] [--rounds 2] [--brands 8] [--concurrency 32] [--out FILE]`.

Both engines run on this machine with the same durable settings (bench.database.PG_SETTINGS: fsync
and synchronous_commit on): "plain" is one private PostgreSQL, "citus" a coordinator and two
workers (three servers sharing the same cores, so the ratio measures the cost of the extra hop and
the correctness of the distributed claim, not a speed-up). Each is migrated by `discount migrate`
(which distributes on Citus) and served by one `discount serve`; the same closed loop of claims by
distinct users, spread round-robin over the brands (half of them on each worker on Citus), runs
against each, the engines alternating round by round. Prints one line per round and the ratio of
the medians; `--out` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.common import BIN, log, percentile
from bench.database import DATABASE, PG_SETTINGS
from bench.processes import Server
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.citus import CitusCluster
from discount_dev.postgres import PrivatePostgres, add_codes, create_brand, create_key, execute
from discount_service.eventloop import run as run_loop

# On top of the machine's settings: durability as in production, not the test clusters' fsync off.
DURABLE = {**PG_SETTINGS, "full_page_writes": "on"}


def migrate(url: str) -> None:
    """`discount migrate`, as an operator runs it."""
    env = {"DISCOUNT_DATABASE_URL": url, "PATH": str(BIN)}
    done = subprocess.run([str(BIN / "discount"), "migrate"], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"discount migrate failed: {done.stderr[-3000:]}")


@contextmanager
def plain_database() -> Iterator[str]:
    pg = PrivatePostgres(settings=DURABLE, prefix="discount-bench-plain-").start()
    try:
        execute(pg.url, f"CREATE DATABASE {DATABASE}")
        yield pg.url_for(DATABASE)
    finally:
        pg.cleanup()


@contextmanager
def citus_database() -> Iterator[str]:
    with CitusCluster(settings=DURABLE) as cluster:
        yield cluster.create_database(DATABASE)


def _node_of(url: str, brand_id: str) -> str:
    """Which node holds the brand's shards ("single" on plain PostgreSQL)."""
    if not execute(url, "SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
        return "single"
    rows = execute(
        url,
        "SELECT p.nodeport FROM brands b, pg_dist_shard_placement p WHERE b.brand_id = %s"
        " AND p.shardid = get_shard_id_for_distribution_column('codes', b.brand_key)",
        (brand_id,),
    )
    return f"worker:{rows[0][0]}"


def setup(url: str, brands: int, codes: int) -> tuple[list[str], str, dict[str, int]]:
    """Migrates, makes the brands with their codes (on Citus, brands are created until each worker
    holds half of them) and a service key; returns the brands, the key and the brands per node."""
    migrate(url)
    chosen: dict[str, list[str]] = {}
    for i in range(16 * brands):
        name = f"brand{i}"
        create_brand(url, name)
        node = _node_of(url, name)
        group = chosen.setdefault(node, [])
        if len(group) < (brands if node == "single" else brands // 2):
            group.append(name)
        if sum(len(g) for g in chosen.values()) == brands:
            break
    names = [name for group in chosen.values() for name in group]
    for name in names:
        add_codes(url, name, codes, prefix="B-")
    execute(url, "CHECKPOINT")
    return names, create_key(url, "service"), {node: len(group) for node, group in chosen.items()}


async def claim_load(
    address: str, key: str, brands: list[str], *, concurrency: int, warmup: float, duration: float, tag: str
) -> dict[str, Any]:
    """A closed loop of `concurrency` claims in flight, each by a new user, brands round-robin."""
    metadata = (("x-api-key", key),)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + duration
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DiscountServiceStub(channel)

        async def worker(i: int) -> None:
            k = 0
            while (now := time.perf_counter()) < end:
                brand = brands[(i + k * concurrency) % len(brands)]
                request = pb.ClaimCodeRequest(brand_id=brand, user_id=f"{tag}-{i}-{k}", email=f"u{i}-{k}@example.com")
                k += 1
                try:
                    await stub.ClaimCode(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if now >= measure_from:
                        errors[exc.code().name] += 1
                    continue
                if now >= measure_from and time.perf_counter() <= end:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.sort()
    return {
        "claims_per_s": round(len(latencies) / duration, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "errors": dict(errors),
    }


def one_round(engine: str, args: argparse.Namespace, logdir: Path, round_: int) -> dict[str, Any]:
    database = citus_database() if engine == "citus" else plain_database()
    with database as url:
        brands, key, nodes = setup(url, args.brands, args.codes)
        server = Server(url, 1, logdir)
        try:
            load = claim_load(
                server.address, key, brands, concurrency=args.concurrency, warmup=2.0, duration=args.duration,
                tag=f"{engine}{round_}",
            )  # fmt: skip
            result = run_loop(load)
        finally:
            server.stop()
    result.update(engine=engine, round=round_, brands_per_node=nodes)
    log(f"round {round_} {engine}: {json.dumps(result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.citus", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per engine and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--brands", type=int, default=8)
    parser.add_argument("--codes", type=int, default=20_000, help="codes per brand")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="bench-citus-"))
    rounds = [one_round(engine, args, logdir, r) for r in range(args.rounds) for engine in ("plain", "citus")]
    medians = {
        engine: statistics.median(r["claims_per_s"] for r in rounds if r["engine"] == engine)
        for engine in ("plain", "citus")
    }
    summary = {
        "rounds": rounds,
        "median_claims_per_s": medians,
        "ratio_citus_to_plain": round(medians["citus"] / medians["plain"], 2) if medians["plain"] else None,
        "settings": {"duration_s": args.duration, "brands": args.brands, "concurrency": args.concurrency},
    }
    log(f"citus / plain = {summary['ratio_citus_to_plain']} ({medians})")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
