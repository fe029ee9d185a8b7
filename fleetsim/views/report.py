"""Reports of finished (or killed) runs: a terminal summary and one figure of six
panels: accuracy against round and against simulated time, peak memory per class
against its cap, bytes, participation per class and accuracy per class (fairness).
`fleetsim compare` draws the same figure with one series per policy. Reads only the
files a run wrote."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console, Group  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from fleetsim.types import MIB
from fleetsim.views.metrics import RunData, load_run  # noqa: E402

MB = 1e6  # bytes sent, in MB (memory is in MiB, as device budgets are)


def class_rows(run: RunData) -> list[dict[str, Any]]:
    """Per class: what its devices did, what memory they used against their caps. A class
    of the summary's fairness section none of whose devices was selected is a row too
    (nothing selected: no share and no cap to show)."""
    fair = run.summary.get("fairness", {}).get("classes", {})
    rows = []
    for name in sorted(set(run.classes) | set(fair)):
        records = run.of_class(name)
        ok = [d for d in records if d["status"] == "ok"]
        rows.append({
            "class": name, "selected": len(records), "ok": len(ok),
            "ok_share": len(ok) / len(records) if records else None,
            "oom": sum(d["status"] == "oom" for d in records),
            "offline": sum(d["status"] == "offline" for d in records),
            "peak_mb": max((d["peak_mem_bytes"] for d in ok), default=0) / MIB,
            "cap_mb": (float(np.mean([d["mem_cap_bytes"] for d in records])) / MIB
                       if records else None),
            "mb_up": sum(d["bytes_up"] for d in records) / MB,
            "blocks": fair.get(name, {}).get("blocks_trained_mean"),
            "accuracy": fair.get(name, {}).get("accuracy"),
        })
    return rows


def terminal_summary(run: RunData) -> Group:
    s = run.summary
    last = run.rounds[-1] if run.rounds else {}
    head = Text(f"{s.get('scenario', run.label)}: policy {s.get('policy', '?')}, model "
                f"{s.get('model', '?')}, {len(run.rounds)} rounds"
                + ("" if s else " (unfinished)") + f", simulated "
                f"{last.get('sim_time_s', 0):,.0f} s; accuracy {_f(s.get('initial_accuracy'))}"
                f" -> {_f(s.get('final_accuracy'))}" + asynchrony(run))
    table = Table("class", "selected", "ok", "ok share", "oom", "offline", "peak MB", "cap MB",
                  "MB up", "blocks", "accuracy", box=None)
    for row in class_rows(run):
        table.add_row(row["class"], str(row["selected"]), str(row["ok"]),
                      _f(row["ok_share"], 2), str(row["oom"]), str(row["offline"]),
                      f"{row['peak_mb']:.1f}", _f(row["cap_mb"], 1), f"{row['mb_up']:.1f}",
                      _f(row["blocks"], 2), _f(row["accuracy"]))
    return Group(head, table)


def asynchrony(run: RunData) -> str:
    """For an asynchronous run: its server steps' staleness and the updates dropped."""
    ages = [d["staleness"] for d in run.devices if d.get("staleness") is not None
            and d["status"] == "ok"]
    if "staleness" not in (run.devices[0] if run.devices else {}):
        return ""
    return (f"\nasynchronous: {len(ages)} updates applied, staleness mean "
            f"{_f(float(np.mean(ages)) if ages else None, 2)} (max {max(ages, default=0)}), "
            f"{sum(d['status'] == 'stale' for d in run.devices)} dropped as stale")


def plot_runs(runs: Sequence[RunData], path: Path) -> Path:
    """The six panels for one or several runs, saved as a PNG."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    for run in runs:
        evaluated = [r for r in run.rounds if r["accuracy"] is not None]
        start = run.summary.get("initial_accuracy")
        xs = [0] + [r["round"] + 1 for r in evaluated]
        ts = [0.0] + [r["sim_time_s"] for r in evaluated]
        ys = [start] + [r["accuracy"] for r in evaluated]
        if start is None:
            xs, ts, ys = xs[1:], ts[1:], ys[1:]
        axes[0, 0].plot(xs, ys, marker=".", label=run.label)
        axes[0, 1].plot(ts, ys, marker=".", label=run.label)
        rounds = [r["round"] + 1 for r in run.rounds]
        line = axes[1, 0].plot(rounds, np.cumsum([r["bytes_up"] / MB for r in run.rounds]),
                               label=f"{run.label} up")
        axes[1, 0].plot(rounds, np.cumsum([r["bytes_down"] / MB for r in run.rounds]),
                        linestyle="--", color=line[0].get_color(), label=f"{run.label} down")
    _labels(axes[0, 0], "accuracy against round", "round", "next-char accuracy")
    _labels(axes[0, 1], "accuracy against simulated time", "simulated s", "next-char accuracy")
    _labels(axes[1, 0], "bytes (cumulative)", "round", "MB")
    rows = {run.label: {row["class"]: row for row in class_rows(run)} for run in runs}
    _class_bars(axes[0, 2], rows, "peak_mb", "peak memory per class (bars) and cap (line)",
                "MB", caps=True)
    _class_bars(axes[1, 1], rows, "ok_share", "participation: share of selected that "
                "contributed", "share")
    _class_bars(axes[1, 2], rows, "accuracy", "fairness: accuracy on each class's own data",
                "accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _class_bars(ax: Any, by_run: dict[str, dict[str, dict[str, Any]]], key: str, title: str,
                unit: str, caps: bool = False) -> None:
    """Grouped bars of `key` per class, one bar per run (class_rows by run and class)."""
    classes = sorted({c for rows in by_run.values() for c in rows})
    width = 0.8 / max(len(by_run), 1)
    cap_of: dict[str, float] = defaultdict(float)
    for i, (label, rows) in enumerate(by_run.items()):
        values = [rows[c][key] if c in rows and rows[c][key] is not None else 0 for c in classes]
        ax.bar(np.arange(len(classes)) + i * width - 0.4 + width / 2, values, width,
               label=label)
        for c in rows:
            cap_of[c] = max(cap_of[c], rows[c]["cap_mb"] or 0.0)
    if caps:  # budgets and peaks can be orders of magnitude apart
        for j, c in enumerate(classes):
            if cap_of[c] > 0:  # none for a class never selected
                ax.hlines(cap_of[c], j - 0.45, j + 0.45, colors="black")
        ax.set_yscale("log")
    ax.set_xticks(np.arange(len(classes)), classes, rotation=20, fontsize=8)
    _labels(ax, title, "", unit)


def _labels(ax: Any, title: str, x: str, y: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(run_dir: Path, console: Console | None = None) -> Path:
    """Print the summary of the run in `run_dir`, write its CSV files and its figure."""
    from fleetsim.views.export import export_csv

    run = load_run(run_dir)
    (console or Console(width=120)).print(terminal_summary(run))
    export_csv(run_dir)
    return plot_runs([run], run_dir / "report.png")
