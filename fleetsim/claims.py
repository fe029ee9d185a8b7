"""The reproduction document, computed from a suite's run directories alone: per
experiment, each policy's measures as mean and spread (sample standard deviation) over
seeds, the papers' claims beside what fleetsim measured with a verdict, fairness per
device class, and a figure of accuracy against round."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fleetsim.compare import rows_of  # noqa: E402
from fleetsim.metrics import RunData, load_run, write_atomic  # noqa: E402
from fleetsim.paper import Experiment, Suite, load_durations  # noqa: E402

WIDTH_METHODS = ("heterofl", "fedrolex", "feddropout")
# measure, column title, digits
MEASURES = (("initial_accuracy", "pretrained accuracy", 4),
            ("final_accuracy", "final accuracy", 4),
            ("accuracy_at_common_time", "accuracy at common time", 4),
            ("peak_mem_mean_mb", "peak memory MB (mean)", 1), ("mb_up", "MB up", 1),
            ("tflops", "TFLOPs", 2), ("contributed_share", "contributed share", 2),
            ("oom", "OOM", 1))
Rows = dict[int, dict[str, dict[str, Any]]]  # seed -> policy -> compare row
REDUCED_NOTE = ["**The reduced suite**: every run is cut to CI size (see `reduced` in the "
                "suite file), so these numbers check the pipeline, not the papers' claims.", ""]


@dataclass(frozen=True)
class Stat:
    mean: float
    spread: float  # sample standard deviation over seeds (0 with one seed)

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), spread)

    def text(self, digits: int) -> str:
        return f"{self.mean:.{digits}f} ± {self.spread:.{digits}f}"


@dataclass(frozen=True)
class ClaimCheck:
    claim: str  # what the paper says
    measured: str  # what fleetsim measured (mean ± spread over seeds)
    verdict: str


def load_rows(out_dir: Path, exp: Experiment, seeds: Sequence[int]) -> tuple[Rows, dict[
        int, dict[str, RunData]]]:
    """Each seed's compare rows (accuracy at the seed's common simulated time) and runs."""
    rows: Rows = {}
    runs: dict[int, dict[str, RunData]] = {}
    for seed in seeds:
        runs[seed] = {p: load_run(out_dir / exp.name / p / f"seed{seed}", p)
                      for p in exp.policies}
        rows[seed] = {row["policy"]: {**row, "initial_accuracy":
                                      runs[seed][row["policy"]].summary["initial_accuracy"]}
                      for row in rows_of(list(runs[seed].values()))}
    return rows, runs


def policy_stats(rows: Rows, policies: Sequence[str]) -> dict[str, dict[str, Stat]]:
    return {p: {m: Stat.of([float(rows[s][p][m] or 0.0) for s in rows]) for m, _, _ in MEASURES}
            for p in policies}


def _paired(rows: Rows, value: Callable[[dict[str, dict[str, Any]]], float]) -> Stat:
    return Stat.of([value(by_policy) for by_policy in rows.values()])


def _best_by_mean(rows: Rows, candidates: Sequence[str]) -> str:
    return max(candidates, key=lambda p: statistics.fmean(rows[s][p]["final_accuracy"]
                                                           for s in rows))


def _gain_verdict(gain: Stat, enough: float) -> str:
    if gain.mean - gain.spread <= 0:
        return "no"
    return "agrees" if gain.mean >= enough else "same direction, smaller"


def check_lora_memory(rows: Rows) -> ClaimCheck:
    ratio = _paired(rows, lambda by: by["lora"]["peak_mem_mean_mb"]
                    / max(by["caff"]["peak_mem_mean_mb"], 1e-9))
    agrees = ratio.mean + ratio.spread >= 2.0 and ratio.mean - ratio.spread <= 3.0
    return ClaimCheck("LoRA needs 2-3x the peak memory of CAFF", f"{ratio.text(2)}x "
                      "(mean peak of the devices that contributed)",
                      "agrees" if agrees else "no")


def _gain_over_best(rows: Rows, policy: str, rivals: Sequence[str]) -> tuple[Stat, str]:
    """`policy`'s final accuracy minus the best rival's (best by mean over seeds), in
    points, paired per seed; and that rival's name."""
    best = _best_by_mean(rows, rivals)
    return _paired(rows, lambda by: 100 * (by[policy]["final_accuracy"]
                                           - by[best]["final_accuracy"])), best


def check_caff_accuracy(rows: Rows) -> ClaimCheck:
    gain, best = _gain_over_best(rows, "caff",
                                 [p for p in next(iter(rows.values())) if p != "caff"])
    return ClaimCheck("CAFF +6.1 points over the best baseline under memory constraints",
                      f"{gain.text(2)} points over {best}", _gain_verdict(gain, 6.1 / 2))


def check_upload_parity(rows: Rows) -> ClaimCheck:
    gap = _paired(rows, lambda by: 100 * (by["caff"]["final_accuracy"]
                                          - by["lora"]["final_accuracy"]))
    on_par = abs(gap.mean) <= max(1.0, 2 * gap.spread)
    return ClaimCheck("under limited upload CAFF is on par with LoRA",
                      f"CAFF - LoRA {gap.text(2)} points", "agrees" if on_par else "no")


def check_slt_ahead(rows: Rows) -> ClaimCheck:
    gain, best = _gain_over_best(rows, "slt", [p for p in WIDTH_METHODS
                                               if p in next(iter(rows.values()))])
    return ClaimCheck("SLT far ahead of the width-reduced methods (up to +52.4 points)",
                      f"{gain.text(2)} points over {best}", _gain_verdict(gain, 10.0))


CHECKS: Mapping[str, Callable[[Rows], ClaimCheck]] = {
    "lora_memory": check_lora_memory, "caff_accuracy": check_caff_accuracy,
    "upload_parity": check_upload_parity, "slt_ahead": check_slt_ahead}


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
    band of one spread."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for p in policies:
        curves = [[(0, run[p].summary["initial_accuracy"])]  # the pretrained model
                  + [(r["round"] + 1, r["accuracy"]) for r in run[p].rounds
                     if r["accuracy"] is not None] for run in runs.values()]
        xs = [x for x, _ in curves[0]]
        stats = [Stat.of([c[i][1] for c in curves]) for i in range(len(xs))]
        means = [s.mean for s in stats]
        ax.plot(xs, means, marker=".", label=p)
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


def write_document(suite: Suite, out_dir: Path, doc: Path, command: str,
                   reduced: bool = False) -> list[ClaimCheck]:
    """Write the document (and its figures beside it, in figures/); returns the checks."""
    sections, checks = [], []
    wall_s = sum(load_durations(out_dir).values())
    for exp in suite.experiments:
        rows, runs = load_rows(out_dir, exp, suite.seeds)
        exp_checks = [CHECKS[c](rows) for c in exp.claims]
        checks += exp_checks
        figure = doc.parent / "figures" / f"{exp.name}.png"
        plot_accuracy(runs, exp.policies, exp.title, figure)
        sections.append(_section(exp, rows, runs, exp_checks, figure.relative_to(doc.parent)))
    head = [
        "# Results: CAFF, SLT and the baselines, over seeds", "",
        f"Generated by `{command}` from `paper/suite.yaml` (seeds {suite.seeds}); every "
        "number below is computed from the run directories that command writes. Spread is "
        "the sample standard deviation over seeds. Machine: 2 cores, CPU.", "",
        f"The {sum(len(e.policies) for e in suite.experiments) * len(suite.seeds)} runs took "
        f"{wall_s / 60:.0f} minutes of wall time in all (`fleetsim paper` runs them one after "
        "another).", "",
        *(REDUCED_NOTE if reduced else []),
        f"Experiments: {', '.join(e.name for e in suite.experiments)}.", "",
        "## The papers' claims against fleetsim's measurements", "",
        *claim_table(checks), ""]
    write_atomic(doc, "\n".join(head + [line for s in sections for line in s]) + "\n")
    return checks


def claim_table(checks: Sequence[ClaimCheck]) -> list[str]:
    return ["| claim | fleetsim measured | agrees? |", "|---|---|---|",
            *[f"| {c.claim} | {c.measured} | {c.verdict} |" for c in checks]]


def _section(exp: Experiment, rows: Rows, runs: Mapping[int, Mapping[str, RunData]],
             checks: Sequence[ClaimCheck], figure: Path) -> list[str]:
    stats = policy_stats(rows, exp.policies)
    overrides = " ".join(f"--set {k}={v}" for k, v in exp.set.items())
    lines = [f"## {exp.title}", "",
             f"`{exp.scenario}` {overrides}".rstrip() + f", policies {', '.join(exp.policies)}.",
             "", "| policy | " + " | ".join(title for _, title, _ in MEASURES) + " |",
             "|---|" + "---|" * len(MEASURES)]
    for p in exp.policies:
        lines.append(f"| {p} | " + " | ".join(stats[p][m].text(d) for m, _, d in MEASURES)
                     + " |")
    if checks:
        lines += ["", *claim_table(checks)]
    if exp.fairness:
        lines += ["", "Fairness per device class:", "", *fairness_lines(runs, exp.policies)]
    return lines + ["", f"![{exp.title}]({figure})", ""]
