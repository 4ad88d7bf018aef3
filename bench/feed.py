"""The feed phase alone, for tuning it: `python -m bench.feed [--watchers 100] [--rate 0] [--rounds 1]`.

Starts a private PostgreSQL and one `discount serve`, then per round: claims with no watchers, and
claims with N watchers streaming every event (closed loop of 32 in flight, or `--rate` claims/s).
Prints the throughput ratio, event latency, messages and CPU per process. The full harness
(`python -m bench`) runs the same phases among the others; this one takes about 40 s per round.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.phases import Bench, Profile, summarize_watch
from bench.watch_phases import watched_phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="claims/s with watchers (default: closed loop)")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per phase")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    profile = Profile(
        name="feed", duration=args.duration, warmup=1.0, concurrency=32, brand_codes=60_000, million=0, generate=0,
        watchers=args.watchers, idle_streams=0, paced_rates=(args.rate,),
    )  # fmt: skip
    bench = Bench.open(profile, Path(tempfile.mkdtemp(prefix="bench-feed-")))
    try:
        server = bench.start_server(1)
        for r in range(args.rounds):
            without = None
            if not args.rate:
                bench.db.brand(f"alone{r}", profile.brand_codes)
                bench.db.sql("CHECKPOINT")
                without = bench.load(f"alone{r}", f"alone{r}", server=server)
            load, raw = watched_phase(bench, server, f"watched{r}", args.watchers, rate=args.rate)
            events = summarize_watch([raw])
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
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
