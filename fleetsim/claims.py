"""The reproduction document, computed from a suite's run directories alone: per
experiment, where it starts, its upper bound and headroom, each policy's measures as mean
and spread (sample standard deviation) over seeds, the papers' claims against their named
rivals with a verdict, fairness per device class, and a figure of accuracy against round.

Verdicts come from a 95% Student t interval (n-1 degrees of freedom) over per-seed
paired values. A claim is `not testable` with fewer than 3 seeds, when its mechanism was
not exercised in every seed, or, for a claim about an accuracy gap, when the headroom
(the upper bound's final accuracy minus the start, per seed) has an interval whose lower
bound is below the threshold: then the gap could not have shown. Otherwise thresholds
are shares of the headroom's mean (`judge_gain`, `judge_parity`; LoRA's memory ratio has
the paper's fixed bounds, `judge_ratio`). Against several rivals the weakest verdict
stands.
"""

from __future__ import annotations

import math
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
from fleetsim.paper import (  # noqa: E402
    ACCURACY_CLAIMS,
    SUBJECT,
    UPPER_BOUND,
    ClaimSpec,
    Experiment,
    Suite,
    load_durations,
)

# measure, column title, digits
MEASURES = (("initial_accuracy", "pretrained accuracy", 4),
            ("final_accuracy", "final accuracy", 4),
            ("accuracy_at_common_time", "accuracy at common time", 4),
            ("peak_mem_mean_mb", "peak memory MB (mean)", 1), ("mb_up", "MB up", 1),
            ("tflops", "TFLOPs", 2), ("contributed_share", "contributed share", 2),
            ("oom", "OOM", 1))
Row = Mapping[str, Any]  # a compare row, with initial_accuracy and narrow (load_rows)
Rows = dict[int, dict[str, dict[str, Any]]]  # seed -> policy -> row
REDUCED_NOTE = ["**The reduced suite**: every run is cut to CI size (see `reduced` in the "
                "suite file), so these numbers check the pipeline, not the papers' claims.", ""]
MIN_SEEDS = 3
# 97.5% quantiles of Student's t for 1..30 degrees of freedom (two-sided 95% intervals)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
         2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# The share of the headroom a claim needs: a gain that agrees, the half-width of parity.
DEFAULT_SHARE = {"caff_accuracy": 0.1, "upload_parity": 0.1, "slt_ahead": 0.25}
LORA_RATIO = (2.0, 3.0)  # the paper: LoRA needs 2-3x CAFF's peak memory
AGREES, SMALLER, NO, NOT_TESTABLE = "agrees", "same direction, smaller", "no", "not testable"
WORSE = {AGREES: 0, SMALLER: 1, NO: 2}
Judgement = tuple[str, str]  # verdict, reason


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom; above 30, the
    value at 30 (conservative: 4% above the normal 1.96)."""
    return T_975[min(df, len(T_975)) - 1]


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
class Interval:
    """The mean of `n` values and its 95% Student t interval (unbounded for one value)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        mean = statistics.fmean(values)
        half = (t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
                if len(values) > 1 else math.inf)
        return cls(mean, mean - half, mean + half, len(values))

    def text(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Bound:
    """An experiment's start and upper bound, over seeds."""

    start: Interval  # accuracy before training (the upper bound run's round 0)
    final: Interval  # the upper bound's final accuracy
    headroom: Interval  # final minus start, in points, per seed

    @classmethod
    def of(cls, upper: Mapping[int, RunData]) -> Bound:
        summaries = [run.summary for run in upper.values()]
        return cls(Interval.of([s["initial_accuracy"] for s in summaries]),
                   Interval.of([s["final_accuracy"] for s in summaries]),
                   Interval.of([100 * (s["final_accuracy"] - s["initial_accuracy"])
                                for s in summaries]))


@dataclass(frozen=True)
class Evidence:
    """What an experiment's claims are judged on."""

    rows: Rows
    headroom: Interval | None  # points; None without an upper bound run
    min_headroom_points: float  # the suite's threshold (a claim may override it)


@dataclass(frozen=True)
class ClaimCheck:
    claim: str  # what the paper says
    experiment: str
    rivals: tuple[str, ...]
    measured: str  # against the rival that decided the verdict: mean [95% interval]
    verdict: str  # agrees, same direction, smaller, no, not testable
    reason: str
    interval: Interval


def judge_gain(gain: Interval, headroom_points: float, share: float) -> Judgement:
    """A gain (points) agrees when its interval lies above 0 and its mean reaches `share`
    of the headroom; same direction, smaller when above 0 but short of that; else no."""
    need = share * headroom_points
    if gain.low <= 0:
        return NO, f"the interval reaches {gain.low:.2f} <= 0"
    if gain.mean >= need:
        return AGREES, f"above 0, mean >= {share:g} x headroom = {need:.2f}"
    return SMALLER, f"above 0, mean < {share:g} x headroom = {need:.2f}"


def judge_parity(gap: Interval, headroom_points: float, share: float) -> Judgement:
    """Parity agrees when the whole interval of the gap (points) lies within +-`share` of
    the headroom; else no."""
    band = share * headroom_points
    if -band <= gap.low and gap.high <= band:
        return AGREES, f"within +-{band:.2f} ({share:g} x headroom)"
    return NO, f"not within +-{band:.2f} ({share:g} x headroom)"


def judge_ratio(ratio: Interval, headroom_points: float, share: float) -> Judgement:
    """LoRA's memory over CAFF's agrees when its interval overlaps [2, 3]; same direction,
    smaller when it lies within (1, 2); else no. The headroom plays no part."""
    low, high = LORA_RATIO
    if ratio.low <= high and ratio.high >= low:
        return AGREES, f"overlaps [{low:g}, {high:g}]"
    if ratio.low > 1 and ratio.high < low:
        return SMALLER, f"above 1, below {low:g}"
    return NO, f"outside [{low:g}, {high:g}] and not within (1, {low:g})"


def _points(subject: Row, rival: Row) -> float:
    return 100 * (subject["final_accuracy"] - rival["final_accuracy"])


def _memory_ratio(subject: Row, rival: Row) -> float:
    return rival["peak_mem_mean_mb"] / max(subject["peak_mem_mean_mb"], 1e-9)


@dataclass(frozen=True)
class Rule:
    paper: str  # what the paper says
    value: Callable[[Row, Row], float]  # one seed's paired value: subject's row, a rival's
    measured: str  # the value's label, with {subject} and {rival}
    unit: str
    judge: Callable[[Interval, float, float], Judgement]  # interval, headroom, share
    badness: Callable[[Interval], float]  # among equal verdicts, the rival to report
    exercised: Callable[[ClaimSpec, Mapping[str, Row]], bool]  # the mechanism, one seed
    mechanism: str  # what was missing when it was not exercised


def _rival_left_out(spec: ClaimSpec, by: Mapping[str, Row]) -> bool:
    return any(by[r]["skipped"] + by[r]["oom"] > 0 for r in spec.rivals)


def _both_contributed(spec: ClaimSpec, by: Mapping[str, Row]) -> bool:
    return all(by[p]["contributed_share"] > 0 for p in (SUBJECT[spec.claim], *spec.rivals))


def _deadline_bound(spec: ClaimSpec, by: Mapping[str, Row]) -> bool:
    return any(row["stragglers"] > 0 for row in by.values())


def _rival_narrow(spec: ClaimSpec, by: Mapping[str, Row]) -> bool:
    return any(by[r]["narrow"] > 0 for r in spec.rivals)


RULES: Mapping[str, Rule] = {
    "caff_accuracy": Rule(
        "CAFF +6.1 points over the best baseline under memory constraints", _points,
        "{subject} - {rival}", "points", judge_gain, lambda iv: -iv.mean, _rival_left_out,
        "no named rival left a device out (skipped or OOM)"),
    "lora_memory": Rule(
        "LoRA needs 2-3x the peak memory of CAFF", _memory_ratio,
        "{rival} / {subject} mean peak memory of contributing devices", "x", judge_ratio,
        lambda iv: 0.0, _both_contributed, "not both CAFF and LoRA had contributing devices"),
    "upload_parity": Rule(
        "under limited upload CAFF is on par with LoRA", _points, "{subject} - {rival}",
        "points", judge_parity, lambda iv: abs(iv.mean), _deadline_bound,
        "the upload limit did not bind (no run had stragglers)"),
    "slt_ahead": Rule(
        "SLT far ahead of the width-reduced methods (up to +52.4 points)", _points,
        "{subject} - {rival}", "points", judge_gain, lambda iv: -iv.mean, _rival_narrow,
        "no named rival trained a sub-model narrower than the full model"),
}


def check(spec: ClaimSpec, ev: Evidence, experiment: str = "") -> ClaimCheck:
    """The claim's verdict against each named rival (paired per seed); the weakest stands
    and is reported (among equals, the rival with the worst value)."""
    rule, subject = RULES[spec.claim], SUBJECT[spec.claim]
    values = {r: Interval.of([rule.value(ev.rows[s][subject], ev.rows[s][r])
                              for s in sorted(ev.rows)]) for r in spec.rivals}
    blockers = untestable(spec, ev)
    share = spec.share or DEFAULT_SHARE.get(spec.claim, 0.0)
    headroom = ev.headroom.mean if ev.headroom else 0.0
    judged = {r: (NOT_TESTABLE, "; ".join(blockers)) if blockers
              else rule.judge(values[r], headroom, share) for r in spec.rivals}
    rival = max(spec.rivals, key=lambda r: (WORSE.get(judged[r][0], 0),
                                            rule.badness(values[r])))
    verdict, reason = judged[rival]
    measured = (f"{rule.measured.format(subject=subject, rival=rival)}: "
                f"{values[rival].text()} {rule.unit}")
    return ClaimCheck(rule.paper, experiment, tuple(spec.rivals), measured, verdict, reason,
                      values[rival])


def untestable(spec: ClaimSpec, ev: Evidence) -> list[str]:
    """Why the claim cannot be judged (empty when it can): too few seeds, its mechanism
    not exercised in some seed, or (accuracy claims) too little headroom."""
    reasons = []
    if len(ev.rows) < MIN_SEEDS:
        reasons.append(f"{len(ev.rows)} seeds < {MIN_SEEDS}")
    rule = RULES[spec.claim]
    missing = [s for s in sorted(ev.rows) if not rule.exercised(spec, ev.rows[s])]
    if missing:
        reasons.append(f"{rule.mechanism} in seed{'s' * (len(missing) > 1)} "
                       f"{', '.join(map(str, missing))}")
    if spec.claim in ACCURACY_CLAIMS:
        threshold = spec.min_headroom_points or ev.min_headroom_points
        if ev.headroom is None:
            reasons.append("no upper bound run, so no headroom")
        elif not ev.headroom.low >= threshold:
            reasons.append(f"headroom {ev.headroom.text()} points: lower bound < "
                           f"{threshold:g}")
    return reasons


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


def write_document(suite: Suite, out_dir: Path, doc: Path, command: str,
                   reduced: bool = False) -> list[ClaimCheck]:
    """Write the document (and its figures beside it, in figures/); returns the checks."""
    sections, checks, bounds = [], [], {}
    wall_s = sum(load_durations(out_dir).values())
    for exp in suite.experiments:
        rows, runs = load_rows(out_dir, exp, suite.seeds)
        upper = load_upper_bound(out_dir, exp, suite.seeds)
        bound = Bound.of(upper) if upper else None
        if bound:
            bounds[exp.name] = bound
            for seed, run in upper.items():
                runs[seed] = {**runs[seed], UPPER_BOUND: run}
        evidence = Evidence(rows, bound.headroom if bound else None, suite.min_headroom_points)
        exp_checks = [check(spec, evidence, exp.name) for spec in exp.claims]
        checks += exp_checks
        figure = doc.parent / "figures" / f"{exp.name}.png"
        plot_accuracy(runs, [*exp.policies, *([UPPER_BOUND] if bound else [])], exp.title,
                      figure)
        sections.append(_section(exp, rows, runs, bound, exp_checks,
                                 figure.relative_to(doc.parent)))
    count = sum(len(e.policies) + e.upper_bound for e in suite.experiments) * len(suite.seeds)
    head = [
        "# Results: CAFF, SLT and the baselines, over seeds", "",
        f"Generated by `{command}` from `paper/suite.yaml` (seeds {suite.seeds}); every "
        "number below is computed from the run directories that command writes. Tables of "
        "measures give mean ± spread, the sample standard deviation over seeds; headroom "
        "and claims give mean [95% interval], a Student t interval over seeds (of paired "
        "per-seed values for claims). Machine: 2 cores, CPU.", "",
        f"The {count} runs took {wall_s / 60:.0f} minutes of wall time in all.", "",
        *(REDUCED_NOTE if reduced else []),
        f"Experiments: {', '.join(e.name for e in suite.experiments)}.", "",
        "## Headroom: the start and the upper bound", "",
        *headroom_table(suite.experiments, bounds), "",
        "## The papers' claims against fleetsim's measurements", "",
        *rules_text(suite.min_headroom_points), "", *claim_table(checks), ""]
    write_atomic(doc, "\n".join(head + [line for s in sections for line in s]) + "\n")
    return checks


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


def rules_text(min_headroom_points: float) -> list[str]:
    shares = ", ".join(f"{claim} {share:g}" for claim, share in DEFAULT_SHARE.items())
    return [
        f"A claim is **not testable** with fewer than {MIN_SEEDS} seeds, when its mechanism "
        "was not exercised in every seed (caff_accuracy: a named rival left a device out; "
        "lora_memory: CAFF and LoRA both had contributing devices; upload_parity: some run "
        "had stragglers; slt_ahead: a named rival trained a narrower sub-model), or, for an "
        "accuracy claim, when the headroom's lower bound is below "
        f"{min_headroom_points:g} points (unless the claim sets its own). Otherwise a gain "
        "**agrees** when its interval lies above 0 and its mean reaches the claim's share "
        "of the headroom, is **same direction, smaller** when above 0 but short of it, and "
        "**no** when the interval reaches 0; parity agrees when the interval lies within "
        "± the share of the headroom; LoRA's memory ratio agrees when its interval overlaps "
        f"[{LORA_RATIO[0]:g}, {LORA_RATIO[1]:g}], same direction, smaller within (1, "
        f"{LORA_RATIO[0]:g}). Default shares: {shares}. Against several rivals the "
        "weakest verdict stands, and its rival is shown."]


def claim_table(checks: Sequence[ClaimCheck]) -> list[str]:
    return ["| claim | experiment | rivals | fleetsim measured, mean [95% interval] | "
            "verdict | why |", "|---|---|---|---|---|---|",
            *[f"| {c.claim} | {c.experiment} | {', '.join(c.rivals)} | {c.measured} | "
              f"{c.verdict} | {c.reason} |" for c in checks]]


def _section(exp: Experiment, rows: Rows, runs: Mapping[int, Mapping[str, RunData]],
             bound: Bound | None, checks: Sequence[ClaimCheck], figure: Path) -> list[str]:
    stats = policy_stats(rows, exp.policies)
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
        lines += ["", "Fairness per device class:", "", *fairness_lines(runs, exp.policies)]
    return lines + ["", f"![{exp.title}]({figure})", ""]
