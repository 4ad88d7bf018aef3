"""The many-brands phases: claims across many brands against one hot brand, the idle server's
transactions with many brands watched, and a watcher for each of many brands. See phases.py for what
the phases share.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import log, percentile
from bench.phases import Bench, merge_rounds
from bench.processes import Watchers


def idle_transactions(bench: Bench) -> dict[str, Any]:
    """Transactions per second of the benchmark database while nothing but the server runs, read
    `stats_delay` seconds after the last work, over `idle_window` seconds, two ways at once: from
    pg_stat_database (xact_commit + xact_rollback; idle backends report late, in bursts) and
    exactly, from PostgreSQL's statement log (Db.statements)."""
    profile = bench.profile
    time.sleep(profile.stats_delay)
    before, started = bench.db.transactions(), time.perf_counter()
    statements = bench.db.statements(profile.idle_window)
    elapsed = time.perf_counter() - started
    return {
        "per_second": sum(statements.values()) / profile.idle_window,
        "statements": statements,
        "pg_stat_database_per_second": (bench.db.transactions() - before) / elapsed,
    }


def cross_brand(bench: Bench) -> dict[str, Any]:
    """Claims each for a random one of `many_brands` brands against claims for one hot brand, on
    one server, alternated in rounds; then the transactions/s of that server once the load stopped
    (nothing watched)."""
    profile, db = bench.profile, bench.db
    brands = db.brands("cross", profile.many_brands, profile.many_brand_codes)
    server = bench.start_server(1)
    hot_runs: list[dict[str, Any]] = []
    cross_runs: list[dict[str, Any]] = []
    for r in range(profile.rounds):
        db.brand(f"hot-x{r}", profile.brand_codes)
        db.sql("CHECKPOINT")
        hot_runs.append(bench.load(f"hot-brand-{r}", f"hot-x{r}", server=server))
        db.sql("CHECKPOINT")
        cross_runs.append(bench.load(f"cross-brand-{r}", brands[0], brands=brands, server=server))
    after = idle_transactions(bench)
    bench.stop_server(server)
    log(f"cross-brand: {profile.many_brands} brands; idle after the load: {after['per_second']:.2f} transactions/s "
        f"({after['pg_stat_database_per_second']:.2f} by pg_stat_database) {after['statements']}")  # fmt: skip
    return {
        "brands": profile.many_brands,
        "hot": merge_rounds(hot_runs),
        "cross": merge_rounds(cross_runs),
        "idle_after": after,
    }


def reply_to_event(replies: dict[str, list[Any]], events: dict[str, list[Any]]) -> list[float]:
    """For every claim both sides saw, the seconds from its ClaimCode reply reaching the load
    generator to its event reaching its watcher (both processes on this machine's clock)."""
    replied = {(b, s): t for b, s, t in zip(replies["brand"], replies["sequence"], replies["at"], strict=True)}
    return sorted(
        t - replied[(b, s)]
        for b, s, t in zip(events["brand"], events["sequence"], events["at"], strict=True)
        if (b, s) in replied
    )


def many_watchers(bench: Bench) -> dict[str, Any]:
    """`many_brands` brands with one watcher each (asking for runs, like discount_client), all in one
    watcher process: the idle server's transactions/s with none and with all of them watched;
    claims for a random brand with and without watchers (other brands), alternated; then the
    ClaimCode reply -> event latency at half the unwatched rate; then the alternated pair again with
    the watcher process at the lowest CPU priority; and whether every watcher got exactly its
    brand's claims."""
    profile, db = bench.profile, bench.db
    n = profile.many_brands
    watched = db.brands("watched", n, profile.many_brand_codes)
    unwatched = db.brands("unwatched", n, profile.many_brand_codes)
    server = bench.start_server(1)
    idle_none = idle_transactions(bench)
    group = Watchers(bench.workdir, "many", server.address, bench.admin_key, watched[0], n, brands=watched,
                     record=False)  # fmt: skip
    group.wait_ready(timeout=300)
    idle_watched = idle_transactions(bench)
    log(f"idle server: {idle_none['per_second']:.2f} transactions/s with no brand watched "
        f"({idle_none['pg_stat_database_per_second']:.2f} by pg_stat_database), {idle_watched['per_second']:.2f} "
        f"with {n} ({idle_watched['pg_stat_database_per_second']:.2f}): {idle_watched['statements']}")  # fmt: skip

    def alternated(label: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Unwatched and watched brands alternated for `rounds`; each load also records the watcher
        process's CPU seconds, so the table can split the cost of a message between server and client."""
        runs: dict[str, list[dict[str, Any]]] = {"unwatched": [], "watched": []}
        for r in range(profile.rounds):
            for kind, brands in (("unwatched", unwatched), ("watched", watched)):
                db.sql("CHECKPOINT")
                claims_before, cpu_before = sum(db.last_sequences(brands).values()), group.cpu_seconds()
                run = bench.load(f"many-{kind}{label}-{r}", brands[0], brands=brands, server=server)
                run["watchers_cpu_s"] = round(group.cpu_seconds() - cpu_before, 2)
                # Claims over the same span as the CPU figures, warm-up included.
                run["claims"] = sum(db.last_sequences(brands).values()) - claims_before
                runs[kind].append(run)
        merged = merge_rounds(runs["unwatched"]), merge_rounds(runs["watched"])
        for m, rs in zip(merged, (runs["unwatched"], runs["watched"]), strict=True):
            for key in ("server_cpu_s", "postgres_cpu_s", "watchers_cpu_s", "claims"):
                m[key] = round(sum(r[key] for r in rs), 2)
        return merged

    # The watchers stand for brand systems on other machines, but here they share the two cores with
    # the server, PostgreSQL and the load generator, and a Python gRPC client spends more CPU per
    # message than the server does. So the comparison runs twice: with the watcher process at the
    # same priority as everything else, then at the lowest, where it runs on what the others leave.
    without, with_ = alternated("")
    half = without["rps"] / 2
    db.sql("CHECKPOINT")
    paced = bench.load("many-watched-half", watched[0], brands=watched, server=server, rate=half, record_replies=True)
    # Last: only a privileged user may give the process its priority back.
    group.set_priority(19)
    without_low, with_low = alternated("-low-priority")
    last_of = db.last_sequences(watched)
    raw = group.finish_each(last_of)
    bench.stop_server(server)
    latency = reply_to_event(paced["_replies"], raw["events"])
    complete = all(
        raw["last"][i] == last_of[watched[i]] and raw["counts"][i] == last_of[watched[i]] and raw["gaps"][i] == 0
        for i in range(n)
    )
    log(f"{n} watchers: {with_['rps'] / without['rps']:.2f} x unwatched, {with_low['rps'] / without_low['rps']:.2f} x "
        f"with the watcher process at the lowest CPU priority; at {paced['rps']:.0f}/s reply -> event "
        f"p50 {percentile(latency, 50) * 1000:.1f} ms, p99 {percentile(latency, 99) * 1000:.1f} ms; "
        f"every watcher got exactly its brand's claims: {complete}")  # fmt: skip
    return {
        "brands": n,
        "idle_none_watched": idle_none,
        "idle_all_watched": idle_watched,
        "without_watchers": without,
        "with_watchers": with_,
        "without_watchers_low_priority": without_low,
        "with_watchers_low_priority": with_low,
        "half_load": paced,
        "reply_to_event_p50_ms": percentile(latency, 50) * 1000,
        "reply_to_event_p99_ms": percentile(latency, 99) * 1000,
        "reply_to_event_samples": len(latency),
        "claims": sum(last_of.values()),
        "every_watcher_got_exactly_its_brands_claims": complete,
        "errors": raw["errors"],
        "client_cpu_s": raw["client_cpu_s"],
        "messages": raw["messages"],
    }
