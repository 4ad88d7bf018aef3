"""The WatchClaims phases of one brand: claim throughput without and with watchers streaming every
event and the event latency (closed loop and paced), watchers asking one claim per message, and idle
streams on one process. See phases.py for what the phases share.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import log
from bench.phases import Bench, merge_rounds, peak_rss, summarize_watch
from bench.processes import WATCH_CLAIMS_PER_RESPONSE, Server, Watchers, probe_claim
from discount_dev.processes import cpu_seconds, rss_bytes


def watched_phase(
    bench: Bench,
    server: Server,
    name: str,
    count: int,
    *,
    rate: float = 0.0,
    per_response: int = WATCH_CLAIMS_PER_RESPONSE,
) -> tuple[dict[str, Any], tuple[dict[str, Any], int]]:
    """Claims on a new brand (closed loop, or `rate` claims/s) while `count` watchers stream every
    event: the load summary, and the watchers' raw result with the last sequence they had to reach
    (for summarize_watch, alone or with other rounds)."""
    db = bench.db
    db.brand(name, bench.profile.brand_codes)
    db.sql("CHECKPOINT")  # the previous phase's WAL is flushed before this one is timed
    group = Watchers(bench.workdir, name, server.address, bench.admin_key, name, count, per_response=per_response)
    probe_claim(server.address, bench.service_key, name, "probe")
    group.wait_ready()
    load = bench.load(name, name, server=server, rate=rate)
    expected = db.last_sequence(name)
    raw = (group.finish(expected), expected)
    events = summarize_watch([raw])
    log(f"{name}: {count} watchers, event latency p50 {events['latency_p50_ms']:.1f} ms, p99 "
        f"{events['latency_p99_ms']:.1f} ms, all events: {events['every_watcher_got_every_event']}")  # fmt: skip
    return load, raw


def feed(bench: Bench, workers: int) -> dict[str, Any]:
    """Claim throughput without watchers and with N watchers streaming every event, alternated in
    rounds on one server; then event latency at the paced rates, and with a tenth of the watchers."""
    profile, db = bench.profile, bench.db
    server = bench.start_server(workers)
    without_runs, with_runs, with_raw = [], [], []
    for r in range(profile.rounds):
        db.brand(f"nowatch{r}", profile.brand_codes)
        db.sql("CHECKPOINT")
        without_runs.append(bench.load(f"no-watchers-{r}", f"nowatch{r}", server=server))
        load, raw = watched_phase(bench, server, f"watched{r}", profile.watchers)
        with_runs.append(load)
        with_raw.append(raw)
    paced: dict[str, Any] = {}
    for rate in profile.paced_rates:
        load, raw = watched_phase(bench, server, f"paced{rate:.0f}", profile.watchers, rate=rate)
        paced[f"{rate:.0f}"] = {"rate": rate, "load": load, "events": summarize_watch([raw])}
    few = max(1, profile.watchers // 10)  # where the knee is: the same closed loop with a tenth of them
    with_few, few_raw = watched_phase(bench, server, "watched-few", few)
    bench.stop_server(server)
    return {
        "without_watchers": merge_rounds(without_runs),
        "with_watchers": merge_rounds(with_runs),
        "with_watchers_events": summarize_watch(with_raw),
        "paced": paced,
        "with_few_watchers": with_few,
        "few_watchers_events": summarize_watch([few_raw]),
        "max_claims_per_response": WATCH_CLAIMS_PER_RESPONSE,
    }


def idle(bench: Bench) -> dict[str, Any]:
    """`idle_streams` WatchClaims streams on one server process: its RSS and its LISTEN connections."""
    profile, db = bench.profile, bench.db
    server = bench.start_server(1)
    db.brand("idle", 100)
    time.sleep(1.0)
    rss_before = rss_bytes(server.pid, children=True)
    streams = Watchers(bench.workdir, "idle", server.address, bench.admin_key, "idle", profile.idle_streams,
                       record=False)  # fmt: skip
    probe_claim(server.address, bench.service_key, "idle", "probe")  # every stream gets one event, then idles
    streams.wait_ready(timeout=300)
    time.sleep(2.0)
    rss_idle = rss_bytes(server.pid, children=True)
    listen = db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'discount-service-listen'")
    connections = db.sql(
        "SELECT application_name, state, query FROM pg_stat_activity WHERE application_name LIKE 'discount%%'"
    )
    idle_data = streams.finish(1)
    bench.stop_server(server)
    summary = {
        "streams": profile.idle_streams,
        "streams_with_probe_event": sum(1 for c in idle_data["counts"] if c == 1),
        "rss_before_mb": rss_before / 2**20,
        "rss_mb": rss_idle / 2**20,
        "listen_connections": int(listen[0][0]),
        "connections": [list(map(str, row)) for row in connections],
    }
    log(f"idle: {summary['streams']} streams, RSS {summary['rss_mb']:.0f} MB, "
        f"LISTEN connections {summary['listen_connections']}")  # fmt: skip
    return summary


def single_claim_watchers(bench: Bench) -> dict[str, Any]:
    """`watchers` streams of one hot brand asking one claim per message (the contract's default,
    what grpcurl and generated stubs do) under the closed loop, against the same load unwatched,
    for `single_duration` seconds each; then how long after the load stopped every watcher had
    every claim, in order, and the server's peak RSS over the phase."""
    profile, db = bench.profile, bench.db
    server = bench.start_server(1)
    duration = profile.single_duration
    db.brand("single-alone", profile.brand_codes)
    db.sql("CHECKPOINT")
    alone = bench.load("single-unwatched", "single-alone", server=server, duration=duration)
    db.brand("single", profile.brand_codes)
    db.sql("CHECKPOINT")
    group = Watchers(bench.workdir, "single", server.address, bench.admin_key, "single", profile.watchers,
                     per_response=0)  # fmt: skip
    probe_claim(server.address, bench.service_key, "single", "probe")
    group.wait_ready()
    rss_before = rss_bytes(server.pid, children=True)
    with peak_rss(server.pid, interval=0.1) as peak:
        watched = bench.load("single-watched", "single", server=server, duration=duration)
        load_stopped = time.perf_counter()
        server_cpu, watchers_cpu = cpu_seconds(server.pid, children=True), group.cpu_seconds()
        expected = db.last_sequence("single")
        raw = group.finish(expected)
        caught_up = time.perf_counter() - load_stopped
        server_cpu = cpu_seconds(server.pid, children=True) - server_cpu
        watchers_cpu = raw["client_cpu_s"] - watchers_cpu  # its own count at exit
    bench.stop_server(server)
    events = summarize_watch([(raw, expected)])
    log(f"{profile.watchers} one-claim watchers: {watched['rps'] / alone['rps']:.2f} x unwatched; every watcher had "
        f"all {expected} claims {caught_up:.1f} s after the load stopped ({events['messages']:,} messages; CPU "
        f"meanwhile: server {server_cpu:.1f} s, watcher process {watchers_cpu:.1f} s); "
        f"RSS {rss_before / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MB")  # fmt: skip
    return {
        "watchers": profile.watchers,
        "duration": duration,
        "without_watchers": alone,
        "with_watchers": watched,
        "events": events,
        "caught_up_seconds_after_load": caught_up,
        "catch_up_server_cpu_s": server_cpu,
        "catch_up_watchers_cpu_s": watchers_cpu,
        "claims": expected,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": peak[0] / 2**20,
    }
