"""The targets of a run, each next to its same-run baseline, and the correctness checks under load.

Targets are reported, not enforced: the machine is shared and absolute numbers move between runs.
A sanity failure (the service misbehaving under load) fails the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.expired import BASELINE_BRAND, EXPIRED_BRAND

# row(what, value, baseline, ratio, target, ok): one line of the table
Row = Callable[[str, str, str, float | None, str, bool | None], None]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def build_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target or reference figure: what, value, baseline, ratio, target, ok (None: no
    target), from each phase the run has (a run of some phases has only theirs)."""
    t: list[dict[str, Any]] = []

    def row(what: str, value: str, baseline: str, ratio: float | None, target: str, ok: bool | None) -> None:
        t.append({"what": what, "value": value, "baseline": baseline, "ratio": ratio, "target": target, "ok": ok})

    for rows, needs in SECTIONS:
        if all(key in r for key in needs):
            rows(r, row)
    return t


def _claim(r: dict[str, Any], row: Row) -> None:
    """ClaimCode against the echo server: the throughput and latency targets."""
    echo, main = r["echo"]["rps"], r["claim"]
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


def _pgbench(r: dict[str, Any], row: Row) -> None:
    """ClaimCode against pgbench running the claim function (reference)."""
    main = r["claim"]
    pgb = r["pgbench"]["tps"]
    row("ClaimCode throughput vs pgbench, discount_claim_many of 1 per transaction", f"{main['rps']:.0f}/s",
        f"pgbench {pgb:.0f} tps", main["rps"] / pgb, "(reference)", None)  # fmt: skip
    pgb16 = r["pgbench_batch"]["claims_per_second"]
    row("ClaimCode throughput vs pgbench, discount_claim_many of 16 (one brand)", f"{main['rps']:.0f}/s",
        f"pgbench {pgb16:.0f} claims/s", main["rps"] / pgb16, "(reference)", None)  # fmt: skip


def _workers(r: dict[str, Any], row: Row) -> None:
    """ClaimCode with each number of worker processes (reference)."""
    echo = r["echo"]["rps"]
    for w in r["workers_compare"]:
        row(f"ClaimCode throughput, workers={w['workers']}", f"{w['rps']:.0f}/s", f"echo {echo:.0f}/s",
            w["rps"] / echo, "(1 vs N)", None)  # fmt: skip


def _decay(r: dict[str, Any], row: Row) -> None:
    """A brand with a million claims piled up against a fresh one."""
    d = r["decay"]
    row(
        f"ClaimCode throughput after {d['piled_up_claims']:,} claims vs fresh brand",
        f"{d['after']['rps']:.0f}/s",
        f"fresh {d['fresh']['rps']:.0f}/s",
        d["after"]["rps"] / d["fresh"]["rps"],
        ">= 0.9",
        d["after"]["rps"] / d["fresh"]["rps"] >= 0.9,
    )


def _generate(r: dict[str, Any], row: Row) -> None:
    """GenerateCodes against a raw COPY."""
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


def _watch(r: dict[str, Any], row: Row) -> None:
    """WatchClaims of one brand: event latency and claims/s with watchers."""
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


def _cross_brand(r: dict[str, Any], row: Row) -> None:
    """Claims across many brands against one hot brand."""
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


def _many_watchers(r: dict[str, Any], row: Row) -> None:
    """A watcher for each of many brands."""
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


def _single_claim_watchers(r: dict[str, Any], row: Row) -> None:
    """Watchers asking one claim per message."""
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


def _idle(r: dict[str, Any], row: Row) -> None:
    """Idle WatchClaims streams on one process."""
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


def _webhooks(r: dict[str, Any], row: Row) -> None:
    """A webhook receiving every claim of the hot brand, and 100 webhooks with 10 hanging (bench/webhooks.py)."""
    wh = r["webhooks"]
    row("claims/s, hot brand, one webhook vs none (closed loop)", f"{wh['with_webhook']['rps']:.0f}/s",
        f"none {wh['without_webhook']['rps']:.0f}/s", wh["ratio"], ">= 0.85 x", wh["ratio"] >= 0.85)  # fmt: skip
    with_cpu, without_cpu = (
        wh["with_webhook"]["server_cpu_ms_per_claim"],
        wh["without_webhook"]["server_cpu_ms_per_claim"],
    )
    row("  server CPU per claim, one webhook vs none", f"{with_cpu:.3f} ms", f"none {without_cpu:.3f} ms",
        with_cpu / without_cpu, "(reference)", None)  # fmt: skip
    for key, what in (
        ("paced", "hot brand at half its unwatched rate"),
        ("many", "90 of 100 webhooks, 10 hanging"),
    ):
        x = wh[key]
        row(f"claim -> webhook receipt p99, {what}", f"{x['p99_ms']:.0f} ms", f"p50 {x['p50_ms']:.0f} ms", None,
            "<= 1 s", x["p99_ms"] <= 1000 and x["every_claim_received"])  # fmt: skip


def _redemption(r: dict[str, Any], row: Row) -> None:
    """RedeemCode against ClaimCode on a hot brand, and one brand against 16 (bench/redemption.py)."""
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


def _expired(r: dict[str, Any], row: Row) -> None:
    """A brand with many expired codes against one with none, the same live codes (bench/expired.py);
    each ratio is the expired brand's cost over the baseline's (for claims/s: baseline / figure)."""
    e = r["expired"]
    big, base = e["series"][EXPIRED_BRAND], e["series"][BASELINE_BRAND]
    label, n = f"{e['expired']:,} expired codes vs none", e["concurrency"]
    rate, rate_base = n / big["claims"]["mean_ms"] * 1000, n / base["claims"]["mean_ms"] * 1000
    row(f"claims/s ({n} callers / mean latency), {label}", f"{rate:.0f}/s", f"none {rate_base:.0f}/s",
        rate_base / rate, "<= 1.2 x", rate_base / rate <= 1.2)  # fmt: skip
    for key, what in (("claims", "claim"), ("no_codes_left", "NO_CODES_LEFT"), ("stats", "GetBrandStats")):
        for q in (50, 99) if key != "claims" else (50,):
            value, baseline = big[key][f"p{q}_ms"], base[key][f"p{q}_ms"]
            row(f"  {what} p{q}, {label}", f"{value:.1f} ms", f"none {baseline:.1f} ms", value / baseline,
                "<= 1.2 x", value / baseline <= 1.2)  # fmt: skip
    w = e["window"]
    row(f"  NO_CODES_LEFT p50 while the sweep runs ({w['unswept_before']:,} -> {w['unswept_after']:,} unswept)",
        f"{w[EXPIRED_BRAND]['p50_ms']:.1f} ms", f"none {w[BASELINE_BRAND]['p50_ms']:.1f} ms",
        w[EXPIRED_BRAND]["p50_ms"] / w[BASELINE_BRAND]["p50_ms"], "(reference)", None)  # fmt: skip
    sweep = e["sweep"]
    row("  expired codes swept / codes vacuumed, after their expiry", f"{sweep['swept_after_expiry_s']:.1f} s",
        f"vacuumed {sweep['vacuumed_after_expiry_s']:.1f} s", None, "(reference)", None)  # fmt: skip


def _floods(r: dict[str, Any], row: Row) -> None:
    """Legitimate claims at a steady rate during a flood of bad keys against the same without (bench/floods.py)."""
    f = r["floods"]
    reached = sum(x["rps"] for x in f["flood_calls"]) / max(1, len(f["flood_calls"]))
    for q in (50, 99):
        value, baseline = f["flood"][f"p{q}_ms"], f["baseline"][f"p{q}_ms"]
        row(f"claim p{q} at {f['rate']:.0f}/s during {reached:,.0f} bad-key calls/s vs no flood", f"{value:.1f} ms",
            f"no flood {baseline:.1f} ms", value / baseline, "<= 2 x", value / baseline <= 2)  # fmt: skip
    row("  server CPU per refused bad-key call", f"{f['server_cpu_ms_per_flood_call']:.2f} ms",
        f"flood at niceness {f['flood_niceness']}", None, "(reference)", None)  # fmt: skip


def _relay(r: dict[str, Any], row: Row) -> None:
    """The NATS relay on against off, claim -> JetStream latency, and its catch-up after an outage (bench/relay.py)."""
    x = r["relay"]
    row("claims/s, hot brand, NATS relay on vs off (closed loop)", f"{x['with_relay']['rps']:.0f}/s",
        f"off {x['without_relay']['rps']:.0f}/s", x["ratio"], ">= 0.85 x", x["ratio"] >= 0.85)  # fmt: skip
    cpu = x["cpu_ms_per_claim"]
    row("  server CPU per claim, relay on vs off", f"{cpu['with']:.2f} ms", f"off {cpu['without']:.2f} ms",
        cpu["with"] / cpu["without"], "(reference)", None)  # fmt: skip
    paced = x["paced"]
    row(f"claim -> JetStream p99 at {paced['rate']:.0f}/s (half the relay-off rate)", f"{paced['p99_ms']:.0f} ms",
        f"p50 {paced['p50_ms']:.0f} ms", None, "<= 1 s",
        paced["p99_ms"] <= 1000 and paced["every_claim_stored"])  # fmt: skip
    out = x["outage"]
    row(f"relay catch-up after {out['outage_s']:.0f} s without NATS ({out['backlog']:,} claims behind)",
        f"{out['catch_up_rate']:.0f}/s", f"claims {out['claim_rate']:.0f}/s", out["ratio"], ">= 5 x",
        out["ratio"] >= 5 and out["every_claim_stored"])  # fmt: skip


# Each phase's rows, in the table's order, with the results they need.
SECTIONS: tuple[tuple[Callable[[dict[str, Any], Row], None], tuple[str, ...]], ...] = (
    (_claim, ("echo", "claim")),
    (_pgbench, ("claim", "pgbench", "pgbench_batch")),
    (_workers, ("echo", "workers_compare")),
    (_decay, ("decay",)),
    (_generate, ("generate",)),
    (_watch, ("watch",)),
    (_cross_brand, ("cross_brand",)),
    (_many_watchers, ("many_watchers",)),
    (_single_claim_watchers, ("single_claim_watchers", "profile")),
    (_idle, ("idle",)),
    (_webhooks, ("webhooks",)),
    (_redemption, ("redemption",)),
    (_expired, ("expired",)),
    (_floods, ("floods",)),
    (_relay, ("relay",)),
)


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
    """Correctness under load, checked in every run for the phases it has (targets are reported, not
    enforced); a phase that failed is one of the problems."""
    problems = [f"phase {name} failed: {error.strip().splitlines()[-1]}" for name, error in r.get("failed", {}).items()]
    loads = [r["echo"]] if "echo" in r else []
    loads += r.get("workers_compare", [])
    if "decay" in r:
        loads += [r["decay"]["fresh"], r["decay"]["after"]]
    watched = []
    if "watch" in r:
        w = r["watch"]
        loads += [w["without_watchers"], w["with_watchers"], *(p["load"] for p in w["paced"].values())]
        loads += [w["with_few_watchers"]]
        watched += [(name, w[name]) for name in ("with_watchers_events", "few_watchers_events")]
        watched += [(f"paced {rate}", paced["events"]) for rate, paced in w["paced"].items()]
    if "cross_brand" in r:
        loads += [r["cross_brand"]["hot"], r["cross_brand"]["cross"]]
    if "many_watchers" in r:
        m = r["many_watchers"]
        loads += [m["without_watchers"], m["with_watchers"], m["half_load"]]
        loads += [m["without_watchers_low_priority"], m["with_watchers_low_priority"]]
        if not m["every_watcher_got_exactly_its_brands_claims"] or m["errors"]:
            problems.append(f"{m['brands']} watchers across brands: not exactly their brands' claims ({m['errors']})")
    if "single_claim_watchers" in r:
        s1 = r["single_claim_watchers"]
        loads += [s1["without_watchers"], s1["with_watchers"]]
        watched += [("one claim per message", s1["events"])]
    if "webhooks" in r:
        wh = r["webhooks"]
        loads += [wh["without_webhook"], wh["with_webhook"]]
        problems += [f"webhooks {key}: not every claim received" for key in ("paced", "many")
                     if not wh[key]["every_claim_received"]]  # fmt: skip
    if "relay" in r:
        rl = r["relay"]
        loads += [rl["without_relay"], rl["with_relay"]]
        problems += [f"relay {key}: not every claim stored in JetStream" for key in ("paced", "outage")
                     if not rl[key]["every_claim_stored"]]  # fmt: skip
    for p in loads:
        if p["errors"] or p["repeats"]:
            problems.append(f"{p['name']}: errors {p['errors']}, repeated users {p['repeats']}")
        if p["calls"] == 0:
            problems.append(f"{p['name']}: no calls completed")
    for name, ev in watched:
        if not ev["every_watcher_got_every_event"]:
            problems.append(f"{name}: not every watcher got every event: {ev['min_events']}..{ev['max_events']}")
    if "idle" in r:
        if r["idle"]["listen_connections"] != 1:
            problems.append(f"idle: {r['idle']['listen_connections']} LISTEN connections")
        if r["idle"]["streams_with_probe_event"] != r["idle"]["streams"]:
            problems.append("idle: not every stream got its event")
    if "generate" in r and r["generate"]["rpc"]["generated"] != r["generate"]["count"]:
        problems.append("generate: wrong count")
    if "redemption" in r:
        rd = r["redemption"]
        refused = {k: v for name in ("redeem", "redeem_spread") for k, v in rd[name]["outcomes"].items() if k != "OK"}
        if refused or rd["standing_redemptions"] != rd["counted_redemptions"]:
            problems.append(f"redemption: refused {refused}, {rd['standing_redemptions']} standing redemptions "
                            f"counted as {rd['counted_redemptions']}")  # fmt: skip
    if "expired" in r:
        for brand, series in r["expired"]["series"].items():
            # Every live code is claimed, none once they are gone, and stats always answer.
            wrong = {k: series[k]["outcomes"] for k in ("claims", "stats") if set(series[k]["outcomes"]) != {"OK"}}
            if "OK" in series["no_codes_left"]["outcomes"]:
                wrong["no_codes_left"] = series["no_codes_left"]["outcomes"]
            if wrong:
                problems.append(f"expired {brand}: unexpected outcomes {wrong}")
    if "floods" in r:
        f = r["floods"]
        refused = {k: f[k]["outcomes"] for k in ("baseline", "flood") if set(f[k]["outcomes"]) != {"OK"}}
        if refused:
            problems.append(f"floods: legitimate claims refused {refused}")
    return problems
