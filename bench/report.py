"""What a run leaves behind, and `python -m bench.report RESULT.json [--write DIR]`.

A run writes every number it measured (latency samples, pgbench output, EXPLAINs) to the raw JSON in
an ignored folder, and to the results folder only what is worth keeping: a compact JSON summary
(the targets, the machine, each phase's figures without samples), the same as Markdown, and the
chart. `python -m bench.report` prints the Markdown of a raw or summary JSON; with `--write DIR`
it writes the summary files there (how a raw result is summarised after the fact).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench.common import ROOT
from bench.database import PG_SETTINGS
from bench.targets import verdict
from discount_dev.postgres import PG_BIN

# Bulky raw material, left out of the summary: samples, time series, tool output, query plans.
_RAW_ONLY = {"per_second", "latency_sample_ms", "script", "output", "connections", "table", "text"}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    pg_version = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "psycopg": psycopg.__version__,
        "postgres": pg_version.strip(),
        "postgres_settings": PG_SETTINGS,
        "load_average_at_start": os.getloadavg(),
        "git_commit": commit.strip(),
        "note": "load generator, server, Postgres and other engineers' test runs all share these cores",
    }


def name_of(results: dict[str, Any]) -> str:
    """`bench-<profile>-<start>`, with the phases' names for a run of some of them."""
    only = "".join(f"-{name}" for name in results.get("only", []))
    return f"bench-{results['profile']['name']}{only}-{results['started_utc']}"


def strip_private(value: Any) -> Any:
    """Without the keys that start with `_` (in-memory material such as every call's latency)."""
    if isinstance(value, dict):
        return {k: strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [strip_private(v) for v in value]
    return value


def summarize(value: Any) -> Any:
    """The raw results without samples, tool output and plans, floats to two decimals, no nulls:
    the same keys, a hundredth of the size."""
    if isinstance(value, dict):
        return {
            k: summarize(v)
            for k, v in value.items()
            if v is not None and k not in _RAW_ONLY and not k.startswith(("_", "explain"))
        }
    if isinstance(value, list):
        return [summarize(v) for v in value]
    if isinstance(value, float):
        return round(value, 2)
    return value


def markdown(results: dict[str, Any]) -> str:
    """The machine, the profile and the target table of a run (raw or summary)."""
    m, p = results["machine"], results["profile"]
    started = datetime.strptime(results["started_utc"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    settings = ", ".join(f"{k}={v}" for k, v in m["postgres_settings"].items())
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    lines = [
        f"# {name_of(results)}",
        "",
        f"`python -m bench` ({p['name']} profile), started {started:%Y-%m-%d %H:%M} UTC at commit "
        f"{m['git_commit']}. Every figure is in the JSON file of the same name; the chart is the PNG.",
        "",
        "## Machine",
        "",
        f"- {m['cpus']} x {m['cpu_model']}, {m['memory']} memory, Linux {m['kernel']}",
        f"- Python {m['python']}, grpcio {m['grpcio']}, psycopg {m['psycopg']}",
        f"- {m['postgres']}, private cluster: {settings}",
        f"- load average at the start: {load}; {m['note']}",
        "",
        "## Profile",
        "",
        f"{p['duration']:g} s measured per load phase after {p['warmup']:g} s of warm-up, {p['concurrency']} calls "
        f"in flight, {p['rounds']} alternated round(s); {p['brand_codes']:,} codes per brand, {p['million']:,} "
        f"claims piled up for the decay phase, {p['generate']:,} codes generated, {p['watchers']} watchers, "
        f"{p['idle_streams']:,} idle streams, paced rates {', '.join(f'{r:g}' for r in p['paced_rates'])} claims/s, "
        f"worker processes compared: {', '.join(map(str, p['workers']))}.",
        "",
        "Phases (seconds each): "
        + (", ".join(f"{k} {v:.0f}" for k, v in results.get("phase_seconds", {}).items()) or "all of them")
        + ".",
        "",
        "## Targets",
        "",
        "| what | measured | same-run baseline | ratio | target | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for t in results["targets"]:
        ratio = f"{t['ratio']:.2f}" if t.get("ratio") is not None else ""
        shown = verdict(t.get("ok")).lower()
        shown = shown if shown == "n/a" else f"**{shown}**"
        lines.append(f"| {t['what'].strip()} | {t['value']} | {t['baseline']} | {ratio} | {t['target']} | {shown} |")
    lines += ["", "## Correctness under load", ""]
    sanity = results.get("sanity") or []
    lines += [f"- {problem}" for problem in sanity] or ["Every check passed (no errors, no repeated users, every "
                                                        "watcher got every event, one LISTEN connection)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _dumps(value: Any, indent: str = "", width: int = 110) -> str:
    """JSON that is short and still reads (and diffs) line by line: an object or list on one line
    when it fits in `width` characters, otherwise one line per nested item and the plain items
    packed side by side."""
    flat = json.dumps(value, default=str)
    if len(indent) + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + " "
    pairs = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    lines: list[str] = []
    packed = ""
    for key, item in pairs:
        prefix = f"{json.dumps(key)}: " if key is not None else ""
        text = prefix + _dumps(item, inner, width - len(prefix))
        if "\n" in text or len(inner) + len(packed) + len(text) + 3 > width:
            if packed:
                lines.append(inner + packed)
            packed = ""
            if "\n" in text:
                lines.append(inner + text)
                continue
        packed = f"{packed}, {text}" if packed else text
    if packed:
        lines.append(inner + packed)
    brackets = "{}" if isinstance(value, dict) else "[]"
    return brackets[0] + "\n" + ",\n".join(lines) + "\n" + indent + brackets[1]


def write_summary(results: dict[str, Any], folder: Path) -> list[Path]:
    """`<name>.json` (the summary) and `<name>.md` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(strip_private(results))
    name = name_of(results)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(_dumps(summary) + "\n")
    md_path.write_text(markdown(summary))
    return [json_path, md_path]


def write_results(results: dict[str, Any], results_dir: Path, raw_dir: Path) -> list[Path]:
    """The raw JSON to `raw_dir`; the summary, its Markdown and the chart to `results_dir`."""
    from bench.chart import chart  # matplotlib is slow to import; only a finished run needs it

    raw_dir.mkdir(parents=True, exist_ok=True)
    name = name_of(results)
    # In one folder (a run of some phases writes both to bench/raw) the summary must not overwrite the raw JSON.
    same = raw_dir.resolve() == results_dir.resolve()
    raw_path = raw_dir / (f"{name}.raw.json" if same else f"{name}.json")
    raw_path.write_text(json.dumps(strip_private(results), indent=1, default=str))
    written = [raw_path, *write_summary(results, results_dir)]
    png_path = results_dir / f"{name}.png"
    chart(results, png_path)
    return [*written, png_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="a raw or summary JSON written by `python -m bench`")
    parser.add_argument("--write", type=Path, metavar="DIR", help="write the summary JSON and Markdown to DIR")
    args = parser.parse_args(argv)
    results = json.loads(args.result.read_text())
    if args.write:
        for path in write_summary(results, args.write):
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    else:
        print(markdown(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
