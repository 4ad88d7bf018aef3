"""The feed phase alone, for tuning it: `python -m bench.feed [--watchers 100] [--rate 0] [--rounds 1]`.

Starts a private PostgreSQL and one `discount serve`, then per round: claims with no watchers, and
claims with N watchers streaming every event (closed loop of 32 in flight, or `--rate` claims/s).
Prints the throughput ratio, event latency, messages and CPU per process. The full harness
(`python -m bench`) runs the same phases among the others; this one takes about 40 s per round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from bench import run as harness
from bench.common import PrivatePostgres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="claims/s with watchers (default: closed loop)")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per phase")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    profile = harness.Profile("feed", args.duration, 1.0, 32, 60_000, 0, 0, args.watchers, 0, [args.rate])
    workdir = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    pg = PrivatePostgres().start()
    try:
        harness.Db(pg.url).sql("CREATE DATABASE discount_bench")
        db = harness.Db(pg.url_for("discount_bench"))
        env = {**os.environ, "DISCOUNT_DATABASE_URL": db.url}
        subprocess.run([str(harness.BIN / "discount"), "migrate"], env=env, check=True, capture_output=True)
        admin, service = db.key("admin"), db.key("service")
        server = harness.Server(db.url, 1, workdir)
        try:
            for r in range(args.rounds):
                without = None
                if not args.rate:
                    db.brand(f"alone{r}", profile.brand_codes)
                    db.sql("CHECKPOINT")
                    without = harness.run_load(workdir, f"alone{r}", target=server.address, method="claim",
                                               api_key=service, brand=f"alone{r}", profile=profile,
                                               server_pid=server.pid, pg=pg)  # fmt: skip
                load, raw = harness.watched_phase(workdir, db, server, (admin, service), f"watched{r}",
                                                  args.watchers, profile, pg, rate=args.rate)  # fmt: skip
                events = harness.summarize_watch([raw])
                ratio = f"{load['rps'] / without['rps']:.2f} x no watchers" if without else f"{load['rps']:.0f}/s"
                print(
                    f"round {r}: {ratio}; event latency p50 {events['latency_p50_ms']:.1f} ms, "
                    f"p99 {events['latency_p99_ms']:.1f} ms; every event to every watcher: "
                    f"{events['every_watcher_got_every_event']}; {events['messages']} messages; CPU s: server "
                    f"{load['server_cpu_s']} (alone {without['server_cpu_s'] if without else '-'}), "
                    f"postgres {load['postgres_cpu_s']}, watchers {events['client_cpu_s']:.1f}",
                    flush=True,
                )
        finally:
            server.stop()
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
