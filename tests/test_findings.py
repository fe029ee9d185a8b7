"""The document's tables beyond the claims (fleetsim.suite.findings, fleetsim.suite.predicted): gap
shares against a small model, CAFF's architecture choice under both objectives, the
plan-level memory comparison of CAFF and LoRA, the tuned settings and the run time, on
hand-built runs and fake run directories. Every expected number is worked out by hand in
its comment (intervals: mean ± t * s / sqrt(n), t = 4.303 for 3 seeds)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fleetsim.config.scenario import Scenario, load_scenario, scenario_to_yaml
from fleetsim.device.cost import parse_plan, predict_peak_bytes
from fleetsim.suite.claims import write_document
from fleetsim.suite.findings import (
    at_edge,
    caff_lines,
    gap_lines,
    gap_shares,
    memory_lines,
    run_time_lines,
    tuning_lines,
)
from fleetsim.suite.paper import GapSpec, load_suite, unconstrained
from fleetsim.suite.predicted import caff_choices, memory_plans, plan_specs, ratio_text
from fleetsim.suite.tuning import Trial, grid_of, result, write_tuning
from fleetsim.types import LoraSpec, OptimizerSpec, TrainingPlan
from fleetsim.views.compare import with_policy
from fleetsim.views.metrics import RunData
from fleetsim.zoo.model import ARCHITECTURES, ZOO, TinyGPTConfig
from tests.conftest import SMOKE, suite_error
from tests.test_claims import fake_run

GAP = GapSpec(small="fedavg", about="the same network trained end to end")
MB = 2**20


def run(final: float, model: str = "gpt-2x64") -> RunData:
    return RunData("run", [], [], {"final_accuracy": final, "model": model})


def runs_of(finals: dict[str, list[float]]) -> dict[int, dict[str, RunData]]:
    """Seed k's run of label p ends at finals[p][k]."""
    seeds = range(len(next(iter(finals.values()))))
    return {s: {p: run(v[s]) for p, v in finals.items()} for s in seeds}


def test_gap_shares_by_hand() -> None:
    runs = runs_of({"caff": [0.35, 0.35, 0.40], "lora": [0.40, 0.45, 0.45],
                    "fedavg": [0.30, 0.30, 0.30], "upper_bound": [0.50, 0.50, 0.60]})
    # gaps 0.2, 0.2, 0.3: lora is 0.1, 0.15, 0.15 above the small model, caff 0.05, 0.05, 0.1
    shares = gap_shares(GAP, runs, ["caff", "lora", "fedavg"])
    assert isinstance(shares, dict) and set(shares) == {"caff", "lora"}
    assert shares["lora"] == pytest.approx([0.5, 0.75, 0.5])
    assert shares["caff"] == pytest.approx([0.25, 0.25, 1 / 3])
    text = "\n".join(gap_lines(GAP, runs, ["caff", "lora", "fedavg"]))
    assert ("The small model is `fedavg`: the same network trained end to end (final "
            "accuracy 0.3000 ± 0.0000)") in text
    assert "is 23.33 [8.99, 37.68] points" in text  # 20, 20, 30: s 5.7735, ± 14.343
    # lora: 0.5833, s 0.14434, ± 0.3586; final 0.4333, s 0.0289 (caff: the same spread)
    assert "| 1 | lora | 0.4333 ± 0.0289 | 0.50, 0.75, 0.50 | 0.58 [0.22, 0.94] |" in text
    # caff: 0.2778, s 0.04811, ± 0.1195
    assert "| 2 | caff | 0.3667 ± 0.0289 | 0.25, 0.25, 0.33 | 0.28 [0.16, 0.40] |" in text
    assert "Order by mean share: lora > caff." in text and "| fedavg |" not in text


def test_no_gap_shares_when_the_upper_bound_is_not_above_the_small_model() -> None:
    runs = runs_of({"caff": [0.4, 0.4, 0.4], "fedavg": [0.3, 0.35, 0.3],
                    "upper_bound": [0.5, 0.35, 0.5]})
    assert gap_shares(GAP, runs, ["caff", "fedavg"]) == 1
    assert gap_lines(GAP, runs, ["caff", "fedavg"])[-1] == (
        "No shares: in seed 1 the upper bound does not exceed the small model.")


GAP_SUITE = """
seeds: [0, 1, 2]
reduced: {seeds: [0]}
experiments:
  - name: memory
    title: Memory
    scenario: scenarios/smoke.yaml
    policies: [caff, lora, fedavg]
    upper_bound: true
    gap: {small: fedavg, about: the same network trained end to end}
    claims: [{claim: lora_memory, rivals: [lora]}]
"""


@pytest.mark.parametrize("old, new, key, words", [
    ("small: fedavg", "small: slt", "experiments[0].gap.small", "'slt' is not among"),
    ("    upper_bound: true\n", "", "experiments[0].upper_bound", "gap shares"),
    ("small: fedavg,", "smal: fedavg,", "experiments[0].gap.smal", "did you mean 'small'"),
])
def test_gap_schema_names_the_key(tmp_path: Path, old: str, new: str, key: str,
                                  words: str) -> None:
    err = suite_error(tmp_path, GAP_SUITE, old, new)
    assert err.key == key and words in err.message


def caff_fleet() -> Scenario:
    """The smoke fleet (2 phone_low, 2 phone_mid, 2 rpi4) unconstrained, except that the
    phone_low devices hold 0.01 MB: not even the head trains there."""
    free = unconstrained(load_scenario(SMOKE, ADAM))
    tiny = free.fleet[0].model_copy(update={"overrides": {**free.fleet[0].overrides,
                                                          "memory_mb": 0.01}})
    return free.model_copy(update={"fleet": [tiny, *free.fleet[1:]]})


def test_caff_choice_from_the_whole_family_under_both_objectives() -> None:
    # the scenario pins CAFF to gpt-2x64; the table asks about the whole family
    count, fraction = caff_choices(with_policy(caff_fleet(), "caff", {"models": ["gpt-2x64"]}))
    assert (count.objective, fraction.objective) == ("count", "fraction")
    # count: (4 devices x L blocks - 2 devices x 1) / 6, L = 2, 4, 6, 8
    assert count.scores == pytest.approx({"gpt-2x64": 1.0, "gpt-4x128": 14 / 6,
                                          "gpt-6x192": 22 / 6, "gpt-8x256": 5.0})
    # fraction: (4 x 1 - 2) / 6 = 1/3 for every model; the tie goes to the larger one
    assert fraction.scores == pytest.approx(dict.fromkeys(ARCHITECTURES, 1 / 3))
    assert count.choice == fraction.choice == "gpt-8x256"


def write_scenario(run_dir: Path, scenario: Scenario) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "scenario.yaml").write_text(scenario_to_yaml(scenario))


def test_caff_lines_show_scores_and_the_model_the_runs_used(tmp_path: Path) -> None:
    for s in (0, 1):
        write_scenario(tmp_path / "caff" / f"seed{s}",
                       with_policy(caff_fleet(), "caff", {"models": ["gpt-2x64"]}))
    text = caff_lines(tmp_path, {s: {"caff": run(0.4)} for s in (0, 1)})
    assert "| objective | gpt-2x64 | gpt-4x128 | gpt-6x192 | gpt-8x256 | choice |" in text
    assert "| count | 1.00 | 2.33 | 3.67 | 5.00 | gpt-8x256 |" in text
    assert "| fraction | 0.33 | 0.33 | 0.33 | 0.33 | gpt-8x256 |" in text
    assert text[-1] == ("The caff runs used gpt-2x64 in every seed (objective `count`, its "
                        "candidates pinned to gpt-2x64).")
    mixed = caff_lines(tmp_path, {0: {"caff": run(0.4)}, 1: {"caff": run(0.4, "gpt-4x128")}})
    assert mixed[-1].startswith("The caff runs used gpt-2x64 (seed 0), gpt-4x128 (seed 1) (")


def fake_measure(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> int:
    """Bytes: 1 MB per trained group, 10 MB per adapter rank and target."""
    lora = plan.lora.rank * len(plan.lora.targets) if plan.lora else 0
    return (len(plan.train) + 10 * lora) * MB


LORA = {"rank": 4, "targets": ["q_proj", "v_proj", "fc_in"]}


ADAM = {"training.optimizer": "{name: adam}"}  # the smoke scenario as it was: Adam


def test_memory_plans_take_lora_from_the_policy_and_every_caff_depth() -> None:
    assert plan_specs(2, 16) == ["last:1", "last:2", "full", "lora:16", "lora:1"]
    assert plan_specs(3, 1) == ["last:1", "last:2", "last:3", "full", "lora:1"]
    plans = memory_plans(with_policy(load_scenario(SMOKE, ADAM), "lora", LORA), fake_measure)
    assert (plans.model, plans.batch_size, plans.optimizer, plans.seq_len, plans.targets) \
        == ("gpt-2x64", 8, "adam", 80, ("q_proj", "v_proj", "fc_in"))
    # gpt-2x64 (embed, block.0, block.1, head): last:1 trains 2 groups, last:2 3, full 4;
    # LoRA the head: 1 + 10 x 4 x 3 = 121 at rank 4, 1 + 10 x 3 = 31 at rank 1
    assert [(p.spec, p.depth, p.measured_mb) for p in plans.plans] == [
        ("last:1", 1, 2.0), ("last:2", 2, 3.0), ("full", 2, 4.0), ("lora:4", 2, 121.0),
        ("lora:1", 2, 31.0)]
    config = ZOO["gpt-2x64"].config
    last2 = parse_plan("last:2", config, 8, OptimizerSpec("adam"))
    lora4 = replace(parse_plan("lora:4", config, 8, OptimizerSpec("adam")),
                    lora=LoraSpec(4, ("q_proj", "v_proj", "fc_in")))
    lo = predict_peak_bytes(config, lora4, 80) / MB
    caff = predict_peak_bytes(config, last2, 80) / MB
    assert (plans.get("lora:4").predicted_mb, plans.get("last:2").predicted_mb) == (lo, caff)
    assert ratio_text(plans, "lora:4", "last:2") == f"{lo / caff:.2f}x (measured 40.33x)"
    # measured only on request, and with True only where a step is cheap
    assert all(p.measured_mb is None for p in memory_plans(load_scenario(SMOKE, ADAM),
                                                               False).plans)
    big = load_scenario(SMOKE, {**ADAM, "model.name": "gpt-8x256", "training.batch_size": "16"})
    assert all(p.measured_mb is None for p in memory_plans(big).plans)


def test_memory_lines_compare_lora_with_caff_at_the_same_depth(tmp_path: Path) -> None:
    write_scenario(tmp_path / "lora" / "seed3",
                   with_policy(load_scenario(SMOKE, ADAM), "lora", LORA))
    text = memory_lines(tmp_path, 3, "lora / caff: 2.50 [2.40, 2.60] x (agrees)", False)
    # each plan's predicted peak straight from the cost model, at the lora run's settings
    # (gpt-2x64, batch 8, Adam, 80 characters), LoRA on the policy's targets
    config, adam = ZOO["gpt-2x64"].config, OptimizerSpec("adam")
    targets = tuple(LORA["targets"])
    mb = {spec: predict_peak_bytes(config, parse_plan(spec, config, 8, adam), 80) / MB
          for spec in ("last:1", "last:2")}
    for rank in (4, 1):
        plan = replace(parse_plan(f"lora:{rank}", config, 8, adam), lora=LoraSpec(rank, targets))
        mb[f"lora:{rank}"] = predict_peak_bytes(config, plan, 80) / MB
    assert text[0].startswith("Plan-level memory, on gpt-2x64 at batch 8, adam, 80 characters "
                              "(the lora run's settings, seed 3); LoRA on q_proj, v_proj, fc_in.")
    assert ("| plan | blocks with gradients | predicted peak MB | measured peak MB | lora:4 / "
            "plan, predicted | lora:1 / plan, predicted |") in text
    assert (f"| last:1 | 1 | {mb['last:1']:.1f} | - | {mb['lora:4'] / mb['last:1']:.2f} | "
            f"{mb['lora:1'] / mb['last:1']:.2f} |") in text
    assert f"| lora:4 | 2 | {mb['lora:4']:.1f} | - | - | - |" in text
    assert text[-1] == (
        "At the same trained depth (2 blocks): "
        f"lora:4 / last:2: {mb['lora:4'] / mb['last:2']:.2f}x; "
        f"lora:1 / last:2: {mb['lora:1'] / mb['last:2']:.2f}x. CAFF's last:1 is for reference. "
        "Run level, as the claim measures it: lora / caff: 2.50 [2.40, 2.60] x "
        "(agrees).")


def test_tuning_lines_show_the_choice_the_grid_and_each_trial(tmp_path: Path) -> None:
    trials = [Trial({"training.lr": "0.001"}, "tuning/lora/grid00", 0.41),
              Trial({"training.lr": "0.002"}, "tuning/lora/grid01", 0.43)]
    write_tuning(tmp_path / "exp", {"lora": result(grid_of({"training.lr": [0.001, 0.002]}),
                                                   trials)})
    text = tuning_lines(tmp_path, "exp", ["caff", "lora", "upper_bound"])
    assert ("| lora | training.lr=0.002 | 0.4300 | training.lr: 0.001, 0.002 | "
            "training.lr=0.001: 0.4100; training.lr=0.002: 0.4300 |") in text
    assert "| caff | not tuned (the scenario's settings) | - | - | - |" in text
    assert "| upper_bound | not tuned (the scenario's settings) | - | - | - |" in text
    assert tuning_lines(tmp_path, "other", ["caff"])[0].startswith("Tuning: no grid applied")


def test_a_choice_at_the_edge_of_a_grid_is_marked() -> None:
    grid = {"training.lr": ["0.00025", "0.001", "0.004"], "policy.params.rank": [4, 16]}
    assert at_edge(grid, {"training.lr": "0.00025", "policy.params.rank": "16"}) == \
        ["training.lr"]  # two values: no edge to speak of
    assert at_edge(grid, {"training.lr": "0.004", "policy.params.rank": "4"}) == \
        ["training.lr"]
    assert at_edge(grid, {"training.lr": "0.001", "policy.params.rank": "4"}) == []
    assert at_edge({"optimizer": ["sgd", "adam", "adamw"]}, {"optimizer": "sgd"}) == []


def test_run_time_sums_the_suites_runs_and_trials_only(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(GAP_SUITE)
    suite = load_suite(path, reduced=True)  # seed 0 only: 4 runs
    (tmp_path / "durations.json").write_text(json.dumps({
        "memory/caff/seed0": 60, "memory/lora/seed0": 180, "memory/upper_bound/seed0": 360,
        "memory/caff/seed1": 1000, "other/caff/seed0": 1000,  # not this suite's runs
        "memory/tuning/lora/grid00": 30, "memory/tuning/lora/grid01": 60}))
    # 600 s of 3 timed runs = 10 minutes; trials 90 s = 1.5 minutes
    assert run_time_lines(tmp_path, suite)[0].startswith(
        "Wall time: not recorded. The 4 runs took 10 minutes of run time summed over runs "
        "(3 of them timed); its 2 tuning trials took 1.5 minutes: each run's own wall time")
    (tmp_path / "sittings.json").write_text(json.dumps({
        "2026-12-02T09:00:00+00:00": {"jobs": 2, "runs": 3, "wall_s": 1500},
        "2026-12-03T10:00:00+00:00": {"jobs": 2, "runs": 3, "wall_s": 900}}))
    assert run_time_lines(tmp_path, suite)[0].startswith(
        "Wall time: 40 minutes in 2 sittings, 2 runs at once (`sittings.json`). The 4 runs")


def test_document_has_gap_shares_caff_choice_plan_memory_and_tuning(tmp_path: Path) -> None:
    path, out, doc = tmp_path / "suite.yaml", tmp_path / "runs", tmp_path / "doc.md"
    path.write_text(GAP_SUITE)
    for s in range(3):
        exp = out / "memory"
        fake_run(exp / "caff" / f"seed{s}", 0.3, 0.40, peak_mb=20.0,
                 scenario=with_policy(caff_fleet(), "caff"))
        fake_run(exp / "lora" / f"seed{s}", 0.3, 0.35, peak_mb=50.0,
                 scenario=with_policy(load_scenario(SMOKE, ADAM), "lora", LORA))
        fake_run(exp / "fedavg" / f"seed{s}", 0.3, 0.30)
        fake_run(exp / "upper_bound" / f"seed{s}", 0.3, 0.50)
    write_document(load_suite(path), out, doc, "fleetsim paper", measure=False)
    text = doc.read_text()
    # shares 0.5 (caff) and 0.25 (lora) in every seed: intervals of width 0
    assert "| 1 | caff | 0.4000 ± 0.0000 | 0.50, 0.50, 0.50 | 0.50 [0.50, 0.50] |" in text
    assert "Order by mean share: caff > lora." in text
    assert "| count | 1.00 | 2.33 | 3.67 | 5.00 | gpt-8x256 |" in text
    assert "The caff runs used gpt-2x64 in every seed (objective `count`, candidates: " \
           "the whole family)." in text
    assert "Plan-level memory, on gpt-2x64 at batch 8" in text
    assert ("Run level, as the claim measures it: lora / caff mean peak memory of "
            "contributing devices: 2.50 [2.50, 2.50] x (agrees).") in text
    assert "Tuning: no grid applied to this experiment" in text
    assert "The 12 runs took 0.0 minutes of run time summed over runs (0 of them timed)" in text
