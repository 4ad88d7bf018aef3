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
    row("ClaimCode throughput vs pgbench, discount_claim per transaction", f"{main['rps']:.0f}/s",
        f"pgbench {pgb:.0f} tps", main["rps"] / pgb, "(reference)", None)  # fmt: skip
    pgb16 = r["pgbench_batch"]["claims_per_second"]
    row("ClaimCode throughput vs pgbench, discount_claim_batch of 16", f"{main['rps']:.0f}/s",
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
    se = w["single_events"]
    row(
        f"  reference: {se['watchers']} watchers asking one claim per message: throughput vs none",
        f"{w['with_watchers_single']['rps']:.0f}/s",
        f"none {w['without_watchers']['rps']:.0f}/s",
        w["with_watchers_single"]["rps"] / w["without_watchers"]["rps"],
        "(reference)",
        None,
    )
    row(
        "  reference: the same, event latency p50 / p99",
        f"{se['latency_p50_ms']:.1f} / {se['latency_p99_ms']:.1f} ms",
        "",
        None,
        "(reference)",
        None,
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
    phases += [r["watch"]["with_few_watchers"], r["watch"]["with_watchers_single"]]
    for p in phases:
        if p["errors"] or p["repeats"]:
            problems.append(f"{p['name']}: errors {p['errors']}, repeated users {p['repeats']}")
        if p["calls"] == 0:
            problems.append(f"{p['name']}: no calls completed")
    watched = [(name, r["watch"][name]) for name in ("with_watchers_events", "few_watchers_events", "single_events")]
    watched += [(f"paced {rate}", paced["events"]) for rate, paced in r["watch"]["paced"].items()]
    for name, ev in watched:
        if not ev["every_watcher_got_every_event"]:
            problems.append(f"{name}: not every watcher got every event: {ev['min_events']}..{ev['max_events']}")
    if r["idle"]["listen_connections"] != 1:
        problems.append(f"idle: {r['idle']['listen_connections']} LISTEN connections")
    if r["idle"]["streams_with_probe_event"] != r["idle"]["streams"]:
        problems.append("idle: not every stream got its event")
    if r["generate"]["rpc"]["generated"] != r["generate"]["count"]:
        problems.append("generate: wrong count")
    return problems
