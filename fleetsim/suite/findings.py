"""The reproduction document's tables beyond the claims, each computed from the suite's
run directories (or, through `predicted`, from the cost model on the scenario a run
wrote): gap shares against a small model, CAFF's architecture choice under both
objectives, a plan-level memory comparison of CAFF and LoRA, the tuned settings, and
what the runs took. Each function returns markdown lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetsim.suite.paper import UPPER_BOUND, GapSpec, Suite, load_durations, load_sittings
from fleetsim.suite.predicted import (
    caff_choices,
    memory_plans,
    ratio_text,
    run_scenario_of,
    scores_row,
)
from fleetsim.suite.stats import Interval, Stat
from fleetsim.suite.tuning import TUNING_FILE, label, load_tuning
from fleetsim.views.metrics import RunData
from fleetsim.zoo.model import ARCHITECTURES

Runs = Mapping[int, Mapping[str, RunData]]  # seed -> run label -> run


def gap_shares(gap: GapSpec, runs: Runs, policies: Sequence[str]
               ) -> dict[str, list[float]] | int:
    """Per policy but the small model, its share of the gap per seed, in seed order:
    (final - small's final) / (upper bound's final - small's final). An int instead:
    the first seed whose upper bound does not exceed the small model (no gap to share)."""
    final = {label: [runs[s][label].summary["final_accuracy"] for s in runs]
             for label in [*policies, UPPER_BOUND]}
    widths = [u - m for u, m in zip(final[UPPER_BOUND], final[gap.small], strict=True)]
    for seed, width in zip(runs, widths, strict=True):
        if width <= 0:
            return seed
    return {p: [(a - m) / w for a, m, w in zip(final[p], final[gap.small], widths,
                                                strict=True)]
            for p in policies if p != gap.small}


def gap_lines(gap: GapSpec, runs: Runs, policies: Sequence[str]) -> list[str]:
    """The gap shares table: per method, its final accuracy (mean ± spread), its share
    per seed and the share's mean [95% interval], methods in the order of that mean."""
    small = [runs[s][gap.small].summary["final_accuracy"] for s in runs]
    upper = [runs[s][UPPER_BOUND].summary["final_accuracy"] for s in runs]
    gap_points = Interval.of([100 * (u - m) for u, m in zip(upper, small, strict=True)])
    lines = [f"Gap shares. The small model is `{gap.small}`"
             + (f": {gap.about}" if gap.about else "") + f" (final accuracy "
             f"{Stat.of(small).text(4)}); the gap, upper bound minus small model, is "
             f"{gap_points.text()} points. Per seed a method's share is (method - small) "
             "/ (upper bound - small) in final accuracy: 0 is the small model, 1 the upper "
             "bound.", ""]
    shares = gap_shares(gap, runs, policies)
    if isinstance(shares, int):
        return [*lines, f"No shares: in seed {shares} the upper bound does not exceed the "
                "small model."]
    means = {p: Interval.of(v) for p, v in shares.items()}
    order = sorted(means, key=lambda p: -means[p].mean)
    lines += ["| order | method | final accuracy | share per seed | share, mean [95% "
              "interval] |", "|---|---|---|---|---|"]
    for rank, p in enumerate(order, 1):
        final = Stat.of([runs[s][p].summary["final_accuracy"] for s in runs]).text(4)
        lines.append(f"| {rank} | {p} | {final} | "
                     + ", ".join(f"{v:.2f}" for v in shares[p]) + f" | {means[p].text()} |")
    return [*lines, "", f"Order by mean share: {' > '.join(order)}."]


def caff_lines(exp_dir: Path, runs: Runs) -> list[str]:
    """CAFF's pick from the whole pretrained family under both objectives on the caff
    run's fleet at time 0 (first seed's scenario), beside the model its runs used."""
    seed = next(iter(runs))
    scenario = run_scenario_of(exp_dir / "caff" / f"seed{seed}")
    used = {s: runs[s]["caff"].summary["model"] for s in runs}
    pinned = scenario.policy.params.get("models")
    lines = ["CAFF's architecture choice from the pretrained family on this fleet at time 0 "
             f"(the caff run's scenario, seed {seed}): a candidate's score is the mean over "
             "devices of the blocks a device can train (`count`) or of that number over the "
             "model's blocks (`fraction`), -1 for a device that cannot train even the head; "
             "ties go to the larger model.", "",
             "| objective | " + " | ".join(ARCHITECTURES) + " | choice |",
             "|---|" + "---|" * (len(ARCHITECTURES) + 1),
             *(scores_row(c, ARCHITECTURES) for c in caff_choices(scenario)), ""]
    same = len(set(used.values())) == 1
    ran = (f"{used[seed]} in every seed" if same
           else ", ".join(f"{m} (seed {s})" for s, m in used.items()))
    objective = scenario.policy.params.get("objective", "count")
    why = (f"its candidates pinned to {', '.join(pinned)}" if pinned
           else "candidates: the whole family")
    return [*lines, f"The caff runs used {ran} (objective `{objective}`, {why})."]


def memory_lines(exp_dir: Path, seed: int, run_ratio: str, measure: bool = True
                 ) -> list[str]:
    """The plan-level memory comparison on the lora run's model and settings (first seed's
    scenario): CAFF's last:1..last:L and full, LoRA at its rank and at rank 1; LoRA adapts
    every block, so its own depth is L. `run_ratio`: what the claim measured. `measure`:
    also measure each plan where that is cheap (`memory_plans`)."""
    plans = memory_plans(run_scenario_of(exp_dir / "lora" / f"seed{seed}"), measure)
    depth, loras = plans.depth, plans.lora_specs
    how = (" and measured over two real steps on random tokens"
           if plans.plans[0].measured_mb is not None else " (not measured)")
    lines = [f"Plan-level memory, on {plans.model} at batch {plans.batch_size}, "
             f"{plans.optimizer}, {plans.seq_len} characters (the lora run's settings, seed "
             f"{seed}); LoRA on {', '.join(plans.targets)}. Peak MB predicted by the cost "
             f"model{how}.", "",
             "| plan | blocks with gradients | predicted peak MB | measured peak MB | "
             + " | ".join(f"{lo} / plan, predicted" for lo in loras) + " |",
             "|---|---|---|---|" + "---|" * len(loras)]
    for p in plans.plans:
        ratios = [f"{plans.get(lo).predicted_mb / p.predicted_mb:.2f}" if p.spec not in
                  loras else "-" for lo in loras]
        measured = "-" if p.measured_mb is None else f"{p.measured_mb:.1f}"
        lines.append(f"| {p.spec} | {p.depth} | {p.predicted_mb:.1f} | {measured} | "
                     + " | ".join(ratios) + " |")
    same = "; ".join(f"{lo} / last:{depth}: {ratio_text(plans, lo, f'last:{depth}')}"
                     for lo in loras)
    shallower = {1: "", 2: " CAFF's last:1 is for reference."}.get(
        depth, f" CAFF's last:1..last:{depth - 1} are for reference.")
    return [*lines, "", f"At the same trained depth ({depth} blocks): {same}.{shallower} "
            f"Run level, as the claim measures it: {run_ratio}."]


def tuning_lines(out_dir: Path, exp_name: str, labels: Sequence[str]) -> list[str]:
    """Per run label, the values the suite chose (`load_tuning`), the choice's validation
    accuracy, the grid and each setting tried with its validation accuracy, as far as
    tuning.json holds them; a label without a grid is `not tuned`."""
    chosen = load_tuning(out_dir, exp_name)
    if not chosen:
        return ["Tuning: no grid applied to this experiment; every run used its scenario's "
                "settings."]
    tuned = json.loads((out_dir / exp_name / TUNING_FILE).read_text())["policies"]
    lines = ["Tuned settings: each grid ran on the suite's first seed, validation split; the "
             "best final validation accuracy was chosen and used for every seed. A choice at "
             "the edge of a numeric grid of three or more values is marked: a better value "
             "may lie beyond it.", "",
             "| run | chosen | its validation accuracy | grid | each setting: validation "
             "accuracy |", "|---|---|---|---|---|"]
    for name in labels:
        if name not in chosen:
            lines.append(f"| {name} | not tuned (the scenario's settings) | - | - | - |")
            continue
        record = tuned[name]
        choice = ", ".join(f"{key}={value}" for key, value in chosen[name].items())
        edge = at_edge(record.get("grid", {}), chosen[name])
        choice += f" (at the grid's edge: {', '.join(edge)})" if edge else ""
        grid = "; ".join(f"{key}: {', '.join(map(str, values))}"
                         for key, values in record.get("grid", {}).items()) or "-"
        trials = "; ".join(f"{label(t['set'])}: "
                           f"{_accuracy(t['validation_accuracy'])}"
                           for t in record.get("trials", [])) or "-"
        lines.append(f"| {name} | {choice} | "
                     f"{_accuracy(record.get('choice_validation_accuracy'))} | {grid} | "
                     f"{trials} |")
    return lines


def at_edge(grid: Mapping[str, Sequence[Any]], choice: Mapping[str, Any]) -> list[str]:
    """The keys whose chosen value is the smallest or largest of a numeric grid of three
    or more values."""
    edge = []
    for key, values in grid.items():
        try:
            numbers = sorted(float(v) for v in values)
            picked = float(choice[key])
        except (KeyError, TypeError, ValueError):
            continue
        if len(numbers) >= 3 and picked in (numbers[0], numbers[-1]):
            edge.append(key)
    return edge


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_time_lines(out_dir: Path, suite: Suite) -> list[str]:
    """The suite's wall time, summed over its sittings (sittings.json), and what its runs
    and tuning trials took one by one (durations.json, start-up included)."""
    durations = load_durations(out_dir)
    keys = [f"{e.name}/{run}/seed{s}" for e in suite.experiments
            for run in [*e.policies, *([UPPER_BOUND] * e.upper_bound)] for s in suite.seeds]
    run_s = [durations[k] for k in keys if k in durations]
    trial_s = [v for k, v in durations.items()
               if any(k.startswith(f"{e.name}/tuning/") for e in suite.experiments)]
    timed = "" if len(run_s) == len(keys) else f" ({len(run_s)} of them timed)"
    trials = (f"; its {len(trial_s)} tuning trial{'s' * (len(trial_s) > 1)} took "
              f"{_minutes(sum(trial_s))} minutes" if trial_s else "")
    sittings = load_sittings(out_dir).values()
    jobs = sorted({s["jobs"] for s in sittings})
    wall = (f"Wall time: {_minutes(sum(s['wall_s'] for s in sittings))} minutes in "
            f"{len(sittings)} sitting{'s' * (len(sittings) > 1)}, "
            f"{' or '.join(map(str, jobs))} run{'s' * (jobs[-1] > 1)} at once "
            "(`sittings.json`)." if sittings else "Wall time: not recorded.")
    return [f"{wall} The {len(keys)} runs took {_minutes(sum(run_s))} minutes of run time "
            f"summed over runs{timed}{trials}: each run's own wall time, start-up included "
            "(`durations.json`)."]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}" if seconds < 600 else f"{seconds / 60:.0f}"
