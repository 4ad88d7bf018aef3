"""The PNG: claims/s over time per load phase, and the latency distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _phases(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The closed-loop load phases the run has, each with its per-second series and latency sample."""
    phases: list[tuple[str, dict[str, Any]]] = []
    if "echo" in results:
        phases.append(("echo baseline", results["echo"]))
    for c in results.get("workers_compare", []):
        phases.append((f"ClaimCode, workers={c['workers']}", c))
    if "decay" in results:
        phases.append(("fresh brand", results["decay"]["fresh"]))
        phases.append((f"after {results['decay']['piled_up_claims']:,} claims", results["decay"]["after"]))
    if "watch" in results:
        watch = results["watch"]
        phases.append(("no watchers", watch["without_watchers"]))
        phases.append((f"{watch['few_watchers_events']['watchers']} watchers", watch["with_few_watchers"]))
        phases.append((f"{watch['with_watchers_events']['watchers']} watchers", watch["with_watchers"]))
    if "webhooks" in results:
        phases.append(("one webhook", results["webhooks"]["with_webhook"]))
    if "relay" in results:
        phases.append(("NATS relay on", results["relay"]["with_relay"]))
    return phases


def chart(results: dict[str, Any], path: Path) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(20, 6))
    for label, phase in _phases(results):
        ax1.plot(range(len(phase["per_second"])), phase["per_second"], label=label, marker=".")
    if "pgbench" in results:
        pgb = results["pgbench"]["tps"]
        ax1.axhline(pgb, color="grey", linestyle="--", label=f"pgbench discount_claim_many of 1 {pgb:.0f} tps")
        pgb16 = results["pgbench_batch"]["claims_per_second"]
        ax1.axhline(
            pgb16, color="black", linestyle="--", label=f"pgbench discount_claim_many of 16 {pgb16:.0f} claims/s"
        )
    ax1.set_title("calls/s over time (1 s buckets; warm-up included)")
    ax1.set_xlabel("second")
    ax1.set_ylabel("completed calls per second")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)

    for label, phase in _phases(results):
        sample = sorted(phase["latency_sample_ms"])
        if sample:
            ax2.plot(sample, [i / len(sample) for i in range(len(sample))], label=label)
    ax2.set_xscale("log")
    ax2.axvline(40, color="red", linestyle=":", label="p99 target 40 ms")
    ax2.axhline(0.99, color="grey", linestyle=":")
    ax2.set_title("per-call latency, cumulative distribution")
    ax2.set_xlabel("ms (log)")
    ax2.set_ylabel("fraction of calls")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)

    watch = results.get("watch")
    for label, events in (
        ()
        if watch is None
        else (
            (f"{watch['with_watchers_events']['watchers']} watchers, closed loop", watch["with_watchers_events"]),
            *(
                (f"{paced['events']['watchers']} watchers, {paced['rate']:.0f} claims/s", paced["events"])
                for paced in watch["paced"].values()
            ),
            (f"{watch['few_watchers_events']['watchers']} watchers, closed loop", watch["few_watchers_events"]),
        )
    ):
        sample = sorted(events["latency_sample_ms"])
        if sample:
            ax3.plot(sample, [i / len(sample) for i in range(len(sample))], label=label)
    ax3.set_xscale("log")
    ax3.axvline(5, color="orange", linestyle=":", label="p50 target 5 ms")
    ax3.axvline(25, color="red", linestyle=":", label="p99 target 25 ms")
    ax3.set_title("claim -> WatchClaims event latency (claimed_at to receipt)")
    ax3.set_xlabel("ms (log)")
    ax3.set_ylabel("fraction of events")
    if ax3.get_legend_handles_labels()[0]:
        ax3.legend(fontsize=8)
    ax3.grid(alpha=0.3)

    machine = results["machine"]
    fig.suptitle(
        f"discount service benchmark ({results['profile']['name']}, {results['started_utc']}): "
        f"{machine['cpus']} x {machine['cpu_model']}, {machine['postgres']}, commit {machine['git_commit']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
