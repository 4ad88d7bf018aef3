"""What every part of the harness uses: paths, the log line, percentiles, the child-process entry point."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from discount_service.eventloop import run as run_loop

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent  # the venv's scripts: `discount`


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def child_main(run: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Entry point of a harness child process: config JSON in argv[1], result JSON to config["out"]."""
    config = json.loads(sys.argv[1])
    result = run_loop(run(config))
    with open(config["out"], "w") as f:
        json.dump(result, f)
