"""The targets of a run, each next to its same-run baseline, and the correctness checks under load.

Targets are reported, not enforced: the machine is shared and absolute numbers move between runs.
A sanity failure (the service misbehaving under load) fails the run.
"""

from __future__ import annotations

from typing import Any


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def build_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target or reference figure: what, value, baseline, ratio, target, ok (None: no target)."""
    echo = r["echo"]["rps"]
    main = r["claim"]
    t: list[dict[str, Any]] = []

    def row(what: str, value: str, baseline: str, ratio: float | None, target: str, ok: bool | None) -> None:
        t.append({"what": what, "value": value, "baseline": baseline, "ratio": ratio, "target": target, "ok": ok})

    row(
        f"ClaimCode throughput, {r['profile']['concurrency']} in flight (workers={main['workers']})",
        f"{main['rps']:.0f}/s",
        f"echo {echo:.0f}/s",
        main["rps"] / echo,
        ">= 0.45 x echo",
        main["rps"] / echo >= 0.45,
    )
    row(
        "ClaimCode latency p50 / p99 at that load",
        f"{main['p50_ms']:.1f} / {main['p99_ms']:.1f} ms",
        f"echo {r['echo']['p50_ms']:.1f} / {r['echo']['p99_ms']:.1f} ms",
        None,
        "p99 <= 40 ms",
        main["p99_ms"] <= 40,
    )
    pgb = r["pgbench"]["tps"]
    row("ClaimCode throughput vs pgbench, discount_claim_many of 1 per transaction", f"{main['rps']:.0f}/s",
        f"pgbench {pgb:.0f} tps", main["rps"] / pgb, "(reference)", None)  # fmt: skip
    pgb16 = r["pgbench_batch"]["claims_per_second"]
    row("ClaimCode throughput vs pgbench, discount_claim_many of 16 (one brand)", f"{main['rps']:.0f}/s",
        f"pgbench {pgb16:.0f} claims/s", main["rps"] / pgb16, "(reference)", None)  # fmt: skip
    for w in r["workers_compare"]:
        row(f"ClaimCode throughput, workers={w['workers']}", f"{w['rps']:.0f}/s", f"echo {echo:.0f}/s",
            w["rps"] / echo, "(1 vs N)", None)  # fmt: skip
    d = r["decay"]
    row(
        f"ClaimCode throughput after {d['piled_up_claims']:,} claims vs fresh brand",
        f"{d['after']['rps']:.0f}/s",
        f"fresh {d['fresh']['rps']:.0f}/s",
        d["after"]["rps"] / d["fresh"]["rps"],
        ">= 0.9",
        d["after"]["rps"] / d["fresh"]["rps"] >= 0.9,
    )
    g = r["generate"]
    row(
        f"GenerateCodes of {g['count']:,} codes in one call",
        f"{g['rpc']['seconds']:.2f} s",
        f"raw COPY {g['raw_copy']['seconds']:.2f} s",
        g["rpc"]["seconds"] / g["raw_copy"]["seconds"],
        "<= 1.3 x raw COPY",
        g["rpc"]["seconds"] / g["raw_copy"]["seconds"] <= 1.3,
    )
    row("GenerateCodes server RSS growth", f"{g['rpc']['rss_growth_mb']:.0f} MB", "", None, "<= 300 MB",
        g["rpc"]["rss_growth_mb"] <= 300)  # fmt: skip
    w = r["watch"]
    ev = w["with_watchers_events"]
    # The latency target names no claim rate, so it is checked at every rate measured.
    for paced in w["paced"].values():
        pe = paced["events"]
        row(
            f"claim -> WatchClaims event latency p50 / p99, {pe['watchers']} watchers, "
            f"paced {paced['rate']:.0f} claims/s (got {paced['load']['rps']:.0f}/s)",
            f"{pe['latency_p50_ms']:.1f} / {pe['latency_p99_ms']:.1f} ms",
            "",
            None,
            "p50 <= 5, p99 <= 25 ms",
            pe["latency_p50_ms"] <= 5 and pe["latency_p99_ms"] <= 25,
        )
    row(
        f"  same, closed loop of {r['profile']['concurrency']} in flight (saturated; runs of <= "
        f"{w.get('max_claims_per_response', 1)} per message)",
        f"{ev['latency_p50_ms']:.1f} / {ev['latency_p99_ms']:.1f} ms",
        "",
        None,
        "p50 <= 5, p99 <= 25 ms",
        ev["latency_p50_ms"] <= 5 and ev["latency_p99_ms"] <= 25,
    )
    fe = w["few_watchers_events"]
    row(
        f"  same, {fe['watchers']} watchers, {r['profile']['concurrency']} in flight: latency p50 / p99",
        f"{fe['latency_p50_ms']:.1f} / {fe['latency_p99_ms']:.1f} ms",
        "",
        None,
        "(reference)",
        None,
    )
    row(
        f"  claim throughput with {fe['watchers']} watchers vs none",
        f"{w['with_few_watchers']['rps']:.0f}/s",
        f"none {w['without_watchers']['rps']:.0f}/s",
        w["with_few_watchers"]["rps"] / w["without_watchers"]["rps"],
        "(reference)",
        None,
    )
    ratio = w["with_watchers"]["rps"] / w["without_watchers"]["rps"]
    row(
        f"claim throughput with {ev['watchers']} watchers streaming every event vs none",
        f"{w['with_watchers']['rps']:.0f}/s",
        f"none {w['without_watchers']['rps']:.0f}/s",
        ratio,
        ">= 0.85",
        ratio >= 0.85,
    )
    row(
        f"  every watcher received every event ({ev['expected_events_each']:,} each)",
        "yes" if ev["every_watcher_got_every_event"] else f"NO (min {ev['min_events']}, gaps {ev['gaps']})",
        "",
        None,
        "all",
        bool(
            ev["every_watcher_got_every_event"]
            and all(paced["events"]["every_watcher_got_every_event"] for paced in w["paced"].values())
        ),
    )
    x = r["cross_brand"]
    ratio = x["cross"]["rps"] / x["hot"]["rps"]
    row(f"claims for a random one of {x['brands']:,} brands vs one hot brand",
        f"{x['cross']['rps']:.0f}/s", f"hot {x['hot']['rps']:.0f}/s", ratio, ">= 0.9 x hot", ratio >= 0.9)  # fmt: skip
    row("  p50 / p99 of those claims", f"{x['cross']['p50_ms']:.1f} / {x['cross']['p99_ms']:.1f} ms",
        f"hot {x['hot']['p50_ms']:.1f} / {x['hot']['p99_ms']:.1f} ms", None, "(reference)", None)  # fmt: skip
    after = x["idle_after"]
    row("  idle transactions/s after that load (nothing watched)", f"{after['per_second']:.2f}/s",
        f"pg_stat_database {after['pg_stat_database_per_second']:.2f}/s", None, "<= 2/s",
        after["per_second"] <= 2)  # fmt: skip
    m = r["many_watchers"]
    none, watched = m["idle_none_watched"], m["idle_all_watched"]
    row(f"idle transactions/s, {m['brands']:,} brands watched (a watcher each) vs none",
        f"{watched['per_second']:.2f}/s", f"none {none['per_second']:.2f}/s", None, "<= 2/s",
        watched["per_second"] <= 2)  # fmt: skip
    row("  the same by pg_stat_database (idle backends report late)",
        f"{watched['pg_stat_database_per_second']:.2f}/s", f"none {none['pg_stat_database_per_second']:.2f}/s",
        None, "(reference)", None)  # fmt: skip
    ratio = m["with_watchers"]["rps"] / m["without_watchers"]["rps"]
    row(f"{m['brands']:,} brands, a watcher each: claims/s for random brands vs unwatched",
        f"{m['with_watchers']['rps']:.0f}/s", f"unwatched {m['without_watchers']['rps']:.0f}/s", ratio,
        ">= 0.85", ratio >= 0.85)  # fmt: skip
    low, low_without = m["with_watchers_low_priority"], m["without_watchers_low_priority"]
    ratio = low["rps"] / low_without["rps"]
    row("  the same, the watcher process at the lowest CPU priority (the server's own cost)",
        f"{low['rps']:.0f}/s", f"unwatched {low_without['rps']:.0f}/s", ratio, ">= 0.85", ratio >= 0.85)  # fmt: skip
    with_, without = m["with_watchers"], m["without_watchers"]
    server_ms = (with_["server_cpu_s"] / with_["claims"] - without["server_cpu_s"] / without["claims"]) * 1000
    client_ms = with_["watchers_cpu_s"] / with_["claims"] * 1000
    row("  CPU per watched claim (one message): server's extra / the watcher process's",
        f"{server_ms:.2f} / {client_ms:.2f} ms",
        f"server {without['server_cpu_s'] / without['claims'] * 1000:.2f} ms per unwatched claim", None, "(reference)",
        None)  # fmt: skip
    row(f"  ClaimCode reply -> event p50 / p99 at half that load ({m['half_load']['rps']:.0f}/s)",
        f"{m['reply_to_event_p50_ms']:.1f} / {m['reply_to_event_p99_ms']:.1f} ms", "", None, "p99 <= 25 ms",
        m["reply_to_event_p99_ms"] <= 25)  # fmt: skip
    row(f"  every watcher got exactly its brand's claims ({m['claims']:,} claims)",
        "yes" if m["every_watcher_got_exactly_its_brands_claims"] else "NO", "", None, "all",
        bool(m["every_watcher_got_exactly_its_brands_claims"]))  # fmt: skip
    s1 = r["single_claim_watchers"]
    ratio = s1["with_watchers"]["rps"] / s1["without_watchers"]["rps"]
    row(f"{s1['watchers']} watchers of a hot brand, one claim per message: claims/s vs none",
        f"{s1['with_watchers']['rps']:.0f}/s", f"unwatched {s1['without_watchers']['rps']:.0f}/s", ratio,
        ">= 0.6", ratio >= 0.6)  # fmt: skip
    ev1 = s1["events"]
    done = ev1["every_watcher_got_every_event"]
    row(f"  all {s1['claims']:,} claims in order to each, after {s1['duration'] + r['profile']['warmup']:g} s of load "
        f"stopped", f"{s1['caught_up_seconds_after_load']:.1f} s"
        if done else f"NO (min {ev1['min_events']})", "", None, "<= 60 s",
        bool(done and s1["caught_up_seconds_after_load"] <= 60))  # fmt: skip
    row("  CPU while they caught up: server / the watcher process",
        f"{s1['catch_up_server_cpu_s']:.1f} / {s1['catch_up_watchers_cpu_s']:.1f} s",
        f"over {s1['caught_up_seconds_after_load']:.1f} s", None, "(reference)", None)  # fmt: skip
    row("  server RSS over that phase", f"{s1['rss_peak_mb']:.0f} MB", f"{s1['rss_before_mb']:.0f} MB before", None,
        "<= 300 MB", s1["rss_peak_mb"] <= 300)  # fmt: skip
    i = r["idle"]
    row(
        f"{i['streams']:,} idle WatchClaims streams on one process: RSS",
        f"{i['rss_mb']:.0f} MB",
        f"{i['rss_before_mb']:.0f} MB before",
        None,
        "<= 300 MB",
        i["rss_mb"] <= 300,
    )
    row("  LISTEN connections", str(i["listen_connections"]), "", None, "exactly 1", i["listen_connections"] == 1)
    if "webhooks" in r:  # bench/webhooks.py
        wh = r["webhooks"]
        row("claims/s, hot brand, one webhook vs none (closed loop)", f"{wh['with_webhook']['rps']:.0f}/s",
            f"none {wh['without_webhook']['rps']:.0f}/s", wh["ratio"], ">= 0.85 x", wh["ratio"] >= 0.85)  # fmt: skip
        for key, what in (
            ("paced", "hot brand at half its unwatched rate"),
            ("many", "90 of 100 webhooks, 10 hanging"),
        ):
            x = wh[key]
            row(f"claim -> webhook receipt p99, {what}", f"{x['p99_ms']:.0f} ms", f"p50 {x['p50_ms']:.0f} ms", None,
                "<= 1 s", x["p99_ms"] <= 1000 and x["every_claim_received"])  # fmt: skip
    if "redemption" in r:  # bench/redemption.py
        rd = r["redemption"]
        claim, redeem, spread = rd["claim"], rd["redeem"], rd["redeem_spread"]
        rate, scale = redeem["rps"] / claim["rps"], redeem["rps"] / spread["rps"]
        p99 = redeem["p99_ms"] / claim["p99_ms"]
        row("RedeemCode/s, hot brand, vs ClaimCode/s", f"{redeem['rps']:.0f}/s", f"claims {claim['rps']:.0f}/s", rate,
            ">= 0.8 x", rate >= 0.8)  # fmt: skip
        row("RedeemCode p99, hot brand, vs ClaimCode p99", f"{redeem['p99_ms']:.1f} ms",
            f"claims {claim['p99_ms']:.1f} ms", p99, "<= 2 x", p99 <= 2)  # fmt: skip
        row("RedeemCode/s, one brand vs 16 (no brand-wide lock)", f"{redeem['rps']:.0f}/s",
            f"16 brands {spread['rps']:.0f}/s", scale, ">= 0.8 x", scale >= 0.8)  # fmt: skip
    return t


def table(targets: list[dict[str, Any]]) -> str:
    """The targets as a plain-text table, for the terminal."""
    lines = [f"{'what':<78} {'value':>16} {'baseline':>22} {'ratio':>6} {'target':>22}  verdict", "-" * 158]
    for t in targets:
        ratio = f"{t['ratio']:.2f}" if t["ratio"] is not None else ""
        lines.append(
            f"{t['what']:<78} {t['value']:>16} {t['baseline']:>22} {ratio:>6} {t['target']:>22}  {verdict(t['ok'])}"
        )
    return "\n".join(lines)


def sanity(r: dict[str, Any]) -> list[str]:
    """Correctness under load, checked in every run (targets are reported, not enforced)."""
    problems = []
    phases = [r["echo"], *r["workers_compare"], r["decay"]["fresh"], r["decay"]["after"]]
    phases += [r["watch"]["without_watchers"], r["watch"]["with_watchers"]]
    phases += [paced["load"] for paced in r["watch"]["paced"].values()]
    phases += [r["watch"]["with_few_watchers"]]
    phases += [r["cross_brand"]["hot"], r["cross_brand"]["cross"]]
    m = r["many_watchers"]
    phases += [m["without_watchers"], m["with_watchers"], m["half_load"]]
    phases += [m["without_watchers_low_priority"], m["with_watchers_low_priority"]]
    phases += [r["single_claim_watchers"]["without_watchers"], r["single_claim_watchers"]["with_watchers"]]
    for p in phases:
        if p["errors"] or p["repeats"]:
            problems.append(f"{p['name']}: errors {p['errors']}, repeated users {p['repeats']}")
        if p["calls"] == 0:
            problems.append(f"{p['name']}: no calls completed")
    watched = [(name, r["watch"][name]) for name in ("with_watchers_events", "few_watchers_events")]
    watched += [("one claim per message", r["single_claim_watchers"]["events"])]
    watched += [(f"paced {rate}", paced["events"]) for rate, paced in r["watch"]["paced"].items()]
    for name, ev in watched:
        if not ev["every_watcher_got_every_event"]:
            problems.append(f"{name}: not every watcher got every event: {ev['min_events']}..{ev['max_events']}")
    if not m["every_watcher_got_exactly_its_brands_claims"] or m["errors"]:
        problems.append(f"{m['brands']} watchers across brands: not exactly their brands' claims ({m['errors']})")
    if r["idle"]["listen_connections"] != 1:
        problems.append(f"idle: {r['idle']['listen_connections']} LISTEN connections")
    if r["idle"]["streams_with_probe_event"] != r["idle"]["streams"]:
        problems.append("idle: not every stream got its event")
    if r["generate"]["rpc"]["generated"] != r["generate"]["count"]:
        problems.append("generate: wrong count")
    if "redemption" in r:
        rd = r["redemption"]
        refused = {k: v for name in ("redeem", "redeem_spread") for k, v in rd[name]["outcomes"].items() if k != "OK"}
        if refused or rd["standing_redemptions"] != rd["counted_redemptions"]:
            problems.append(f"redemption: refused {refused}, {rd['standing_redemptions']} standing redemptions "
                            f"counted as {rd['counted_redemptions']}")  # fmt: skip
    return problems
