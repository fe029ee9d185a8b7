"""`fleetsim compare`: the same scenario (fleet, data, seed) under several policies, one
table. Each policy's run is a normal run directory under OUT/<policy>/; the table is
computed from those files, so it can be recomputed from them at any time."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetsim.config.scenario import PolicyConfig, Scenario
from fleetsim.types import MIB
from fleetsim.views.metrics import RunData, load_run, write_atomic

COLUMNS = ("policy", "model", "final_accuracy", "accuracy_at_common_time", "common_time_s",
           "peak_mem_max_mb", "peak_mem_mean_mb", "mem_cap_mean_mb", "mb_up", "mb_down",
           "tflops", "contributed_share", "oom", "stragglers", "skipped")


def with_policy(scenario: Scenario, name: str, params: dict[str, Any] | None = None
                ) -> Scenario:
    """The scenario under another policy with `params` (default: the scenario's own
    params when it is the same policy, else none)."""
    if params is None:
        params = dict(scenario.policy.params) if name == scenario.policy.name else {}
    return scenario.model_copy(update={"policy": PolicyConfig(name=name, params=params),
                                       "name": f"{scenario.name}-{name}"})


def comparison_rows(run_dirs: Sequence[tuple[str, Path]]) -> list[dict[str, Any]]:
    """One row per policy, from its run directory."""
    return rows_of([load_run(d, name) for name, d in run_dirs])


def rows_of(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per run (labelled by policy)."""
    # the shortest run's end, among runs in which simulated time passed at all
    ends = [run.rounds[-1]["sim_time_s"] for run in runs]
    common = min((t for t in ends if t > 0), default=0.0)
    return [_row(run.label, run.summary, run.rounds, run.devices, common) for run in runs]


def _row(name: str, summary: dict[str, Any], rounds: list[dict[str, Any]],
         devices: list[dict[str, Any]], common_s: float) -> dict[str, Any]:
    ok = [d for d in devices if d["status"] == "ok"]
    peaks = [d["peak_mem_bytes"] for d in ok]
    reached = [r["accuracy"] for r in rounds
               if r["accuracy"] is not None and r["sim_time_s"] <= common_s]
    return {
        "policy": name, "model": summary["model"],
        "final_accuracy": summary["final_accuracy"],
        "accuracy_at_common_time": reached[-1] if reached else summary["initial_accuracy"],
        "common_time_s": common_s,
        "peak_mem_max_mb": max(peaks, default=0) / MIB,
        "peak_mem_mean_mb": sum(peaks) / len(peaks) / MIB if peaks else 0.0,
        "mem_cap_mean_mb": sum(d["mem_cap_bytes"] for d in ok) / len(ok) / MIB if ok else 0.0,
        "mb_up": summary["bytes_up"] / 1e6, "mb_down": summary["bytes_down"] / 1e6,
        "tflops": sum(d["flops"] for d in ok) / 1e12,
        "contributed_share": len(ok) / len(devices) if devices else 0.0,
        "oom": sum(d["status"] == "oom" for d in devices),
        "stragglers": sum(d["status"] == "straggler" for d in devices),
        "skipped": sum(d["status"] == "skipped" for d in devices),
    }


def write_comparison(out_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "comparison.csv", buffer.getvalue())
    write_atomic(out_dir / "comparison.md", markdown_table(rows))


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)
