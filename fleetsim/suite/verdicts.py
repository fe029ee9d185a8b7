"""The verdicts of the papers' claims. Each comes from a 95% Student t interval (n-1
degrees of freedom) over per-seed paired values. A claim is `not testable` with fewer
than 3 seeds, when its mechanism was not exercised in every seed, or, for a claim about
an accuracy gap, when the headroom (the upper bound's final accuracy minus the start,
per seed) has an interval whose lower bound is below the threshold: then the gap could
not have shown. Otherwise thresholds are shares of the headroom's mean (`judge_gain`,
`judge_parity`; LoRA's memory ratio has the paper's fixed bounds, `judge_ratio`).
Against several rivals the weakest verdict stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetsim.suite.paper import ACCURACY_CLAIMS, SUBJECT, ClaimSpec
from fleetsim.suite.stats import Interval
from fleetsim.views.metrics import RunData

Row = Mapping[str, Any]  # a compare row, with initial_accuracy and narrow (claims.load_rows)
Rows = dict[int, dict[str, dict[str, Any]]]  # seed -> policy -> row
MIN_SEEDS = 3
# The share of the headroom a claim needs: a gain that agrees, the half-width of parity.
DEFAULT_SHARE = {"caff_accuracy": 0.1, "upload_parity": 0.1, "slt_ahead": 0.25}
LORA_RATIO = (2.0, 3.0)  # the paper: LoRA needs 2-3x CAFF's peak memory
AGREES, SMALLER, NO, NOT_TESTABLE = "agrees", "same direction, smaller", "no", "not testable"
WORSE = {AGREES: 0, SMALLER: 1, NO: 2}
Judgement = tuple[str, str]  # verdict, reason


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
