"""The reproduction document, computed from a suite's run directories alone: per
experiment, where it starts, its upper bound and headroom, each policy's measures as mean
and spread (sample standard deviation) over seeds, the papers' claims against their named
rivals with a verdict (`verdicts`), fairness per device class, a figure of accuracy
against round, and (`findings`) gap shares against a small model, CAFF's architecture
choice, a plan-level memory comparison of CAFF and LoRA and the tuned settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fleetsim.suite.findings import (  # noqa: E402
    caff_lines,
    gap_lines,
    memory_lines,
    run_time_lines,
    tuning_lines,
)
from fleetsim.suite.paper import UPPER_BOUND, Experiment, Suite  # noqa: E402
from fleetsim.suite.stats import Stat  # noqa: E402
from fleetsim.suite.verdicts import RULES as RULES  # noqa: E402  (re-exported)
from fleetsim.suite.verdicts import (  # noqa: E402
    Bound,
    ClaimCheck,
    Evidence,
    Rows,
    check,
    rules_text,
)
from fleetsim.views.compare import rows_of  # noqa: E402
from fleetsim.views.metrics import RunData, load_run, write_atomic  # noqa: E402

# measure, column title, digits
MEASURES = (("initial_accuracy", "pretrained accuracy", 4),
            ("final_accuracy", "final accuracy", 4),
            ("accuracy_at_common_time", "accuracy at common time", 4),
            ("peak_mem_mean_mb", "peak memory MB (mean)", 1), ("mb_up", "MB up", 1),
            ("tflops", "TFLOPs", 2), ("contributed_share", "contributed share", 2),
            ("oom", "OOM", 1))
REDUCED_NOTE = ["**The reduced suite**: every run is cut to CI size (see `reduced` in the "
                "suite file), so these numbers check the pipeline, not the papers' claims.", ""]


def load_rows(out_dir: Path, exp: Experiment, seeds: Sequence[int]) -> tuple[Rows, dict[
        int, dict[str, RunData]]]:
    """Each seed's compare rows (accuracy at the seed's common simulated time) and runs;
    rows add initial_accuracy and narrow (contributions from a width-reduced sub-model)."""
    rows: Rows = {}
    runs: dict[int, dict[str, RunData]] = {}
    for seed in seeds:
        runs[seed] = {p: load_run(out_dir / exp.name / p / f"seed{seed}", p)
                      for p in exp.policies}
        rows[seed] = {row["policy"]: {**row, **_extra(runs[seed][row["policy"]])}
                      for row in rows_of(list(runs[seed].values()))}
    return rows, runs


def _extra(run: RunData) -> dict[str, Any]:
    return {"initial_accuracy": run.summary["initial_accuracy"],
            "narrow": sum(d["status"] == "ok" and ";slices=" in d["plan"]
                          for d in run.devices)}


def load_upper_bound(out_dir: Path, exp: Experiment, seeds: Sequence[int]
                     ) -> dict[int, RunData]:
    """The upper bound runs by seed (none when the experiment has no upper bound)."""
    if not exp.upper_bound:
        return {}
    return {s: load_run(out_dir / exp.name / UPPER_BOUND / f"seed{s}", UPPER_BOUND)
            for s in seeds}


def policy_stats(rows: Rows, policies: Sequence[str]) -> dict[str, dict[str, Stat]]:
    return {p: {m: Stat.of([float(rows[s][p][m] or 0.0) for s in rows]) for m, _, _ in MEASURES}
            for p in policies}


def fairness_lines(runs: Mapping[int, Mapping[str, RunData]], policies: Sequence[str]
                   ) -> list[str]:
    """Per policy and class, over seeds: share of the selected that contributed, blocks
    their updates trained, the final model's accuracy on the class's own test windows."""
    lines = ["| policy | class | contributed share of selected | blocks trained | "
             "accuracy on own data |", "|---|---|---|---|---|"]
    for p in policies:
        classes = [run[p].summary["fairness"]["classes"] for run in runs.values()]
        for name in sorted(classes[0]):
            cells = [Stat.of([c[name][key] or 0.0 for c in classes]).text(digits)
                     for key, digits in (("contributed_share_of_selected", 2),
                                         ("blocks_trained_mean", 2), ("accuracy", 4))]
            lines.append(f"| {p} | {name} | " + " | ".join(cells) + " |")
    return lines


def plot_accuracy(runs: Mapping[int, Mapping[str, RunData]], policies: Sequence[str],
                  title: str, path: Path) -> None:
    """Accuracy against round per policy (round 0: before training): mean over seeds, a
    band of one spread; the upper bound, if among `policies`, dashed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for p in policies:
        curves = [[(0, run[p].summary["initial_accuracy"])]  # the pretrained model
                  + [(r["round"] + 1, r["accuracy"]) for r in run[p].rounds
                     if r["accuracy"] is not None] for run in runs.values()]
        xs = [x for x, _ in curves[0]]
        stats = [Stat.of([c[i][1] for c in curves]) for i in range(len(xs))]
        means = [s.mean for s in stats]
        bound = p == UPPER_BOUND
        ax.plot(xs, means, marker=".", label=p, linestyle="--" if bound else "-",
                color="black" if bound else None)
        ax.fill_between(xs, [m - s.spread for m, s in zip(means, stats, strict=True)],
                        [m + s.spread for m, s in zip(means, stats, strict=True)], alpha=0.15)
    ax.set(title=title, xlabel="round", ylabel="next-char accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass(frozen=True)
class ExperimentResult:
    """One experiment's runs as loaded, its upper bound and its claims' checks."""

    exp: Experiment
    rows: Rows
    runs: dict[int, dict[str, RunData]]  # seed -> label -> run, the upper bound included
    bound: Bound | None
    checks: list[ClaimCheck]


def experiment_result(suite: Suite, exp: Experiment, out_dir: Path) -> ExperimentResult:
    """Load the experiment's runs under every seed and check its claims."""
    rows, runs = load_rows(out_dir, exp, suite.seeds)
    upper = load_upper_bound(out_dir, exp, suite.seeds)
    bound = Bound.of(upper) if upper else None
    for seed, run in upper.items():
        runs[seed] = {**runs[seed], UPPER_BOUND: run}
    evidence = Evidence(rows, bound.headroom if bound else None, suite.min_headroom_points)
    return ExperimentResult(exp, rows, runs, bound,
                            [check(spec, evidence, exp.name) for spec in exp.claims])


def write_document(suite: Suite, out_dir: Path, doc: Path, command: str,
                   reduced: bool = False, measure: bool = True) -> list[ClaimCheck]:
    """Write the document (and its figures beside it, in figures/); returns the checks.
    `measure`: the plan-level memory table also measures each plan where a step is cheap
    (`predicted.memory_plans`)."""
    results = [experiment_result(suite, exp, out_dir) for exp in suite.experiments]
    sections = []
    for r in results:
        figure = doc.parent / "figures" / f"{r.exp.name}.png"
        plot_accuracy(r.runs, [*r.exp.policies, *([UPPER_BOUND] if r.bound else [])],
                      r.exp.title, figure)
        sections.append(_section(r, figure.relative_to(doc.parent), _findings(r, out_dir, measure)))
    checks = [c for r in results for c in r.checks]
    bounds = {r.exp.name: r.bound for r in results if r.bound}
    head = [
        "# Results: CAFF, SLT and the baselines, over seeds", "",
        f"Generated by `{command}` from `paper/suite.yaml` (seeds {suite.seeds}); every "
        "number below is computed from the run directories that command writes (or from "
        "the cost model on the scenarios those runs wrote). Tables of measures give mean ± "
        "spread, the sample standard deviation over seeds; headroom, claims and gap shares "
        "give mean [95% interval], a Student t interval over seeds (of paired per-seed "
        "values for claims). Machine: 2 cores, CPU.", "",
        *run_time_lines(out_dir, suite), "", *(REDUCED_NOTE if reduced else []),
        f"Experiments: {', '.join(e.name for e in suite.experiments)}.", "",
        "## Headroom: the start and the upper bound", "",
        *headroom_table(suite.experiments, bounds), "",
        "## The papers' claims against fleetsim's measurements", "",
        *rules_text(suite.min_headroom_points), "", *claim_table(checks), ""]
    write_atomic(doc, "\n".join(head + [line for s in sections for line in s]) + "\n")
    return checks


def _findings(r: ExperimentResult, out_dir: Path, measure: bool) -> list[str]:
    """The experiment's tables beyond the claims (`findings`): gap shares (with a small
    model named and an upper bound), CAFF's choice (with caff), plan-level memory (with
    the lora_memory claim) and the tuned settings."""
    exp, exp_dir, lines = r.exp, out_dir / r.exp.name, []
    if exp.gap and r.bound:
        lines += [*gap_lines(exp.gap, r.runs, exp.policies), ""]
    if "caff" in exp.policies:
        lines += [*caff_lines(exp_dir, r.runs), ""]
    for spec, c in zip(exp.claims, r.checks, strict=True):
        if spec.claim == "lora_memory":
            lines += [*memory_lines(exp_dir, next(iter(r.runs)),
                                    f"{c.measured} ({c.verdict})", measure), ""]
    labels = [*exp.policies, *([UPPER_BOUND] if exp.upper_bound else [])]
    return lines + [*tuning_lines(out_dir, exp.name, labels), ""]


def headroom_table(experiments: Sequence[Experiment], bounds: Mapping[str, Bound]
                   ) -> list[str]:
    """Per experiment with an upper bound: its start, the upper bound (FedAvg, every
    device unconstrained) and the headroom, each mean [95% interval]."""
    lines = ["The upper bound is FedAvg on the same fleet with every device unconstrained "
             "(memory, FLOP rate and links lifted, no deadline; availability kept); the "
             "headroom is its final accuracy minus the start, per seed.", "",
             "| experiment | start | start accuracy | upper bound final accuracy | "
             "headroom, points |", "|---|---|---|---|---|"]
    for exp in experiments:
        b = bounds.get(exp.name)
        cells = ([b.start.text(4), b.final.text(4), b.headroom.text(2)] if b
                 else ["-", "no upper bound run", "-"])
        lines.append(f"| {exp.name} | {exp.start} | " + " | ".join(cells) + " |")
    return lines


def claim_table(checks: Sequence[ClaimCheck]) -> list[str]:
    return ["| claim | experiment | rivals | fleetsim measured, mean [95% interval] | "
            "verdict | why |", "|---|---|---|---|---|---|",
            *[f"| {c.claim} | {c.experiment} | {', '.join(c.rivals)} | {c.measured} | "
              f"{c.verdict} | {c.reason} |" for c in checks]]


def _section(r: ExperimentResult, figure: Path, findings: Sequence[str]) -> list[str]:
    """The experiment's heading, start, measures, claims, fairness, `findings` (lines)
    and figure."""
    exp, bound, checks = r.exp, r.bound, r.checks
    stats = policy_stats(r.rows, exp.policies)
    overrides = " ".join(f"--set {k}={v}" for k, v in exp.set.items())
    start = (f"Start: {exp.start}, accuracy {bound.start.text(4)}; upper bound (FedAvg, "
             f"every device unconstrained): final accuracy {bound.final.text(4)}; headroom "
             f"{bound.headroom.text(2)} points." if bound
             else f"Start: {exp.start}; no upper bound run.")
    lines = [f"## {exp.title}", "",
             f"`{exp.scenario}` {overrides}".rstrip() + f", policies {', '.join(exp.policies)}.",
             "", start, "",
             "| policy | " + " | ".join(title for _, title, _ in MEASURES) + " |",
             "|---|" + "---|" * len(MEASURES)]
    for p in exp.policies:
        lines.append(f"| {p} | " + " | ".join(stats[p][m].text(d) for m, _, d in MEASURES)
                     + " |")
    if checks:
        lines += ["", *claim_table(checks)]
    if exp.fairness:
        lines += ["", "Fairness per device class:", "", *fairness_lines(r.runs, exp.policies)]
    return lines + ["", *findings, f"![{exp.title}]({figure})", ""]
