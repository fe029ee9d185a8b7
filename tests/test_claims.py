"""Verdicts that can say `not testable`: claims with named rivals, the upper bound run
and its headroom, the verdict rules on hand-built rows (every interval below is computed
by hand in its comment: mean ± t(0.975, n-1) * s / sqrt(n), t = 4.303 for 3 seeds and
12.706 for 2), and the document on a fake suite directory (no simulation). The document's
other tables (gap shares, CAFF's choice, plan-level memory, tuning, run time):
tests/test_findings.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetsim.config.scenario import (
    Scenario,
    device_profiles,
    load_scenario,
    resolve,
    scenario_to_yaml,
)
from fleetsim.device.cost import parse_plan, predict_peak_bytes
from fleetsim.suite.claims import load_rows, write_document
from fleetsim.suite.paper import (
    FREE_DEADLINE_S,
    FREE_MEMORY_MB,
    ClaimSpec,
    load_suite,
    planned_runs,
    unconstrained,
)
from fleetsim.suite.stats import Interval, Stat, t_975
from fleetsim.suite.verdicts import NOT_TESTABLE, Evidence, Rows, check
from fleetsim.types import OptimizerSpec
from fleetsim.zoo.model import ZOO
from tests.conftest import suite_error

ROOT = Path(__file__).resolve().parent.parent
WIDE = Interval(20.0, 19.0, 21.0, 3)  # a headroom of 20 points, clearly above 3
BASE = {"skipped": 0, "oom": 0, "stragglers": 0, "contributed_share": 1.0,
        "peak_mem_mean_mb": 10.0, "narrow": 0}


def rows(final: dict[str, list[float]], **extra: dict[str, Any]) -> Rows:
    """Seed k's row of policy p: final_accuracy final[p][k]; extra[field][p] sets a field
    (a list: per seed)."""
    seeds = range(len(next(iter(final.values()))))
    return {k: {p: {**BASE, "final_accuracy": final[p][k],
                    **{f: v[p][k] if isinstance(v[p], list) else v[p]
                       for f, v in extra.items() if p in v}}
                for p in final} for k in seeds}


def spec(claim: str, rivals: list[str], **kw: Any) -> ClaimSpec:
    return ClaimSpec.model_validate({"claim": claim, "rivals": rivals, **kw})


def test_t_quantiles_and_intervals_by_hand() -> None:
    assert (t_975(1), t_975(2), t_975(30), t_975(200)) == (12.706, 4.303, 2.042, 2.042)
    iv = Interval.of([5.0, 6.0, 7.0])  # s = 1: 6 ± 4.303 / sqrt(3) = 6 ± 2.48434
    assert (iv.mean, iv.low, iv.high, iv.n) == pytest.approx((6.0, 3.51566, 8.48434, 3), abs=1e-5)
    two = Interval.of([1.0, 3.0])  # s = sqrt(2): 2 ± 12.706 * sqrt(2) / sqrt(2)
    assert (two.low, two.high) == pytest.approx((2 - 12.706, 2 + 12.706))
    assert iv.text() == "6.00 [3.52, 8.48]"
    assert Stat.of([1.0, 3.0]).text(1) == "2.0 ± 1.4"  # the tables' spread: s, not t


def test_accuracy_gain_agrees_smaller_or_no() -> None:
    left_out = {"skipped": {"lora": 2}}
    # gains 5, 6, 7 points: [3.52, 8.48] above 0, mean 6 >= 0.1 x 20
    ahead = check(spec("caff_accuracy", ["lora"]), Evidence(rows(
        {"caff": [0.45, 0.46, 0.47], "lora": [0.40, 0.40, 0.40]}, **left_out), WIDE, 3.0))
    assert ahead.verdict == "agrees"
    assert ahead.measured == "caff - lora: 6.00 [3.52, 8.48] points"
    assert ahead.interval.low == pytest.approx(3.51566, abs=1e-5)
    # gains 1, 1.5, 2: 1.5 ± 4.303 * 0.5 / sqrt(3) = [0.258, 2.742], mean 1.5 < 2
    smaller = check(spec("caff_accuracy", ["lora"]), Evidence(rows(
        {"caff": [0.41, 0.415, 0.42], "lora": [0.40, 0.40, 0.40]}, **left_out), WIDE, 3.0))
    assert smaller.verdict == "same direction, smaller"
    assert "0.1 x headroom = 2.00" in smaller.reason
    # the same gains with a share of 0.05 (1 point of the 20) agree
    assert check(spec("caff_accuracy", ["lora"], share=0.05), Evidence(rows(
        {"caff": [0.41, 0.415, 0.42], "lora": [0.40, 0.40, 0.40]}, **left_out), WIDE,
        3.0)).verdict == "agrees"
    # gains 1, 2, 3: 2 ± 2.484 = [-0.48, 4.48] reaches 0
    noisy = check(spec("caff_accuracy", ["lora"]), Evidence(rows(
        {"caff": [0.41, 0.42, 0.43], "lora": [0.40, 0.40, 0.40]}, **left_out), WIDE, 3.0))
    assert noisy.verdict == "no" and "-0.48 <= 0" in noisy.reason


def test_the_weakest_rival_decides() -> None:
    # over fedavg: 10, 11, 12 (agrees); over small_model: 1, 2, 3 ([-0.48, 4.48]: no)
    result = check(spec("slt_ahead", ["fedavg", "small_model"], share=0.1), Evidence(rows(
        {"slt": [0.50, 0.51, 0.52], "fedavg": [0.40, 0.40, 0.40],
         "small_model": [0.49, 0.49, 0.49]}, narrow={"fedavg": 3}), WIDE, 3.0))
    assert result.verdict == "no" and "small_model" in result.measured
    assert result.rivals == ("fedavg", "small_model")


def test_parity_is_relative_to_the_headroom() -> None:
    # caff - lora 0.5, 1, 1.5: 1 ± 4.303 * 0.5 / sqrt(3) = [-0.242, 2.242]
    data = rows({"caff": [0.405, 0.41, 0.415], "lora": [0.40, 0.40, 0.40]},
                stragglers={"fedavg": 4, "caff": 0, "lora": 0})
    data = {k: {**by, "fedavg": {**BASE, "final_accuracy": 0.3, "stragglers": 4}}
            for k, by in data.items()}
    narrow = check(spec("upload_parity", ["lora"]), Evidence(data, WIDE, 3.0))
    assert narrow.verdict == "no"  # band 0.1 x 20 = 2 < 2.242
    broad = check(spec("upload_parity", ["lora"]), Evidence(data, Interval(30, 29, 31, 3), 3.0))
    assert broad.verdict == "agrees" and "+-3.00" in broad.reason  # band 0.1 x 30 = 3


def test_memory_ratio_needs_no_headroom() -> None:
    def ratio(lora_mb: list[float]) -> str:
        return check(spec("lora_memory", ["lora"]), Evidence(rows(
            {"caff": [0.4] * 3, "lora": [0.4] * 3},
            peak_mem_mean_mb={"caff": 10.0, "lora": lora_mb}), None, 3.0)).verdict

    assert ratio([24.0, 25.0, 26.0]) == "agrees"  # 2.5 ± 0.2484: overlaps [2, 3]
    assert ratio([19.0, 20.0, 21.0]) == "agrees"  # [1.75, 2.25]: overlaps, not inside
    assert ratio([14.0, 15.0, 16.0]) == "same direction, smaller"  # [1.25, 1.75]
    assert ratio([9.0, 10.0, 11.0]) == "no"  # [0.75, 1.25]
    assert ratio([34.0, 35.0, 36.0]) == "no"  # [3.25, 3.75]: beyond the paper's 3x


def test_not_testable_with_too_few_seeds() -> None:
    two = check(spec("caff_accuracy", ["lora"]), Evidence(rows(
        {"caff": [0.45, 0.46], "lora": [0.40, 0.40]}, skipped={"lora": 1}), WIDE, 3.0))
    assert two.verdict == NOT_TESTABLE and two.reason == "2 seeds < 3"
    assert two.measured == "caff - lora: 5.50 [-0.85, 11.85] points"  # 5.5 ± 12.706 / 2


def test_not_testable_with_little_headroom() -> None:
    data = rows({"caff": [0.45, 0.46, 0.47], "lora": [0.40, 0.40, 0.40]},
                skipped={"lora": 1})
    # headroom 2, 3, 4 points: 3 ± 2.484 = [0.52, 5.48]; its mean reaches 3, its
    # lower bound does not
    low = Interval(3.0, 0.51566, 5.48434, 3)
    assert Interval.of([2.0, 3.0, 4.0]).low == pytest.approx(low.low, abs=1e-5)
    result = check(spec("caff_accuracy", ["lora"]), Evidence(data, low, 3.0))
    assert result.verdict == NOT_TESTABLE
    assert result.reason == "headroom 3.00 [0.52, 5.48] points: lower bound < 3"
    # a claim may set its own threshold; then the gain (mean 6 >= 0.1 x 3) is judged
    assert check(spec("caff_accuracy", ["lora"], min_headroom_points=0.5),
                 Evidence(data, low, 3.0)).verdict == "agrees"
    assert "no upper bound run" in check(spec("caff_accuracy", ["lora"]),
                                         Evidence(data, None, 3.0)).reason


@pytest.mark.parametrize("claim, rivals, extra, why", [
    ("caff_accuracy", ["lora", "fedavg"], {}, "no named rival left a device out"),
    ("lora_memory", ["lora"], {"contributed_share": {"lora": [0.5, 0.0, 0.5]}},
     "not both CAFF and LoRA had contributing devices in seed 1"),
    ("upload_parity", ["lora"], {}, "the upload limit did not bind"),
    ("slt_ahead", ["lora"], {}, "no named rival trained a sub-model narrower"),
])
def test_not_testable_when_the_mechanism_is_idle(claim: str, rivals: list[str],
                                                 extra: dict[str, Any], why: str) -> None:
    data = rows({"caff": [0.45, 0.46, 0.47], "slt": [0.45, 0.46, 0.47],
                 "lora": [0.40, 0.40, 0.40], "fedavg": [0.40, 0.40, 0.40]},
                **extra)
    result = check(spec(claim, rivals), Evidence(data, WIDE, 3.0))
    assert result.verdict == NOT_TESTABLE and why in result.reason
    if claim == "caff_accuracy":  # the same runs with a left-out device are testable
        data[2]["fedavg"]["oom"] = 1
        data[0]["lora"]["skipped"] = data[1]["lora"]["skipped"] = 1
        assert check(spec(claim, rivals), Evidence(data, WIDE, 3.0)).verdict == "agrees"


SUITE = """
seeds: [0, 1, 2]
reduced: {seeds: [0]}
experiments:
  - name: memory
    title: Memory
    scenario: scenarios/smoke.yaml
    policies: [caff, lora, fedavg]
    upper_bound: true
    claims:
      - {claim: caff_accuracy, rivals: [lora, fedavg]}
      - {claim: lora_memory, rivals: [lora]}
  - name: plain
    title: Plain
    scenario: scenarios/smoke.yaml
    policies: [caff, lora]
"""


@pytest.mark.parametrize("old, new, key, words", [
    ("rivals: [lora, fedavg]", "rivals: [lora, head_only]", "experiments[0].claims[0].rivals",
     "'head_only'"),
    ("rivals: [lora, fedavg]", "rivals: [caff, lora]", "experiments[0].claims[0].rivals",
     "'caff'"),
    ("rivals: [lora, fedavg]", "rivals: []", "experiments[0].claims[0].rivals", "at least 1"),
    ("{claim: caff_accuracy, rivals: [lora, fedavg]}", "caff_accuracy",
     "experiments[0].claims[0]", "dictionary"),
    ("policies: [caff, lora, fedavg]", "policies: [lora, fedavg]",
     "experiments[0].claims[0].claim", "about caff"),
    ("    upper_bound: true\n", "", "experiments[0].upper_bound", "headroom"),
    ("rivals: [lora]}", "rivals: [fedavg]}", "experiments[0].claims[1]", "rivals [lora]"),
    ("rivals: [lora]}", "rivals: [lora], share: 0.2}", "experiments[0].claims[1]", "share"),
])
def test_claims_schema_names_the_key(tmp_path: Path, old: str, new: str, key: str,
                                     words: str) -> None:
    err = suite_error(tmp_path, SUITE, old, new)
    assert err.key == key and words in err.message


def test_unconstrained_lifts_every_budget_and_keeps_the_rest() -> None:
    source = ROOT / "scenarios" / "stress" / "memory_squeeze.yaml"
    squeeze = load_scenario(source)
    free = unconstrained(squeeze)
    assert squeeze.events and squeeze.fleet[1].throttle  # the original is untouched
    assert free.events == [] and all(e.throttle is None for e in free.fleet)
    assert free.selection.deadline_s == FREE_DEADLINE_S
    assert free.selection.devices_per_round == squeeze.selection.devices_per_round
    resolve(free, source)  # still a valid scenario
    for profile in device_profiles(free):
        assert profile.flops_per_s >= 1e15 and profile.uplink_bps >= 1e11
    # memory_of is dropped and its budget lifted; availability is kept
    churn = load_scenario(ROOT / "scenarios" / "stress" / "churn_storm.yaml")
    assert [e.availability for e in unconstrained(churn).fleet] == \
        [e.availability for e in churn.fleet]
    slt = unconstrained(load_scenario(ROOT / "scenarios" / "slt" / "mixed.yaml"))
    assert all(e.memory_of is None for e in slt.fleet)
    # every zoo model's full finetuning fits, at batch 64 with Adam
    for entry in ZOO.values():
        full = parse_plan("full", entry.config, 64, OptimizerSpec("adam"))
        assert predict_peak_bytes(entry.config, full, 127) < FREE_MEMORY_MB * 2**20
    assert {p.memory_mb for p in device_profiles(slt)} == {FREE_MEMORY_MB}


def test_planned_runs_add_the_upper_bound(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    runs = list(planned_runs(load_suite(path), path, tmp_path / "out"))
    assert len(runs) == (3 + 1 + 2) * 3
    bounds = [r for r in runs if r.upper_bound]
    assert [r.out_dir for r in bounds] == [tmp_path / "out" / "memory" / "upper_bound" /
                                           f"seed{s}" for s in (0, 1, 2)]
    assert all(r.policy == "fedavg" and r.label == "upper_bound" for r in bounds)
    assert all(r.scenario.policy.name == "fedavg" and r.scenario.seed == r.seed
               and r.scenario.selection.deadline_s == FREE_DEADLINE_S for r in bounds)
    fedavg = next(r for r in runs if r.policy == "fedavg" and not r.upper_bound)
    assert fedavg.scenario.selection.deadline_s == 600


def fake_run(run_dir: Path, initial: float, final: float, peak_mb: float = 10.0,
             skipped: int = 0, plan: str = "train=head;frozen=",
             scenario: Scenario | None = None) -> None:
    """A finished run directory as the engine writes it, with two device records (the
    second skipped or a straggler when `skipped`) and `scenario` as its scenario.yaml
    (default: the smoke scenario)."""
    run_dir.mkdir(parents=True)
    scenario = scenario or load_scenario(ROOT / "scenarios" / "smoke.yaml")
    (run_dir / "scenario.yaml").write_text(scenario_to_yaml(scenario))
    device = {"device_class": "phone_low", "plan": plan, "status": "ok",
              "peak_mem_bytes": int(peak_mb * 2**20), "mem_cap_bytes": 2**30, "flops": 1e9}
    devices = [device, {**device, "status": {0: "ok", 1: "skipped"}.get(skipped,
                                                                     "straggler")}]
    (run_dir / "devices.jsonl").write_text("".join(json.dumps(d) + "\n" for d in devices))
    (run_dir / "rounds.jsonl").write_text(json.dumps(
        {"round": 0, "sim_time_s": 10.0, "accuracy": final}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(
        {"model": "gpt-2x64", "initial_accuracy": initial, "final_accuracy": final,
         "bytes_up": 1e6, "bytes_down": 1e6}))


def test_rows_count_contributions_from_narrow_sub_models(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    exp = load_suite(path).experiments[1]  # caff and lora
    sliced = "train=block.0,block.1;frozen=;slices=block.0:1h64u,block.1:1h64u"
    fake_run(tmp_path / "plain" / "caff" / "seed0", 0.3, 0.4, plan=sliced, skipped=2)
    fake_run(tmp_path / "plain" / "lora" / "seed0", 0.3, 0.4)
    rows, _ = load_rows(tmp_path, exp, [0])
    assert rows[0]["caff"]["narrow"] == 1  # the straggler's update never counted
    assert rows[0]["lora"]["narrow"] == 0 and rows[0]["caff"]["initial_accuracy"] == 0.3


def test_document_states_headroom_rivals_and_verdicts(tmp_path: Path) -> None:
    path, out, doc = tmp_path / "suite.yaml", tmp_path / "runs", tmp_path / "doc.md"
    path.write_text(SUITE)
    for s in range(3):
        run = out / "memory"
        fake_run(run / "caff" / f"seed{s}", 0.3, 0.40 + s / 100, peak_mb=20.0)
        fake_run(run / "lora" / f"seed{s}", 0.3, 0.35, peak_mb=50.0)
        fake_run(run / "fedavg" / f"seed{s}", 0.3, 0.30, skipped=1)
        fake_run(run / "upper_bound" / f"seed{s}", 0.3, 0.50 + 2 * s / 100)
        fake_run(out / "plain" / "caff" / f"seed{s}", 0.3, 0.31)
        fake_run(out / "plain" / "lora" / f"seed{s}", 0.3, 0.32)
    checks = write_document(load_suite(path), out, doc, "fleetsim paper", measure=False)
    text = doc.read_text()
    assert "The 18 runs took" in text
    # upper bound 0.50, 0.52, 0.54: 0.52 ± 4.303 * 0.02 / sqrt(3) = [0.4703, 0.5697];
    # headroom 20, 22, 24 points: 22 ± 4.969
    assert ("| memory | pretrained | 0.3000 [0.3000, 0.3000] | 0.5200 [0.4703, 0.5697] | "
            "22.00 [17.03, 26.97] |") in text
    assert "| plain | pretrained | - | no upper bound run | - |" in text
    assert "headroom 22.00 [17.03, 26.97] points." in text
    # caff over lora 5, 6, 7 and over fedavg 10, 11, 12: both agree, lora is reported
    row = ("| CAFF +6.1 points over the best baseline under memory constraints | memory | "
           "lora, fedavg | caff - lora: 6.00 [3.52, 8.48] points | agrees | above 0, mean "
           ">= 0.1 x headroom = 2.20 |")
    assert text.count(row) == 2  # in the summary and in the experiment's section
    assert ("| lora / caff mean peak memory of contributing devices: 2.50 [2.50, 2.50] x | "
            "agrees |") in text
    assert [c.verdict for c in checks] == ["agrees", "agrees"]
    assert (tmp_path / "figures" / "memory.png").stat().st_size > 0


def memory_verdict(caff_mb: list[float], lora_mb: list[float],
                   lora_share: list[float] | None = None) -> tuple[str, str, str]:
    """lora_memory on hand-built rows: (verdict, reason, measured)."""
    extra: dict[str, Any] = {"peak_mem_mean_mb": {"caff": caff_mb, "lora": lora_mb}}
    if lora_share is not None:
        extra["contributed_share"] = {"lora": lora_share}
    n = len(caff_mb)
    result = check(spec("lora_memory", ["lora"]), Evidence(rows(
        {"caff": [0.4] * n, "lora": [0.4] * n}, **extra), None, 3.0))
    return result.verdict, result.reason, result.measured


@pytest.mark.parametrize("caff_mb, lora_mb, verdict, words", [
    # ratios 2.9, 3.0, 3.1: 3 ± 4.303 * 0.1 / sqrt(3) = [2.75, 3.25] overlaps [2, 3]
    ([10.0] * 3, [29.0, 30.0, 31.0], "agrees", "3.00 [2.75, 3.25]"),
    # exactly 3 and exactly 2 in every seed: the bounds count as inside
    ([10.0] * 3, [30.0] * 3, "agrees", "3.00 [3.00, 3.00]"),
    ([10.0] * 3, [20.0] * 3, "agrees", "2.00 [2.00, 2.00]"),
    # 3.4, 3.5, 3.6: [3.25, 3.75], all above 3
    ([10.0] * 3, [34.0, 35.0, 36.0], "no", "3.50 [3.25, 3.75]"),
    # 1.99 everywhere: above 1, short of 2
    ([10.0] * 3, [19.9] * 3, "same direction, smaller", "1.99 [1.99, 1.99]"),
    # 1.2, 1.5, 1.8: 1.5 ± 4.303 * 0.3 / sqrt(3) = [0.755, 2.245]: it reaches 2, so the
    # rule (overlap) agrees although the interval also holds ratios below 1
    ([10.0] * 3, [12.0, 15.0, 18.0], "agrees", "1.50 [0.75, 2.25]"),
    # 1.0 everywhere: not above 1
    ([10.0] * 3, [10.0] * 3, "no", "1.00 [1.00, 1.00]"),
    # LoRA over CAFF, not CAFF over LoRA: 10 / 20 = 0.5
    ([20.0] * 3, [10.0] * 3, "no", "0.50 [0.50, 0.50]"),
    # two seeds: never judged, whatever the ratio (2.5 ± 12.706 * 0 = [2.5, 2.5])
    ([10.0] * 2, [25.0] * 2, "not testable", "2.50 [2.50, 2.50]"),
])
def test_lora_memory_verdict_for_each_outcome(caff_mb: list[float], lora_mb: list[float],
                                              verdict: str, words: str) -> None:
    got, reason, measured = memory_verdict(caff_mb, lora_mb)
    assert got == verdict, reason
    assert measured == f"lora / caff mean peak memory of contributing devices: {words} x"


def test_lora_memory_not_testable_without_contributions() -> None:
    got, reason, _ = memory_verdict([10.0] * 3, [25.0] * 3, lora_share=[0.5, 0.5, 0.0])
    assert (got, reason) == ("not testable", "not both CAFF and LoRA had contributing "
                                             "devices in seed 2")


def test_lora_memory_counts_contributing_devices_only(tmp_path: Path) -> None:
    """From run directories: the mean peak of devices that contributed. CAFF's devices
    peak at 10 MB, a straggler records 0; LoRA's at 25 MB, an OOM at 40 MB: 25 / 10 =
    2.5 in every seed (agrees). Averaging every device would give 32.5 / 6.67 = 4.9."""
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    exp = load_suite(path).experiments[0]  # caff, lora, fedavg
    for s in range(3):
        for policy, ok_mb, other, other_mb in (("caff", 10.0, "straggler", 0.0),
                                               ("lora", 25.0, "oom", 40.0),
                                               ("fedavg", 5.0, "ok", 5.0)):
            run_dir = tmp_path / "memory" / policy / f"seed{s}"
            fake_run(run_dir, 0.3, 0.4)
            device = {"device_class": "phone_low", "plan": "train=head;frozen=",
                      "mem_cap_bytes": 2**30, "flops": 1e9}
            devices = [{**device, "status": "ok", "peak_mem_bytes": int(ok_mb * 2**20)},
                       {**device, "status": "ok", "peak_mem_bytes": int(ok_mb * 2**20)},
                       {**device, "status": other, "peak_mem_bytes": int(other_mb * 2**20)}]
            (run_dir / "devices.jsonl").write_text("".join(json.dumps(d) + "\n"
                                                           for d in devices))
    data, _ = load_rows(tmp_path, exp, [0, 1, 2])
    assert [data[s]["caff"]["peak_mem_mean_mb"] for s in range(3)] == [10.0] * 3
    assert [data[s]["lora"]["peak_mem_mean_mb"] for s in range(3)] == [25.0] * 3
    result = check(spec("lora_memory", ["lora"]), Evidence(data, None, 3.0))
    assert (result.verdict, result.interval.mean) == ("agrees", 2.5)


def parity(gaps: list[float], headroom: Interval | None = WIDE,
           stragglers: dict[str, int] | None = None) -> tuple[str, str]:
    """upload_parity with CAFF `gaps` points above LoRA per seed: (verdict, reason)."""
    stragglers = {"fedavg": 2} if stragglers is None else stragglers
    final = {"caff": [0.40 + g / 100 for g in gaps], "lora": [0.40] * len(gaps),
             "fedavg": [0.30] * len(gaps)}
    result = check(spec("upload_parity", ["lora"]),
                   Evidence(rows(final, stragglers=stragglers), headroom, 3.0))
    return result.verdict, result.reason


def test_upload_parity_verdict_for_each_outcome() -> None:
    # headroom 20: the band is +-0.1 x 20 = +-2 points
    assert parity([0.0, 0.0, 0.0]) == ("agrees", "within +-2.00 (0.1 x headroom)")
    # 0.5, 1, 1.5: 1 ± 4.303 * 0.5 / sqrt(3) = [-0.242, 2.242]: 2.242 > 2
    assert parity([0.5, 1.0, 1.5]) == ("no", "not within +-2.00 (0.1 x headroom)")
    # -0.5, -1, -1.5: [-2.242, 0.242]: LoRA ahead by more than the band
    assert parity([-0.5, -1.0, -1.5])[0] == "no"
    # 0.2, 0.5, 0.8: 0.5 ± 4.303 * 0.3 / sqrt(3) = [-0.245, 1.245], inside +-2
    assert parity([0.2, 0.5, 0.8])[0] == "agrees"
    # a constant 2.5 points is outside +-2 however narrow
    assert parity([2.5, 2.5, 2.5])[0] == "no"
    # the same gaps with a headroom of 30: band +-3 holds [-0.242, 2.242]
    assert parity([0.5, 1.0, 1.5], Interval(30.0, 29.0, 31.0, 3))[0] == "agrees"


def test_upload_parity_not_testable() -> None:
    # no run had a straggler: the upload limit never bound
    assert parity([0.0] * 3, stragglers={}) == (
        NOT_TESTABLE, "the upload limit did not bind (no run had stragglers) in seeds 0, 1, 2")
    # a straggler in one seed only leaves the other seeds unexercised
    assert parity([0.0] * 3, stragglers={"caff": [0, 3, 0]}) == (
        NOT_TESTABLE, "the upload limit did not bind (no run had stragglers) in seeds 0, 2")
    assert parity([0.0] * 2) == (NOT_TESTABLE, "2 seeds < 3")
    assert parity([0.0] * 3, headroom=None) == (NOT_TESTABLE, "no upper bound run, so no "
                                                              "headroom")
    # headroom 2, 3, 4 points: [0.52, 5.48], its lower bound under the suite's 3
    assert parity([0.0] * 3, headroom=Interval.of([2.0, 3.0, 4.0])) == (
        NOT_TESTABLE, "headroom 3.00 [0.52, 5.48] points: lower bound < 3")
