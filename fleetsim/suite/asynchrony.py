"""Synchronous against asynchronous (FedBuff) rounds on the same fleet: simulated time
and device updates to reach fixed accuracies, over seeds; writes docs/results-async.md.

    python -m fleetsim.suite.asynchrony          # runs what is missing, then writes

Each experiment is a committed scenario run as written (synchronous) and with
`selection.mode=async`, its server steps set so that both modes may apply the same
number of updates (rounds x devices per round = steps x buffer size). The targets are
fixed here, before any run: accuracies a from-scratch gpt-2x64 passes on its way to its
plateau (about 0.28 on this data).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetsim import PROJECT_ROOT
from fleetsim.api import RunResult, load_run, run
from fleetsim.config.scenario import load_scenario
from fleetsim.suite.stats import Interval

EXPERIMENTS = {"stragglers": "scenarios/async/stragglers.yaml",
               "churn": "scenarios/async/churn.yaml"}
SEEDS = (0, 1, 2)
TARGETS = (0.25, 0.27)
MODES = ("sync", "async")
# what the FedBuff paper (Nguyen et al., AISTATS 2022) reports, for comparison
PAPER = ("The AISTATS 2022 abstract reports FedBuff 3.3x more efficient than synchronous "
         "FL and up to 2.5x more efficient than asynchronous FL (FedAsync); its arXiv "
         "version, up to 3.8x faster than FedAvgM. Here `sync / async` above 1 means "
         "FedBuff needed less (time or updates) than synchronous rounds.")


def settings(path: Path, mode: str, seed: int) -> dict[str, str]:
    scenario = load_scenario(path)
    extra = {"seed": str(seed), "selection.mode": mode}
    if mode == "async":
        updates = scenario.rounds * scenario.selection.devices_per_round
        extra["rounds"] = str(updates // scenario.selection.fedbuff.buffer_size)
    return extra


def play(out: Path, jobs_backend: str) -> dict[tuple[str, str], list[RunResult]]:
    """Every (experiment, mode, seed) run, reusing those already finished in `out`."""
    results: dict[tuple[str, str], list[RunResult]] = {}
    for name, file in EXPERIMENTS.items():
        for mode in MODES:
            for seed in SEEDS:
                folder = out / name / mode / f"seed{seed}"
                if not (folder / "summary.json").is_file():
                    run(PROJECT_ROOT / file, out=folder, progress="none",
                        settings={**settings(PROJECT_ROOT / file, mode, seed),
                                  "workers.backend": jobs_backend})
                results.setdefault((name, mode), []).append(load_run(folder))
    return results


def reached(result: RunResult, target: float) -> tuple[float, int] | None:
    """(simulated seconds, updates applied) when accuracy first reached `target`."""
    updates = 0
    for r in result.rounds:
        updates += r["completed"] if r["aggregated"] else 0
        if r["accuracy"] is not None and r["accuracy"] >= target:
            return r["sim_time_s"], updates
    return None


def interval(values: Sequence[float | None], digits: int) -> str:
    known = [float(v) for v in values if v is not None]
    if len(known) < len(values):
        return f"not reached in {len(values) - len(known)} of {len(values)} seeds"
    return Interval.of(known).text(digits)


def contributions(results: Sequence[RunResult]) -> str:
    """Each class's share of the updates applied, over the seeds."""
    count = Counter(d["device_class"] for r in results for d in r.devices
                    if d["status"] == "ok")
    total = sum(count.values())
    return ", ".join(f"{c} {n / total:.0%}" for c, n in sorted(count.items()))


def document(results: dict[tuple[str, str], list[RunResult]]) -> str:
    lines = ["# Synchronous and asynchronous (FedBuff) rounds", "",
             "Written by `python -m fleetsim.suite.asynchrony` (`make async-results`) from "
             f"the runs of {', '.join(f'`{f}`' for f in EXPERIMENTS.values())}, "
             f"seeds {', '.join(map(str, SEEDS))}; mean [95% t interval] over seeds. "
             "Simulated time is the clock's, not the machine's.", ""]
    for name in EXPERIMENTS:
        sync, fedbuff = results[(name, "sync")], results[(name, "async")]
        fb = load_scenario(fedbuff[0].dir / "scenario.yaml").selection.fedbuff
        lines += [f"## {name}", "",
                  f"FedBuff: {fb.concurrency} training at once, a step every "
                  f"{fb.buffer_size} arrivals, staleness weight {fb.staleness.kind} "
                  f"(a = {fb.staleness.a}).", "",
                  "| measure | synchronous | asynchronous | sync / async |",
                  "|---|---|---|---|"]
        for target in TARGETS:
            for what, index in (("simulated s", 0), ("updates", 1)):
                s, a = ([hit[index] if (hit := reached(r, target)) else None for r in runs]
                        for runs in (sync, fedbuff))
                ratio = [x / y for x, y in zip(s, a, strict=True) if x is not None
                         and y is not None] if None not in s + a else [None]
                lines.append(f"| {what} to accuracy {target} | {interval(s, 0)} "
                             f"| {interval(a, 0)} | {interval(ratio, 2)} |")
        lines += [row(name, "final accuracy", sync, fedbuff, "final_accuracy", 4),
                  row(name, "simulated s in all", sync, fedbuff, "sim_time_s", 0),
                  f"| mean staleness of applied updates | 0 | "
                  f"{interval([mean_staleness(r) for r in fedbuff], 2)} | |",
                  f"| updates applied, by class | {contributions(sync)} | "
                  f"{contributions(fedbuff)} | |", ""]
    lines += ["## What the paper reports", "", PAPER, ""]
    return "\n".join(lines)


def row(name: str, label: str, sync: Sequence[RunResult], fedbuff: Sequence[RunResult],
        key: str, digits: int) -> str:
    values = [[r.summary[key] for r in runs] for runs in (sync, fedbuff)]
    return f"| {label} | {interval(values[0], digits)} | {interval(values[1], digits)} | |"


def mean_staleness(result: RunResult) -> float:
    ages = [d["staleness"] for d in result.devices if d["status"] == "ok"]
    return sum(ages) / len(ages)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetsim.suite.asynchrony")
    parser.add_argument("--out", default="runs/async", help="run directories")
    parser.add_argument("--doc", default="docs/results-async.md")
    parser.add_argument("--backend", default="local", choices=("local", "ray"))
    args: Any = parser.parse_args(argv)
    results = play(Path(args.out), args.backend)
    Path(args.doc).write_text(document(results))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
