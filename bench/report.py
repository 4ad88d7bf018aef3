"""`python -m bench.report RESULT.json`: the target table of a run as Markdown (for the docs)."""

from __future__ import annotations

import json
import sys


def markdown(results: dict) -> str:  # type: ignore[type-arg]
    lines = ["| what | measured | same-run baseline | ratio | target | verdict |", "|---|---:|---:|---:|---|---|"]
    for t in results["targets"]:
        ratio = f"{t['ratio']:.2f}" if t["ratio"] is not None else ""
        verdict = "n/a" if t["ok"] is None else ("**pass**" if t["ok"] else "**miss**")
        lines.append(f"| {t['what'].strip()} | {t['value']} | {t['baseline']} | {ratio} | {t['target']} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)))
