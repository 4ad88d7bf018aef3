"""The claim phases: the RPC ceiling and ClaimCode with 1 and N worker processes, pgbench running the
claim function, a fresh brand against one with a million claims piled up, and GenerateCodes against a
raw COPY. Each measures the service and its same-run baseline; see phases.py for what they share.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Any

import grpc
import psycopg

from bench.common import log
from bench.database import Db, pg_cpu
from bench.phases import Bench, merge_rounds, peak_rss
from bench.processes import Server, echo_server
from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.postgres import PG_BIN
from discount_dev.processes import rss_bytes
from discount_service import codes as codegen


def throughput(bench: Bench) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The RPC ceiling (echo: the same load generator, concurrency and duration) and ClaimCode on a
    fresh brand with each number of worker processes, in alternated rounds. Returns the echo
    summary and one ClaimCode summary per number of workers."""
    profile = bench.profile
    echo_runs: list[dict[str, Any]] = []
    claim_runs: dict[int, list[dict[str, Any]]] = {w: [] for w in profile.workers}
    for r in range(profile.rounds):
        with echo_server(bench.workdir) as echo_address:
            echo_runs.append(bench.load(f"echo-{r}", "echo", target=echo_address, method="echo"))
        for w in profile.workers:
            brand = f"hot-w{w}-{r}"
            bench.db.brand(brand, profile.brand_codes)
            server = bench.start_server(w)
            claim_runs[w].append(bench.load(f"claim-w{w}-{r}", brand, server=server))
            bench.stop_server(server)
    return merge_rounds(echo_runs), [{**merge_rounds(claim_runs[w]), "workers": w} for w in profile.workers]


def pgbench(bench: Bench, brand: str, *, batch: int = 1) -> dict[str, Any]:
    """The claim transaction the service runs, straight from pgbench, 32 clients, prepared.

    Each transaction is one call of `discount_claim_many`, the function the service calls on one
    PostgreSQL: batch=1 with one claim (its path when a brand is idle), batch>1 with that many users
    of the brand (its path under load).
    Each client keeps its own hint from its last claim, as each server process does, and claims
    for distinct users (client id + a per-client counter)."""
    profile, db, pg = bench.profile, bench.db, bench.pg
    # pgbench claims faster than the service: in a full run its brand is big enough not to run dry.
    codes = profile.brand_codes
    if profile.name == "full":
        codes = max(codes, 250_000 if batch == 1 else 500_000)
    db.brand(brand, codes)
    script = bench.workdir / f"claim-{batch}.pgbench"
    tag = f"pgb{os.getpid()}b{batch}"
    user = f"'{tag}-' || :client_id || '-' || :n"
    users = ", ".join(f"{user} || '-{i}'" for i in range(batch))
    emails = ", ".join(f"{user} || '-{i}@example.com'" for i in range(batch))
    brands, hints = f"array_fill('{brand}'::text, ARRAY[{batch}])", f"array_fill(:hint::bigint, ARRAY[{batch}])"
    call = f"discount_claim_many({brands}, ARRAY[{users}], ARRAY[{emails}], {hints})"
    script.write_text(f"\\set n :n + 1\nSELECT coalesce(max(code_key), :hint) AS hint FROM {call}\n\\gset\n")
    duration = int(max(1, round(profile.duration)))
    cmd = [
        str(PG_BIN / "pgbench"), "-n", "-M", "prepared", "-c", str(profile.concurrency), "-j", "2",
        "-T", str(duration), "-D", "hint=0", "-D", "n=0", "-f", str(script), "-r",
        "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", db.name,
    ]  # fmt: skip
    before = db.last_sequence(brand)
    cpu_before = pg_cpu(pg)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    tps_match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if tps_match is None:
        raise RuntimeError(f"no tps in the pgbench output: {proc.stdout[-2000:]}")
    tps = float(tps_match.group(1))
    lat = re.search(r"latency average = ([\d.]+) ms", proc.stdout)
    claimed = db.last_sequence(brand) - before
    log(f"pgbench batch={batch}: {tps:.0f} tps = {tps * batch:.0f} claims/s ({claimed} claims)")
    return {
        "batch": batch,
        "tps": tps,
        "claims_per_second": tps * batch,
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "claims": claimed,
        "postgres_cpu_s": round(pg_cpu(pg) - cpu_before, 2),
        "command": " ".join(cmd),
        "script": script.read_text(),
        "output": proc.stdout[-2000:],
    }


def decay(bench: Bench, workers: int) -> tuple[dict[str, Any], Server]:
    """ClaimCode on a fresh brand vs one with `million` claims piled up (bulk SQL, then real
    claims), in alternated rounds, each on a new server process (no hint of its own yet: the worst
    case); with the EXPLAINs of the code pick at each point. Returns the summary and the server of
    the last round, still running, for the generation phase."""
    profile, db = bench.profile, bench.db
    n = profile.brand_codes
    fresh_key = db.brand("fresh", n)
    million_key = db.brand("million", profile.million + n)
    explain_fresh = db.explain_claim(fresh_key, 0)
    explain_fresh_call = db.explain_claim_call("fresh", 0)
    pile_seconds = db.pile_up_claims(million_key, profile.million)
    log(f"piled up {profile.million} claims in {pile_seconds:.1f}s")
    explain_million_hint = db.explain_claim(million_key, db.claim_hint(million_key))
    explain_million_cold = db.explain_claim(million_key, 0)
    explain_million_call = db.explain_claim_call("million", 0)
    db.sql("CHECKPOINT")  # the pile-up's WAL is flushed before anything is timed
    fresh_runs: list[dict[str, Any]] = []
    after_runs: list[dict[str, Any]] = []
    server: Server | None = None
    for r in range(profile.rounds):
        brand = "fresh" if r == 0 else f"fresh{r}"
        if r:
            db.brand(brand, n)
        server = bench.start_server(workers)
        fresh_runs.append(bench.load(f"fresh-{r}", brand, server=server))
        bench.stop_server(server)
        db.sql("CHECKPOINT")
        server = bench.start_server(workers)
        after_runs.append(bench.load(f"after-million-{r}", "million", server=server))
        if r + 1 < profile.rounds:
            bench.stop_server(server)
            db.sql("CHECKPOINT")
    assert server is not None
    summary = {
        "piled_up_claims": profile.million,
        "pile_up_seconds": pile_seconds,
        "method": "bulk SQL mimicking claims (Db.pile_up_claims in bench/database.py), then real ClaimCode calls",
        "fresh": merge_rounds(fresh_runs),
        "after": merge_rounds(after_runs),
        "explain_fresh": explain_fresh,
        "explain_fresh_function_call_hint_0": explain_fresh_call,
        "explain_after_million_function_call_hint_0": explain_million_call,
        "explain_after_million_with_hint": explain_million_hint,
        "explain_after_million_hint_0": explain_million_cold,
        "explain_after_million_and_the_run": db.explain_claim(million_key, db.claim_hint(million_key)),
    }
    return summary, server


def raw_copy(db: Db, count: int) -> dict[str, Any]:
    """`count` random codes made and COPYed with psycopg into a table shaped like `codes`, with the
    same unique (primary) key and partial index, in one transaction: the generation ceiling."""
    db.sql("DROP TABLE IF EXISTS raw_copy_codes")
    db.sql("CREATE TABLE raw_copy_codes (LIKE codes INCLUDING ALL)")
    db.sql("CHECKPOINT")
    started = time.perf_counter()
    with psycopg.connect(db.url) as conn:
        with conn.cursor().copy("COPY raw_copy_codes (brand_key, batch_key, expires_at, code) FROM STDIN") as copy:
            done = 0
            while done < count:
                n = min(50_000, count - done)
                copy.write("".join(f"1\t1\t\\N\t{c}\n" for c in codegen.make_codes(n, 12)))
                done += n
        conn.commit()
    seconds = time.perf_counter() - started
    rows = db.sql("SELECT count(*) FROM raw_copy_codes")[0][0]
    db.sql("DROP TABLE raw_copy_codes")
    log(f"raw COPY of {count} codes: {seconds:.2f}s")
    return {"seconds": seconds, "rows": rows}


def generate_codes(bench: Bench, server: Server, brand: str, count: int) -> dict[str, Any]:
    """One GenerateCodes call of `count` codes: its time and the server's peak RSS growth."""
    bench.db.sql("CHECKPOINT")
    time.sleep(0.5)
    rss_before = rss_bytes(server.pid, children=True)
    started = time.perf_counter()
    with peak_rss(server.pid, interval=0.02) as peak:
        with grpc.insecure_channel(server.address) as ch:
            reply = pb_grpc.DiscountServiceStub(ch).GenerateCodes(
                pb.GenerateCodesRequest(brand_id=brand, count=count),
                metadata=(("x-api-key", bench.admin_key),),
                timeout=600,
            )
        seconds = time.perf_counter() - started
    rss_after = rss_bytes(server.pid, children=True)
    log(f"GenerateCodes {count}: {seconds:.2f}s, RSS +{(peak[0] - rss_before) / 2**20:.0f} MB")
    return {
        "seconds": seconds,
        "generated": reply.generated,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": peak[0] / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_growth_mb": (peak[0] - rss_before) / 2**20,
    }


def generation(bench: Bench, server: Server) -> dict[str, Any]:
    """The raw COPY baseline and GenerateCodes of the same size in one call, alternated."""
    count = bench.profile.generate
    raws, rpcs = [], []
    for r in range(bench.profile.rounds):
        raws.append(raw_copy(bench.db, count))
        bench.db.brand(f"gen{r}", 0)
        rpcs.append(generate_codes(bench, server, f"gen{r}", count))
    return {
        "count": count,
        "raw_copy": {"seconds": sum(x["seconds"] for x in raws) / len(raws), "rounds": raws},
        "rpc": {
            "seconds": sum(x["seconds"] for x in rpcs) / len(rpcs),
            "rss_growth_mb": max(x["rss_growth_mb"] for x in rpcs),
            "generated": min(x["generated"] for x in rpcs),
            "rounds": rpcs,
        },
    }
